"""Plan and seat changes of a subscription: preview, change, call off a scheduled change.

``POST …/subscription/{id}/change/preview`` asks the provider what the change costs now (Stripe's invoice preview
with the proration date pinned; the local provider runs the same formula to the second) and answers
``{amount_due_now, currency, lines, next_invoice_total, effective_at, proration_date, …}``.

``POST …/change`` (owner/admin) then:

* **upgrade** (a higher price per period; default ``when: immediate``): the proration is invoiced and charged to
  the method on file (``pending_if_incomplete``).  The plan, the graph's tier, limits and credit allocation switch
  ONLY when that invoice is paid — at once when the provider reports it paid (200), else when ``invoice.paid``
  arrives (202, the change ``pending_payment``).  A failed charge changes nothing (the provider's pending update is
  discarded) and answers 402 ``payment_failed`` with the reason; the failed attempt stays in the audit log.
* **downgrade** (default and only ``when: period_end``): scheduled at the provider for the end of the period and
  shown on the subscription as ``scheduled_change``; ``DELETE …/scheduled-change`` calls it off.  A downgrade whose
  limits are below current usage (graph storage, members/seats, graphs) is 409 ``below_current_usage`` naming the
  limit.
* Two concurrent changes of one subscription: the subscription row is taken ``FOR UPDATE NOWAIT`` and one open
  change per subscription is a partial unique index: one wins, the other gets 409 ``change_in_progress``.

Subscriptions nobody bills at a provider (``BILLING_ENABLED=false``) change at once, free.  Every step is audited.
The webhook side (:mod:`robosystems.billing.provider_sync`) applies changes through the same
:func:`robosystems.billing.plan_switch.switch_plan`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.concurrency import run_in_threadpool

from robosystems.billing import entitlements
from robosystems.billing.audit import Actor, record_for_actor
from robosystems.billing.plan_switch import SEATS, open_change, switch_plan
from robosystems.billing.plans import Catalog, get_catalog
from robosystems.billing.schemas import (
    ChangePreviewLine,
    ChangePreviewResponse,
    GraphSubscriptionResponse,
    PlanChangeRequest,
    PlanChangeResponse,
    PlanChangeView,
)
from robosystems.billing.service import subscription_view_async
from robosystems.billing.storage import graph_size_bytes
from robosystems.config import Settings
from robosystems.errors import AppError, Conflict, NotFound, ServiceUnavailable, Unprocessable
from robosystems.ids import new_id
from robosystems.models import BillingSubscription
from robosystems.models.billing_depth import BillingPlanChange
from robosystems.orgs.access import OrgAccess
from robosystems.payments.base import PaymentProvider, SubscriptionChange
from robosystems.payments.local_delivery import deliver_after_commit
from robosystems.services import AppServices

log = logging.getLogger("robosystems.billing.plan_changes")

CLOCK_SKEW_SECONDS = 5


class PaymentFailed(AppError):
    status_code, code, detail = 402, "payment_failed", "The payment for this change failed"


def _now() -> datetime:
    return datetime.now(UTC)


def _iso(value: datetime | None) -> str | None:
    return value.astimezone(UTC).isoformat() if value else None


@dataclass(frozen=True)
class Plan:
    """What the subscription would be on after the change."""

    name: str
    display: str
    unit: int  # cents per unit and period
    quantity: int
    interval: str  # month | year
    price_id: str | None

    @property
    def total(self) -> int:
        return self.unit * self.quantity


@dataclass(frozen=True)
class Decision:
    target: Plan
    direction: str  # upgrade | downgrade
    when: str  # immediate | period_end
    proration_date: int


def _target(catalog: Catalog, sub: BillingSubscription, body: PlanChangeRequest, provider: str) -> Plan:
    name = body.plan_name or sub.plan_name
    if sub.resource_type == SEATS:
        seat = catalog.seat_plan(name)
        quantity = body.quantity or sub.quantity
        if not seat.min_seats <= quantity <= seat.max_seats:
            raise Unprocessable(
                f"The {seat.name} plan sells {seat.min_seats}..{seat.max_seats} seats", code="invalid_quantity"
            )
        plan = Plan(
            seat.name,
            seat.display_name,
            seat.price_cents_per_seat,
            quantity,
            "year" if seat.billing_interval == "annual" else "month",
            seat.provider_price_ids.get("stripe") if provider == "stripe" else None,
        )
        interval = seat.billing_interval
    else:
        graph = catalog.plan(name)
        if body.quantity not in (None, 1):
            raise Unprocessable("A graph plan is bought one graph at a time", code="quantity_not_supported")
        plan = Plan(
            graph.name,
            graph.display_name,
            graph.price_cents,
            1,
            "year" if graph.billing_interval == "annual" else "month",
            graph.provider_price_ids.get("stripe") if provider == "stripe" else None,
        )
        interval = graph.billing_interval
    if body.billing_interval is not None and body.billing_interval != interval:
        raise Unprocessable(f"The {plan.name} plan is billed {interval}", code="unsupported_billing_interval")
    return plan


def _decide(settings: Settings, sub: BillingSubscription, target: Plan, body: PlanChangeRequest) -> Decision:
    if (target.name, target.quantity) == (sub.plan_name, sub.quantity):
        raise Conflict("The subscription is already on this plan", code="no_change")
    direction = "downgrade" if target.total < sub.base_price_cents else "upgrade"
    when = body.when or ("immediate" if direction == "upgrade" else "period_end")
    if direction == "downgrade" and when == "immediate":
        raise Unprocessable("A downgrade takes effect at the end of the period", code="downgrade_at_period_end")
    now = int(_now().timestamp())
    proration_date = body.proration_date if body.proration_date is not None else now
    start = int(sub.current_period_start.timestamp()) if sub.current_period_start else 0
    too_old = now - proration_date > settings.proration_preview_max_age_seconds
    if proration_date > now + CLOCK_SKEW_SECONDS or proration_date < start or too_old:
        raise Unprocessable(
            "proration_date must be a time of the current period, at most "
            f"{settings.proration_preview_max_age_seconds} s ago (pass the preview's)",
            code="invalid_proration_date",
        )
    return Decision(target, direction, when, min(proration_date, now))


def _billed(sub: BillingSubscription, provider: PaymentProvider) -> bool:
    """True when a provider bills the subscription (else it changes at once, free)."""
    if not sub.provider_subscription_id:
        return False
    if sub.payment_provider != provider.name:
        raise ServiceUnavailable(
            f"This subscription is billed by {sub.payment_provider}, which is not configured",
            code="payment_provider_mismatch",
        )
    return True


async def _subscription(session: AsyncSession, org_id: str, sub_id: str, *, lock: bool) -> BillingSubscription:
    stmt = select(BillingSubscription).where(BillingSubscription.id == sub_id, BillingSubscription.org_id == org_id)
    if lock:
        # NO KEY UPDATE: conflicts with another change (and the webhook worker's FOR UPDATE), not with the
        # foreign-key checks of the audit rows a refused change writes in its own transaction
        stmt = stmt.with_for_update(nowait=True, key_share=True).execution_options(populate_existing=True)
    try:
        sub = (await session.execute(stmt)).scalar_one_or_none()
    except DBAPIError as exc:
        if getattr(exc.orig, "sqlstate", None) == "55P03":  # lock_not_available: another change holds it
            raise _in_progress() from None
        raise
    if sub is None:
        raise NotFound("Subscription not found", code="subscription_not_found")
    if sub.resource_type not in ("graph", SEATS):
        raise Conflict("This subscription can't change plans", code="subscription_not_changeable")
    if sub.status != "active" or sub.cancel_at_period_end:
        raise Conflict(
            f"A subscription that is {'ending' if sub.cancel_at_period_end else sub.status} can't change plans",
            code="subscription_not_changeable",
            extra={"status": sub.status, "cancel_at_period_end": sub.cancel_at_period_end},
        )
    return sub


def _in_progress(change_id: str | None = None) -> Conflict:
    return Conflict(
        "Another change of this subscription is in progress",
        code="change_in_progress",
        extra={"change_id": change_id} if change_id else None,
    )


async def _graph_size(settings: Settings, graph_id: str) -> int:
    return await run_in_threadpool(lambda: graph_size_bytes(settings, graph_id))


async def check_usage(session: AsyncSession, settings: Settings, sub: BillingSubscription, target: Plan) -> None:
    """Refuse a change whose limits are below what the org uses now (409 ``below_current_usage``, the limit named)."""
    catalog = get_catalog(settings.billing_plans_file)
    ent = await entitlements.entitlements(session, sub.org_id, settings=settings)

    def below(key: str, current: int, limit: int) -> Conflict:
        return Conflict(
            f"The {target.name} plan allows {limit} for {key}, the organization uses {current}",
            code="below_current_usage",
            extra={"limit": key, "current": current, "new_limit": limit},
        )

    if sub.resource_type == "graph":
        if target.name not in ent.value("tiers"):
            raise Unprocessable(
                f"The {target.name} plan is not available to this organization", code="plan_not_allowed"
            )
        if sub.resource_id:
            overrides = await session.run_sync(lambda s: entitlements.org_overrides_sync(s, sub.org_id))
            limit = entitlements.graph_entitlements(sub.resource_id, catalog.plan(target.name), overrides)
            used = await _graph_size(settings, sub.resource_id)
            if used > limit.max_storage_bytes:
                raise below("max_storage_bytes", used, limit.max_storage_bytes)
        return
    members = await session.run_sync(lambda s: entitlements.seats_in_use_sync(s, sub.org_id))
    if ent.limits["max_members"].source != "override" and target.quantity < members:
        raise below("max_members", members, target.quantity)
    graphs_limit = catalog.seat_plan(target.name).entitlements.get("max_graphs")
    if isinstance(graphs_limit, int) and graphs_limit != -1 and ent.limits["max_graphs"].source != "override":
        graphs = len(ent.graphs)
        if graphs > graphs_limit:
            raise below("max_graphs", graphs, graphs_limit)


def _provider_change(sub: BillingSubscription, decision: Decision, currency: str) -> SubscriptionChange:
    assert sub.provider_subscription_id is not None
    t = decision.target
    return SubscriptionChange(
        subscription_id=sub.provider_subscription_id,
        plan_name=t.name,
        amount_cents=t.unit,
        quantity=t.quantity,
        currency=currency,
        interval=t.interval,
        proration_date=decision.proration_date,
        idempotency_key=f"change:{sub.id}:{t.name}:{t.quantity}:{decision.when}:{decision.proration_date}",
        price_id=t.price_id,
    )


# --- preview ----------------------------------------------------------------------------------------------------


async def preview(
    session: AsyncSession,
    settings: Settings,
    provider: PaymentProvider,
    access: OrgAccess,
    sub_id: str,
    body: PlanChangeRequest,
) -> ChangePreviewResponse:
    catalog = get_catalog(settings.billing_plans_file)
    sub = await _subscription(session, access.org_id, sub_id, lock=False)
    decision = _decide(settings, sub, _target(catalog, sub, body, provider.name), body)
    await check_usage(session, settings, sub, decision.target)
    common = {
        "currency": catalog.currency,
        "next_invoice_total": decision.target.total,
        "proration_date": decision.proration_date,
        "when": decision.when,
        "direction": decision.direction,
        "plan_name": decision.target.name,
        "quantity": decision.target.quantity,
    }
    if decision.when == "period_end" or not _billed(sub, provider):
        at_end = decision.when == "period_end" and sub.current_period_end is not None
        effective = sub.current_period_end if at_end else datetime.fromtimestamp(decision.proration_date, UTC)
        return ChangePreviewResponse(amount_due_now=0, lines=[], effective_at=_iso(effective), **common)
    change = _provider_change(sub, decision, catalog.currency)
    result = await run_in_threadpool(provider.preview_subscription_change, change)
    return ChangePreviewResponse(
        **{**common, "currency": result.currency, "next_invoice_total": result.next_invoice_total},
        amount_due_now=result.amount_due_now,
        lines=[ChangePreviewLine(description=li.description, amount=li.amount) for li in result.lines],
        effective_at=_iso(datetime.fromtimestamp(decision.proration_date, UTC)),
    )


# --- change -----------------------------------------------------------------------------------------------------


def change_view(change: BillingPlanChange) -> PlanChangeView:
    return PlanChangeView(
        id=change.id,
        status=change.status,
        when=change.timing,
        direction=change.direction,
        from_plan=change.from_plan,
        to_plan=change.to_plan,
        from_quantity=change.from_quantity,
        to_quantity=change.to_quantity,
        amount_due_now=change.amount_due_cents,
        currency=change.currency,
        effective_at=_iso(change.effective_at),
        provider_invoice_id=change.provider_invoice_id,
        failure_reason=change.failure_reason,
        created_at=_iso(change.created_at or _now()) or "",
        applied_at=_iso(change.applied_at),
    )


async def change(
    session: AsyncSession,
    services: AppServices,
    provider: PaymentProvider,
    access: OrgAccess,
    sub_id: str,
    body: PlanChangeRequest,
) -> tuple[int, PlanChangeResponse]:
    settings = services.settings
    catalog = get_catalog(settings.billing_plans_file)
    actor = Actor.user(access.user_id)
    sub = await _subscription(session, access.org_id, sub_id, lock=True)
    existing = await session.run_sync(lambda s: open_change(s, sub.id))
    if existing is not None:
        raise _in_progress(existing.id)
    decision = _decide(settings, sub, _target(catalog, sub, body, provider.name), body)
    await check_usage(session, settings, sub, decision.target)
    t = decision.target
    row = BillingPlanChange(
        id=new_id("bchg"),
        org_id=sub.org_id,
        subscription_id=sub.id,
        from_plan=sub.plan_name,
        to_plan=t.name,
        from_quantity=sub.quantity,
        to_quantity=t.quantity,
        direction=decision.direction,
        timing=decision.when,
        status="scheduled" if decision.when == "period_end" else "pending_payment",
        source="api",
        proration_date=datetime.fromtimestamp(decision.proration_date, UTC),
        currency=catalog.currency,
        requested_by=access.user_id,
        created_at=_now(),
    )
    try:
        async with session.begin_nested():
            session.add(row)
            await session.flush()
    except IntegrityError:  # the one-open-change index: a concurrent change won
        raise _in_progress() from None
    billed = _billed(sub, provider)
    if decision.when == "period_end" and billed and sub.current_period_end is not None:
        scheduled = await run_in_threadpool(
            provider.schedule_subscription_change, _provider_change(sub, decision, catalog.currency)
        )
        row.provider_schedule_id, row.effective_at = (
            scheduled.schedule_id,
            scheduled.effective_at or sub.current_period_end,
        )
        await _audit(session, "plan_change_scheduled", actor, sub, row)
        return 200, await _answer(session, sub, row)
    if not billed:  # nobody to pay: the change applies now
        await session.run_sync(
            lambda s: switch_plan(
                s, catalog, sub, t.name, t.quantity, actor=actor, reason="plan change (not billed)", change=row
            )
        )
        row.effective_at = _now()
        return 200, await _answer(session, sub, row)
    result = await run_in_threadpool(provider.change_subscription, _provider_change(sub, decision, catalog.currency))
    assert sub.provider_subscription_id is not None
    deliver_after_commit(session, settings, provider, "subscriptions", sub.provider_subscription_id)
    row.provider_invoice_id, row.amount_due_cents = result.invoice_id, result.amount_due
    row.effective_at = datetime.fromtimestamp(decision.proration_date, UTC)
    if result.status == "failed":
        failed_id = await _record_failure(services, sub, row, result.failure_reason or "payment failed", actor)
        raise PaymentFailed(
            f"The change was not made: {result.failure_reason or 'the payment failed'}",
            extra={"change_id": failed_id, "amount_due": result.amount_due, "reason": result.failure_reason},
        )
    await _audit(session, "plan_change_requested", actor, sub, row)
    if result.status == "paid":
        await session.run_sync(
            lambda s: switch_plan(
                s, catalog, sub, t.name, t.quantity, actor=actor, reason="plan change paid", change=row
            )
        )
        return 200, await _answer(session, sub, row)
    return 202, await _answer(session, sub, row)  # the invoice awaits payment: invoice.paid applies it


async def _answer(session: AsyncSession, sub: BillingSubscription, row: BillingPlanChange) -> PlanChangeResponse:
    await session.flush()
    return PlanChangeResponse(subscription=await subscription_view_async(session, sub), change=change_view(row))


async def _audit(
    session: AsyncSession, event: str, actor: Actor, sub: BillingSubscription, row: BillingPlanChange
) -> None:
    await session.run_sync(
        lambda s: record_for_actor(
            s,
            event,
            actor,
            org_id=sub.org_id,
            subscription_id=sub.id,
            description=f"{row.direction} {row.from_plan} x{row.from_quantity} -> {row.to_plan} x{row.to_quantity}"
            f" ({row.timing})",
            data={
                "change_id": row.id,
                "to_plan": row.to_plan,
                "to_quantity": row.to_quantity,
                "amount_due_cents": row.amount_due_cents,
                "provider_invoice_id": row.provider_invoice_id,
                "effective_at": _iso(row.effective_at),
            },
        )
    )


async def _record_failure(
    services: AppServices, sub: BillingSubscription, row: BillingPlanChange, reason: str, actor: Actor
) -> str:
    """The failed attempt survives the refused request: its own short transaction (change row + audit row)."""
    async with services.sessionmaker() as own, own.begin():
        values = {c.key: getattr(row, c.key) for c in BillingPlanChange.__table__.columns}
        failed = BillingPlanChange(
            **{**values, "id": new_id("bchg"), "status": "failed", "failure_reason": reason[:200]}
        )
        own.add(failed)
        await own.flush()
        await _audit(own, "plan_change_failed", actor, sub, failed)
    return failed.id


# --- call off a scheduled change --------------------------------------------------------------------------------


async def cancel_scheduled(
    session: AsyncSession, settings: Settings, provider: PaymentProvider, access: OrgAccess, sub_id: str
) -> GraphSubscriptionResponse:
    sub = await _subscription(session, access.org_id, sub_id, lock=True)
    row = await session.run_sync(lambda s: open_change(s, sub.id))
    if row is None or row.status != "scheduled":
        raise NotFound("This subscription has no scheduled change", code="no_scheduled_change")
    if row.provider_schedule_id and sub.provider_subscription_id:
        provider_sub, schedule = sub.provider_subscription_id, row.provider_schedule_id
        await run_in_threadpool(lambda: provider.cancel_scheduled_change(provider_sub, schedule))
    row.status, row.updated_at = "canceled", _now()
    await _audit(session, "plan_change_canceled", Actor.user(access.user_id), sub, row)
    await session.flush()
    return await subscription_view_async(session, sub)
