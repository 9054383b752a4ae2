"""The subscription state machine: the ONLY place that changes ``billing_subscriptions.status``.

States (CHECK ``ck_billing_subscriptions_status``) and allowed moves (design.md "Subscription states")::

    pending_payment -> provisioning | expired | canceled
    provisioning    -> active | failed
    active          -> past_due | canceled | unpaid | paused
    past_due        -> active | canceled | unpaid
    unpaid          -> active | canceled
    paused          -> active | canceled
    failed          -> refunded | provisioning   (admin retry)

:func:`transition` locks the row (``FOR UPDATE``), refuses an illegal move with :class:`IllegalTransition`
(409 ``illegal_transition``, logged), ignores a provider event older than the newest one applied
(``last_event_at`` never goes backwards), treats "already in that state" as a no-op, and writes one billing audit
row per applied transition.  Functions take a sync ``Session`` (worker); ``*_async`` variants run the same code on
an ``AsyncSession`` via ``run_sync``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import or_, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from robosystems.billing.audit import Actor, record_for_actor
from robosystems.errors import Conflict, NotFound, Unprocessable
from robosystems.ids import new_id
from robosystems.models.billing import LIVE_SUBSCRIPTION_STATUSES, SUBSCRIPTION_STATUSES, BillingSubscription
from robosystems.outbound import events as outbound
from robosystems.worker import outbox

log = logging.getLogger("robosystems.billing.subscriptions")

#: the graph provisioning task (registered in robosystems.graphs.tasks), named here for everything that requests it
PROVISION_GRAPH_TASK = "robosystems.graphs.provision_graph"

STATES: tuple[str, ...] = SUBSCRIPTION_STATUSES
LIVE_STATES: tuple[str, ...] = LIVE_SUBSCRIPTION_STATUSES
TERMINAL_STATES: frozenset[str] = frozenset({"canceled", "refunded", "expired"})
INITIAL_STATES: frozenset[str] = frozenset({"pending_payment", "provisioning"})

TRANSITIONS: dict[str, frozenset[str]] = {
    "pending_payment": frozenset({"provisioning", "expired", "canceled"}),
    "provisioning": frozenset({"active", "failed"}),
    "active": frozenset({"past_due", "canceled", "unpaid", "paused"}),
    "past_due": frozenset({"active", "canceled", "unpaid"}),
    "unpaid": frozenset({"active", "canceled"}),
    "paused": frozenset({"active", "canceled"}),
    "failed": frozenset({"refunded", "provisioning"}),
    "canceled": frozenset(),
    "refunded": frozenset(),
    "expired": frozenset(),
}

#: audit event_type written for a transition INTO each state
AUDIT_EVENTS: dict[str, str] = {
    "pending_payment": "subscription_created",
    "provisioning": "subscription_provisioning",
    "active": "subscription_activated",
    "past_due": "subscription_past_due",
    "unpaid": "subscription_unpaid",
    "paused": "subscription_paused",
    "canceled": "subscription_canceled",
    "failed": "subscription_failed",
    "refunded": "subscription_refunded",
    "expired": "subscription_expired",
}

#: Stripe ``subscription.status`` -> our state
PROVIDER_STATUS_MAP: dict[str, str] = {
    "incomplete": "pending_payment",
    "incomplete_expired": "expired",
    "trialing": "active",
    "active": "active",
    "past_due": "past_due",
    "unpaid": "unpaid",
    "paused": "paused",
    "canceled": "canceled",
}


class IllegalTransition(Conflict):
    status_code, code, detail = 409, "illegal_transition", "This subscription can't change to that state"


def can_transition(from_state: str, to_state: str) -> bool:
    return to_state in TRANSITIONS.get(from_state, frozenset())


def from_provider_status(provider_status: str | None) -> str | None:
    """Map a Stripe subscription status to our state (``None`` for an unknown status)."""
    if not provider_status:
        return None
    return PROVIDER_STATUS_MAP.get(provider_status.strip().lower())


def _now() -> datetime:
    return datetime.now(UTC)


def _aware(value: datetime | None) -> datetime | None:
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


def lock_subscription(session: Session, sub_id: str) -> BillingSubscription:
    """The subscription row, locked ``FOR UPDATE`` (fresh from the database); 404 ``subscription_not_found``."""
    sub = session.execute(
        select(BillingSubscription)
        .where(BillingSubscription.id == sub_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    ).scalar_one_or_none()
    if sub is None:
        raise NotFound("Subscription not found", code="subscription_not_found")
    return sub


def is_stale(sub: BillingSubscription, event_at: datetime | None) -> bool:
    """True when a provider event created at ``event_at`` is older than the newest one already applied."""
    event_at = _aware(event_at)
    return event_at is not None and sub.last_event_at is not None and event_at < sub.last_event_at


@dataclass
class TransitionResult:
    subscription: BillingSubscription
    changed: bool  # False: no-op (already there) or stale event
    stale: bool = False


def apply_transition(
    session: Session,
    sub_id: str,
    to_state: str,
    *,
    actor: Actor | str | None = None,
    reason: str | None = None,
    event_at: datetime | None = None,
    data: dict[str, Any] | None = None,
) -> TransitionResult:
    """:func:`transition` that also says whether anything changed (stale events and no-ops don't)."""
    if to_state not in TRANSITIONS:
        raise Unprocessable(f"Unknown subscription state {to_state!r}", code="unknown_status")
    event_at = _aware(event_at)
    sub = lock_subscription(session, sub_id)
    if is_stale(sub, event_at):
        log.info(
            "subscription %s: stale event (%s < last applied %s) ignored, stays %s",
            sub.id,
            event_at,
            sub.last_event_at,
            sub.status,
        )
        return TransitionResult(sub, changed=False, stale=True)
    if sub.status == to_state:
        if event_at is not None and (sub.last_event_at is None or event_at > sub.last_event_at):
            sub.last_event_at = event_at
            session.flush()
        return TransitionResult(sub, changed=False)
    if not can_transition(sub.status, to_state):
        log.warning(
            "subscription %s: illegal transition %s -> %s refused (actor=%s, reason=%s)",
            sub.id,
            sub.status,
            to_state,
            Actor.coerce(actor),
            reason,
        )
        raise IllegalTransition(
            f"Subscription is {sub.status} and can't become {to_state}",
            extra={"current_status": sub.status, "requested_status": to_state},
        )
    from_state = sub.status
    when = event_at or _now()
    sub.status = to_state
    sub.updated_at = _now()
    if event_at is not None:
        sub.last_event_at = event_at
    if to_state == "active":
        sub.started_at = sub.started_at or when
        sub.failure_reason = None
    elif to_state == "provisioning":
        sub.failure_reason = None
    elif to_state == "canceled":
        sub.canceled_at = sub.canceled_at or when
        sub.ends_at = sub.ends_at or when
    elif to_state == "failed":
        sub.failure_reason = (reason or "provisioning failed")[:200]
    elif to_state == "expired":
        sub.ends_at = sub.ends_at or when
    session.flush()
    record_for_actor(
        session,
        AUDIT_EVENTS[to_state],
        actor,
        org_id=sub.org_id,
        subscription_id=sub.id,
        reason=reason,
        description=f"Subscription {from_state} -> {to_state}",
        data={"from": from_state, "to": to_state, **(data or {})},
    )
    outbound.subscription_transitioned(session, sub, from_state)
    return TransitionResult(sub, changed=True)


def confirm_payment(
    session: Session, sub_id: str, *, actor: Actor | str | None, reason: str, data: dict[str, Any]
) -> bool:
    """Payment confirmed for a ``pending_payment`` subscription (locked by the caller): -> ``provisioning`` and
    the provisioning task enqueued through the outbox in the same transaction, so exactly once per transition
    (the provider's event or an operator's mark-paid, whichever comes first).  False when nothing changed."""
    result = apply_transition(session, sub_id, "provisioning", actor=actor, reason=reason, data=data)
    if result.changed and result.subscription.resource_type == "graph":
        outbox.enqueue(session, PROVISION_GRAPH_TASK, [sub_id])
    elif result.changed:  # seats: nothing to build, the paid subscription is live at once
        apply_transition(session, sub_id, "active", actor=actor, reason=reason, data=data)
    return result.changed


def transition(
    session: Session,
    sub_id: str,
    to_state: str,
    *,
    actor: Actor | str | None = None,
    reason: str | None = None,
    event_at: datetime | None = None,
    data: dict[str, Any] | None = None,
) -> BillingSubscription:
    """Move the subscription to ``to_state`` (see module doc); returns the (locked) row."""
    return apply_transition(
        session, sub_id, to_state, actor=actor, reason=reason, event_at=event_at, data=data
    ).subscription


async def transition_async(session: AsyncSession, sub_id: str, to_state: str, **kwargs: Any) -> BillingSubscription:
    return await session.run_sync(lambda s: transition(s, sub_id, to_state, **kwargs))


async def apply_transition_async(session: AsyncSession, sub_id: str, to_state: str, **kwargs: Any) -> TransitionResult:
    return await session.run_sync(lambda s: apply_transition(s, sub_id, to_state, **kwargs))


# --- creation -------------------------------------------------------------------------------------------------


def create_subscription(
    session: Session,
    *,
    org_id: str,
    plan_name: str,
    base_price_cents: int,
    resource_type: str = "graph",
    resource_id: str | None = None,
    resource_config: dict[str, Any] | None = None,
    status: str = "pending_payment",
    payment_provider: str = "stripe",
    billing_interval: str = "monthly",
    idempotency_key: str | None = None,
    request_fingerprint: str | None = None,
    actor: Actor | str | None = None,
    metadata: dict[str, Any] | None = None,
    quantity: int = 1,
) -> tuple[BillingSubscription, bool]:
    """Insert a subscription in ``pending_payment`` (or ``provisioning`` when billing is disabled).

    With ``idempotency_key`` the row is unique per (org, key): a repeat (also concurrent) returns the existing row
    and ``created=False``; the same key with a different ``request_fingerprint`` -> 409 ``idempotency_key_reused``.
    """
    if status not in INITIAL_STATES:
        raise Unprocessable(f"A subscription can't start as {status!r}", code="unknown_status")
    sub_metadata = dict(metadata or {})
    if resource_config is not None:
        sub_metadata["resource_config"] = resource_config
    values: dict[str, Any] = {
        "id": new_id("bsub"),
        "org_id": org_id,
        "resource_type": resource_type,
        "resource_id": resource_id,
        "plan_name": plan_name,
        "billing_interval": billing_interval,
        "base_price_cents": base_price_cents,
        "quantity": quantity,
        "status": status,
        "payment_provider": payment_provider,
        "idempotency_key": idempotency_key,
        "request_fingerprint": request_fingerprint,
        "subscription_metadata": sub_metadata,
    }
    stmt = insert(BillingSubscription).values(**values)
    if idempotency_key is not None:
        stmt = stmt.on_conflict_do_nothing(index_elements=["org_id", "idempotency_key"])
    new_id_value = session.execute(stmt.returning(BillingSubscription.id)).scalar_one_or_none()
    if new_id_value is None:  # same (org, idempotency key) already exists
        existing = session.execute(
            select(BillingSubscription).where(
                BillingSubscription.org_id == org_id, BillingSubscription.idempotency_key == idempotency_key
            )
        ).scalar_one()
        if (
            request_fingerprint is not None
            and existing.request_fingerprint is not None
            and existing.request_fingerprint != request_fingerprint
        ):
            raise Conflict(
                "This Idempotency-Key was already used with a different request", code="idempotency_key_reused"
            )
        return existing, False
    sub = session.execute(select(BillingSubscription).where(BillingSubscription.id == new_id_value)).scalar_one()
    record_for_actor(
        session,
        "subscription_created",
        actor,
        org_id=org_id,
        subscription_id=sub.id,
        description=f"Subscription created ({plan_name}, {status})",
        data={"plan_name": plan_name, "resource_type": resource_type, "status": status},
    )
    outbound.subscription_created(session, sub)
    return sub, True


async def create_subscription_async(session: AsyncSession, **kwargs: Any) -> tuple[BillingSubscription, bool]:
    return await session.run_sync(lambda s: create_subscription(s, **kwargs))


def find_by_provider_ref(
    session: Session,
    *,
    provider_subscription_id: str | None = None,
    checkout_session_id: str | None = None,
    for_update: bool = False,
) -> BillingSubscription | None:
    """The subscription a provider object refers to (subscription id, legacy stripe_subscription_id, or checkout
    session id)."""
    conditions = []
    if provider_subscription_id:
        conditions.append(BillingSubscription.provider_subscription_id == provider_subscription_id)
        conditions.append(BillingSubscription.stripe_subscription_id == provider_subscription_id)
    if checkout_session_id:
        conditions.append(BillingSubscription.provider_checkout_session_id == checkout_session_id)
    if not conditions:
        return None
    stmt = select(BillingSubscription).where(or_(*conditions)).order_by(BillingSubscription.created_at).limit(1)
    if for_update:
        stmt = stmt.with_for_update().execution_options(populate_existing=True)
    return session.execute(stmt).scalar_one_or_none()
