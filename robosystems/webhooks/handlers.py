"""What each Stripe event does to our billing state — by calling the billing domain functions.

Every handler runs inside the event's transaction (:func:`robosystems.webhooks.service.process_event`), after
the advisory lock on the event's provider object, and locks the local subscription row (``FOR UPDATE``) before
it decides anything.  Handlers are idempotent: a redelivered or replayed event changes nothing twice
(transitions to the current state are no-ops, invoices upsert by provider id, credit grants are keyed by invoice).

Ordering: ``customer.subscription.*`` events and the status effects of invoice events never go backwards — an
event created before ``billing_subscriptions.last_event_at`` is ignored (``note='stale'``).  Checkout events are
not subject to it (their only move, pending_payment -> provisioning, is monotonic).

An event about a provider subscription we can't match yet (it arrived before ``checkout.session.completed``
linked the ids) is stored ``ignored`` with ``note='unknown_subscription'`` and re-enqueued as soon as a checkout
event links that subscription, so arrival order never loses one.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select, text
from sqlalchemy.orm import Session

from robosystems.billing import credit_packs, customers, invoices, provider_sync
from robosystems.billing import subscriptions as subs
from robosystems.billing.audit import SYSTEM, record_billing_event
from robosystems.billing.plans import get_catalog
from robosystems.models.billing import BillingCustomer, BillingInvoice, BillingSubscription
from robosystems.outbound import events as outbound
from robosystems.worker import outbox
from robosystems.worker.context import WorkerContext
from robosystems.worker.retry import RetryLater, backoff_seconds

log = logging.getLogger("robosystems.webhooks.handlers")

PROCESS_EVENT_TASK = "robosystems.webhooks.process_event"
PAID_CHECKOUT = frozenset({"paid", "no_payment_required"})


@dataclass(frozen=True)
class Outcome:
    status: str  # processed | ignored
    note: str | None = None


def processed(note: str | None = None) -> Outcome:
    return Outcome("processed", note)


def ignored(note: str) -> Outcome:
    return Outcome("ignored", note)


# --- small helpers -----------------------------------------------------------------------------------------------


def _mapping(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _ref(value: Any) -> str | None:
    if isinstance(value, str) and value:
        return value
    if isinstance(value, dict) and isinstance(value.get("id"), str) and value["id"]:
        return str(value["id"])
    return None


def _epoch(value: Any) -> datetime | None:
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    try:
        return datetime.fromtimestamp(value, UTC)
    except (OverflowError, OSError, ValueError):
        return None


def _lock_by_id(session: Session, sub_id: str) -> BillingSubscription | None:
    return session.execute(
        select(BillingSubscription)
        .where(BillingSubscription.id == sub_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    ).scalar_one_or_none()


def find_subscription(
    session: Session,
    *,
    provider_subscription_id: str | None = None,
    checkout_session_id: str | None = None,
    metadata: dict[str, Any] | None = None,
    client_reference_id: str | None = None,
) -> BillingSubscription | None:
    """The local subscription (locked) a provider object refers to: by provider ids, else by the subscription id we
    put into the checkout session / subscription metadata (``client_reference_id``, ``metadata.subscription_id``)."""
    sub = subs.find_by_provider_ref(
        session,
        provider_subscription_id=provider_subscription_id,
        checkout_session_id=checkout_session_id,
        for_update=True,
    )
    if sub is not None:
        return sub
    meta = _mapping(metadata)
    for candidate in (meta.get("subscription_id"), meta.get("robosystems_subscription_id"), client_reference_id):
        if isinstance(candidate, str) and candidate.startswith("bsub_"):
            sub = _lock_by_id(session, candidate)
            if sub is None:
                continue
            if provider_subscription_id and sub.provider_subscription_id not in (None, provider_subscription_id):
                log.warning(
                    "subscription %s is linked to %s, not %s: not matched",
                    sub.id,
                    sub.provider_subscription_id,
                    provider_subscription_id,
                )
                return None
            return sub
    return None


def _org_for_customer(session: Session, provider_customer_id: str | None) -> str | None:
    if not provider_customer_id:
        return None
    org_id = session.execute(
        select(BillingCustomer.org_id).where(BillingCustomer.stripe_customer_id == provider_customer_id)
    ).scalar_one_or_none()
    return None if org_id is None else str(org_id)


def requeue_deferred(session: Session, subject_id: str, *, exclude_event_id: str) -> int:
    """Events of ``subject_id`` ignored because its subscription was unknown: back to ``received`` + enqueued."""
    ids = list(
        session.execute(
            text(
                "UPDATE webhook_events SET status = 'received', note = NULL, attempts = 0, updated_at = now() "
                "WHERE subject_id = :subject AND status = 'ignored' AND note = 'unknown_subscription' "
                "AND id <> :exclude RETURNING id"
            ),
            {"subject": subject_id, "exclude": exclude_event_id},
        ).scalars()
    )
    for event_id in ids:
        outbox.enqueue(session, PROCESS_EVENT_TASK, [event_id])
    if ids:
        log.info("re-enqueued %s deferred events of %s", len(ids), subject_id)
    return len(ids)


def link_provider_ids(
    session: Session,
    sub: BillingSubscription,
    event_id: str,
    *,
    provider_subscription_id: str | None,
    provider_customer_id: str | None,
) -> None:
    """Record the provider's ids on the subscription (and the customer id on the org's billing customer)."""
    newly_linked = False
    if provider_subscription_id and sub.provider_subscription_id is None:
        taken = session.execute(
            select(BillingSubscription.id).where(
                BillingSubscription.provider_subscription_id == provider_subscription_id,
                BillingSubscription.id != sub.id,
            )
        ).scalar_one_or_none()
        if taken is None:
            sub.provider_subscription_id = provider_subscription_id
            newly_linked = True
        else:
            log.warning("provider subscription %s already linked to %s", provider_subscription_id, taken)
    if provider_customer_id and sub.provider_customer_id is None:
        sub.provider_customer_id = provider_customer_id
        # first time we see the provider customer of this subscription: record it on the org's customer too
        customer = session.execute(
            select(BillingCustomer).where(BillingCustomer.org_id == sub.org_id).with_for_update()
        ).scalar_one_or_none()
        if customer is not None and customer.stripe_customer_id is None:
            owner = _org_for_customer(session, provider_customer_id)
            if owner is None:
                customer.stripe_customer_id = provider_customer_id
    session.flush()
    if newly_linked and provider_subscription_id:
        requeue_deferred(session, provider_subscription_id, exclude_event_id=event_id)


def apply_status(
    session: Session, sub: BillingSubscription, target: str | None, ev: Any, *, settings_backoff: float
) -> str | None:
    """Move ``sub`` towards the provider's ``target`` state for event ``ev`` (not stale: checked by the caller).

    * already there -> only ``last_event_at`` moves;
    * pending_payment/provisioning and the provider says active -> unchanged (checkout and provisioning own
      those moves), ``last_event_at`` moves;
    * provisioning and the provider says canceled/past_due/… -> deferred (:class:`RetryLater`) until provisioning
      has finished;
    * a legal transition -> applied (audited by the billing domain);
    * an illegal one -> refused and logged, ``last_event_at`` moves (the provider's newer state was seen).
    Returns a note for the event row.
    """
    event_at: datetime = ev.created
    session.flush()
    if target is None or target == sub.status:
        subs.apply_transition(session, sub.id, sub.status, actor=SYSTEM, event_at=event_at)
        return None
    if sub.status in ("pending_payment", "provisioning") and target in ("active", "pending_payment"):
        _bump(sub, event_at)
        return f"provider_{target}_while_{sub.status}"
    if sub.status == "provisioning":
        raise RetryLater(settings_backoff, reason=f"subscription is provisioning; provider status {target} deferred")
    if subs.can_transition(sub.status, target):
        subs.apply_transition(
            session,
            sub.id,
            target,
            actor=SYSTEM,
            reason=f"stripe {ev.type}",
            event_at=event_at,
            data={"event_id": ev.id},
        )
        return None
    log.warning("subscription %s: provider moved to %s while %s: refused (%s)", sub.id, target, sub.status, ev.id)
    record_billing_event(
        session,
        "subscription_transition_refused",
        org_id=sub.org_id,
        subscription_id=sub.id,
        reason=f"stripe {ev.type}",
        data={"from": sub.status, "to": target, "event_id": ev.id},
        description=f"Provider status {target} refused while {sub.status}",
    )
    _bump(sub, event_at)
    return f"refused_{sub.status}_to_{target}"


def _bump(sub: BillingSubscription, event_at: datetime) -> None:
    if sub.last_event_at is None or event_at > sub.last_event_at:
        sub.last_event_at = event_at


def grant_invoice_credits(
    session: Session, ctx: WorkerContext, sub: BillingSubscription, invoice: BillingInvoice
) -> str:
    """The credits of a paid period invoice for the subscription's graph: the allocation RESETS (once per invoice).
    Before the graph exists the provisioning task grants them (same key), so here it is only done for a provisioned
    graph."""
    return provider_sync.reset_credits(session, get_catalog(ctx.settings.billing_plans_file), sub, invoice)


# --- handlers ----------------------------------------------------------------------------------------------------

Handler = Callable[[Session, WorkerContext, Any], Outcome]


def _checkout_subscription(session: Session, ev: Any) -> tuple[BillingSubscription | None, dict[str, Any]]:
    cs = ev.object
    sub = find_subscription(
        session,
        provider_subscription_id=_ref(cs.get("subscription")),
        checkout_session_id=_ref(cs.get("id")),
        metadata=_mapping(cs.get("metadata")),
        client_reference_id=cs.get("client_reference_id") if isinstance(cs.get("client_reference_id"), str) else None,
    )
    if sub is not None:
        link_provider_ids(
            session,
            sub,
            ev.id,
            provider_subscription_id=_ref(cs.get("subscription")),
            provider_customer_id=_ref(cs.get("customer")),
        )
    return sub, cs


def start_provisioning(session: Session, sub: BillingSubscription, ev: Any, data: dict[str, Any]) -> None:
    """Payment confirmed by the provider for a ``pending_payment`` subscription (see subs.confirm_payment)."""
    subs.confirm_payment(
        session, sub.id, actor=SYSTEM, reason=f"payment confirmed (stripe {ev.type})", data={"event_id": ev.id, **data}
    )


def checkout_completed(session: Session, ctx: WorkerContext, ev: Any) -> Outcome:
    """``checkout.session.completed`` / ``async_payment_succeeded``: paid -> provisioning + provisioning task; a paid
    one-time (``mode: payment``) session grants its credit pack."""
    if ev.object.get("mode") == "payment":
        note = credit_packs.checkout_paid(session, ev.object, ev.id)
        return ignored(note) if note == "unknown_credit_purchase" else processed(note)
    if ev.object.get("mode") not in (None, "subscription"):
        return ignored("not_a_subscription_checkout")
    sub, cs = _checkout_subscription(session, ev)
    if sub is None:
        return ignored("unknown_subscription")
    payment_status = cs.get("payment_status")
    if ev.type == "checkout.session.completed" and payment_status not in PAID_CHECKOUT:
        return processed(f"awaiting_payment_{payment_status or 'unknown'}")
    if sub.status == "pending_payment":
        start_provisioning(session, sub, ev, {"checkout_session_id": cs.get("id")})
        return processed("provisioning_requested")
    if sub.status in ("canceled", "expired", "refunded"):
        record_billing_event(
            session,
            "payment_after_close",
            org_id=sub.org_id,
            subscription_id=sub.id,
            reason=f"stripe {ev.type}",
            data={"event_id": ev.id, "status": sub.status, "checkout_session_id": cs.get("id")},
            description=f"Payment confirmed for a {sub.status} subscription: needs a refund or a retry",
        )
        log.error("subscription %s is %s but payment was confirmed by %s", sub.id, sub.status, ev.id)
        return processed(f"needs_attention_paid_while_{sub.status}")
    return processed(f"already_{sub.status}")


def checkout_ended(session: Session, ctx: WorkerContext, ev: Any) -> Outcome:
    """``checkout.session.async_payment_failed`` -> canceled; ``checkout.session.expired`` -> expired."""
    if ev.object.get("mode") == "payment":
        status = "expired" if ev.type == "checkout.session.expired" else "canceled"
        note = credit_packs.checkout_closed(session, ev.object, status)
        return ignored(note) if note == "unknown_credit_purchase" else processed(note)
    sub, cs = _checkout_subscription(session, ev)
    if sub is None:
        return ignored("unknown_subscription")
    target = "expired" if ev.type == "checkout.session.expired" else "canceled"
    if sub.status != "pending_payment":
        return processed(f"already_{sub.status}")
    reason = "checkout expired" if target == "expired" else "payment failed"
    subs.apply_transition(
        session,
        sub.id,
        target,
        actor=SYSTEM,
        reason=f"{reason} (stripe {ev.type})",
        data={"event_id": ev.id, "checkout_session_id": cs.get("id")},
    )
    if target == "canceled":
        sub.failure_reason = "payment_failed"
    return processed()


def subscription_changed(session: Session, ctx: WorkerContext, ev: Any) -> Outcome:
    """``customer.subscription.created|updated|deleted``: status, periods, cancellation at period end."""
    obj = ev.object
    provider_id = _ref(obj.get("id"))
    sub = find_subscription(session, provider_subscription_id=provider_id, metadata=_mapping(obj.get("metadata")))
    if sub is None:
        return ignored("unknown_subscription")
    if subs.is_stale(sub, ev.created):
        return ignored("stale")
    link_provider_ids(
        session, sub, ev.id, provider_subscription_id=provider_id, provider_customer_id=_ref(obj.get("customer"))
    )
    items = _mapping(obj.get("items")).get("data")
    items = items if isinstance(items, list) else []
    starts = [s for s in (_epoch(_mapping(i).get("current_period_start")) for i in items) if s]
    ends = [e for e in (_epoch(_mapping(i).get("current_period_end")) for i in items) if e]
    if not starts and not ends:  # API versions before 2025-03-31 kept the period on the subscription
        starts = [s for s in (_epoch(obj.get("current_period_start")),) if s]
        ends = [e for e in (_epoch(obj.get("current_period_end")),) if e]
    if starts:
        sub.current_period_start = min(starts)
    if ends:
        sub.current_period_end = max(ends)
    cancel_scheduled_before = sub.cancel_at_period_end
    sub.cancel_at_period_end = bool(obj.get("cancel_at_period_end"))
    canceled_at = _epoch(obj.get("canceled_at"))
    if canceled_at and (ev.type == "customer.subscription.deleted" or sub.cancel_at_period_end):
        sub.canceled_at = canceled_at
    ended = _epoch(obj.get("ended_at")) or (_epoch(obj.get("cancel_at")) if sub.cancel_at_period_end else None)
    if ended:
        sub.ends_at = ended
    target = "canceled" if ev.type == "customer.subscription.deleted" else subs.from_provider_status(obj.get("status"))
    note = apply_status(
        session, sub, target, ev, settings_backoff=backoff_seconds(ctx.settings, max(1, getattr(ev, "attempts", 1)))
    )
    if ev.type != "customer.subscription.deleted":
        catalog = get_catalog(ctx.settings.billing_plans_file)
        plan_note = provider_sync.on_subscription(session, catalog, sub, obj, ev.type, ev.created)
        note = ",".join(n for n in (note, plan_note) if n) or None
    outbound.subscription_cancel_changed(session, sub, bool(cancel_scheduled_before))
    return processed(note)


def with_all_lines(ctx: WorkerContext, inv: dict[str, Any]) -> dict[str, Any]:
    """An event embeds the first page of an invoice's lines (``lines.has_more``): fetch every line from the
    provider then, so the local invoice is complete (a provider error is retried like any other)."""
    lines = _mapping(inv.get("lines"))
    if lines.get("has_more") is not True or not isinstance(inv.get("id"), str):
        return inv
    from robosystems.payments.factory import get_provider

    every = get_provider(ctx.settings).invoice_lines(inv["id"])
    return {**inv, "lines": {**lines, "data": every, "has_more": False}}


def invoice_changed(session: Session, ctx: WorkerContext, ev: Any) -> Outcome:
    """``invoice.finalized|paid|payment_succeeded|payment_failed``: local invoice upserted; credits once per paid
    invoice; ``past_due`` on a failed payment, back to ``active`` on a paid one."""
    inv = ev.object
    provider_sub = invoices.provider_subscription_ref(inv)
    sub: BillingSubscription | None = None
    if provider_sub:
        details = _mapping(_mapping(inv.get("parent")).get("subscription_details"))
        sub = find_subscription(
            session, provider_subscription_id=provider_sub, metadata=_mapping(details.get("metadata"))
        )
        if sub is None:
            return ignored("unknown_subscription")
        link_provider_ids(
            session, sub, ev.id, provider_subscription_id=provider_sub, provider_customer_id=_ref(inv.get("customer"))
        )
        org_id = sub.org_id
    else:
        found = _org_for_customer(session, _ref(inv.get("customer")))
        if found is None:
            return ignored("unknown_customer")
        org_id = found
    local = invoices.upsert_from_provider(session, org_id, with_all_lines(ctx, inv), actor=SYSTEM)
    notes: list[str] = []
    if sub is None:
        return processed("invoice_without_subscription")
    stale = subs.is_stale(sub, ev.created)
    catalog = get_catalog(ctx.settings.billing_plans_file)
    if inv.get("billing_reason") == provider_sync.UPDATE_REASON and ev.type != "invoice.finalized":
        # the proration invoice of a plan / seat change: it applies the change, never moves the status
        if ev.type in ("invoice.paid", "invoice.payment_succeeded", "invoice.payment_failed"):
            notes.append(provider_sync.on_update_invoice(session, catalog, sub, inv, ev.type, ev.created))
    elif ev.type in ("invoice.paid", "invoice.payment_succeeded") and local.status == "paid":
        if sub.status == "pending_payment" and sub.provider_checkout_session_id is None:
            # billed without checkout (method on file / invoice): this payment is the confirmation
            start_provisioning(session, sub, ev, {"invoice_id": local.id})
            notes.append("provisioning_requested")
        notes.append(provider_sync.on_period_invoice_paid(session, catalog, sub, local, inv, ev.type, ev.created))
        if sub.status in ("past_due", "unpaid") and not stale:
            notes.append(apply_status(session, sub, "active", ev, settings_backoff=0) or "reactivated")
    elif ev.type == "invoice.payment_failed" and sub.status == "active" and not stale:
        notes.append(apply_status(session, sub, "past_due", ev, settings_backoff=0) or "past_due")
    if ev.type == "invoice.payment_failed":
        outbound.invoice_payment_failed(session, local, inv, ev.id)
    if stale:
        notes.append("status_stale")
    return processed(",".join(n for n in notes if n) or None)


def payment_method_attached(session: Session, ctx: WorkerContext, ev: Any) -> Outcome:
    """``payment_method.attached``: the org's billing customer has a payment method (the first one becomes the
    default we show)."""
    pm = ev.object
    org_id = _org_for_customer(session, _ref(pm.get("customer")))
    if org_id is None:
        return ignored("unknown_customer")
    customer = session.execute(
        select(BillingCustomer).where(BillingCustomer.org_id == org_id).with_for_update()
    ).scalar_one()
    pm_id = _ref(pm.get("id"))
    if pm_id is None:
        return ignored("no_payment_method_id")
    if customer.has_payment_method and customer.default_payment_method_id:
        return processed("already_has_default_payment_method")
    card = _mapping(pm.get("card"))
    customers.record_payment_method(
        session,
        org_id,
        payment_method_id=pm_id,
        summary={k: card.get(k) for k in ("brand", "last4", "exp_month", "exp_year") if k in card},
        actor=SYSTEM,
    )
    return processed()


def customer_updated(session: Session, ctx: WorkerContext, ev: Any) -> Outcome:
    """``customer.updated``: the default payment method changed at the provider (e.g. in its portal)."""
    obj = ev.object
    org_id = _org_for_customer(session, _ref(obj.get("id")))
    if org_id is None:
        return ignored("unknown_customer")
    pm_id = _ref(_mapping(obj.get("invoice_settings")).get("default_payment_method"))
    customer = session.execute(
        select(BillingCustomer).where(BillingCustomer.org_id == org_id).with_for_update()
    ).scalar_one()
    if pm_id is None or pm_id == customer.default_payment_method_id:
        return processed("default_payment_method_unchanged")
    from robosystems.payments.factory import get_provider

    info = get_provider(ctx.settings).retrieve_payment_method(pm_id)
    customers.record_payment_method(session, org_id, payment_method_id=info.id, summary=info.summary(), actor=SYSTEM)
    return processed("default_payment_method_changed")


HANDLERS: dict[str, Handler] = {
    "customer.updated": customer_updated,
    "invoice.voided": invoice_changed,
    "checkout.session.completed": checkout_completed,
    "checkout.session.async_payment_succeeded": checkout_completed,
    "checkout.session.async_payment_failed": checkout_ended,
    "checkout.session.expired": checkout_ended,
    "customer.subscription.created": subscription_changed,
    "customer.subscription.updated": subscription_changed,
    "customer.subscription.deleted": subscription_changed,
    "invoice.finalized": invoice_changed,
    "invoice.paid": invoice_changed,
    "invoice.payment_succeeded": invoice_changed,
    "invoice.payment_failed": invoice_changed,
    "payment_method.attached": payment_method_attached,
}


def handle(session: Session, ctx: WorkerContext, ev: Any) -> Outcome:
    handler = HANDLERS.get(ev.type)
    if handler is None:
        return ignored("unhandled_type")
    return handler(session, ctx, ev)
