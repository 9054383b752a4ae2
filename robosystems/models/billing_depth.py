"""Plan changes, entitlement overrides and credit pack purchases (revision b9c0d1e2f3a4)."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import CheckConstraint, DateTime, ForeignKey, Index, Integer, Numeric, String, UniqueConstraint, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from robosystems.ids import new_id
from robosystems.models.base import Base, created_at_column, updated_at_column

#: pending_payment: immediate change waiting for its proration invoice; scheduled: at period end; then one of
#: applied | failed | canceled.  Open = pending_payment | scheduled (one per subscription, partial unique index).
PLAN_CHANGE_STATUSES = ("pending_payment", "scheduled", "applied", "failed", "canceled")
OPEN_CHANGE_STATUSES = ("pending_payment", "scheduled")
CREDIT_PURCHASE_STATUSES = ("pending_payment", "paid", "expired", "canceled")


def _in(values: tuple[str, ...]) -> str:
    return ", ".join(f"'{v}'" for v in values)


class BillingPlanChange(Base):
    __tablename__ = "billing_plan_changes"
    __table_args__ = (
        CheckConstraint(f"status IN ({_in(PLAN_CHANGE_STATUSES)})", name="status"),
        CheckConstraint("timing IN ('immediate', 'period_end')", name="timing"),
        CheckConstraint("direction IN ('upgrade', 'downgrade')", name="direction"),
        CheckConstraint("source IN ('api', 'provider')", name="source"),
        CheckConstraint("from_quantity >= 1 AND to_quantity >= 1", name="quantity"),
        Index(
            "uq_billing_plan_changes_open",
            "subscription_id",
            unique=True,
            postgresql_where=text(f"status IN ({_in(OPEN_CHANGE_STATUSES)})"),
        ),
        Index("ix_billing_plan_changes_org_id_created_at", "org_id", "created_at"),
        Index("ix_billing_plan_changes_provider_invoice_id", "provider_invoice_id"),
    )

    id: Mapped[str] = mapped_column(String, primary_key=True, default=lambda: new_id("bchg"))
    org_id: Mapped[str] = mapped_column(String, ForeignKey("orgs.id", ondelete="RESTRICT"), nullable=False)
    subscription_id: Mapped[str] = mapped_column(String, ForeignKey("billing_subscriptions.id"), nullable=False)
    from_plan: Mapped[str] = mapped_column(String, nullable=False)
    to_plan: Mapped[str] = mapped_column(String, nullable=False)
    from_quantity: Mapped[int] = mapped_column(Integer, nullable=False)
    to_quantity: Mapped[int] = mapped_column(Integer, nullable=False)
    direction: Mapped[str] = mapped_column(String(16), nullable=False)
    timing: Mapped[str] = mapped_column(String(16), nullable=False)
    status: Mapped[str] = mapped_column(String(16), nullable=False)
    source: Mapped[str] = mapped_column(String(16), nullable=False, server_default="api", default="api")
    proration_date: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    amount_due_cents: Mapped[int] = mapped_column(Integer, nullable=False, server_default="0", default=0)
    currency: Mapped[str] = mapped_column(String(3), nullable=False, server_default="usd", default="usd")
    provider_invoice_id: Mapped[str | None] = mapped_column(String)
    provider_schedule_id: Mapped[str | None] = mapped_column(String)
    effective_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    failure_reason: Mapped[str | None] = mapped_column(String(200))
    requested_by: Mapped[str | None] = mapped_column(String)
    applied_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = created_at_column()
    updated_at: Mapped[datetime] = updated_at_column()


class OrgEntitlementOverride(Base):
    """An operator's override of one entitlement of an org (``PUT /admin/v1/orgs/{org_id}/entitlements/{key}``)."""

    __tablename__ = "org_entitlement_overrides"
    __table_args__ = (UniqueConstraint("org_id", "key"),)

    id: Mapped[str] = mapped_column(String, primary_key=True, default=lambda: new_id("ent"))
    org_id: Mapped[str] = mapped_column(String, ForeignKey("orgs.id", ondelete="CASCADE"), nullable=False)
    key: Mapped[str] = mapped_column(String(64), nullable=False)
    value: Mapped[Any] = mapped_column(JSONB, nullable=False)
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    reason: Mapped[str] = mapped_column(String(500), nullable=False)
    set_by: Mapped[str | None] = mapped_column(String)
    created_at: Mapped[datetime] = created_at_column()
    updated_at: Mapped[datetime] = updated_at_column()


class BillingCreditPurchase(Base):
    """A one-time credit pack checkout; its credits are granted once, when paid (key ``credit_pack:<id>``)."""

    __tablename__ = "billing_credit_purchases"
    __table_args__ = (
        CheckConstraint(f"status IN ({_in(CREDIT_PURCHASE_STATUSES)})", name="status"),
        CheckConstraint("credits > 0 AND price_cents >= 0", name="amounts"),
        UniqueConstraint("provider_checkout_session_id"),
        UniqueConstraint("org_id", "idempotency_key"),
    )

    id: Mapped[str] = mapped_column(String, primary_key=True, default=lambda: new_id("bcp"))
    org_id: Mapped[str] = mapped_column(String, ForeignKey("orgs.id", ondelete="RESTRICT"), nullable=False)
    graph_id: Mapped[str] = mapped_column(String, nullable=False)
    pack_name: Mapped[str] = mapped_column(String, nullable=False)
    credits: Mapped[Decimal] = mapped_column(Numeric(10, 2), nullable=False)
    price_cents: Mapped[int] = mapped_column(Integer, nullable=False)
    currency: Mapped[str] = mapped_column(String(3), nullable=False, server_default="usd", default="usd")
    status: Mapped[str] = mapped_column(String(16), nullable=False, server_default="pending_payment")
    payment_provider: Mapped[str] = mapped_column(String(16), nullable=False)
    provider_checkout_session_id: Mapped[str | None] = mapped_column(String)
    checkout_url: Mapped[str | None] = mapped_column(String)
    checkout_expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    idempotency_key: Mapped[str | None] = mapped_column(String(255))
    requested_by: Mapped[str | None] = mapped_column(String)
    paid_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = created_at_column()
    updated_at: Mapped[datetime] = updated_at_column()
