"""Transactional outbox: work for the broker is written in the transaction that needs it and
relayed only after that transaction commits.

* :func:`enqueue` / :func:`enqueue_async` insert a ``task_outbox`` row in the caller's unit of work,
  ``NOTIFY robosystems_outbox`` in it (PostgreSQL delivers it at commit: relays in other processes
  LISTEN, see :mod:`robosystems.worker.inprocess`) and register an after-commit hook that wakes this
  process's relay (:func:`notify`).  A rolled-back
  transaction leaves no row and sends nothing; a committed one is delivered even if the broker is
  down at that moment (the row stays ``pending`` and is retried with backoff, forever).
* :func:`drain` claims due rows with ``FOR UPDATE SKIP LOCKED`` and a lease (``next_attempt_at``
  pushed into the future, ``attempts + 1``) in a short transaction of its own, then hands each row
  to a dispatcher and settles it:

  - :class:`CeleryDispatcher` publishes to the broker (``task_id`` = the row id) and marks the row
    ``sent``; a publish error re-schedules it.
  - :class:`InlineDispatcher` runs the task in this process and marks the row ``sent`` only when the
    task has finished; a crash mid-run leaves the lease to expire and the row runs again (tasks are
    idempotent).  :class:`~robosystems.worker.retry.RetryLater` or an error re-schedules it with
    backoff until the task's ``max_retries``, then ``failed``.

* A row naming a task that no loaded module registers is left ``pending`` with ``last_error``
  (e.g. a feature's task that is not deployed yet): it runs once the task exists.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Protocol

from sqlalchemy import Engine, and_, func, insert, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from robosystems.config import Settings
from robosystems.db import after_commit
from robosystems.ids import new_id
from robosystems.models import TaskOutbox
from robosystems.worker.retry import RetryLater, backoff_seconds, safe_error

log = logging.getLogger("robosystems.worker.outbox")

UNKNOWN_TASK_ERROR = "unknown task: no loaded module registers it; kept pending"
#: PostgreSQL NOTIFY channel: every transaction that enqueues work notifies it (delivered at commit, once per
#: transaction), so a relay in another process (``robosystems worker``) wakes at once instead of polling.
NOTIFY_CHANNEL = "robosystems_outbox"
_NOTIFY = select(func.pg_notify(NOTIFY_CHANNEL, ""))
# Claims and settlements are bookkeeping: losing the last few in a database crash only re-runs a task (they are
# idempotent), so they commit without waiting for the WAL flush; the work a task does commits synchronously.
_ASYNC_COMMIT = text("SET LOCAL synchronous_commit = off")

_listeners_lock = threading.Lock()
_listeners: list[Callable[[], None]] = []


# --- wake-up hooks -------------------------------------------------------------------------------


def add_listener(fn: Callable[[], None]) -> None:
    """Call ``fn`` (cheap, non-blocking) after any transaction that enqueued work commits."""
    with _listeners_lock:
        _listeners.append(fn)


def remove_listener(fn: Callable[[], None]) -> None:
    with _listeners_lock:
        if fn in _listeners:
            _listeners.remove(fn)


def notify() -> None:
    with _listeners_lock:
        listeners = list(_listeners)
    for fn in listeners:
        try:
            fn()
        except Exception:  # noqa: BLE001 - a wake-up failing must not fail a committed request
            log.exception("outbox listener failed")


# --- enqueue -------------------------------------------------------------------------------------


def _insert(task_name: str, args: Sequence[Any], delay_seconds: float) -> tuple[str, Any]:
    row_id = new_id("tob")
    values: dict[str, Any] = {"id": row_id, "task_name": task_name, "args": list(args)}
    if delay_seconds > 0:
        values["next_attempt_at"] = func.now() + timedelta(seconds=delay_seconds)
    return row_id, insert(TaskOutbox).values(**values)


def enqueue(session: Session, task_name: str, args: Sequence[Any] = (), *, delay_seconds: float = 0) -> str:
    """Add a task to ``session``'s unit of work; it is relayed after commit.  Returns the row id."""
    row_id, stmt = _insert(task_name, args, delay_seconds)
    session.execute(stmt)
    session.execute(_NOTIFY)
    after_commit(session, notify)
    return row_id


async def enqueue_async(
    session: AsyncSession, task_name: str, args: Sequence[Any] = (), *, delay_seconds: float = 0
) -> str:
    row_id, stmt = _insert(task_name, args, delay_seconds)
    await session.execute(stmt)
    await session.execute(_NOTIFY)
    after_commit(session, notify)
    return row_id


# --- claim and settle ----------------------------------------------------------------------------


@dataclass(frozen=True)
class OutboxRow:
    id: str
    task_name: str
    args: list[Any]
    attempts: int


def _flag_unknown_stmt(known: Sequence[str]) -> Any:
    return (
        update(TaskOutbox)
        .where(
            TaskOutbox.status == "pending",
            TaskOutbox.task_name.not_in(list(known)),
            TaskOutbox.last_error.is_distinct_from(UNKNOWN_TASK_ERROR),
        )
        .values(last_error=UNKNOWN_TASK_ERROR)
    )


def claim(
    engine: Engine,
    *,
    limit: int,
    lease_seconds: float,
    known: Iterable[str],
    all_known: Iterable[str] | None = None,
) -> list[OutboxRow]:
    """Lease up to ``limit`` due rows of the tasks in ``known`` (own short transaction), noting first, in the
    same transaction, why pending rows of tasks outside ``all_known`` wait (see :func:`flag_unknown`)."""
    known = list(known)
    if limit <= 0 or not known:
        if all_known is not None:
            flag_unknown(engine, all_known)
        return []
    due = (
        select(TaskOutbox.id)
        .where(
            TaskOutbox.status == "pending",
            TaskOutbox.next_attempt_at <= func.now(),
            TaskOutbox.task_name.in_(known),
        )
        .order_by(TaskOutbox.next_attempt_at, TaskOutbox.created_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    stmt = (
        update(TaskOutbox)
        .where(TaskOutbox.id.in_(due.scalar_subquery()))
        .values(attempts=TaskOutbox.attempts + 1, next_attempt_at=func.now() + timedelta(seconds=lease_seconds))
        .returning(TaskOutbox.id, TaskOutbox.task_name, TaskOutbox.args, TaskOutbox.attempts, TaskOutbox.created_at)
    )
    with engine.begin() as conn:
        conn.execute(_ASYNC_COMMIT)
        if all_known is not None:
            conn.execute(_flag_unknown_stmt(list(all_known)))
        rows = sorted(conn.execute(stmt).all(), key=lambda r: (r.created_at, r.id))
    return [OutboxRow(r.id, r.task_name, list(r.args or []), r.attempts) for r in rows]


def flag_unknown(engine: Engine, known: Iterable[str]) -> int:
    """Note on pending rows of unregistered tasks why they wait (they stay pending)."""
    with engine.begin() as conn:
        result = conn.execute(_flag_unknown_stmt(list(known)))
        return int(result.rowcount or 0)


def settle_sent(engine: Engine, row_ids: str | Sequence[str]) -> None:
    """Mark rows ``sent`` (one statement for a whole published batch)."""
    ids = [row_ids] if isinstance(row_ids, str) else list(row_ids)
    if not ids:
        return
    with engine.begin() as conn:
        conn.execute(_ASYNC_COMMIT)
        conn.execute(
            update(TaskOutbox)
            .where(TaskOutbox.id.in_(ids), TaskOutbox.status == "pending")
            .values(status="sent", sent_at=func.now(), last_error=None)
        )


def settle_retry(engine: Engine, row_id: str, delay_seconds: float, error: str) -> None:
    with engine.begin() as conn:
        conn.execute(
            update(TaskOutbox)
            .where(TaskOutbox.id == row_id, TaskOutbox.status == "pending")
            .values(next_attempt_at=func.now() + timedelta(seconds=delay_seconds), last_error=error[:500])
        )


def settle_failed(engine: Engine, row_id: str, error: str) -> None:
    with engine.begin() as conn:
        conn.execute(
            update(TaskOutbox)
            .where(TaskOutbox.id == row_id, TaskOutbox.status == "pending")
            .values(status="failed", last_error=error[:500])
        )


def release(engine: Engine, row_ids: Sequence[str]) -> None:
    """Give leased rows back at once (e.g. queued in-process runs cancelled at shutdown)."""
    if not row_ids:
        return
    with engine.begin() as conn:
        conn.execute(
            update(TaskOutbox)
            .where(and_(TaskOutbox.id.in_(list(row_ids)), TaskOutbox.status == "pending"))
            .values(next_attempt_at=func.now(), attempts=TaskOutbox.attempts - 1)
        )


# --- dispatchers ---------------------------------------------------------------------------------


class Dispatcher(Protocol):
    lease_seconds: float

    def run(self, engine: Engine, row: OutboxRow) -> None:
        """Hand the row's task off and settle the row."""
        ...

    def run_batch(self, engine: Engine, rows: Sequence[OutboxRow]) -> None:
        """Hand every row's task off and settle the rows."""
        ...


class CeleryDispatcher:
    """Publish to the broker; the row is ``sent`` once the broker accepted the message."""

    def __init__(self, settings: Settings, app: Any = None, lease_seconds: float = 30.0) -> None:
        from robosystems.worker.celery_app import celery_app

        self.settings = settings
        self.app = app if app is not None else celery_app
        self.lease_seconds = lease_seconds

    def run(self, engine: Engine, row: OutboxRow) -> None:
        self.run_batch(engine, [row])

    def run_batch(self, engine: Engine, rows: Sequence[OutboxRow]) -> None:
        sent: list[str] = []
        for row in rows:
            try:
                # ignore_result: nobody waits on an AsyncResult (the database records what happened); without it
                # the client subscribes to a result channel per task (a Redis round trip, and a leak).
                self.app.send_task(row.task_name, args=row.args, task_id=row.id, retry=False, ignore_result=True)
            except Exception as exc:  # noqa: BLE001 - broker down: keep the row, try again later
                delay = backoff_seconds(self.settings, row.attempts)
                log.warning("outbox %s: publish failed (%s); retry in %.0fs", row.id, type(exc).__name__, delay)
                settle_retry(engine, row.id, delay, f"publish failed: {safe_error(exc)}")
                continue
            sent.append(row.id)
        settle_sent(engine, sent)


class InlineDispatcher:
    """Run the task in this process (no broker); ``sent`` only once it finished."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.lease_seconds = float(settings.task_lease_seconds)

    def run_batch(self, engine: Engine, rows: Sequence[OutboxRow]) -> None:
        for row in rows:
            self.run(engine, row)

    def run(self, engine: Engine, row: OutboxRow) -> None:
        from robosystems.worker.celery_app import celery_app

        task = celery_app.tasks.get(row.task_name)
        if task is None:  # unregistered since the claim (should not happen): keep it
            settle_retry(engine, row.id, self.settings.outbox_poll_interval_seconds * 10, UNKNOWN_TASK_ERROR)
            return
        # TASK_MAX_RETRIES of this process, unless the task declares its own ``max_retries``
        explicit = "max_retries" in type(task).__dict__
        max_retries = task.max_retries if explicit else self.settings.task_max_retries
        try:
            task(*row.args)
        except RetryLater as exc:
            delay = exc.countdown
            error = safe_error(exc)
        except Exception as exc:  # noqa: BLE001 - recorded on the row, retried with backoff
            log.exception("task %s (%s) failed on attempt %s", row.task_name, row.id, row.attempts)
            delay = backoff_seconds(self.settings, row.attempts)
            error = safe_error(exc)
        else:
            settle_sent(engine, row.id)
            return
        if max_retries is not None and row.attempts > max_retries:
            log.error("task %s (%s) failed after %s attempts: %s", row.task_name, row.id, row.attempts, error)
            settle_failed(engine, row.id, error)
        else:
            settle_retry(engine, row.id, delay, error)


# --- drain ---------------------------------------------------------------------------------------


def known_tasks() -> frozenset[str]:
    from robosystems.worker.celery_app import registered_task_names

    return registered_task_names()


def drain(engine: Engine, dispatcher: Dispatcher, *, limit: int = 100, only: Iterable[str] | None = None) -> int:
    """Claim and dispatch one batch of due rows (of the tasks in ``only`` when given); returns how many."""
    known = known_tasks()
    selected = known if only is None else known & frozenset(only)
    rows = claim(engine, limit=limit, lease_seconds=dispatcher.lease_seconds, known=selected, all_known=known)
    dispatcher.run_batch(engine, rows)
    return len(rows)


def drain_until_idle(
    engine: Engine,
    dispatcher: Dispatcher,
    *,
    limit: int = 100,
    max_rounds: int = 1000,
    only: Iterable[str] | None = None,
) -> int:
    """Drain until no row is due (tests, the CLI).  Returns how many rows were handled."""
    total = 0
    for _ in range(max_rounds):
        handled = drain(engine, dispatcher, limit=limit, only=only)
        total += handled
        if handled == 0:
            break
    return total
