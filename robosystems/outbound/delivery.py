"""The worker side of outbound webhooks: claim due deliveries, sign, send, record, retry, give up, disable.

One run (:func:`deliver`, the ``robosystems.outbound.deliver`` task) is an asyncio loop on one worker thread:

* **claim** (own short transaction, serialized by an advisory lock so the caps hold across processes): due
  ``pending`` deliveries of enabled endpoints, at most ``OUTBOUND_WEBHOOKS_ENDPOINT_CONCURRENCY`` in flight per
  endpoint (counting every process's leases), earliest first, leased for the request's whole deadline;
* **send** up to ``OUTBOUND_WEBHOOKS_CONCURRENCY`` at once through the guarded aiohttp client
  (:mod:`robosystems.outbound.guard`): connect and read timeouts plus a total deadline, no redirects, the response
  body read up to ``OUTBOUND_WEBHOOKS_RESPONSE_MAX_BYTES``.  Headers come from :mod:`robosystems.outbound.signing`.
  A 2xx is delivered; anything else (3xx included), a timeout or a refused address is a failed attempt;
* **record** each batch of outcomes in one transaction: the attempt rows, the deliveries (delivered, or the next
  retry: exponential backoff from ``OUTBOUND_WEBHOOKS_RETRY_BASE_SECONDS``, capped, with jitter), and — when the
  next retry would fall after ``OUTBOUND_WEBHOOKS_RETRY_WINDOW_SECONDS`` — ``failed``; an endpoint that has not
  had one success during that whole window is then disabled and the org's owners get a mail.

Why it can't hold up other work: a slow endpoint occupies at most its cap of the run's slots (the others keep
flowing), every request ends at its deadline, and a run stops claiming after ``OUTBOUND_WEBHOOKS_PUMP_SECONDS``
and hands its thread back (re-enqueuing itself when work is left), so provisioning and the Stripe inbox keep their
turn on the in-process worker.  One run per process at a time: another request for a run while one is going only
makes that run look again before it ends.  Ordering is not promised (concurrency, retries): receivers order by the
payload's ``timestamp`` and deduplicate by ``webhook-id``.
"""

from __future__ import annotations

import asyncio
import logging
import random
import threading
import time
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

import aiohttp
from sqlalchemy import select, text
from sqlalchemy.orm import Session

from robosystems.config import Settings
from robosystems.db import sync_unit_of_work
from robosystems.ids import new_id
from robosystems.mail.service import queue_mail_sync
from robosystems.models import OrgUser, User
from robosystems.outbound.events import DELIVER_TASK
from robosystems.outbound.guard import AddressRefused, Policy, UrlRefused, check_target, client_session
from robosystems.outbound.signing import headers as signed_headers
from robosystems.worker import outbox
from robosystems.worker.context import WorkerContext

log = logging.getLogger("robosystems.outbound.delivery")

USER_AGENT = "robosystems-webhooks/1.0"
#: how long the loop waits for a completion before it looks for new work anyway
CLAIM_POLL_SECONDS = 0.25
LEASE_MARGIN_SECONDS = 30.0
DISABLED_MAIL_KIND = "webhook_endpoint_disabled"

# Claims and records are bookkeeping of attempts already made or about to be made: losing the last few in a database
# crash only sends those deliveries again (at least once, receivers deduplicate by webhook-id), so they commit without
# waiting for the WAL flush (as the task outbox's claims do).
_ASYNC_COMMIT = text("SET LOCAL synchronous_commit = off")
_CLAIM_LOCK = text("SELECT pg_advisory_xact_lock(hashtextextended('robosystems.outbound.claim', 0))")
_CLAIM = text(
    """
    WITH open_endpoints AS (
        SELECT e.id,
               :cap - (SELECT count(*) FROM outbound_deliveries x
                        WHERE x.endpoint_id = e.id AND x.status = 'pending'
                          AND x.lease_until IS NOT NULL AND x.lease_until > now()) AS slots
        FROM outbound_endpoints e
        WHERE e.enabled AND EXISTS (
            SELECT 1 FROM outbound_deliveries y
             WHERE y.endpoint_id = e.id AND y.status = 'pending' AND y.next_attempt_at <= now())
    ), picked AS (
        SELECT d.id, d.next_attempt_at
        FROM open_endpoints o
        CROSS JOIN LATERAL (
            SELECT d.id, d.next_attempt_at FROM outbound_deliveries d
             WHERE d.endpoint_id = o.id AND d.status = 'pending' AND d.next_attempt_at <= now()
               AND (d.lease_until IS NULL OR d.lease_until <= now())
             ORDER BY d.next_attempt_at, d.id
             LIMIT greatest(o.slots, 0)
        ) d
        ORDER BY d.next_attempt_at, d.id
        LIMIT :limit
    )
    UPDATE outbound_deliveries d
       SET lease_until = now() + make_interval(secs => :lease), updated_at = now()
      FROM picked p, outbound_endpoints e, outbound_events ev
     WHERE d.id = p.id AND e.id = d.endpoint_id AND ev.id = d.event_id
    RETURNING d.id, d.endpoint_id, d.event_id, ev.type AS event_type, ev.body, e.url, e.secret,
              CASE WHEN e.previous_secret_expires_at > now() THEN e.previous_secret END AS previous_secret,
              d.attempt_count, d.retrying_since
    """
)
_RECORD = text(
    """
    UPDATE outbound_deliveries d
       SET status = CASE WHEN v.ok THEN 'delivered' WHEN v.give_up THEN 'failed' ELSE 'pending' END,
           attempt_count = d.attempt_count + 1,
           last_status_code = v.code,
           last_attempt_at = v.at,
           delivered_at = CASE WHEN v.ok THEN v.at END,
           next_attempt_at = CASE WHEN v.ok OR v.give_up THEN NULL ELSE v.next END,
           lease_until = NULL,
           updated_at = now()
      FROM unnest(CAST(:ids AS text[]), CAST(:ok AS boolean[]), CAST(:give_up AS boolean[]),
                  CAST(:codes AS integer[]), CAST(:ats AS timestamptz[]), CAST(:nexts AS timestamptz[]))
           AS v(id, ok, give_up, code, at, next)
     WHERE d.id = v.id AND d.status = 'pending' AND d.lease_until IS NOT NULL
    RETURNING d.id, d.endpoint_id, d.status
    """
)
_ATTEMPTS = text(
    """
    INSERT INTO outbound_attempts (id, delivery_id, attempted_at, status_code, duration_ms, response_body, error)
    SELECT * FROM unnest(CAST(:ids AS text[]), CAST(:deliveries AS text[]), CAST(:ats AS timestamptz[]),
                         CAST(:codes AS integer[]), CAST(:durations AS integer[]), CAST(:bodies AS text[]),
                         CAST(:errors AS text[]))
    """
)
_DISABLE = text(
    """
    UPDATE outbound_endpoints e
       SET enabled = false, disabled_reason = :reason, disabled_at = now(), updated_at = now()
     WHERE e.id = :endpoint AND e.enabled AND NOT EXISTS (
           SELECT 1 FROM outbound_deliveries d
            WHERE d.endpoint_id = e.id AND d.status = 'delivered' AND d.delivered_at >= :since)
    RETURNING e.id, e.org_id, e.url, (SELECT name FROM orgs WHERE id = e.org_id) AS org_name
    """
)
_ANY_DUE = text(
    "SELECT EXISTS (SELECT 1 FROM outbound_deliveries d JOIN outbound_endpoints e ON e.id = d.endpoint_id "
    "WHERE e.enabled AND d.status = 'pending' AND d.next_attempt_at <= now())"
)


@dataclass(frozen=True)
class Job:
    delivery_id: str
    endpoint_id: str
    event_id: str
    event_type: str
    url: str
    secrets: tuple[str, ...]  # newest first
    body: str
    attempt_count: int
    retrying_since: datetime


@dataclass(frozen=True)
class Outcome:
    job: Job
    attempted_at: datetime
    status_code: int | None
    duration_ms: int
    response_body: str | None
    error: str | None

    @property
    def ok(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


@dataclass
class RunStats:
    delivered: int = 0
    retrying: int = 0
    failed: int = 0
    disabled: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "delivered": self.delivered,
            "retrying": self.retrying,
            "failed": self.failed,
            "disabled": list(self.disabled),
        }


def request_deadline(settings: Settings) -> float:
    return settings.outbound_webhooks_connect_timeout_seconds + settings.outbound_webhooks_read_timeout_seconds


def retry_delay(settings: Settings, attempts: int) -> float:
    """Seconds until the next try after ``attempts`` failed ones: base * 2^(attempts-1), capped, +- jitter."""
    delay = min(
        settings.outbound_webhooks_retry_base_seconds * 2 ** min(attempts - 1, 40),
        settings.outbound_webhooks_retry_max_delay_seconds,
    )
    jitter = settings.outbound_webhooks_retry_jitter
    return float(delay * random.uniform(1 - jitter, 1 + jitter))


# --- claim ---------------------------------------------------------------------------------------------------------


def claim(ctx: WorkerContext, limit: int) -> list[Job]:
    settings = ctx.settings
    with sync_unit_of_work(ctx.maker) as session:
        session.execute(_ASYNC_COMMIT)
        session.execute(_CLAIM_LOCK)
        rows = session.execute(
            _CLAIM,
            {
                "cap": settings.outbound_webhooks_endpoint_concurrency,
                "limit": limit,
                "lease": request_deadline(settings) + LEASE_MARGIN_SECONDS,
            },
        ).all()
    return [
        Job(
            r.id,
            r.endpoint_id,
            r.event_id,
            r.event_type,
            r.url,
            tuple(s for s in (r.secret, r.previous_secret) if s),
            r.body,
            r.attempt_count,
            r.retrying_since,
        )
        for r in rows
    ]


# --- send ----------------------------------------------------------------------------------------------------------


def _error_text(exc: BaseException) -> str:
    if isinstance(exc, AddressRefused):
        return f"refused: {exc.detail}"
    if isinstance(exc, UrlRefused):
        return f"invalid URL: {exc.detail}"
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return "connect timeout"
    if isinstance(exc, TimeoutError):  # aiohttp's read timeouts are TimeoutErrors too
        return "timeout"
    if isinstance(exc, aiohttp.ClientConnectorDNSError):
        return "could not resolve the host"
    if isinstance(exc, aiohttp.ClientConnectorCertificateError | aiohttp.ClientSSLError):
        return "TLS error"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return "connection failed"
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "server disconnected"
    if isinstance(exc, aiohttp.ClientResponseError | aiohttp.ClientPayloadError):
        return "invalid HTTP response"
    if isinstance(exc, aiohttp.ClientError):
        return "network error"
    return type(exc).__name__


async def send(session: aiohttp.ClientSession, settings: Settings, policy: Policy, job: Job) -> Outcome:
    """One signed POST; never raises (the outcome says what happened)."""
    attempted_at = datetime.now(UTC)
    started = time.perf_counter()
    status: int | None = None
    kept: str | None = None
    error: str | None = None
    cap = settings.outbound_webhooks_response_max_bytes
    try:
        async with asyncio.timeout(request_deadline(settings)):
            check_target(job.url, policy)  # this environment's scheme rule; an IP-literal host (names: at connect)
            headers = {
                "content-type": "application/json",
                "user-agent": USER_AGENT,
                **signed_headers(job.secrets, job.event_id, attempted_at, job.body),
            }
            async with session.post(job.url, data=job.body.encode(), headers=headers, allow_redirects=False) as resp:
                status = resp.status
                received = bytearray()
                while len(received) < cap:
                    chunk = await resp.content.read(cap - len(received))
                    if not chunk:
                        break
                    received += chunk
                # a longer body is not read further: the connection is closed instead of reused
                kept = bytes(received).decode("utf-8", "replace") if received else None
    except Exception as exc:  # noqa: BLE001 - every failure is an outcome of the attempt
        error = _error_text(exc)[:200]
    duration_ms = int((time.perf_counter() - started) * 1000)
    return Outcome(job, attempted_at, status, duration_ms, kept, error)


# --- record --------------------------------------------------------------------------------------------------------


def _owners(session: Session, org_id: str) -> list[str]:
    return list(
        session.execute(
            select(User.email)
            .join(OrgUser, OrgUser.user_id == User.id)
            .where(OrgUser.org_id == org_id, OrgUser.role == "owner", OrgUser.is_active.is_(True))
        ).scalars()
    )


def _disable_if_failing(session: Session, settings: Settings, outcome: Outcome) -> str | None:
    """After ``outcome``'s delivery was given up: disable the endpoint if it had no success during the window,
    and mail the org's owners.  Returns the endpoint id when disabled."""
    last = outcome.error or f"HTTP {outcome.status_code}"
    days = settings.outbound_webhooks_retry_window_seconds / 86400
    reason = f"deliveries failed for {days:g} day(s) without a success (last: {last})"[:200]
    row = session.execute(
        _DISABLE, {"endpoint": outcome.job.endpoint_id, "since": outcome.job.retrying_since, "reason": reason}
    ).one_or_none()
    if row is None:
        return None
    log.warning("webhook endpoint %s of org %s disabled: %s", row.id, row.org_id, reason)
    base = settings.base_url
    for email in _owners(session, row.org_id):
        queue_mail_sync(
            session,
            to=email,
            subject=f"Webhook endpoint disabled for {row.org_name}",
            body=(
                f"Hello,\n\nthe webhook endpoint {row.url} ({row.id}) of {row.org_name} has been disabled: {reason}.\n"
                "Events are still recorded. Once the endpoint answers again, enable it and replay what it missed:\n\n"
                f'  PATCH {base}/v1/orgs/{row.org_id}/webhook-endpoints/{row.id}  {{"enabled": true}}\n'
                f'  POST  {base}/v1/orgs/{row.org_id}/webhook-endpoints/{row.id}/replay  {{"since": "…"}}\n'
            ),
            kind=DISABLED_MAIL_KIND,
        )
    return str(row.id)


def record(ctx: WorkerContext, outcomes: list[Outcome], stats: RunStats) -> None:
    """Write one batch of outcomes in one transaction (see module doc)."""
    if not outcomes:
        return
    settings = ctx.settings
    now = datetime.now(UTC)
    window = timedelta(seconds=settings.outbound_webhooks_retry_window_seconds)
    give_up: list[bool] = []
    nexts: list[datetime | None] = []
    for o in outcomes:
        if o.ok:
            give_up.append(False)
            nexts.append(None)
            continue
        at = now + timedelta(seconds=retry_delay(settings, o.job.attempt_count + 1))
        give_up.append(at > o.job.retrying_since + window)
        nexts.append(at)
    by_id = {o.job.delivery_id: o for o in outcomes}
    with sync_unit_of_work(ctx.maker) as session:
        session.execute(_ASYNC_COMMIT)
        updated = session.execute(
            _RECORD,
            {
                "ids": list(by_id),
                "ok": [o.ok for o in outcomes],
                "give_up": give_up,
                "codes": [o.status_code for o in outcomes],
                "ats": [o.attempted_at for o in outcomes],
                "nexts": nexts,
            },
        ).all()
        if not updated:
            return  # endpoints deleted meanwhile
        attempts = [by_id[r.id] for r in updated]
        session.execute(
            _ATTEMPTS,
            {
                "ids": [new_id("wha") for _ in attempts],
                "deliveries": [o.job.delivery_id for o in attempts],
                "ats": [o.attempted_at for o in attempts],
                "codes": [o.status_code for o in attempts],
                "durations": [o.duration_ms for o in attempts],
                "bodies": [o.response_body for o in attempts],
                "errors": [o.error for o in attempts],
            },
        )
        retry_at = [n for r, n, g in zip(by_id, nexts, give_up, strict=True) if n is not None and not g]
        for r in updated:
            if r.status == "delivered":
                stats.delivered += 1
            elif r.status == "pending":
                stats.retrying += 1
            else:
                stats.failed += 1
                disabled = _disable_if_failing(session, settings, by_id[r.id])
                if disabled:
                    stats.disabled.append(disabled)
        if retry_at:  # wake a run when the earliest retry is due (the periodic run is the safety net)
            outbox.enqueue(session, DELIVER_TASK, delay_seconds=max(0.0, (min(retry_at) - now).total_seconds()))


# --- the run -------------------------------------------------------------------------------------------------------


async def _run(ctx: WorkerContext, deadline: float, stats: RunStats) -> bool:
    """Claim, send and record until nothing is due or the deadline passed; True when it stopped with work left.

    Database work (claims, records) runs on one helper thread while the loop keeps sending: a claim is asked for
    once a quarter of the slots are free, outcomes are recorded in batches (whatever finished while the previous
    batch was being written)."""
    settings = ctx.settings
    limit = settings.outbound_webhooks_concurrency
    batch = max(1, limit // 4)
    policy = Policy.from_settings(settings)
    loop = asyncio.get_running_loop()
    db = ThreadPoolExecutor(max_workers=1, thread_name_prefix="robosystems-outbound-db")
    inflight: set[asyncio.Future[Any]] = set()
    claiming: asyncio.Future[list[Job]] | None = None
    asked = 0
    unrecorded: list[Outcome] = []
    recording: list[asyncio.Future[None]] = []
    stopping = False
    idle_round = False
    try:
        async with client_session(settings, limit) as session:
            while True:
                free = limit - len(inflight) - asked
                if claiming is None and not stopping and free > 0 and (free >= batch or not inflight or idle_round):
                    claiming, asked = loop.run_in_executor(db, claim, ctx, free), free
                waiting: set[asyncio.Future[Any]] = inflight | ({claiming} if claiming is not None else set())
                if not waiting:
                    break
                done, _ = await asyncio.wait(waiting, timeout=CLAIM_POLL_SECONDS, return_when=asyncio.FIRST_COMPLETED)
                idle_round = not done
                if claiming is not None and claiming in done:
                    jobs = claiming.result()
                    claiming, asked = None, 0
                    inflight.update(asyncio.create_task(send(session, settings, policy, job)) for job in jobs)
                    if not jobs and not inflight:
                        break  # nothing due, nothing in flight
                finished = [t for t in done if t in inflight]
                inflight.difference_update(finished)
                unrecorded.extend(t.result() for t in finished)
                recording = _still_running(recording)
                if unrecorded and (not recording or len(unrecorded) >= batch or not inflight):
                    recording.append(loop.run_in_executor(db, record, ctx, unrecorded, stats))
                    unrecorded = []
                if time.monotonic() >= deadline:
                    stopping = True
        if unrecorded:
            recording.append(loop.run_in_executor(db, record, ctx, unrecorded, stats))
        for f in recording:
            await f
    finally:
        db.shutdown(wait=True)
    return stopping


def _still_running(futures: list[asyncio.Future[None]]) -> list[asyncio.Future[None]]:
    for f in futures:
        if f.done() and f.exception() is not None:  # the leases expire and those deliveries are tried again
            log.error("recording webhook attempts failed", exc_info=f.exception())
    return [f for f in futures if not f.done()]


def _in_own_loop(make: Callable[[], Coroutine[Any, Any, bool]]) -> bool:
    """``asyncio.run`` — on a helper thread when this thread already runs a loop (a task called eagerly from
    async code, e.g. a test)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(make())
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="robosystems-outbound") as helper:
        return helper.submit(lambda: asyncio.run(make())).result()


_run_lock = threading.Lock()
_run_wanted = threading.Event()


def _any_due(ctx: WorkerContext) -> bool:
    with ctx.engine.connect() as conn:
        return bool(conn.execute(_ANY_DUE).scalar_one())


def deliver(ctx: WorkerContext) -> dict[str, Any]:
    """The task body.  If a run is already going in this process it takes the new work (it looks again before it
    ends); with nothing due it returns at once (one indexed query: every emitting transaction requests a run, most
    find their deliveries taken by a run already going); a run that used its time re-enqueues itself and returns,
    so other tasks get the thread."""
    stats = RunStats()
    _run_wanted.set()
    more = False
    while _run_wanted.is_set() and not more:
        if not _run_lock.acquire(blocking=False):
            return stats.as_dict()
        try:
            _run_wanted.clear()
            if _any_due(ctx):
                deadline = time.monotonic() + ctx.settings.outbound_webhooks_pump_seconds
                more = _in_own_loop(partial(_run, ctx, deadline, stats))
        finally:
            _run_lock.release()
    if more:
        with sync_unit_of_work(ctx.maker) as session:
            if session.execute(_ANY_DUE).scalar_one():
                outbox.enqueue(session, DELIVER_TASK)
    if stats.delivered or stats.failed or stats.retrying:
        log.info("outbound webhooks: %s", stats.as_dict())
    return stats.as_dict()
