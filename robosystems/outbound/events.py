"""Emitting events: called by the features at the point of change, in the transaction of the change.

:func:`emit` (sync ``Session``: the worker, the billing domain) / :func:`emit_async` (the API's ``AsyncSession``)
write the event row (its exact JSON body ``{"type", "timestamp", "data"}``), one ``pending`` delivery per enabled
endpoint of the org subscribed to the type, and — when there is one — the delivery task into the task outbox,
all in the caller's unit of work: a rolled-back change sends nothing, a committed one is delivered even if the
worker is down at that moment.  The event row is written even without a subscriber (``replay`` can send it to an
endpoint added later; pruned after ``OUTBOUND_WEBHOOKS_EVENT_RETENTION_DAYS``).

Every event's payload is built here, from ids and the public fields of the resource (the fields our API shows its
members): the features call one function per event, e.g. ``await outbound.member_added(session, org_id, user_id,
role)``.  ``key`` makes an emission idempotent where its cause can repeat (a replayed provider event, a job that
runs twice): a second event with the same key for the org is not written.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import insert, literal, select, text
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from robosystems.ids import new_id
from robosystems.models import Graph, OrgUser, OutboundDelivery, OutboundEndpoint, OutboundEvent, User
from robosystems.outbound.catalogue import EVENT_TYPES
from robosystems.worker import outbox

log = logging.getLogger("robosystems.outbound")

#: the delivery task (robosystems/outbound/tasks.py); named here for everything that requests it
DELIVER_TASK = "robosystems.outbound.deliver"

#: subscription states in which a graph answers queries read-only (see robosystems.graphs.lifecycle)
READ_ONLY_STATES = frozenset({"unpaid", "paused", "canceled", "expired", "refunded"})


def _iso(value: datetime) -> str:
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return _iso(value)
    if isinstance(value, Decimal):
        return float(value)
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def render(event_type: str, timestamp: datetime, data: Mapping[str, Any]) -> str:
    """The body every attempt sends (and signs) byte for byte."""
    body = {"type": event_type, "timestamp": _iso(timestamp), "data": dict(data)}
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False, default=_json_default)


def emit(
    session: Session,
    org_id: str,
    event_type: str,
    data: Mapping[str, Any],
    *,
    key: str | None = None,
    endpoint_id: str | None = None,
) -> str | None:
    """Record ``event_type`` for ``org_id`` in ``session``'s transaction (see module doc).  ``endpoint_id``: deliver
    to that endpoint only, whatever it subscribes to (``ping``).  Returns the event id (None: ``key`` seen)."""
    if event_type not in EVENT_TYPES:
        raise ValueError(f"unknown outbound event type {event_type!r}")
    now = datetime.now(UTC)
    event_id = new_id("evt")
    stmt = pg_insert(OutboundEvent).values(
        id=event_id, org_id=org_id, type=event_type, body=render(event_type, now, data), dedupe_key=key, created_at=now
    )
    if key is not None:
        stmt = stmt.on_conflict_do_nothing(
            index_elements=[OutboundEvent.org_id, OutboundEvent.dedupe_key], index_where=text("dedupe_key IS NOT NULL")
        )
    if session.execute(stmt.returning(OutboundEvent.id)).scalar_one_or_none() is None:
        return None
    targets = select(OutboundEndpoint.id).where(OutboundEndpoint.org_id == org_id, OutboundEndpoint.enabled)
    if endpoint_id is not None:
        targets = targets.where(OutboundEndpoint.id == endpoint_id)
    else:
        targets = targets.where(OutboundEndpoint.events.any_() == literal(event_type))
    endpoint_ids = list(session.execute(targets).scalars())
    if endpoint_ids:
        session.execute(
            insert(OutboundDelivery),
            [{"id": new_id("whd"), "endpoint_id": e, "event_id": event_id} for e in endpoint_ids],
        )
        outbox.enqueue(session, DELIVER_TASK)
    return event_id


async def emit_async(
    session: AsyncSession,
    org_id: str,
    event_type: str,
    data: Mapping[str, Any],
    *,
    key: str | None = None,
    endpoint_id: str | None = None,
) -> str | None:
    return await session.run_sync(lambda s: emit(s, org_id, event_type, data, key=key, endpoint_id=endpoint_id))


# --- orgs, members, invitations (the API's async unit of work) ----------------------------------------------------


async def _org(session: AsyncSession, org_id: str) -> dict[str, Any]:
    row = (
        await session.execute(
            text("SELECT id, name, org_type, created_at, updated_at FROM orgs WHERE id = :id"),
            {"id": org_id},
        )
    ).one()
    return {
        "id": row.id,
        "name": row.name,
        "org_type": row.org_type,
        "created_at": row.created_at,
        "updated_at": row.updated_at,
    }


async def org_updated(session: AsyncSession, org_id: str, changes: Mapping[str, list[Any]]) -> None:
    """``changes``: field -> [old, new] (as the org audit log records them)."""
    data = {**await _org(session, org_id), "previous_attributes": {k: v[0] for k, v in changes.items()}}
    await emit_async(session, org_id, "org.updated", data)


async def org_deleted(session: AsyncSession, org_id: str, deleted_at: datetime, restorable_until: datetime) -> None:
    data = {**await _org(session, org_id), "deleted_at": deleted_at, "restorable_until": restorable_until}
    await emit_async(session, org_id, "org.deleted", data)


async def _member(session: AsyncSession, org_id: str, user_id: str) -> dict[str, Any]:
    row = (
        await session.execute(
            select(User.id, User.name, User.email, OrgUser.role, OrgUser.joined_at)
            .join(OrgUser, (OrgUser.user_id == User.id) & (OrgUser.org_id == org_id), isouter=True)
            .where(User.id == user_id)
        )
    ).one()
    return {
        "org_id": org_id,
        "user_id": row.id,
        "name": row.name,
        "email": row.email,
        "role": row.role,
        "joined_at": row.joined_at,
    }


async def member_added(session: AsyncSession, org_id: str, user_id: str) -> None:
    await emit_async(session, org_id, "member.added", await _member(session, org_id, user_id))


async def member_removed(session: AsyncSession, org_id: str, user_id: str, *, role: str, reason: str) -> None:
    """``reason``: ``removed`` (by an admin) or ``left``."""
    data = {**await _member(session, org_id, user_id), "role": role, "joined_at": None, "reason": reason}
    await emit_async(session, org_id, "member.removed", data)


async def member_role_changed(session: AsyncSession, org_id: str, user_id: str, *, previous_role: str) -> None:
    data = {**await _member(session, org_id, user_id), "previous_attributes": {"role": previous_role}}
    await emit_async(session, org_id, "member.role_changed", data)


def _invitation(inv: Any) -> dict[str, Any]:
    return {
        "id": inv.id,
        "org_id": inv.org_id,
        "email": inv.email,
        "role": inv.role,
        "status": inv.status,
        "invited_by": inv.invited_by,
        "created_at": inv.created_at,
        "expires_at": inv.expires_at,
    }


async def invitation_created(session: AsyncSession, invitation: Any) -> None:
    """``invitation``: the ``org_invitations`` row."""
    await emit_async(session, invitation.org_id, "invitation.created", _invitation(invitation))


async def invitation_accepted(
    session: AsyncSession, org_id: str, invitation_id: str, user_id: str, *, joined: bool
) -> None:
    """An invitation was used by ``user_id``; ``joined``: it made them a member (``member.added`` as well)."""
    row = (
        await session.execute(
            text(
                "SELECT id, org_id, email, role, status, invited_by, created_at, expires_at, accepted_at "
                "FROM org_invitations WHERE id = :id"
            ),
            {"id": invitation_id},
        )
    ).one()
    data = {**_invitation(row), "accepted_by": user_id, "accepted_at": row.accepted_at}
    await emit_async(session, org_id, "invitation.accepted", data)
    if joined:
        await member_added(session, org_id, user_id)


# --- billing (sync: the state machine and the invoice functions run on a Session) --------------------------------


def _subscription(sub: Any) -> dict[str, Any]:
    return {
        "id": sub.id,
        "org_id": sub.org_id,
        "resource_type": sub.resource_type,
        "resource_id": sub.resource_id,
        "plan_name": sub.plan_name,
        "billing_interval": sub.billing_interval,
        "status": sub.status,
        "base_price_cents": sub.base_price_cents,
        "cancel_at_period_end": bool(sub.cancel_at_period_end),
        "created_at": sub.created_at,
        "started_at": sub.started_at,
        "current_period_start": sub.current_period_start,
        "current_period_end": sub.current_period_end,
        "canceled_at": sub.canceled_at,
        "ends_at": sub.ends_at,
    }


def subscription_created(session: Session, sub: Any) -> None:
    emit(session, sub.org_id, "subscription.created", _subscription(sub), key=f"subscription.created:{sub.id}")


def subscription_transitioned(session: Session, sub: Any, previous_status: str) -> None:
    """After a status change of ``sub`` (``billing_subscriptions`` row): ``subscription.canceled`` or
    ``.updated``, and ``graph.read_only`` when its graph stops being writable."""
    data = {**_subscription(sub), "previous_attributes": {"status": previous_status}}
    emit(session, sub.org_id, "subscription.canceled" if sub.status == "canceled" else "subscription.updated", data)
    if sub.resource_type == "graph" and sub.resource_id and sub.status in READ_ONLY_STATES:
        if previous_status not in READ_ONLY_STATES:
            graph_read_only(session, sub.org_id, sub.resource_id, sub.id, reason=sub.status)


def subscription_cancel_changed(session: Session, sub: Any, previous: bool) -> None:
    """``subscription.updated`` when ``cancel_at_period_end`` changed (a cancellation was scheduled at period end,
    or taken back); ``previous``: the value before."""
    if bool(sub.cancel_at_period_end) != previous:
        data = {**_subscription(sub), "previous_attributes": {"cancel_at_period_end": previous}}
        emit(session, sub.org_id, "subscription.updated", data)


def _invoice(inv: Any) -> dict[str, Any]:
    return {
        "id": inv.id,
        "org_id": inv.org_id,
        "number": inv.invoice_number,
        "status": inv.status,
        "subscription_id": inv.subscription_id,
        "currency": inv.currency,
        "amount_due": inv.total_cents,
        "amount_paid": inv.amount_paid_cents,
        "created_at": inv.created_at,
        "due_date": inv.due_date,
        "paid_at": inv.paid_at,
        "hosted_invoice_url": inv.hosted_invoice_url,
    }


def invoice_changed(session: Session, inv: Any) -> None:
    """After any write of an invoice (``billing_invoices`` row): ``invoice.paid`` once it is paid (once per
    invoice, whichever path — provider event, operator, creation as paid — gets there)."""
    if inv.status == "paid":
        emit(session, inv.org_id, "invoice.paid", _invoice(inv), key=f"invoice.paid:{inv.id}")


def invoice_payment_failed(
    session: Session, inv: Any, provider_invoice: Mapping[str, Any], provider_event_id: str
) -> None:
    """A provider ``invoice.payment_failed`` event for the local invoice ``inv`` (once per provider event)."""
    attempt = provider_invoice.get("attempt_count")
    next_attempt = provider_invoice.get("next_payment_attempt")
    data = {
        **_invoice(inv),
        "attempt_count": attempt if isinstance(attempt, int) else None,
        "next_payment_attempt": (
            datetime.fromtimestamp(next_attempt, UTC) if isinstance(next_attempt, int) and next_attempt > 0 else None
        ),
    }
    emit(session, inv.org_id, "invoice.payment_failed", data, key=f"invoice.payment_failed:{provider_event_id}")


# --- graphs and credits --------------------------------------------------------------------------------------------


def graph_provisioned(session: Session, sub: Any, graph_id: str) -> None:
    row = session.execute(
        select(Graph.graph_name, Graph.graph_tier, Graph.created_at).where(Graph.graph_id == graph_id)
    ).one()
    data = {
        "graph_id": graph_id,
        "org_id": sub.org_id,
        "subscription_id": sub.id,
        "graph_name": row.graph_name,
        "graph_tier": row.graph_tier,
        "plan_name": sub.plan_name,
        "created_at": row.created_at,
    }
    emit(session, sub.org_id, "graph.provisioned", data, key=f"graph.provisioned:{graph_id}")


def graph_provisioning_failed(session: Session, sub: Any, reason: str, *, compensation: str) -> None:
    """``reason`` is the short safe text stored on the subscription; ``compensation``: pending (a refund or credit
    follows) or none."""
    data = {
        "subscription_id": sub.id,
        "org_id": sub.org_id,
        "plan_name": sub.plan_name,
        "reason": reason,
        "compensation": compensation,
    }
    emit(session, sub.org_id, "graph.provisioning_failed", data)


def graph_read_only(
    session: Session, org_id: str, graph_id: str, subscription_id: str | None, *, reason: str, since: str = ""
) -> str | None:
    """``reason``: the subscription status that froze the graph (``past_due``: beyond the grace period)."""
    data = {"graph_id": graph_id, "org_id": org_id, "subscription_id": subscription_id, "reason": reason}
    key = f"graph.read_only:{graph_id}:{subscription_id}:{reason}:{since}"
    return emit(session, org_id, "graph.read_only", data, key=key)


def graph_deleted(session: Session, org_id: str | None, graph_id: str, subscription_id: str | None) -> None:
    if org_id is None:  # shared repositories belong to no org: nobody to tell
        return
    data = {"graph_id": graph_id, "org_id": org_id, "subscription_id": subscription_id}
    emit(session, org_id, "graph.deleted", data, key=f"graph.deleted:{graph_id}")


def credits_low(
    session: Session, graph_id: str, *, balance: Decimal, threshold: Decimal, monthly_allocation: Decimal
) -> None:
    """A debit just took the graph's balance below its low threshold (billing decides the crossing:
    ``billing.credits.low_threshold``); a refill and a new fall tell again."""
    org_id = session.execute(select(Graph.org_id).where(Graph.graph_id == graph_id)).scalar_one_or_none()
    if org_id is None:
        return
    data = {
        "graph_id": graph_id,
        "org_id": org_id,
        "balance": balance,
        "threshold": threshold,
        "monthly_allocation": monthly_allocation,
    }
    emit(session, org_id, "credits.low", data)
