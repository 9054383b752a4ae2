"""Endpoint use cases: register, list, read, change, remove, rotate the secret, send a test, list deliveries, retry
one, replay a period.  Functions take the request's unit of work and never commit; access (org admins and owners,
strangers 404) is decided by the router's ``OrgFor(Action.MANAGE_WEBHOOKS)``, and every endpoint is looked up
within that org (another org's endpoint id answers 404).

* The signing secret is shown when the endpoint is created and when it is rotated, never in a read.  Rotation keeps
  the previous secret signing beside the new one for ``OUTBOUND_WEBHOOKS_SECRET_OVERLAP_HOURS`` (two signatures in
  ``webhook-signature``); a second rotation inside that window drops the oldest.
* Endpoints per org are capped by the ``max_webhook_endpoints`` entitlement (:func:`max_endpoints`), counted under
  the org row lock.
* A URL is checked against the SSRF policy (:mod:`robosystems.outbound.guard`) when set; deliveries check the
  address again at every connection.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any, cast

from sqlalchemy import CursorResult, and_, delete, func, insert, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession

from robosystems.billing import entitlements
from robosystems.config import Settings
from robosystems.errors import AppError, Conflict, NotFound, Unprocessable
from robosystems.ids import new_id
from robosystems.models import OutboundAttempt, OutboundDelivery, OutboundEndpoint, OutboundEvent
from robosystems.orgs.access import OrgAccess
from robosystems.orgs.audit import OrgEvent, record_org_event
from robosystems.orgs.service import lock_org_row
from robosystems.outbound.events import DELIVER_TASK, emit_async
from robosystems.outbound.guard import Policy, check_url
from robosystems.outbound.signing import new_secret
from robosystems.worker import outbox

ATTEMPTS_SHOWN = 10

_PUBLIC = (
    OutboundEndpoint.id,
    OutboundEndpoint.org_id,
    OutboundEndpoint.url,
    OutboundEndpoint.events,
    OutboundEndpoint.description,
    OutboundEndpoint.enabled,
    OutboundEndpoint.disabled_reason,
    OutboundEndpoint.disabled_at,
    OutboundEndpoint.previous_secret_expires_at,
    OutboundEndpoint.created_at,
    OutboundEndpoint.updated_at,
)


class EndpointLimitReached(AppError):
    status_code, code, detail = (
        403,
        "webhook_endpoint_limit_reached",
        "The organization has the maximum number of webhook endpoints",
    )


def endpoint_not_found() -> NotFound:
    return NotFound("Webhook endpoint not found", code="webhook_endpoint_not_found")


def endpoint_disabled() -> Conflict:
    return Conflict("The webhook endpoint is disabled; enable it first", code="webhook_endpoint_disabled")


async def max_endpoints(session: AsyncSession, settings: Settings, org_id: str) -> int | None:
    """The org's endpoint limit: its ``max_webhook_endpoints`` entitlement (plans, admin overrides, default
    ``ORG_MAX_WEBHOOK_ENDPOINTS``); ``None`` = unlimited."""
    entry = (await entitlements.entitlements(session, org_id, settings=settings)).limits["max_webhook_endpoints"]
    return None if entry.unlimited else int(entry.value)


def _out(row: Any) -> dict[str, Any]:
    return {column.key: getattr(row, column.key) for column in _PUBLIC}


async def _load(session: AsyncSession, org_id: str, endpoint_id: str, *, lock: bool = False) -> Any:
    stmt = select(*_PUBLIC).where(OutboundEndpoint.id == endpoint_id, OutboundEndpoint.org_id == org_id)
    if lock:
        stmt = stmt.with_for_update()
    row = (await session.execute(stmt)).one_or_none()
    if row is None:
        raise endpoint_not_found()
    return row


async def _audit(session: AsyncSession, access: OrgAccess, event: OrgEvent, details: dict[str, Any]) -> None:
    await record_org_event(session, access.org_id, event, actor_user_id=access.user_id, details=details)


# --- endpoints -----------------------------------------------------------------------------------------------------


async def create_endpoint(
    session: AsyncSession,
    settings: Settings,
    access: OrgAccess,
    *,
    url: str,
    events: list[str],
    description: str | None,
) -> dict[str, Any]:
    await check_url(url, Policy.from_settings(settings))
    await lock_org_row(session, access.org_id)  # serializes creations: the limit holds under concurrency
    limit = await max_endpoints(session, settings, access.org_id)
    existing = (
        await session.execute(
            select(func.count()).select_from(OutboundEndpoint).where(OutboundEndpoint.org_id == access.org_id)
        )
    ).scalar_one()
    if limit is not None and existing >= limit:
        raise EndpointLimitReached(
            f"The organization has {existing} webhook endpoints (limit {limit})", extra={"limit": limit}
        )
    secret = new_secret()
    row = (
        await session.execute(
            insert(OutboundEndpoint)
            .values(
                id=new_id("whep"),
                org_id=access.org_id,
                url=url,
                events=events,
                description=description,
                secret=secret,
                created_by=access.user_id,
            )
            .returning(*_PUBLIC)
        )
    ).one()
    await _audit(
        session, access, OrgEvent.WEBHOOK_ENDPOINT_CREATED, {"endpoint_id": row.id, "url": url, "events": events}
    )
    return {**_out(row), "secret": secret}


async def list_endpoints(session: AsyncSession, org_id: str, *, limit: int, offset: int) -> dict[str, Any]:
    rows = (
        await session.execute(
            select(*_PUBLIC, func.count().over().label("total"))
            .where(OutboundEndpoint.org_id == org_id)
            .order_by(OutboundEndpoint.created_at, OutboundEndpoint.id)
            .limit(limit)
            .offset(offset)
        )
    ).all()
    total = (
        rows[0].total
        if rows
        else (
            await session.execute(
                select(func.count()).select_from(OutboundEndpoint).where(OutboundEndpoint.org_id == org_id)
            )
        ).scalar_one()
    )
    return {"endpoints": [_out(r) for r in rows], "total": int(total)}


async def get_endpoint(session: AsyncSession, org_id: str, endpoint_id: str) -> dict[str, Any]:
    return _out(await _load(session, org_id, endpoint_id))


async def update_endpoint(
    session: AsyncSession, settings: Settings, access: OrgAccess, endpoint_id: str, changes: dict[str, Any]
) -> dict[str, Any]:
    """``changes``: the fields the caller sent (``url``, ``events``, ``description``, ``enabled``)."""
    if changes.get("url") is not None:
        await check_url(changes["url"], Policy.from_settings(settings))
    current = await _load(session, access.org_id, endpoint_id, lock=True)
    values: dict[str, Any] = {}
    for field in ("url", "events", "description"):
        if field in changes and (changes[field] is not None or field == "description"):
            values[field] = changes[field]
    if changes.get("enabled") is True and not current.enabled:
        values.update(enabled=True, disabled_reason=None, disabled_at=None)
    elif changes.get("enabled") is False and current.enabled:
        values.update(enabled=False, disabled_reason="disabled by a user", disabled_at=func.now())
    if not values:
        return _out(current)
    row = (
        await session.execute(
            update(OutboundEndpoint)
            .where(OutboundEndpoint.id == endpoint_id)
            .values(**values, updated_at=func.now())
            .returning(*_PUBLIC)
        )
    ).one()
    details = {k: v for k, v in values.items() if k != "disabled_at"}
    await _audit(session, access, OrgEvent.WEBHOOK_ENDPOINT_UPDATED, {"endpoint_id": endpoint_id, **details})
    return _out(row)


async def delete_endpoint(session: AsyncSession, access: OrgAccess, endpoint_id: str) -> None:
    current = await _load(session, access.org_id, endpoint_id, lock=True)
    await session.execute(delete(OutboundEndpoint).where(OutboundEndpoint.id == endpoint_id))
    await _audit(session, access, OrgEvent.WEBHOOK_ENDPOINT_DELETED, {"endpoint_id": endpoint_id, "url": current.url})


async def rotate_secret(
    session: AsyncSession, settings: Settings, access: OrgAccess, endpoint_id: str
) -> dict[str, Any]:
    await _load(session, access.org_id, endpoint_id, lock=True)
    secret = new_secret()
    overlap = timedelta(hours=settings.outbound_webhooks_secret_overlap_hours)
    expires_at = datetime.now(UTC) + overlap if overlap else None
    await session.execute(
        update(OutboundEndpoint)
        .where(OutboundEndpoint.id == endpoint_id)
        .values(
            previous_secret=OutboundEndpoint.secret if overlap else None,
            previous_secret_expires_at=expires_at,
            secret=secret,
            updated_at=func.now(),
        )
    )
    await _audit(session, access, OrgEvent.WEBHOOK_SECRET_ROTATED, {"endpoint_id": endpoint_id})
    return {"id": endpoint_id, "secret": secret, "previous_secret_expires_at": expires_at}


async def send_test(session: AsyncSession, org_id: str, endpoint_id: str) -> dict[str, Any]:
    """A ``ping`` event to this endpoint alone (delivered, signed and recorded like any other)."""
    endpoint = await _load(session, org_id, endpoint_id)
    if not endpoint.enabled:
        raise endpoint_disabled()
    data = {"endpoint_id": endpoint_id, "org_id": org_id, "url": endpoint.url}
    event_id = await emit_async(session, org_id, "ping", data, endpoint_id=endpoint_id)
    assert event_id is not None
    delivery_id = (
        await session.execute(
            select(OutboundDelivery.id).where(
                OutboundDelivery.endpoint_id == endpoint_id, OutboundDelivery.event_id == event_id
            )
        )
    ).scalar_one()
    return {"event_id": event_id, "delivery_id": delivery_id}


# --- deliveries ----------------------------------------------------------------------------------------------------


async def _deliveries(
    session: AsyncSession, endpoint_id: str, conditions: list[Any], *, limit: int, offset: int
) -> dict[str, Any]:
    where = and_(OutboundDelivery.endpoint_id == endpoint_id, *conditions)
    rows = (
        await session.execute(
            select(
                OutboundDelivery.id,
                OutboundDelivery.endpoint_id,
                OutboundDelivery.event_id,
                OutboundEvent.type.label("event_type"),
                OutboundDelivery.status,
                OutboundDelivery.attempt_count,
                OutboundDelivery.last_status_code,
                OutboundDelivery.next_attempt_at,
                OutboundDelivery.created_at,
                OutboundDelivery.last_attempt_at,
                OutboundDelivery.delivered_at,
                func.count().over().label("total"),
            )
            .join(OutboundEvent, OutboundEvent.id == OutboundDelivery.event_id)
            .where(where)
            .order_by(OutboundDelivery.created_at.desc(), OutboundDelivery.id.desc())
            .limit(limit)
            .offset(offset)
        )
    ).all()
    attempts: dict[str, list[dict[str, Any]]] = {r.id: [] for r in rows}
    if rows:
        ranked = (
            select(
                OutboundAttempt,
                func.row_number()
                .over(partition_by=OutboundAttempt.delivery_id, order_by=OutboundAttempt.attempted_at.desc())
                .label("rank"),
            )
            .where(OutboundAttempt.delivery_id.in_(list(attempts)))
            .subquery()
        )
        for a in (
            await session.execute(
                select(ranked).where(ranked.c.rank <= ATTEMPTS_SHOWN).order_by(ranked.c.attempted_at.desc())
            )
        ).all():
            attempts[a.delivery_id].append(
                {
                    "attempted_at": a.attempted_at,
                    "status_code": a.status_code,
                    "duration_ms": a.duration_ms,
                    "response_body": a.response_body,
                    "error": a.error,
                }
            )
    if rows:
        total = int(rows[0].total)
    else:
        total = int(
            (
                await session.execute(
                    select(func.count())
                    .select_from(OutboundDelivery)
                    .join(OutboundEvent, OutboundEvent.id == OutboundDelivery.event_id)
                    .where(where)
                )
            ).scalar_one()
        )
    deliveries = [{**{k: v for k, v in r._mapping.items() if k != "total"}, "attempts": attempts[r.id]} for r in rows]
    return {"deliveries": deliveries, "total": total}


async def list_deliveries(
    session: AsyncSession,
    org_id: str,
    endpoint_id: str,
    *,
    status: str | None,
    event_type: str | None,
    limit: int,
    offset: int,
) -> dict[str, Any]:
    await _load(session, org_id, endpoint_id)
    conditions: list[Any] = []
    if status is not None:
        conditions.append(OutboundDelivery.status == status)
    if event_type is not None:
        conditions.append(OutboundEvent.type == event_type)
    return await _deliveries(session, endpoint_id, conditions, limit=limit, offset=offset)


async def retry_delivery(session: AsyncSession, org_id: str, endpoint_id: str, delivery_id: str) -> dict[str, Any]:
    """Send again now, with a fresh retry window (any status; not while an attempt is in flight)."""
    endpoint = await _load(session, org_id, endpoint_id)
    if not endpoint.enabled:
        raise endpoint_disabled()
    retried = (
        await session.execute(
            update(OutboundDelivery)
            .where(
                OutboundDelivery.id == delivery_id,
                OutboundDelivery.endpoint_id == endpoint_id,
                (OutboundDelivery.lease_until.is_(None)) | (OutboundDelivery.lease_until <= func.now()),
            )
            .values(
                status="pending",
                next_attempt_at=func.now(),
                retrying_since=func.now(),
                lease_until=None,
                updated_at=func.now(),
            )
            .returning(OutboundDelivery.id)
        )
    ).scalar_one_or_none()
    if retried is None:
        exists = (
            await session.execute(
                select(OutboundDelivery.id).where(
                    OutboundDelivery.id == delivery_id, OutboundDelivery.endpoint_id == endpoint_id
                )
            )
        ).scalar_one_or_none()
        if exists is None:
            raise NotFound("Delivery not found", code="webhook_delivery_not_found")
        raise Conflict("An attempt of this delivery is in flight", code="webhook_delivery_in_flight")
    await outbox.enqueue_async(session, DELIVER_TASK)
    page = await _deliveries(session, endpoint_id, [OutboundDelivery.id == delivery_id], limit=1, offset=0)
    result: dict[str, Any] = page["deliveries"][0]
    return result


_REPLAY = text(
    """
    INSERT INTO outbound_deliveries (id, endpoint_id, event_id)
    SELECT d.id, :endpoint, d.event FROM unnest(CAST(:ids AS text[]), CAST(:events AS text[])) AS d(id, event)
    ON CONFLICT (endpoint_id, event_id) DO UPDATE
        SET status = 'pending', next_attempt_at = now(), retrying_since = now(), updated_at = now()
        WHERE outbound_deliveries.status <> 'pending'
    """
)


async def replay(
    session: AsyncSession,
    settings: Settings,
    org_id: str,
    endpoint_id: str,
    *,
    since: datetime,
    until: datetime | None,
) -> dict[str, Any]:
    """Send every event of the org in [since, until] that the endpoint subscribes to (again): also ones delivered
    already (same ``webhook-id``: deduplicate) and ones from before the endpoint existed; deliveries still pending
    stay as they are."""
    endpoint = await _load(session, org_id, endpoint_id)
    if not endpoint.enabled:
        raise endpoint_disabled()
    if until is not None and until < since:
        raise Unprocessable("until is before since", code="invalid_replay_window")
    cap = settings.outbound_webhooks_replay_max_events
    stmt = select(OutboundEvent.id).where(
        OutboundEvent.org_id == org_id,
        OutboundEvent.created_at >= since,
        OutboundEvent.type.in_(list(endpoint.events)),
    )
    if until is not None:
        stmt = stmt.where(OutboundEvent.created_at <= until)
    event_ids = list((await session.execute(stmt.order_by(OutboundEvent.created_at).limit(cap + 1))).scalars())
    if len(event_ids) > cap:
        raise Unprocessable(
            f"More than {cap} events in this window; replay a shorter one",
            code="replay_too_large",
            extra={"limit": cap},
        )
    if not event_ids:
        return {"replayed": 0}
    result = await session.execute(
        _REPLAY, {"endpoint": endpoint_id, "ids": [new_id("whd") for _ in event_ids], "events": event_ids}
    )
    replayed = int(cast(CursorResult[Any], result).rowcount or 0)
    if replayed:
        await outbox.enqueue_async(session, DELIVER_TASK)
    return {"replayed": replayed}
