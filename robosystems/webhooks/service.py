"""Stripe webhook inbox: receive -> verify -> persist (+ outbox) -> 2xx; then apply in a worker.

Receive (API, async, hot path — one statement, no ORM):
  raw body (capped) -> ``Stripe-Signature`` verified on it -> JSON parsed by us (not the SDK's object tree)
  -> ONE statement ``WITH ins AS (INSERT INTO webhook_events … ON CONFLICT (id) DO NOTHING RETURNING id)
  INSERT INTO task_outbox … SELECT … FROM ins``: a new event and its outbox row are written together, a
  redelivery (also 20 concurrent ones: they wait on the first insert's row lock) writes nothing.  The
  statement runs in autocommit on the statement pool (robosystems.db.StatementPool: one atomic transaction,
  committed synchronously, without BEGIN/COMMIT round trips) before the handler returns, so 2xx means
  "durably stored"; then the relay is woken.

Apply (worker, sync — :func:`process_event`, the ONE code path for the Celery task and the in-process runner):
  1. claim: ``received`` (or ``processing`` older than WEBHOOK_STALE_SECONDS: a crashed run) -> ``processing``,
     ``attempts + 1`` — its own short transaction, so attempts survive a crash;
  2. apply in one transaction: advisory lock on the provider object (``subject_id``; taken before the event row
     so two events of one subscription are serialized and never deadlock), re-check the claim, run the handler,
     mark ``processed`` / ``ignored`` (+ ``note``);
  3. on error: roll back, record ``last_error`` (safe text), back to ``received`` and :class:`RetryLater` with
     backoff, or ``failed`` after TASK_MAX_RETRIES retries (or at once for a permanent error: bad data).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import psycopg
from sqlalchemy import CursorResult, Delete, and_, delete, func, or_, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from robosystems.db import StatementPool, after_commit, compile_for_psycopg
from robosystems.errors import AppError, BadRequest, NotFound, ServiceUnavailable
from robosystems.ids import new_id
from robosystems.models import TaskOutbox, WebhookEvent
from robosystems.worker import outbox
from robosystems.worker.context import WorkerContext
from robosystems.worker.retry import RetryLater, backoff_seconds, safe_error

log = logging.getLogger("robosystems.webhooks")

PROCESS_EVENT_TASK = "robosystems.webhooks.process_event"
MAX_ID_LENGTH = 255


class InvalidPayload(BadRequest):
    code, detail = "invalid_payload", "The webhook body is not a Stripe event"


# --- parsing -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ParsedEvent:
    id: str
    type: str
    created: datetime
    object_id: str | None
    subject_id: str | None
    livemode: bool | None
    api_version: str | None


def _ref(value: Any) -> str | None:
    if isinstance(value, str) and value:
        return value[:MAX_ID_LENGTH]
    if isinstance(value, dict) and isinstance(value.get("id"), str) and value["id"]:
        return str(value["id"])[:MAX_ID_LENGTH]
    return None


def _mapping(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def subject_of(event_type: str, obj: dict[str, Any]) -> str | None:
    """The provider object an event is serialized on: its subscription when it names one."""
    object_id = _ref(obj.get("id"))
    if event_type.startswith("customer.subscription."):
        return object_id
    if event_type.startswith("invoice."):
        details = _mapping(_mapping(obj.get("parent")).get("subscription_details"))
        return (
            _ref(details.get("subscription"))
            or _ref(obj.get("subscription"))
            or _ref(obj.get("customer"))
            or (object_id)
        )
    if event_type.startswith("checkout.session."):
        return _ref(obj.get("subscription")) or object_id
    if event_type.startswith("payment_method."):
        return _ref(obj.get("customer")) or object_id
    return object_id


def parse_event(body: bytes) -> ParsedEvent:
    """Minimal shape check of a (verified) Stripe event body; 400 ``invalid_payload`` otherwise."""
    try:
        data = json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise InvalidPayload() from exc
    if not isinstance(data, dict):
        raise InvalidPayload()
    event_id, event_type, created = data.get("id"), data.get("type"), data.get("created")
    obj = _mapping(data.get("data")).get("object")
    if (
        not isinstance(event_id, str)
        or not 0 < len(event_id) <= MAX_ID_LENGTH
        or not isinstance(event_type, str)
        or not 0 < len(event_type) <= 120
        or isinstance(created, bool)
        or not isinstance(created, int)
        or not isinstance(obj, dict)
        or data.get("object", "event") != "event"
    ):
        raise InvalidPayload()
    try:
        created_at = datetime.fromtimestamp(created, UTC)
    except (OverflowError, OSError, ValueError) as exc:
        raise InvalidPayload() from exc
    livemode = data.get("livemode")
    api_version = data.get("api_version")
    return ParsedEvent(
        id=event_id,
        type=event_type,
        created=created_at,
        object_id=_ref(obj.get("id")),
        subject_id=subject_of(event_type, obj),
        livemode=livemode if isinstance(livemode, bool) else None,
        api_version=api_version[:40] if isinstance(api_version, str) else None,
    )


# --- receive (API) -----------------------------------------------------------------------------------------------

_INSERT_SQL = text(
    """
    WITH ins AS (
        INSERT INTO webhook_events (id, provider, type, created, object_id, subject_id, livemode, api_version, payload)
        VALUES (:id, 'stripe', :type, :created, :object_id, :subject_id, :livemode, :api_version,
                CAST(:payload AS jsonb))
        ON CONFLICT (id) DO NOTHING
        RETURNING id
    ), queued AS (
        INSERT INTO task_outbox (id, task_name, args)
        SELECT :outbox_id, :task_name, jsonb_build_array(ins.id) FROM ins
        RETURNING id
    )
    SELECT queued.id, pg_notify('robosystems_outbox', '') FROM queued  -- delivered at commit: wakes the relay
    """
)
_INSERT = compile_for_psycopg(_INSERT_SQL)


@dataclass(frozen=True)
class Received:
    event_id: str
    duplicate: bool


def _insert_params(body: bytes, event: ParsedEvent) -> dict[str, Any]:
    return {
        "id": event.id,
        "type": event.type,
        "created": event.created,
        "object_id": event.object_id,
        "subject_id": event.subject_id,
        "livemode": event.livemode,
        "api_version": event.api_version,
        "payload": body.decode("utf-8"),
        "outbox_id": new_id("tob"),
        "task_name": PROCESS_EVENT_TASK,
    }


async def receive(pool: StatementPool, body: bytes, event: ParsedEvent) -> Received:
    """Persist a verified event and its outbox row in ONE statement (autocommit: one atomic, synchronously
    committed transaction; a redelivery writes nothing).

    Returns only after the commit: the caller's 2xx means "durably stored".  The relay is woken afterwards.
    """
    try:
        inserted = await pool.fetch_value(_INSERT, _insert_params(body, event))
    except (psycopg.DataError, psycopg.IntegrityError) as exc:  # e.g. a \u0000 in the JSON: not storable as jsonb
        raise InvalidPayload() from exc
    except (psycopg.OperationalError, psycopg.InterfaceError) as exc:  # also PoolTimeout: server down / no slot
        log.warning("webhook %s not stored: database unavailable (%s)", event.id, type(exc).__name__)
        raise ServiceUnavailable("Database unavailable; retry later", code="database_unavailable") from exc
    if inserted is None:
        return Received(event.id, duplicate=True)
    outbox.notify()
    return Received(event.id, duplicate=False)


# --- apply (worker) ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StoredEvent:
    id: str
    type: str
    created: datetime
    object_id: str | None
    subject_id: str | None
    payload: dict[str, Any]
    attempts: int

    @property
    def object(self) -> dict[str, Any]:
        return _mapping(_mapping(self.payload.get("data")).get("object"))


def _is_permanent(exc: BaseException) -> bool:
    """Errors that a retry can't fix (malformed provider data, a refused business rule)."""
    return isinstance(exc, AppError) and 400 <= exc.status_code < 500 and exc.status_code != 409


def process_event(ctx: WorkerContext, event_id: str) -> str:
    """Apply one stored event (idempotent; see module doc).  Returns the resulting status, or
    ``skipped`` when another run has it / it is already done."""
    from robosystems.webhooks import handlers

    settings = ctx.settings
    stale_before = func.now() - timedelta(seconds=settings.webhook_stale_seconds)
    with ctx.maker.begin() as session:
        # bookkeeping: a claim lost in a crash only means one more attempt (see worker.outbox)
        session.execute(text("SET LOCAL synchronous_commit = off"))
        claimed = session.execute(
            update(WebhookEvent)
            .where(
                WebhookEvent.id == event_id,
                or_(
                    WebhookEvent.status == "received",
                    and_(WebhookEvent.status == "processing", WebhookEvent.updated_at < stale_before),
                ),
            )
            .values(status="processing", attempts=WebhookEvent.attempts + 1, updated_at=func.now())
            .returning(WebhookEvent.attempts, WebhookEvent.subject_id)
        ).one_or_none()
    if claimed is None:
        return "skipped"
    attempts, subject_id = claimed
    try:
        with ctx.maker.begin() as session:
            if subject_id:
                session.execute(
                    text("SELECT pg_advisory_xact_lock(hashtextextended(:k, 0))"), {"k": f"stripe:{subject_id}"}
                )
            row = session.execute(
                select(
                    WebhookEvent.status,
                    WebhookEvent.attempts,
                    WebhookEvent.type,
                    WebhookEvent.created,
                    WebhookEvent.object_id,
                    WebhookEvent.payload,
                )
                .where(WebhookEvent.id == event_id)
                .with_for_update()
            ).one()
            if row.status != "processing" or row.attempts != attempts:
                return "skipped"  # taken over (stale claim) or replayed meanwhile
            event = StoredEvent(
                event_id, row.type, row.created, row.object_id, subject_id, dict(row.payload or {}), attempts
            )
            outcome = handlers.handle(session, ctx, event)
            session.execute(
                update(WebhookEvent)
                .where(WebhookEvent.id == event_id)
                .values(
                    status=outcome.status,
                    note=(outcome.note or None) and outcome.note[:200],
                    last_error=None,
                    processed_at=func.now(),
                    updated_at=func.now(),
                )
            )
        log.info(
            "webhook %s (%s) %s%s", event_id, row.type, outcome.status, f": {outcome.note}" if outcome.note else ""
        )
        return outcome.status
    except Exception as exc:  # noqa: BLE001 - recorded on the event; retried or failed
        error = safe_error(exc)
        final = attempts > settings.task_max_retries or _is_permanent(exc)
        if isinstance(exc, RetryLater):
            log.info("webhook %s deferred (attempt %s): %s", event_id, attempts, error)
        else:
            log.exception("webhook %s failed (attempt %s)", event_id, attempts)
        with ctx.maker.begin() as session:
            session.execute(
                update(WebhookEvent)
                .where(
                    WebhookEvent.id == event_id, WebhookEvent.status == "processing", WebhookEvent.attempts == attempts
                )
                .values(status="failed" if final else "received", last_error=error, updated_at=func.now())
            )
        if final:
            return "failed"
        countdown = (
            exc.countdown if isinstance(exc, RetryLater) and exc.countdown else backoff_seconds(settings, attempts)
        )
        raise RetryLater(countdown, reason=error) from exc


# --- operate (admin API, CLI, beat) ------------------------------------------------------------------------------


def _event_summary(row: Any) -> dict[str, Any]:
    return {
        "id": row.id,
        "type": row.type,
        "status": row.status,
        "attempts": row.attempts,
        "last_error": row.last_error,
        "received_at": row.received_at,
        "processed_at": row.processed_at,
    }


_SUMMARY_COLUMNS = (
    WebhookEvent.id,
    WebhookEvent.type,
    WebhookEvent.status,
    WebhookEvent.attempts,
    WebhookEvent.last_error,
    WebhookEvent.received_at,
    WebhookEvent.processed_at,
)


def _filters(status: str | None, event_type: str | None) -> list[Any]:
    conditions: list[Any] = []
    if status:
        conditions.append(WebhookEvent.status == status)
    if event_type:
        conditions.append(WebhookEvent.type == event_type)
    return conditions


async def list_events(
    session: AsyncSession, *, status: str | None, event_type: str | None, limit: int, offset: int
) -> dict[str, Any]:
    conditions = _filters(status, event_type)
    total = (await session.execute(select(func.count()).select_from(WebhookEvent).where(*conditions))).scalar_one()
    rows = (
        await session.execute(
            select(*_SUMMARY_COLUMNS)
            .where(*conditions)
            .order_by(WebhookEvent.received_at.desc(), WebhookEvent.id.desc())
            .limit(limit)
            .offset(offset)
        )
    ).all()
    return {"events": [_event_summary(r) for r in rows], "total": int(total)}


async def get_event(session: AsyncSession, event_id: str) -> dict[str, Any]:
    row = (
        await session.execute(
            select(
                *_SUMMARY_COLUMNS,
                WebhookEvent.created,
                WebhookEvent.object_id,
                WebhookEvent.subject_id,
                WebhookEvent.livemode,
                WebhookEvent.api_version,
                WebhookEvent.note,
                WebhookEvent.updated_at,
                WebhookEvent.payload,
            ).where(WebhookEvent.id == event_id)
        )
    ).one_or_none()
    if row is None:
        raise NotFound("Webhook event not found", code="webhook_event_not_found")
    return {
        **_event_summary(row),
        "created": row.created,
        "object_id": row.object_id,
        "subject_id": row.subject_id,
        "livemode": row.livemode,
        "api_version": row.api_version,
        "note": row.note,
        "updated_at": row.updated_at,
        "payload": row.payload,
    }


_REPLAY_SQL = text(
    """
    WITH upd AS (
        UPDATE webhook_events SET status = 'received', attempts = 0, updated_at = now(), processed_at = NULL
        WHERE id = ANY(:ids)
        RETURNING id
    )
    INSERT INTO task_outbox (id, task_name, args)
    SELECT 'tob_' || replace(gen_random_uuid()::text, '-', ''), :task_name, jsonb_build_array(upd.id) FROM upd
    RETURNING args ->> 0
    """
)


async def replay(session: AsyncSession, event_ids: list[str]) -> list[str]:
    """Put events back to ``received`` (attempt budget reset) and enqueue them; returns the ids replayed."""
    if not event_ids:
        return []
    result = await session.execute(_REPLAY_SQL, {"ids": event_ids, "task_name": PROCESS_EVENT_TASK})
    replayed = [str(v) for v in result.scalars()]
    if replayed:
        after_commit(session, outbox.notify)
    return replayed


async def replay_one(session: AsyncSession, event_id: str) -> dict[str, Any]:
    exists = (
        await session.execute(select(WebhookEvent.id).where(WebhookEvent.id == event_id).with_for_update())
    ).scalar_one_or_none()
    if exists is None:
        raise NotFound("Webhook event not found", code="webhook_event_not_found")
    await replay(session, [event_id])
    return {"id": event_id, "status": "received", "replayed": True}


async def replay_failed(session: AsyncSession, *, limit: int = 1000) -> dict[str, Any]:
    ids = list(
        (
            await session.execute(
                select(WebhookEvent.id)
                .where(WebhookEvent.status == "failed")
                .order_by(WebhookEvent.created, WebhookEvent.id)
                .limit(limit)
                .with_for_update(skip_locked=True)
            )
        ).scalars()
    )
    replayed = await replay(session, ids)
    return {"replayed": len(replayed), "ids": replayed}


def sweep_stale(ctx: WorkerContext) -> int:
    """Re-enqueue events stuck in received/processing (a lost broker message, a crashed run) with no pending
    outbox row.  Returns how many were enqueued."""
    settings = ctx.settings
    stale_before = func.now() - timedelta(seconds=settings.webhook_stale_seconds)
    pending = select(TaskOutbox.id).where(
        TaskOutbox.status == "pending",
        TaskOutbox.task_name == PROCESS_EVENT_TASK,
        TaskOutbox.args[0].astext == WebhookEvent.id,
    )
    with ctx.maker.begin() as session:
        ids = list(
            session.execute(
                select(WebhookEvent.id)
                .where(
                    WebhookEvent.status.in_(("received", "processing")),
                    WebhookEvent.updated_at < stale_before,
                    ~pending.exists(),
                )
                .order_by(WebhookEvent.created)
                .limit(settings.outbox_batch_size)
                .with_for_update(skip_locked=True)
            ).scalars()
        )
        for event_id in ids:
            outbox.enqueue(session, PROCESS_EVENT_TASK, [event_id])
    if ids:
        log.warning("re-enqueued %s stale webhook events", len(ids))
    return len(ids)


def _deleted(session: Session, stmt: Delete) -> int:
    """Run a bulk DELETE; how many rows it removed (a DML statement's result is a CursorResult)."""
    return cast(CursorResult[Any], session.execute(stmt)).rowcount


def prune(ctx: WorkerContext) -> int:
    """Delete processed/ignored events older than WEBHOOK_EVENT_RETENTION_DAYS and old sent outbox rows."""
    cutoff = datetime.now(UTC) - timedelta(days=ctx.settings.webhook_event_retention_days)
    with ctx.maker.begin() as session:
        events = _deleted(
            session,
            delete(WebhookEvent).where(
                WebhookEvent.status.in_(("processed", "ignored")),
                func.coalesce(WebhookEvent.processed_at, WebhookEvent.received_at) < cutoff,
            ),
        )
        rows = _deleted(session, delete(TaskOutbox).where(TaskOutbox.status == "sent", TaskOutbox.created_at < cutoff))
    if events or rows:
        log.info("pruned %s webhook events and %s outbox rows older than %s", events, rows, cutoff.date())
    return int(events or 0)
