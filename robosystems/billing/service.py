"""Billing endpoints' use cases (beyond checkout): the org's billing customer, payment method, portal,
subscriptions (list, get, cancel) and invoices (list, upcoming).

Org access is resolved by the router (``require(Action…)``: live membership, 404 for outsiders, 403 for
a role below the action).  Reads are Core/ORM selects that never write; provider calls run in a thread
(:func:`run_in_threadpool`) with the database transaction open, and the local record is written only
after the provider accepted.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.concurrency import run_in_threadpool

from robosystems.billing import subscriptions as subs
from robosystems.billing.audit import Actor, record_for_actor
from robosystems.billing.customers import (
    customer_idempotency_key,
    get_customer_async,
    get_or_create_customer_async,
    record_payment_method_async,
)
from robosystems.billing.plan_switch import unit_price
from robosystems.billing.plans import get_catalog
from robosystems.billing.schemas import (
    BillingCustomer,
    GraphSubscriptionResponse,
    Invoice,
    InvoiceLineItem,
    InvoicesResponse,
    PaymentMethod,
    ScheduledChangeView,
    UpcomingInvoice,
    UpdatePaymentMethodResponse,
)
from robosystems.config import Settings
from robosystems.errors import Conflict, NotFound, ServiceUnavailable
from robosystems.models import Org
from robosystems.models.billing import BillingInvoice, BillingInvoiceLineItem, BillingSubscription
from robosystems.models.billing_depth import BillingPlanChange
from robosystems.orgs.access import OrgAccess
from robosystems.orgs.policy import Action
from robosystems.outbound import events as outbound
from robosystems.payments.base import PaymentProvider
from robosystems.payments.local import add_month

log = logging.getLogger("robosystems.billing.service")

#: states in which the provider still bills the subscription (cancel = at period end)
BILLED_STATES = frozenset({"active", "past_due", "unpaid", "paused"})
ENDED_STATES = frozenset({"canceled", "expired", "refunded"})


def _iso(value: datetime | None) -> str | None:
    return value.astimezone(UTC).isoformat() if value else None


async def _ensure_customer(session: AsyncSession, provider: PaymentProvider, access: OrgAccess) -> tuple[str, str]:
    """(org_id, provider customer id) -- the customer is created once (row lock + provider idempotency key)."""
    actor = Actor.user(access.user_id)

    async def create_remote(org_id: str) -> str:
        return await run_in_threadpool(
            lambda: provider.create_customer(
                org_id=org_id,
                name=access.org_name,
                email=access.principal.email,
                idempotency_key=customer_idempotency_key(org_id),
            )
        )

    customer = await get_or_create_customer_async(
        session, provider.name, access.org_id, create_remote, billing_email=access.principal.email, actor=actor
    )
    assert customer.stripe_customer_id is not None  # set by create_remote
    return customer.org_id, customer.stripe_customer_id


# --- customer ----------------------------------------------------------------------------------------------------


def _payment_methods(pm_id: str | None, summary: dict[str, Any] | None) -> list[PaymentMethod]:
    if not pm_id:
        return []
    summary = summary or {}
    return [
        PaymentMethod(
            id=pm_id,
            type=str(summary.get("type") or "card"),
            is_default=True,
            brand=summary.get("brand"),
            last4=summary.get("last4"),
            exp_month=summary.get("exp_month"),
            exp_year=summary.get("exp_year"),
        )
    ]


async def get_billing_customer(session: AsyncSession, access: OrgAccess) -> BillingCustomer:
    """The org's billing customer (read only: an org without one gets the defaults, nothing is created).
    Payment methods and the provider's customer id only for roles with ``VIEW_PAYMENT_DETAILS``."""
    customer = await get_customer_async(session, access.org_id)
    details = access.can(Action.VIEW_PAYMENT_DETAILS)
    if customer is None:
        created = (await session.execute(select(Org.created_at).where(Org.id == access.org_id))).scalar_one()
        return BillingCustomer(
            org_id=access.org_id,
            has_payment_method=False,
            invoice_billing_enabled=False,
            payment_methods=[],
            created_at=_iso(created) or "",
        )
    return BillingCustomer(
        org_id=customer.org_id,
        has_payment_method=customer.has_payment_method,
        invoice_billing_enabled=customer.invoice_billing_enabled,
        payment_methods=_payment_methods(customer.default_payment_method_id, customer.payment_method_summary)
        if details
        else [],
        created_at=_iso(customer.created_at) or "",
        stripe_customer_id=customer.stripe_customer_id if details else None,
        provider=customer.provider if details else None,
        payment_terms=customer.payment_terms if details else None,
    )


async def update_payment_method(
    session: AsyncSession, provider: PaymentProvider, access: OrgAccess, payment_method_id: str
) -> UpdatePaymentMethodResponse:
    """Attach the method at the provider (default for invoices), then record it locally (+ audit)."""
    org_id, customer_id = await _ensure_customer(session, provider, access)
    info = await run_in_threadpool(
        lambda: provider.attach_payment_method(
            customer_id=customer_id,
            payment_method_id=payment_method_id,
            idempotency_key=f"payment_method:{org_id}:{payment_method_id}",
        )
    )
    await record_payment_method_async(
        session, org_id, payment_method_id=info.id, summary=info.summary(), actor=Actor.user(access.user_id)
    )
    return UpdatePaymentMethodResponse(
        message="Payment method updated",
        payment_method=_payment_methods(info.id, info.summary())[0],
    )


# --- subscriptions -----------------------------------------------------------------------------------------------


def subscription_view(
    sub: BillingSubscription, scheduled: BillingPlanChange | None = None
) -> GraphSubscriptionResponse:
    return GraphSubscriptionResponse(
        id=sub.id,
        resource_type=sub.resource_type,
        resource_id=sub.resource_id or "",
        plan_name=sub.plan_name,
        billing_interval=sub.billing_interval,
        status=sub.status,
        base_price_cents=sub.base_price_cents,
        created_at=_iso(sub.created_at) or "",
        current_period_start=_iso(sub.current_period_start),
        current_period_end=_iso(sub.current_period_end),
        started_at=_iso(sub.started_at),
        canceled_at=_iso(sub.canceled_at),
        org_id=sub.org_id,
        cancel_at_period_end=sub.cancel_at_period_end,
        ends_at=_iso(sub.ends_at),
        failure_reason=sub.failure_reason,
        quantity=sub.quantity,
        scheduled_change=None
        if scheduled is None
        else ScheduledChangeView(
            change_id=scheduled.id,
            plan_name=scheduled.to_plan,
            quantity=scheduled.to_quantity,
            effective_at=_iso(scheduled.effective_at),
        ),
    )


async def _scheduled(session: AsyncSession, sub_ids: list[str]) -> dict[str, BillingPlanChange]:
    if not sub_ids:
        return {}
    rows = (
        await session.execute(
            select(BillingPlanChange).where(
                BillingPlanChange.subscription_id.in_(sub_ids), BillingPlanChange.status == "scheduled"
            )
        )
    ).scalars()
    return {row.subscription_id: row for row in rows}


async def subscription_view_async(session: AsyncSession, sub: BillingSubscription) -> GraphSubscriptionResponse:
    """The subscription with its scheduled change (if any)."""
    return subscription_view(sub, (await _scheduled(session, [sub.id])).get(sub.id))


async def list_subscriptions(
    session: AsyncSession, org_id: str, *, limit: int, offset: int
) -> list[GraphSubscriptionResponse]:
    rows = (
        await session.execute(
            select(BillingSubscription)
            .where(BillingSubscription.org_id == org_id)
            .order_by(BillingSubscription.created_at.desc(), BillingSubscription.id.desc())
            .limit(limit)
            .offset(offset)
        )
    ).scalars()
    subs_list = list(rows)
    scheduled = await _scheduled(session, [sub.id for sub in subs_list])
    return [subscription_view(sub, scheduled.get(sub.id)) for sub in subs_list]


async def _subscription(session: AsyncSession, org_id: str, sub_id: str, *, lock: bool = False) -> BillingSubscription:
    stmt = select(BillingSubscription).where(BillingSubscription.id == sub_id, BillingSubscription.org_id == org_id)
    if lock:
        stmt = stmt.with_for_update().execution_options(populate_existing=True)
    sub = (await session.execute(stmt)).scalar_one_or_none()
    if sub is None:
        raise NotFound("Subscription not found", code="subscription_not_found")
    return sub


async def get_subscription(session: AsyncSession, org_id: str, sub_id: str) -> GraphSubscriptionResponse:
    return await subscription_view_async(session, await _subscription(session, org_id, sub_id))


async def cancel_subscription(
    session: AsyncSession, provider: PaymentProvider, access: OrgAccess, sub_id: str
) -> GraphSubscriptionResponse:
    """Cancel: a checkout not paid yet ends now (its provider session is expired); a billed subscription
    is canceled AT THE PROVIDER at the end of the current period (it stays usable until then and becomes
    ``canceled`` by ``customer.subscription.deleted``); one the provider does not bill (billing disabled)
    ends now.  Already canceled / ended / scheduled -> 409 ``already_canceled``."""
    actor = Actor.user(access.user_id)
    sub = await _subscription(session, access.org_id, sub_id, lock=True)
    if sub.status in ENDED_STATES or sub.cancel_at_period_end:
        raise Conflict(
            "This subscription is already canceled",
            code="already_canceled",
            extra={"status": sub.status, "cancel_at_period_end": sub.cancel_at_period_end},
        )
    if sub.status == "pending_payment":
        if sub.provider_checkout_session_id and sub.payment_provider == provider.name:
            await run_in_threadpool(provider.expire_checkout_session, sub.provider_checkout_session_id)
        sub = await subs.transition_async(session, sub.id, "canceled", actor=actor, reason="checkout canceled by user")
        return subscription_view(sub)
    if sub.status not in BILLED_STATES:
        raise Conflict(
            f"A subscription in state {sub.status} can't be canceled",
            code="subscription_not_cancelable",
            extra={"status": sub.status},
        )
    if not sub.provider_subscription_id:
        sub = await subs.transition_async(session, sub.id, "canceled", actor=actor, reason="canceled by user")
        return subscription_view(sub)
    if sub.payment_provider != provider.name:
        raise ServiceUnavailable(
            f"This subscription is billed by {sub.payment_provider}, which is not configured",
            code="payment_provider_mismatch",
        )
    provider_id = sub.provider_subscription_id
    scheduled = (await _scheduled(session, [sub.id])).get(sub.id)
    if scheduled is not None:  # a subscription that ends makes no scheduled change (and a schedule blocks the cancel)
        if scheduled.provider_schedule_id:
            schedule_id = scheduled.provider_schedule_id
            await run_in_threadpool(lambda: provider.cancel_scheduled_change(provider_id, schedule_id))
        scheduled.status, scheduled.updated_at = "canceled", datetime.now(UTC)
    result = await run_in_threadpool(
        lambda: provider.cancel_subscription_at_period_end(provider_id, idempotency_key=f"cancel:{sub.id}")
    )
    now = datetime.now(UTC)
    sub.cancel_at_period_end = True
    sub.canceled_at = sub.canceled_at or result.canceled_at or now
    sub.ends_at = result.current_period_end or sub.current_period_end
    sub.updated_at = now
    await session.flush()
    await session.run_sync(lambda s: outbound.subscription_cancel_changed(s, sub, False))
    await session.run_sync(
        lambda s: record_for_actor(
            s,
            "subscription_cancel_requested",
            actor,
            org_id=sub.org_id,
            subscription_id=sub.id,
            reason="canceled by user",
            description="Cancellation at period end requested at the provider",
            data={"provider_subscription_id": provider_id, "ends_at": _iso(sub.ends_at)},
        )
    )
    return subscription_view(sub)


# --- invoices ----------------------------------------------------------------------------------------------------


async def list_invoices(session: AsyncSession, org_id: str, *, limit: int, offset: int) -> InvoicesResponse:
    total = int((await session.execute(select(func.count()).where(BillingInvoice.org_id == org_id))).scalar_one())
    invoices = list(
        (
            await session.execute(
                select(BillingInvoice)
                .where(BillingInvoice.org_id == org_id)
                .order_by(BillingInvoice.created_at.desc(), BillingInvoice.invoice_number.desc())
                .limit(limit)
                .offset(offset)
            )
        ).scalars()
    )
    lines: dict[str, list[InvoiceLineItem]] = {inv.id: [] for inv in invoices}
    if invoices:
        for li in (
            await session.execute(
                select(BillingInvoiceLineItem)
                .where(BillingInvoiceLineItem.invoice_id.in_(list(lines)))
                .order_by(BillingInvoiceLineItem.created_at, BillingInvoiceLineItem.id)
            )
        ).scalars():
            lines[li.invoice_id].append(
                InvoiceLineItem(
                    description=li.description,
                    amount=li.amount_cents,
                    quantity=li.quantity,
                    period_start=_iso(li.period_start),
                    period_end=_iso(li.period_end),
                )
            )
    return InvoicesResponse(
        invoices=[
            Invoice(
                id=inv.id,
                status=inv.status,
                amount_due=inv.total_cents,
                amount_paid=inv.amount_paid_cents,
                currency=inv.currency,
                created=_iso(inv.created_at) or "",
                line_items=lines[inv.id],
                number=inv.invoice_number,
                due_date=_iso(inv.due_date),
                paid_at=_iso(inv.paid_at),
                invoice_pdf=inv.invoice_pdf,
                hosted_invoice_url=inv.hosted_invoice_url,
                subscription_id=inv.subscription_id,
            )
            for inv in invoices
        ],
        total_count=total,
        has_more=offset + len(invoices) < total,
    )


async def upcoming_invoice(session: AsyncSession, settings: Settings, org_id: str) -> UpcomingInvoice | None:
    """The next renewal of the org's billed subscriptions that are not ending: one line per subscription (at the
    price of a scheduled change, which starts with it); the period is the span of the renewed periods, due at the
    earliest renewal.  None when nothing renews."""
    rows = list(
        (
            await session.execute(
                select(BillingSubscription)
                .where(
                    BillingSubscription.org_id == org_id,
                    BillingSubscription.status.in_(("active", "past_due")),
                    BillingSubscription.cancel_at_period_end.is_(False),
                    BillingSubscription.current_period_end.is_not(None),
                )
                .order_by(BillingSubscription.current_period_end, BillingSubscription.id)
            )
        ).scalars()
    )
    if not rows:
        return None
    items: list[InvoiceLineItem] = []
    starts: list[datetime] = []
    ends: list[datetime] = []
    scheduled = await _scheduled(session, [sub.id for sub in rows])
    catalog = get_catalog(settings.billing_plans_file)
    for sub in rows:
        assert sub.current_period_end is not None
        plan_name, quantity, amount = sub.plan_name, sub.quantity, sub.base_price_cents
        if (change := scheduled.get(sub.id)) is not None:
            plan_name, quantity = change.to_plan, change.to_quantity
            amount = unit_price(catalog, sub.resource_type, plan_name) * quantity
        start = sub.current_period_end
        months = 12 if sub.billing_interval in ("annual", "yearly", "year") else 1
        end = datetime.fromtimestamp(add_month(int(start.timestamp()), months), UTC)
        starts.append(start)
        ends.append(end)
        items.append(
            InvoiceLineItem(
                description=f"{plan_name} ({sub.resource_type} {sub.resource_id or 'pending'})",
                amount=amount,
                quantity=quantity,
                period_start=_iso(start),
                period_end=_iso(end),
            )
        )
    return UpcomingInvoice(
        amount_due=sum(item.amount for item in items),
        currency="usd",
        period_start=_iso(min(starts)) or "",
        period_end=_iso(max(ends)) or "",
        line_items=items,
        subscription_id=rows[0].id if len(rows) == 1 else None,
        due_date=_iso(min(starts)),
    )
