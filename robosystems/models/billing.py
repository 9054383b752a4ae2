"""Billing aggregate: customers, subscriptions, invoices (+ line items and the number counter), audit log.

These are the legacy user-keyed tables transformed in place by revision e6f7a8b9c0d1 (org billing): every row
carries an ``org_id`` (the payer's personal org for legacy rows) and the legacy user column is kept, nullable.
Legacy constraint/index names that don't follow the naming convention are kept with :func:`conv`.
The credit pool and ledger (``graph_credits`` / ``graph_credit_transactions``) live in :mod:`robosystems.models.graphs`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    CheckConstraint,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    UniqueConstraint,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column
from sqlalchemy.sql.elements import conv

from robosystems.ids import new_id
from robosystems.models.base import Base, created_at_column, updated_at_column

#: Subscription states (CHECK ``ck_billing_subscriptions_status``); transitions in robosystems.billing.subscriptions.
SUBSCRIPTION_STATUSES = (
    "pending_payment",
    "provisioning",
    "active",
    "past_due",
    "unpaid",
    "paused",
    "canceled",
    "failed",
    "refunded",
    "expired",
)
#: States in which a subscription holds its resource (partial unique index: one live subscription per graph).
LIVE_SUBSCRIPTION_STATUSES = ("provisioning", "active", "past_due", "unpaid", "paused")
#: Invoice statuses (Stripe's vocabulary; CHECK ``ck_billing_invoices_status``).
INVOICE_STATUSES = ("draft", "open", "paid", "void", "uncollectible")
PAYMENT_PROVIDERS = ("stripe", "local")
AUDIT_ACTOR_TYPES = ("user", "system", "admin")

_LIVE_SQL = "status IN ('provisioning', 'active', 'past_due', 'unpaid', 'paused')"


def _in(values: tuple[str, ...]) -> str:
    return ", ".join(f"'{v}'" for v in values)


class BillingCustomer(Base):
    """One billing customer per org (``stripe_customer_id``: the provider's customer id, whatever the provider)."""

    __tablename__ = "billing_customers"
    __table_args__ = (
        UniqueConstraint("stripe_customer_id", name=conv("billing_customers_stripe_customer_id_key")),
        CheckConstraint(f"provider IN ({_in(PAYMENT_PROVIDERS)})", name="provider"),
        Index("ix_billing_customers_user_id", "user_id"),
    )

    org_id: Mapped[str] = mapped_column(String, ForeignKey("orgs.id", ondelete="RESTRICT"), primary_key=True)
    user_id: Mapped[str | None] = mapped_column(  # legacy payer (kept for legacy rows)
        String, ForeignKey("users.id", name=conv("billing_customers_user_id_fkey"))
    )
    provider: Mapped[str] = mapped_column(String(16), nullable=False, server_default="stripe")
    stripe_customer_id: Mapped[str | None] = mapped_column(String)
    has_payment_method: Mapped[bool] = mapped_column(Boolean, nullable=False, server_default="false", default=False)
    default_payment_method_id: Mapped[str | None] = mapped_column(String)
    payment_method_summary: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    invoice_billing_enabled: Mapped[bool] = mapped_column(
        Boolean, nullable=False, server_default="false", default=False
    )
    billing_email: Mapped[str | None] = mapped_column(String)
    billing_contact_name: Mapped[str | None] = mapped_column(String)
    payment_terms: Mapped[str] = mapped_column(String, nullable=False, server_default="net_30", default="net_30")
    created_at: Mapped[datetime] = created_at_column()
    updated_at: Mapped[datetime] = updated_at_column()


class BillingSubscription(Base):
    __tablename__ = "billing_subscriptions"
    __table_args__ = (
        CheckConstraint(f"status IN ({_in(SUBSCRIPTION_STATUSES)})", name="status"),
        UniqueConstraint("stripe_subscription_id", name=conv("billing_subscriptions_stripe_subscription_id_key")),
        UniqueConstraint("provider_subscription_id", name=conv("uq_billing_sub_provider_subscription_id")),
        UniqueConstraint("provider_checkout_session_id"),
        UniqueConstraint("org_id", "idempotency_key"),
        Index(
            "uq_billing_subscriptions_live_graph",
            "resource_type",
            "resource_id",
            unique=True,
            postgresql_where=text(f"resource_type = 'graph' AND resource_id IS NOT NULL AND {_LIVE_SQL}"),
        ),
        Index(
            "uq_billing_subscriptions_live_seats",
            "resource_type",
            "resource_id",
            unique=True,
            postgresql_where=text(f"resource_type = 'org_seats' AND resource_id IS NOT NULL AND {_LIVE_SQL}"),
        ),
        CheckConstraint("quantity >= 1", name="quantity"),
        Index("ix_billing_subscriptions_org_id_created_at", "org_id", "created_at"),
        Index("idx_billing_sub_customer", "billing_customer_user_id"),
        Index("idx_billing_sub_resource", "resource_type", "resource_id"),
        Index("idx_billing_sub_status", "status"),
    )

    id: Mapped[str] = mapped_column(String, primary_key=True, default=lambda: new_id("bsub"))
    org_id: Mapped[str] = mapped_column(String, ForeignKey("orgs.id", ondelete="RESTRICT"), nullable=False)
    billing_customer_user_id: Mapped[str | None] = mapped_column(  # legacy payer (kept)
        String, ForeignKey("users.id", name=conv("billing_subscriptions_billing_customer_user_id_fkey"))
    )
    resource_type: Mapped[str] = mapped_column(String, nullable=False)
    resource_id: Mapped[str | None] = mapped_column(String)
    plan_name: Mapped[str] = mapped_column(String, nullable=False)
    billing_interval: Mapped[str] = mapped_column(String, nullable=False, server_default="monthly", default="monthly")
    base_price_cents: Mapped[int] = mapped_column(Integer, nullable=False)
    #: seats of a per-seat plan, 1 for a graph (b9c0d1e2f3a4)
    quantity: Mapped[int] = mapped_column(Integer, nullable=False, server_default="1", default=1)
    stripe_subscription_id: Mapped[str | None] = mapped_column(String)  # legacy column
    stripe_product_id: Mapped[str | None] = mapped_column(String)
    stripe_price_id: Mapped[str | None] = mapped_column(String)
    status: Mapped[str] = mapped_column(String, nullable=False)
    legacy_status: Mapped[str | None] = mapped_column(String)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    current_period_start: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    current_period_end: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    canceled_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    ends_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    cancel_at_period_end: Mapped[bool] = mapped_column(Boolean, nullable=False, server_default="false", default=False)
    payment_provider: Mapped[str] = mapped_column(String, nullable=False, default="stripe")
    provider_subscription_id: Mapped[str | None] = mapped_column(String)  # the provider SUBSCRIPTION id only
    provider_checkout_session_id: Mapped[str | None] = mapped_column(String)
    provider_customer_id: Mapped[str | None] = mapped_column(String)
    checkout_expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    idempotency_key: Mapped[str | None] = mapped_column(String(255))
    request_fingerprint: Mapped[str | None] = mapped_column(String(128))
    failure_reason: Mapped[str | None] = mapped_column(String(200))
    last_event_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    subscription_metadata: Mapped[dict[str, Any]] = mapped_column(
        JSONB, nullable=False, server_default=text("'{}'::jsonb"), default=dict
    )
    created_at: Mapped[datetime] = created_at_column()
    updated_at: Mapped[datetime] = updated_at_column()


class BillingInvoice(Base):
    __tablename__ = "billing_invoices"
    __table_args__ = (
        CheckConstraint(f"status IN ({_in(INVOICE_STATUSES)})", name="status"),
        UniqueConstraint("invoice_number", name=conv("billing_invoices_invoice_number_key")),
        UniqueConstraint("stripe_invoice_id", name=conv("billing_invoices_stripe_invoice_id_key")),
        Index("ix_billing_invoices_org_id_created_at", "org_id", "created_at"),
        Index("ix_billing_invoices_subscription_id", "subscription_id"),
        Index("idx_billing_invoice_customer", "billing_customer_user_id"),
        Index("idx_billing_invoice_status", "status"),
    )

    id: Mapped[str] = mapped_column(String, primary_key=True, default=lambda: new_id("binv"))
    org_id: Mapped[str] = mapped_column(String, ForeignKey("orgs.id", ondelete="RESTRICT"), nullable=False)
    billing_customer_user_id: Mapped[str | None] = mapped_column(  # legacy payer (kept)
        String, ForeignKey("users.id", name=conv("billing_invoices_billing_customer_user_id_fkey"))
    )
    subscription_id: Mapped[str | None] = mapped_column(String, ForeignKey("billing_subscriptions.id"))
    invoice_number: Mapped[str] = mapped_column(String, nullable=False)
    period_start: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    period_end: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    currency: Mapped[str] = mapped_column(String(3), nullable=False, server_default="usd", default="usd")
    subtotal_cents: Mapped[int] = mapped_column(Integer, nullable=False)
    tax_cents: Mapped[int] = mapped_column(Integer, nullable=False, server_default="0", default=0)
    discount_cents: Mapped[int] = mapped_column(Integer, nullable=False, server_default="0", default=0)
    total_cents: Mapped[int] = mapped_column(Integer, nullable=False)
    amount_paid_cents: Mapped[int] = mapped_column(Integer, nullable=False, server_default="0", default=0)
    status: Mapped[str] = mapped_column(String, nullable=False, server_default="draft", default="draft")
    stripe_invoice_id: Mapped[str | None] = mapped_column(String)  # the provider's invoice id
    hosted_invoice_url: Mapped[str | None] = mapped_column(String)
    invoice_pdf: Mapped[str | None] = mapped_column(String)
    sent_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    due_date: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    paid_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    payment_method: Mapped[str | None] = mapped_column(String)
    payment_reference: Mapped[str | None] = mapped_column(String)
    notes: Mapped[str | None] = mapped_column(String)
    billing_reason: Mapped[str | None] = mapped_column(String(40))  # Stripe's (b9c0d1e2f3a4)
    created_at: Mapped[datetime] = created_at_column()
    updated_at: Mapped[datetime] = updated_at_column()


class BillingInvoiceLineItem(Base):
    __tablename__ = "billing_invoice_line_items"
    __table_args__ = (
        Index("idx_billing_line_item_invoice", "invoice_id"),
        Index("idx_billing_line_item_subscription", "subscription_id"),
    )

    id: Mapped[str] = mapped_column(String, primary_key=True, default=lambda: new_id("bli"))
    invoice_id: Mapped[str] = mapped_column(
        String,
        ForeignKey("billing_invoices.id", name=conv("billing_invoice_line_items_invoice_id_fkey")),
        nullable=False,
    )
    subscription_id: Mapped[str | None] = mapped_column(
        String,
        ForeignKey("billing_subscriptions.id", name=conv("billing_invoice_line_items_subscription_id_fkey")),
    )
    resource_type: Mapped[str] = mapped_column(String, nullable=False)
    resource_id: Mapped[str | None] = mapped_column(String)  # NULL while the paid resource does not exist yet
    description: Mapped[str] = mapped_column(String, nullable=False)
    quantity: Mapped[int] = mapped_column(Integer, nullable=False, default=1)
    unit_price_cents: Mapped[int] = mapped_column(Integer, nullable=False)
    amount_cents: Mapped[int] = mapped_column(Integer, nullable=False)
    period_start: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    period_end: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    line_metadata: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    created_at: Mapped[datetime] = created_at_column()


class BillingInvoiceCounter(Base):
    """Last invoice number issued per month: updated in the transaction that inserts the invoice (gapless)."""

    __tablename__ = "billing_invoice_counters"
    __table_args__ = (
        CheckConstraint("period ~ '^[0-9]{4}-[0-9]{2}$'", name="period_format"),
        CheckConstraint("last_number >= 0", name="last_number"),
    )

    period: Mapped[str] = mapped_column(String(7), primary_key=True)
    last_number: Mapped[int] = mapped_column(Integer, nullable=False)
    updated_at: Mapped[datetime] = updated_at_column()


class BillingAuditLog(Base):
    """Append-only (trigger ``trg_billing_audit_logs_append_only``)."""

    __tablename__ = "billing_audit_logs"
    __table_args__ = (
        CheckConstraint(
            "org_id IS NOT NULL OR subscription_id IS NOT NULL OR invoice_id IS NOT NULL "
            "OR actor_user_id IS NOT NULL OR billing_customer_user_id IS NOT NULL",
            name="has_reference",
        ),
        Index("ix_billing_audit_logs_org_id_event_timestamp", "org_id", "event_timestamp"),
        Index("idx_billing_audit_event_type", "event_type"),
        Index("idx_billing_audit_subscription", "subscription_id"),
        Index("idx_billing_audit_invoice", "invoice_id"),
        Index("idx_billing_audit_timestamp", "event_timestamp"),
    )

    id: Mapped[str] = mapped_column(String, primary_key=True, default=lambda: new_id("baud"))
    event_type: Mapped[str] = mapped_column(String, nullable=False)
    event_timestamp: Mapped[datetime] = created_at_column()
    org_id: Mapped[str | None] = mapped_column(String)  # no FK: the audit trail outlives a purged org
    billing_customer_user_id: Mapped[str | None] = mapped_column(
        String, ForeignKey("users.id", name=conv("billing_audit_logs_billing_customer_user_id_fkey"))
    )
    subscription_id: Mapped[str | None] = mapped_column(
        String, ForeignKey("billing_subscriptions.id", name=conv("billing_audit_logs_subscription_id_fkey"))
    )
    invoice_id: Mapped[str | None] = mapped_column(
        String, ForeignKey("billing_invoices.id", name=conv("billing_audit_logs_invoice_id_fkey"))
    )
    event_data: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    description: Mapped[str] = mapped_column(String, nullable=False)
    reason: Mapped[str | None] = mapped_column(String(500))
    actor_user_id: Mapped[str | None] = mapped_column(
        String, ForeignKey("users.id", name=conv("billing_audit_logs_actor_user_id_fkey"))
    )
    actor_type: Mapped[str] = mapped_column(String, nullable=False, server_default="system")
    actor_ip: Mapped[str | None] = mapped_column(String)
    created_at: Mapped[datetime] = created_at_column()
