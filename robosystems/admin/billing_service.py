"""Operator actions on billing (``/admin/v1``): subscriptions, invoices, customers, credits, deleted orgs,
the billing audit log.

Every change goes through the billing domain functions (state machine, invoice marking, credit ledger)
with ``Actor.admin()`` and a mandatory ``reason``, so each one leaves a billing audit row; org restores
are recorded in the org audit log by :func:`robosystems.orgs.service.restore_org`.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from robosystems.billing import credits, invoices
from robosystems.billing import subscriptions as subs
from robosystems.billing.audit import Actor, record_for_actor
from robosystems.billing.customers import get_or_create_customer_async
from robosystems.billing.service import subscription_view
from robosystems.config import Settings
from robosystems.errors import NotFound, Unprocessable
from robosystems.models import Org
from robosystems.models.billing import (
    INVOICE_STATUSES,
    SUBSCRIPTION_STATUSES,
    BillingAuditLog,
    BillingCustomer,
    BillingInvoice,
    BillingInvoiceLineItem,
    BillingSubscription,
)
from robosystems.orgs import service as org_service
from robosystems.worker.outbox import enqueue_async

ADMIN = Actor.admin()


def _iso(value: datetime | None) -> str | None:
    return value.astimezone(UTC).isoformat() if value else None


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    reason: str = Field(min_length=3, max_length=500)


class SubscriptionPatch(_In):
    status: Literal[SUBSCRIPTION_STATUSES] | None = None  # type: ignore[valid-type]
    cancel_at_period_end: bool | None = None


class MarkPaid(_In):
    amount_paid_cents: int | None = Field(default=None, ge=0)
    payment_reference: str | None = Field(default=None, max_length=200)
    paid_at: datetime | None = None


class CustomerPatch(_In):
    invoice_billing_enabled: bool | None = None
    payment_terms: str | None = Field(default=None, pattern=r"^(due_on_receipt|net_[0-9]{1,3})$")
    billing_email: str | None = Field(default=None, max_length=320, pattern=r"^[^@\s]+@[^@\s]+$")
    billing_contact_name: str | None = Field(default=None, max_length=200)


class CreditAdjust(_In):
    amount: Decimal = Field(max_digits=12, decimal_places=2)
    idempotency_key: str | None = Field(default=None, max_length=255)

    @field_validator("amount")
    @classmethod
    def _non_zero(cls, value: Decimal) -> Decimal:
        if value == 0:
            raise ValueError("amount must not be zero")
        return value


class Restore(_In):
    pass


# --- subscriptions -----------------------------------------------------------------------------------------------


def _admin_subscription(sub: BillingSubscription) -> dict[str, Any]:
    return {
        **subscription_view(sub).model_dump(),
        "payment_provider": sub.payment_provider,
        "provider_subscription_id": sub.provider_subscription_id,
        "provider_checkout_session_id": sub.provider_checkout_session_id,
        "provider_customer_id": sub.provider_customer_id,
        "checkout_expires_at": _iso(sub.checkout_expires_at),
        "last_event_at": _iso(sub.last_event_at),
        "legacy_status": sub.legacy_status,
        "subscription_metadata": sub.subscription_metadata,
        "updated_at": _iso(sub.updated_at),
    }


async def list_subscriptions(
    session: AsyncSession, *, org_id: str | None, status: str | None, plan_name: str | None, limit: int, offset: int
) -> dict[str, Any]:
    conditions = []
    if org_id:
        conditions.append(BillingSubscription.org_id == org_id)
    if status:
        conditions.append(BillingSubscription.status == status)
    if plan_name:
        conditions.append(BillingSubscription.plan_name == plan_name)
    total = (
        await session.execute(select(func.count()).select_from(BillingSubscription).where(*conditions))
    ).scalar_one()
    rows = (
        await session.execute(
            select(BillingSubscription)
            .where(*conditions)
            .order_by(BillingSubscription.created_at.desc(), BillingSubscription.id.desc())
            .limit(limit)
            .offset(offset)
        )
    ).scalars()
    return {"subscriptions": [_admin_subscription(s) for s in rows], "total": int(total)}


async def _subscription(session: AsyncSession, sub_id: str) -> BillingSubscription:
    sub = (
        await session.execute(
            select(BillingSubscription)
            .where(BillingSubscription.id == sub_id)
            .execution_options(populate_existing=True)
        )
    ).scalar_one_or_none()
    if sub is None:
        raise NotFound("Subscription not found", code="subscription_not_found")
    return sub


async def get_subscription(session: AsyncSession, sub_id: str) -> dict[str, Any]:
    return _admin_subscription(await _subscription(session, sub_id))


async def patch_subscription(session: AsyncSession, sub_id: str, patch: SubscriptionPatch) -> dict[str, Any]:
    """Status through the state machine (illegal -> 409); ``provisioning`` (payment confirmed by hand, or a
    retry of a failed one) enqueues the provisioning task.  Each change: a billing audit row with the reason."""
    if patch.status is None and patch.cancel_at_period_end is None:
        raise Unprocessable("Nothing to change", code="empty_patch")
    sub = await _subscription(session, sub_id)
    if patch.status is not None:
        result = await subs.apply_transition_async(session, sub.id, patch.status, actor=ADMIN, reason=patch.reason)
        sub = result.subscription
        if result.changed and patch.status == "provisioning":
            await enqueue_async(session, subs.PROVISION_GRAPH_TASK, [sub.id])
    if patch.cancel_at_period_end is not None and patch.cancel_at_period_end != sub.cancel_at_period_end:
        sub.cancel_at_period_end = patch.cancel_at_period_end
        sub.updated_at = datetime.now(UTC)
        await session.flush()
        value = patch.cancel_at_period_end
        await session.run_sync(
            lambda s: record_for_actor(
                s,
                "subscription_updated",
                ADMIN,
                org_id=sub.org_id,
                subscription_id=sub.id,
                reason=patch.reason,
                description="cancel_at_period_end changed by an operator",
                data={"cancel_at_period_end": value},
            )
        )
    await session.refresh(sub)
    return _admin_subscription(sub)


# --- invoices ----------------------------------------------------------------------------------------------------


def _invoice(inv: BillingInvoice, lines: list[BillingInvoiceLineItem] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": inv.id,
        "org_id": inv.org_id,
        "number": inv.invoice_number,
        "status": inv.status,
        "subscription_id": inv.subscription_id,
        "currency": inv.currency,
        "subtotal_cents": inv.subtotal_cents,
        "tax_cents": inv.tax_cents,
        "discount_cents": inv.discount_cents,
        "total_cents": inv.total_cents,
        "amount_paid_cents": inv.amount_paid_cents,
        "provider_invoice_id": inv.stripe_invoice_id,
        "payment_method": inv.payment_method,
        "payment_reference": inv.payment_reference,
        "period_start": _iso(inv.period_start),
        "period_end": _iso(inv.period_end),
        "due_date": _iso(inv.due_date),
        "paid_at": _iso(inv.paid_at),
        "created_at": _iso(inv.created_at),
        "hosted_invoice_url": inv.hosted_invoice_url,
        "invoice_pdf": inv.invoice_pdf,
    }
    if lines is not None:
        out["line_items"] = [
            {
                "id": li.id,
                "description": li.description,
                "quantity": li.quantity,
                "unit_price_cents": li.unit_price_cents,
                "amount_cents": li.amount_cents,
                "subscription_id": li.subscription_id,
                "resource_id": li.resource_id,
                "period_start": _iso(li.period_start),
                "period_end": _iso(li.period_end),
            }
            for li in lines
        ]
    return out


async def list_invoices(
    session: AsyncSession, *, org_id: str | None, status: str | None, limit: int, offset: int
) -> dict[str, Any]:
    if status is not None and status not in INVOICE_STATUSES:
        raise Unprocessable("Unknown invoice status", code="unknown_status")
    conditions = []
    if org_id:
        conditions.append(BillingInvoice.org_id == org_id)
    if status:
        conditions.append(BillingInvoice.status == status)
    total = (await session.execute(select(func.count()).select_from(BillingInvoice).where(*conditions))).scalar_one()
    rows = (
        await session.execute(
            select(BillingInvoice)
            .where(*conditions)
            .order_by(BillingInvoice.created_at.desc(), BillingInvoice.invoice_number.desc())
            .limit(limit)
            .offset(offset)
        )
    ).scalars()
    return {"invoices": [_invoice(inv) for inv in rows], "total": int(total)}


async def get_invoice(session: AsyncSession, invoice_id: str) -> dict[str, Any]:
    inv = (
        await session.execute(
            select(BillingInvoice).where(BillingInvoice.id == invoice_id).execution_options(populate_existing=True)
        )
    ).scalar_one_or_none()
    if inv is None:
        raise NotFound("Invoice not found", code="invoice_not_found")
    lines = list(
        (
            await session.execute(
                select(BillingInvoiceLineItem)
                .where(BillingInvoiceLineItem.invoice_id == inv.id)
                .order_by(BillingInvoiceLineItem.created_at, BillingInvoiceLineItem.id)
            )
        ).scalars()
    )
    return _invoice(inv, lines)


async def mark_invoice_paid(session: AsyncSession, invoice_id: str, body: MarkPaid) -> dict[str, Any]:
    """Mark an invoice paid by hand (wire transfer, cheque).  When it is the invoice of a subscription still
    awaiting its first payment without a checkout (invoice billing / method on file), that payment is the
    confirmation: the subscription moves to ``provisioning`` and the provisioning task is enqueued in this
    same transaction, exactly as the provider's ``invoice.paid`` would do (whichever comes first wins; the
    other finds it no longer pending)."""
    sub_id = (
        await session.execute(select(BillingInvoice.subscription_id).where(BillingInvoice.id == invoice_id))
    ).scalar_one_or_none()
    # subscription before invoice: the webhook worker locks them in this order too (no deadlock)
    sub = None if sub_id is None else await session.run_sync(lambda s: subs.lock_subscription(s, sub_id))
    invoice = await invoices.mark_paid_async(
        session,
        invoice_id,
        paid_at=body.paid_at,
        amount_paid_cents=body.amount_paid_cents,
        payment_method="manual",
        payment_reference=body.payment_reference,
        actor=ADMIN,
        reason=body.reason,
    )
    if sub is not None and sub.status == "pending_payment" and sub.provider_checkout_session_id is None:
        reason = f"payment confirmed: invoice {invoice.invoice_number} marked paid"
        data = {"invoice_id": invoice.id}
        await session.run_sync(lambda s: subs.confirm_payment(s, sub.id, actor=ADMIN, reason=reason, data=data))
    return await get_invoice(session, invoice_id)


# --- customers ---------------------------------------------------------------------------------------------------


async def patch_customer(
    session: AsyncSession, settings: Settings, org_id: str, patch: CustomerPatch
) -> dict[str, Any]:
    """Invoice billing, payment terms, billing contact.  An org without a billing customer gets one (no
    provider customer is created here: that happens at its first checkout or payment method)."""
    from robosystems.payments.factory import provider_name

    changes = patch.model_dump(exclude={"reason"}, exclude_none=True)
    if not changes:
        raise Unprocessable("Nothing to change", code="empty_patch")
    if (await session.execute(select(Org.id).where(Org.id == org_id))).scalar_one_or_none() is None:
        raise NotFound("Organization not found", code="org_not_found")
    customer = await get_or_create_customer_async(session, provider_name(settings), org_id)
    before = {k: getattr(customer, k) for k in changes}
    for key, value in changes.items():
        setattr(customer, key, value)
    customer.updated_at = datetime.now(UTC)
    await session.flush()
    await session.run_sync(
        lambda s: record_for_actor(
            s,
            "customer_updated",
            ADMIN,
            org_id=org_id,
            reason=patch.reason,
            description="Billing customer changed by an operator",
            data={"before": before, "after": changes},
        )
    )
    return _customer(customer)


def _customer(customer: BillingCustomer) -> dict[str, Any]:
    return {
        "org_id": customer.org_id,
        "provider": customer.provider,
        "provider_customer_id": customer.stripe_customer_id,
        "has_payment_method": customer.has_payment_method,
        "invoice_billing_enabled": customer.invoice_billing_enabled,
        "payment_terms": customer.payment_terms,
        "billing_email": customer.billing_email,
        "billing_contact_name": customer.billing_contact_name,
        "created_at": _iso(customer.created_at),
        "updated_at": _iso(customer.updated_at),
    }


# --- credits -----------------------------------------------------------------------------------------------------


async def adjust_credits(session: AsyncSession, graph_id: str, body: CreditAdjust) -> dict[str, Any]:
    new_balance = await credits.adjust_async(
        session, graph_id, body.amount, reason=body.reason, actor=ADMIN, idempotency_key=body.idempotency_key
    )
    return {"graph_id": graph_id, "balance": str(new_balance), "adjusted_by": str(body.amount)}


# --- orgs --------------------------------------------------------------------------------------------------------


async def list_deleted_orgs(session: AsyncSession, settings: Settings, *, limit: int, offset: int) -> dict[str, Any]:
    result = await org_service.list_deleted_orgs(
        session, grace_days=settings.org_deletion_grace_days, limit=limit, offset=offset
    )
    return {
        "orgs": [
            {
                **o,
                "deleted_at": _iso(o["deleted_at"]),
                "created_at": _iso(o["created_at"]),
                "restorable_until": _iso(o["restorable_until"]),
            }
            for o in result["orgs"]
        ],
        "total": result["total"],
    }


async def restore_org(session: AsyncSession, settings: Settings, org_id: str, body: Restore) -> dict[str, Any]:
    result = await org_service.restore_org(
        session, org_id, grace_days=settings.org_deletion_grace_days, reason=body.reason
    )
    return {**result, "was_deleted_at": _iso(result["was_deleted_at"])}


# --- audit -------------------------------------------------------------------------------------------------------


async def query_audit(
    session: AsyncSession,
    *,
    org_id: str | None,
    event_type: str | None,
    subscription_id: str | None,
    invoice_id: str | None,
    since: datetime | None,
    until: datetime | None,
    limit: int,
    offset: int,
) -> dict[str, Any]:
    conditions = []
    if org_id:
        conditions.append(BillingAuditLog.org_id == org_id)
    if event_type:
        conditions.append(BillingAuditLog.event_type == event_type)
    if subscription_id:
        conditions.append(BillingAuditLog.subscription_id == subscription_id)
    if invoice_id:
        conditions.append(BillingAuditLog.invoice_id == invoice_id)
    if since:
        conditions.append(BillingAuditLog.event_timestamp >= since)
    if until:
        conditions.append(BillingAuditLog.event_timestamp < until)
    total = (await session.execute(select(func.count()).select_from(BillingAuditLog).where(*conditions))).scalar_one()
    rows = (
        await session.execute(
            select(BillingAuditLog)
            .where(*conditions)
            .order_by(BillingAuditLog.event_timestamp.desc(), BillingAuditLog.id.desc())
            .limit(limit)
            .offset(offset)
        )
    ).scalars()
    return {
        "events": [
            {
                "id": r.id,
                "event_type": r.event_type,
                "event_timestamp": _iso(r.event_timestamp),
                "org_id": r.org_id,
                "subscription_id": r.subscription_id,
                "invoice_id": r.invoice_id,
                "actor_type": r.actor_type,
                "actor_user_id": r.actor_user_id,
                "actor_ip": r.actor_ip,
                "reason": r.reason,
                "description": r.description,
                "data": r.event_data,
            }
            for r in rows
        ],
        "total": int(total),
    }
