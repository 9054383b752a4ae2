"""Background work: without a broker the worker itself (inside ``robosystems serve``), with one the outbox relay.

Two modes, one thread each (plus a small pool for in-process runs):

* **No broker configured** (neither ``CELERY_BROKER_URL`` nor ``REDIS_URL``): the ``task_outbox`` table is
  the queue.  A relay thread claims due rows (``FOR UPDATE SKIP LOCKED`` + a lease of
  ``TASK_LEASE_SECONDS``) and runs the registered Celery task objects directly in a thread pool of
  ``EMBEDDED_WORKER_CONCURRENCY``; a row becomes ``sent`` only when its task has finished.  The periodic
  entries of :mod:`robosystems.worker.schedule` (sweeps, pruning, reconciliation) run in the same pool.
* **Broker configured**: the thread only relays committed outbox rows to the broker, woken at once and every
  ``OUTBOX_POLL_INTERVAL_SECONDS``; ``robosystems worker`` processes run the tasks.  Where it runs is
  ``OUTBOX_RELAY``: ``worker`` (default) — in the main process of every ``robosystems worker``, woken by
  ``LISTEN robosystems_outbox`` (every enqueueing transaction NOTIFYs it; PostgreSQL delivers at commit), so
  the API process only stores and acknowledges; ``api`` — inside ``serve``, woken in-process after commit
  (:func:`robosystems.worker.outbox.notify`).  Several relays share the rows through ``SKIP LOCKED``.
  Measured with ``bench/webhooks.py``: publishing from the API process made it compete with its own requests
  for the GIL (p99 ack 334 ms in a bad run at 200 events/s); relaying in the worker took that work off it.

Why not a Celery worker thread on the in-memory transport: the memory transport loses every queued
message when the process stops (a webhook acknowledged to Stripe would then depend on the sweeper), a
Celery worker assumes it owns the main thread (signal handlers, its own shutdown), and it would be a
second queue beside the outbox that already is durable.  Running the outbox rows directly keeps the
embedded default durable (a crash mid-run only delays the row until its lease expires), adds no
moving part, and executes exactly the same code as a Celery worker: the task object registered by
``@celery_app.task`` (which calls the feature's service function), with the same retry budget
(``TASK_MAX_RETRIES``, ``TASK_RETRY_BACKOFF_SECONDS``).  Several ``serve`` processes share the work
through the row locks.

The task threads run at a lower OS priority (``EMBEDDED_WORKER_NICE``; Linux applies nice values per thread) and
the GIL hand-over interval is cut to ``EMBEDDED_WORKER_SWITCH_INTERVAL_MS`` while they exist, so a burst of work
delays the API's event loop as little as possible (measured with ``bench/webhooks.py``: p50 ack 2.3 s -> 38 ms
at 200 events/s on a busy 2-core machine).  Put the worker in its own process (a broker + ``robosystems worker``)
when the API must not share a CPU with it at all.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from functools import partial
from typing import Literal

import psycopg
from sqlalchemy import Engine

from robosystems.config import Settings
from robosystems.db import libpq_url, resolve_database_url
from robosystems.worker import context, outbox
from robosystems.worker.celery_app import broker_url, celery_app, registered_task_names
from robosystems.worker.schedule import DRAIN_OUTBOX, entries

log = logging.getLogger("robosystems.worker.inprocess")

Mode = Literal["inline", "relay"]


class BackgroundWorker:
    def __init__(
        self, settings: Settings, *, engine: Engine | None = None, mode: Mode | None = None, listen: bool = False
    ) -> None:
        self.settings = settings
        #: also wake on ``NOTIFY robosystems_outbox`` from other processes (the relay inside ``robosystems worker``)
        self.listen = listen
        self._listener: threading.Thread | None = None
        self.mode: Mode = mode or ("relay" if broker_url(settings) else "inline")
        self.ctx = context.configure(settings, engine)
        self._own_engine = engine is None
        self.concurrency = settings.embedded_worker_concurrency
        self.dispatcher: outbox.Dispatcher = (
            outbox.InlineDispatcher(settings) if self.mode == "inline" else outbox.CeleryDispatcher(settings)
        )
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._lock = threading.Lock()
        self._queued: dict[Future[object], str] = {}
        self._pool: ThreadPoolExecutor | None = None
        self._thread: threading.Thread | None = None
        self._next_due: dict[str, float] = {}
        self._previous_switch_interval: float | None = None
        self._api_loop: asyncio.AbstractEventLoop | None = None

    # --- lifecycle -------------------------------------------------------------------------------
    def start(self) -> BackgroundWorker:
        registered_task_names()  # import the feature task modules once, up front
        if self.mode == "inline":
            self._warm_up()
        try:
            self._api_loop = asyncio.get_running_loop()  # started from the API's lifespan
        except RuntimeError:
            self._api_loop = None
        if self.mode == "inline":
            self._pool = ThreadPoolExecutor(
                max_workers=self.concurrency, thread_name_prefix="robosystems-task", initializer=self._lower_priority
            )
            # the API's event loop waits at most ~1 ms (not 5) for a task thread to hand back the GIL
            self._previous_switch_interval = sys.getswitchinterval()
            sys.setswitchinterval(
                min(self._previous_switch_interval, self.settings.embedded_worker_switch_interval_ms / 1000)
            )
            now = time.monotonic()
            for entry in entries(self.settings):
                if entry.task != DRAIN_OUTBOX:
                    self._next_due[entry.name] = now + min(entry.every_seconds, 30.0)
        outbox.add_listener(self.wake)
        self._thread = threading.Thread(target=self._loop, name=f"robosystems-outbox-{self.mode}", daemon=True)
        self._thread.start()
        if self.listen:
            self._listener = threading.Thread(target=self._listen_loop, name="robosystems-outbox-listen", daemon=True)
            self._listener.start()
        log.info(
            "background worker started (mode=%s, concurrency=%s)",
            self.mode,
            self.concurrency if self.mode == "inline" else 0,
        )
        return self

    def _warm_up(self) -> None:
        """Pay the first run's one-off costs now, before the API serves: the lazily imported handler modules,
        ORM mapper configuration and the worker engine's first connections.  Paid inside the first task
        instead, they held the GIL for ~150 ms in the middle of a burst (bench/webhooks.py: the worst 1 % of
        acknowledgements were that one stall)."""
        import importlib

        from sqlalchemy import text
        from sqlalchemy.orm import configure_mappers

        for module in ("robosystems.webhooks.handlers", "robosystems.graphs.provisioning"):
            importlib.import_module(module)
        configure_mappers()
        try:
            with self.ctx.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
        except Exception:  # noqa: BLE001 - a database that is down now is retried by the loop
            log.warning("background worker warm-up: database unavailable")

    def _lower_priority(self) -> None:
        """Background work yields the CPU to the API (Linux applies nice values per thread)."""
        nice = self.settings.embedded_worker_nice
        if nice > 0 and hasattr(os, "setpriority"):
            try:
                os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), nice)
            except OSError:
                log.debug("could not lower the priority of %s", threading.current_thread().name)

    def wake(self) -> None:
        self._wake.set()

    def stop(self, timeout: float = 30.0) -> None:
        outbox.remove_listener(self.wake)
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
        if self._listener is not None:
            self._listener.join(timeout)
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            with self._lock:
                cancelled = [row_id for fut, row_id in self._queued.items() if fut.cancelled() and row_id]
                self._queued.clear()
            try:
                outbox.release(self.ctx.engine, cancelled)
            except Exception:  # noqa: BLE001 - the leases expire on their own
                log.warning("could not release %s queued outbox rows", len(cancelled))
        if self._previous_switch_interval is not None:
            sys.setswitchinterval(self._previous_switch_interval)
        if self._own_engine:
            context.reset(self.ctx)
            self.ctx.engine.dispose()
        log.info("background worker stopped")

    # --- loop ------------------------------------------------------------------------------------
    def _loop(self) -> None:
        self._lower_priority()
        while not self._stop.is_set():
            more = False
            try:
                more = self._tick()
            except Exception:  # noqa: BLE001 - keep the thread alive; rows stay pending
                log.exception("background worker pass failed")
            if not more:
                self._wake.wait(timeout=self.settings.outbox_poll_interval_seconds)
                self._wake.clear()

    def _listen_loop(self) -> None:
        """LISTEN on the outbox channel (own autocommit connection) and wake the loop per notification; reconnect
        with backoff when the server goes away (the poll keeps rows moving meanwhile)."""
        url = libpq_url(resolve_database_url(self.settings))
        delay = 1.0
        while not self._stop.is_set():
            try:
                with psycopg.connect(url, autocommit=True, connect_timeout=5) as conn:
                    conn.execute(f"LISTEN {outbox.NOTIFY_CHANNEL}")
                    self.wake()  # whatever was committed while nobody listened
                    delay = 1.0
                    while not self._stop.is_set():
                        for _ in conn.notifies(timeout=1.0, stop_after=1):
                            self.wake()
            except Exception as exc:  # noqa: BLE001 - keep listening; the poll covers the gap
                log.warning("outbox listener: %s; reconnecting in %.0fs", type(exc).__name__, delay)
                self._stop.wait(delay)
                delay = min(delay * 2, 30.0)

    def _inflight(self) -> int:
        with self._lock:
            return len(self._queued)

    def _tick(self) -> bool:
        if self.mode == "relay":
            limit = self.settings.outbox_batch_size
            return outbox.drain(self.ctx.engine, self.dispatcher, limit=limit) >= limit
        self._run_due_schedule()
        free = self.concurrency * 2 - self._inflight()
        if free <= 0:
            return False  # a finishing run wakes the loop
        known = registered_task_names()
        rows = outbox.claim(
            self.ctx.engine, limit=free, lease_seconds=self.dispatcher.lease_seconds, known=known, all_known=known
        )
        for row in rows:
            self._submit(partial(self._run_row, row), row.id)
        return len(rows) >= free

    def _run_row(self, row: outbox.OutboxRow) -> None:
        self._yield_to_api()
        self.dispatcher.run(self.ctx.engine, row)

    def _yield_to_api(self) -> None:
        """Let a busy API go first: while the event loop takes longer than EMBEDDED_WORKER_YIELD_LAG_MS to run a
        callback, wait (20 ms steps, at most 1 s per task, so background work always progresses)."""
        loop = self._api_loop
        threshold = self.settings.embedded_worker_yield_lag_ms / 1000
        if loop is None or threshold <= 0:
            return
        deadline = time.perf_counter() + 1.0
        while not self._stop.is_set():
            ran = threading.Event()
            sent = time.perf_counter()
            try:
                loop.call_soon_threadsafe(ran.set)
            except RuntimeError:  # loop closed
                return
            if not ran.wait(timeout=1.0) or time.perf_counter() - sent < threshold:
                return
            if time.perf_counter() >= deadline:
                return
            time.sleep(0.02)

    def _submit(self, fn: Callable[[], object], row_id: str) -> None:
        assert self._pool is not None
        future: Future[object] = self._pool.submit(fn)
        with self._lock:
            self._queued[future] = row_id
        future.add_done_callback(self._done)

    def _done(self, future: Future[object]) -> None:
        with self._lock:
            self._queued.pop(future, None)
        if not future.cancelled() and future.exception() is not None:
            log.error("background run failed", exc_info=future.exception())
        self._wake.set()

    def _run_due_schedule(self) -> None:
        now = time.monotonic()
        for entry in entries(self.settings):
            due = self._next_due.get(entry.name)
            if due is None or now < due:
                continue
            self._next_due[entry.name] = now + entry.every_seconds
            task = celery_app.tasks.get(entry.task)
            if task is None:
                continue
            self._submit(partial(task, *entry.args), "")


def start_background_worker(settings: Settings) -> BackgroundWorker | None:
    """For ``serve``: the in-process worker (no broker), or the outbox relay when a broker is configured and
    ``OUTBOX_RELAY=api``; None with a broker and ``OUTBOX_RELAY=worker`` (each ``robosystems worker`` relays)."""
    if broker_url(settings) and settings.outbox_relay == "worker":
        log.info("outbox relay: in the worker processes (OUTBOX_RELAY=worker)")
        return None
    return BackgroundWorker(settings).start()


def start_worker_relay(settings: Settings) -> BackgroundWorker | None:
    """For ``robosystems worker``: the outbox relay in the worker's main process, woken by NOTIFY
    (``OUTBOX_RELAY=worker``, the default); None when ``serve`` relays instead."""
    if settings.outbox_relay != "worker":
        return None
    return BackgroundWorker(settings, mode="relay", listen=True).start()
