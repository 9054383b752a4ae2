"""The task outbox, its dispatchers, the in-process worker and a real Celery worker behind a flaky broker."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
import redis
from sqlalchemy import Engine
from sqlalchemy.engine import make_url

from robosystems.worker import outbox
from robosystems.worker.celery_app import celery_app, create_celery_app, registered_task_names
from robosystems.worker.context import WorkerContext
from robosystems.worker.retry import RetryLater
from tests.conftest import base_settings
from tests.helpers import count
from tests.webhooks_support import (
    SECRET,
    ToggleProxy,
    event,
    event_row,
    make_due,
    one,
    post_event,
    subscription_obj,
    wait_for,
    wh,
    worker_ctx,
)

__all__ = ["wh", "worker_ctx"]  # fixtures

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
CALLS: dict[str, list[Any]] = {}


@celery_app.task(name="tests.record")  # type: ignore[untyped-decorator,unused-ignore]
def record_task(key: str, value: Any) -> None:
    CALLS.setdefault(key, []).append(value)


@celery_app.task(name="tests.flaky")  # type: ignore[untyped-decorator,unused-ignore]
def flaky_task(key: str, failures: int) -> None:
    CALLS.setdefault(key, []).append("try")
    if len(CALLS[key]) <= failures:
        raise RuntimeError("transient")


@celery_app.task(name="tests.later")  # type: ignore[untyped-decorator,unused-ignore]
def later_task(key: str) -> None:
    CALLS.setdefault(key, []).append("try")
    if len(CALLS[key]) == 1:
        raise RetryLater(3600, reason="not yet")


def _forget_queue(queue: str) -> None:
    """Remove the test queue and kombu's bindings for it from the shared Redis."""
    client = redis.Redis.from_url("redis://127.0.0.1:6379/13")
    for key in [queue, *client.scan_iter(f"_kombu.binding*.{queue}")]:
        client.delete(key)


def _row(engine: Engine, row_id: str) -> Any:
    return one(
        engine,
        "SELECT status, attempts, last_error, next_attempt_at > now() AS later FROM task_outbox WHERE id = :i",
        i=row_id,
    )


def test_enqueue_is_sent_only_after_commit(worker_ctx: WorkerContext, sync_engine: Engine) -> None:
    woken: list[int] = []
    listener = lambda: woken.append(1)  # noqa: E731
    outbox.add_listener(listener)
    try:

        def failing_change() -> None:
            with worker_ctx.maker.begin() as session:
                outbox.enqueue(session, "tests.record", ["rolled-back", 1])
                raise RuntimeError("the business change fails")

        with pytest.raises(RuntimeError):
            failing_change()
        assert count(sync_engine, "SELECT count(*) FROM task_outbox") == 0
        assert woken == []
        with worker_ctx.maker.begin() as session:
            row_id = outbox.enqueue(session, "tests.record", ["committed", 1])
            assert woken == []  # not before the commit
        assert woken == [1]
    finally:
        outbox.remove_listener(listener)
    assert _row(sync_engine, row_id).status == "pending"
    outbox.drain_until_idle(sync_engine, outbox.InlineDispatcher(worker_ctx.settings), only=["tests.record"])
    assert CALLS.pop("committed") == [1]
    assert _row(sync_engine, row_id).status == "sent"


def test_unknown_task_stays_pending_with_the_reason(worker_ctx: WorkerContext, sync_engine: Engine) -> None:
    with worker_ctx.maker.begin() as session:
        row_id = outbox.enqueue(session, "tests.not_deployed_yet", ["x"])
    assert outbox.drain_until_idle(sync_engine, outbox.InlineDispatcher(worker_ctx.settings)) == 0
    row = _row(sync_engine, row_id)
    assert (row.status, row.attempts) == ("pending", 0)
    assert row.last_error == outbox.UNKNOWN_TASK_ERROR

    @celery_app.task(name="tests.not_deployed_yet")  # type: ignore[untyped-decorator,unused-ignore]
    def deployed(value: str) -> None:
        CALLS.setdefault("deployed", []).append(value)

    try:
        outbox.drain_until_idle(
            sync_engine, outbox.InlineDispatcher(worker_ctx.settings), only=["tests.not_deployed_yet"]
        )
        assert CALLS.pop("deployed") == ["x"]
        assert _row(sync_engine, row_id).status == "sent"
    finally:
        celery_app.tasks.unregister("tests.not_deployed_yet")


def test_inline_runs_retry_with_backoff_then_fail(database_url: str, sync_engine: Engine) -> None:
    from robosystems.worker import context

    settings = base_settings(database_url, task_max_retries=2, task_retry_backoff_seconds=30)
    ctx = context.configure(settings, engine=sync_engine)
    try:
        dispatcher = outbox.InlineDispatcher(settings)
        with ctx.maker.begin() as session:
            ok_id = outbox.enqueue(session, "tests.flaky", ["recovers", 2])
            bad_id = outbox.enqueue(session, "tests.flaky", ["never", 99])
            later_id = outbox.enqueue(session, "tests.later", ["later"])
        for _ in range(4):
            outbox.drain_until_idle(sync_engine, dispatcher, only=["tests.flaky", "tests.later"])
            row = _row(sync_engine, ok_id)
            if row.status == "pending":
                assert row.later and row.last_error == "RuntimeError"  # waits for its backoff
            make_due(sync_engine)
        assert (_row(sync_engine, ok_id).status, _row(sync_engine, ok_id).attempts) == ("sent", 3)
        assert CALLS.pop("recovers") == ["try"] * 3
        bad = _row(sync_engine, bad_id)
        assert (bad.status, bad.attempts, bad.last_error) == ("failed", 3, "RuntimeError")
        assert CALLS.pop("never") == ["try"] * 3
        assert _row(sync_engine, later_id).status == "sent"
        assert CALLS.pop("later") == ["try", "try"]
    finally:
        context.reset()


def test_concurrent_relays_never_claim_the_same_row(worker_ctx: WorkerContext, sync_engine: Engine) -> None:
    with worker_ctx.maker.begin() as session:
        ids = {outbox.enqueue(session, "tests.record", ["claims", i]) for i in range(40)}
    barrier = threading.Barrier(4)
    claimed: list[list[str]] = [[] for _ in range(4)]

    def relay(n: int) -> None:
        barrier.wait()
        while rows := outbox.claim(sync_engine, limit=3, lease_seconds=60, known=["tests.record"]):
            claimed[n].extend(r.id for r in rows)

    threads = [threading.Thread(target=relay, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    everything = [i for part in claimed for i in part]
    assert sorted(everything) == sorted(ids)  # each row claimed exactly once


async def test_embedded_default_processes_webhooks_in_process(app_factory: Any, sync_engine: Engine) -> None:
    """No broker configured: `serve` runs the worker itself; a webhook is applied without any other process."""
    evt = event("customer.subscription.updated", subscription_obj("sub_embedded", "cus_embedded", "active"))
    async with app_factory(stripe_webhook_secret=SECRET, embedded_worker=True, redis_url="", celery_broker_url="") as (
        app,
        client,
    ):
        response = await post_event(client, evt)
        assert response.status_code == 200
        assert wait_for(lambda: event_row(sync_engine, evt["id"])["status"] == "ignored", timeout=30)
    assert event_row(sync_engine, evt["id"])["note"] == "unknown_subscription"
    assert one(sync_engine, "SELECT status FROM task_outbox").status == "sent"


def test_celery_relay_keeps_rows_while_the_broker_is_down(worker_ctx: WorkerContext, sync_engine: Engine) -> None:
    redis_url = make_url(REDIS_URL)
    proxy = ToggleProxy(redis_url.host or "127.0.0.1", redis_url.port or 6379)
    queue = f"rs-test-{secrets.token_hex(4)}"
    settings = base_settings(
        worker_ctx.settings.database_url, celery_broker_url=f"redis://127.0.0.1:{proxy.port}/13", celery_queue=queue
    )
    dispatcher = outbox.CeleryDispatcher(settings, app=create_celery_app(settings))
    with worker_ctx.maker.begin() as session:
        row_id = outbox.enqueue(session, "tests.record", ["brokered", 1])
    try:
        assert outbox.drain(sync_engine, dispatcher, only=["tests.record"]) == 1
        row = _row(sync_engine, row_id)
        assert (row.status, row.attempts) == ("pending", 1)
        assert row.last_error.startswith("publish failed")
        proxy.up()
        for _ in range(5):
            make_due(sync_engine)
            outbox.drain(sync_engine, dispatcher, only=["tests.record"])
            if _row(sync_engine, row_id).status == "sent":
                break
        assert _row(sync_engine, row_id).status == "sent"
        assert redis.Redis.from_url("redis://127.0.0.1:6379/13").llen(queue) == 1
    finally:
        proxy.close()
        _forget_queue(queue)


@pytest.mark.slow
async def test_redis_down_during_a_webhook_is_processed_when_it_returns(
    wh: Any, worker_ctx: WorkerContext, sync_engine: Engine, database_url: str, tmp_path: Path
) -> None:
    """The webhook is acknowledged while the broker is down (only the database is needed), the relay keeps
    the outbox row, and a real `robosystems worker` applies the event once the broker is back."""
    _, client = wh
    redis_url = make_url(REDIS_URL)
    proxy = ToggleProxy(redis_url.host or "127.0.0.1", redis_url.port or 6379)
    queue = f"rs-test-{secrets.token_hex(4)}"
    broker_db = f"redis://127.0.0.1:{proxy.port}/13"
    settings = base_settings(database_url, celery_broker_url=broker_db, celery_queue=queue)
    dispatcher = outbox.CeleryDispatcher(settings, app=create_celery_app(settings))
    evt = event("customer.subscription.updated", subscription_obj("sub_brokered", "cus_brokered", "active"))
    worker: subprocess.Popen[str] | None = None
    try:
        assert (await post_event(client, evt)).status_code == 200  # Redis down: irrelevant to the ack
        outbox.drain(sync_engine, dispatcher, only=["robosystems.webhooks.process_event"])
        outbox_row = one(sync_engine, "SELECT status, last_error FROM task_outbox")
        assert outbox_row.status == "pending" and outbox_row.last_error.startswith("publish failed")
        assert event_row(sync_engine, evt["id"])["status"] == "received"

        proxy.up()
        env = {
            **os.environ,
            "DATABASE_URL": database_url,
            "CELERY_BROKER_URL": broker_db,
            "CELERY_QUEUE": queue,
            "ENVIRONMENT": "test",
            "ROBOSYSTEMS_DATA_DIR": str(tmp_path),
            "JWT_SECRET_KEY": "worker-test-" + "j" * 40,
            "LOG_JSON": "false",
        }
        worker = subprocess.Popen(  # noqa: S603 - our own CLI
            [sys.executable, "-m", "robosystems.cli", "worker", "--pool", "solo", "--concurrency", "1"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        for _ in range(10):
            make_due(sync_engine)
            outbox.drain(sync_engine, dispatcher, only=["robosystems.webhooks.process_event"])
            if one(sync_engine, "SELECT status FROM task_outbox").status == "sent":
                break
        assert wait_for(lambda: event_row(sync_engine, evt["id"])["status"] == "ignored", timeout=90), (
            "worker did not apply the event"
        )
        row = event_row(sync_engine, evt["id"])
        assert (row["attempts"], row["note"]) == (1, "unknown_subscription")
    finally:
        if worker is not None:
            os.killpg(worker.pid, signal.SIGTERM)
            try:
                worker.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(worker.pid, signal.SIGKILL)
                worker.communicate()
        proxy.close()
        _forget_queue(queue)


def _start_worker(database_url: str, queue: str, data_dir: Path, *args: str, **env: str) -> tuple[Any, list[str]]:
    """``robosystems worker`` (real subprocess) on the shared Redis; returns once its outbox relay is listening."""
    full_env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "CELERY_BROKER_URL": "redis://127.0.0.1:6379/13",
        "CELERY_QUEUE": queue,
        "ENVIRONMENT": "test",
        "ROBOSYSTEMS_DATA_DIR": str(data_dir),
        "JWT_SECRET_KEY": "worker-test-" + "j" * 40,
        "LOG_JSON": "false",
        **env,
    }
    worker = subprocess.Popen(  # noqa: S603 - our own CLI
        [sys.executable, "-m", "robosystems.cli", "worker", *args],
        env=full_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    lines: list[str] = []
    ready = threading.Event()

    def read() -> None:
        assert worker.stdout is not None
        for line in worker.stdout:
            lines.append(line)
            if "background worker started (mode=relay" in line:
                ready.set()

    threading.Thread(target=read, daemon=True).start()
    if not ready.wait(60):
        _stop_worker(worker)
        raise AssertionError("worker did not start its relay:\n" + "".join(lines[-30:]))
    return worker, lines


def _stop_worker(worker: Any) -> None:
    os.killpg(worker.pid, signal.SIGTERM)
    try:
        worker.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait()


@pytest.mark.slow
async def test_the_worker_relays_the_outbox_woken_by_notify(
    wh: Any, sync_engine: Engine, database_url: str, tmp_path: Path
) -> None:
    """OUTBOX_RELAY=worker (default): the API only stores and acknowledges (no relay in it); the relay in
    ``robosystems worker``'s main process is woken by the NOTIFY of the inbox insert -- the poll is 120 s here,
    so the event being applied within seconds proves the wake-up -- publishes, and its pool applies it."""
    _, client = wh
    queue = f"rs-test-{secrets.token_hex(4)}"
    worker, lines = _start_worker(
        database_url, queue, tmp_path, "--pool", "solo", "--concurrency", "1", OUTBOX_POLL_INTERVAL_SECONDS="120"
    )
    try:
        assert wait_for(
            lambda: (
                count(sync_engine, "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'LISTEN robosystems%'") >= 1
            ),
            timeout=15,
        )
        evt = event("customer.subscription.updated", subscription_obj("sub_notified", "cus_notified", "active"))
        assert (await post_event(client, evt)).status_code == 200
        assert wait_for(lambda: event_row(sync_engine, evt["id"])["status"] == "ignored", timeout=20), "".join(
            lines[-30:]
        )
        assert one(sync_engine, "SELECT status FROM task_outbox").status == "sent"
        assert event_row(sync_engine, evt["id"])["attempts"] == 1
    finally:
        _stop_worker(worker)
        _forget_queue(queue)


@pytest.mark.slow
async def test_the_threads_pool_keeps_up_with_a_burst(
    wh: Any, sync_engine: Engine, database_url: str, tmp_path: Path
) -> None:
    """``--pool threads`` with late acks and prefetch 1 used to apply ~2.6 tasks/s (an ack waited for the
    consumer's next wake-up); with the event-loop tick 40 events are applied in a few seconds."""
    _, client = wh
    events = [
        event("customer.subscription.updated", subscription_obj(f"sub_thr{i}", f"cus_thr{i}", "active"))
        for i in range(40)
    ]
    for evt in events:
        assert (await post_event(client, evt)).status_code == 200
    queue = f"rs-test-{secrets.token_hex(4)}"
    worker, lines = _start_worker(database_url, queue, tmp_path, "--pool", "threads", "--concurrency", "2")
    try:
        applied = "SELECT count(*) FROM webhook_events WHERE status = 'ignored'"
        assert wait_for(lambda: count(sync_engine, applied) == len(events), timeout=8), (
            f"{count(sync_engine, applied)} of {len(events)} applied after 8 s\n" + "".join(lines[-20:])
        )
    finally:
        _stop_worker(worker)
        _forget_queue(queue)


def test_task_registry_and_beat_schedule_name_the_tasks() -> None:
    names = registered_task_names()
    schedule = celery_app.conf.beat_schedule
    for entry in schedule.values():
        assert entry["task"] in names, entry
    assert {"robosystems.webhooks.process_event", "robosystems.worker.drain_outbox"} <= names
    task = celery_app.tasks["robosystems.webhooks.process_event"]
    assert task.acks_late is True and task.reject_on_worker_lost is True
