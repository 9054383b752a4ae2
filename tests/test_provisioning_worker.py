"""A real Celery worker subprocess on the Redis broker, killed with SIGKILL in the middle of provisioning.

The worker runs the registered task unmodified; only its graph backend is wrapped so that the FIRST ``create``
announces itself (a file with its pid) and then blocks — a provisioning held mid-flight, deterministically, with
no sleeps.  The test kills that process and checks that the message is delivered again and finishes with one
graph:

* the pool child executing the task is killed -> ``acks_late`` + ``reject_on_worker_lost``: the worker requeues
  the message at once and a new child runs it;
* the whole worker (``--pool solo``) is killed -> the message stays unacked in Redis; a new worker restores it
  after the broker's visibility timeout (shortened for the test) and runs it.

Either way the dead run's advisory lock died with its database connection, so the new run takes over at once
and finishes on the same graph directory.  Each test uses its own queue, so other workers on this Redis never
see these messages.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from sqlalchemy import Engine

from robosystems.graphs.provisioning import PROVISION_GRAPH_TASK, graph_id_for
from robosystems.worker import outbox
from robosystems.worker.celery_app import create_celery_app
from robosystems.worker.context import WorkerContext
from tests.conftest import ROOT
from tests.graphs_support import (
    GRAPH_ROOT,
    _real_backend,
    seed_org,
    seed_subscription,
    sub_row,
    worker,
    worker_settings,
)
from tests.helpers import count

__all__ = ["_real_backend", "worker"]  # fixtures

REDIS_URL = os.environ.get("REDIS_URL", "")
pytestmark = pytest.mark.skipif(not REDIS_URL, reason="needs REDIS_URL (a real broker)")

WORKER_MAIN = r"""
import os, sys, time
from pathlib import Path

from robosystems.graphs import backend as backend_module
from robosystems.graphs.backend import LadybugBackend

GATE = Path(os.environ["TEST_GATE_DIR"])


class HeldFirstCreate(LadybugBackend):
    def create(self, graph_id):
        entered = sorted(GATE.glob("entered-*"))
        (GATE / f"entered-{len(entered) + 1}").write_text(str(os.getpid()))
        if not entered:  # the first run blocks here until it is killed
            while not (GATE / "never").exists():
                time.sleep(0.05)
        super().create(graph_id)


backend_module.set_backend_factory(HeldFirstCreate)

from robosystems.worker.celery_app import celery_app

visibility = os.environ.get("TEST_VISIBILITY_TIMEOUT")
if visibility:
    options = dict(celery_app.conf.broker_transport_options or {})
    options.update(visibility_timeout=int(visibility), unacked_restore_interval=1, unacked_restore_throttle=1)
    celery_app.conf.broker_transport_options = options
celery_app.worker_main(sys.argv[1:])
"""


def wait_for(predicate: Callable[[], Any], what: str, deadline: float = 90.0) -> Any:
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


class WorkerProcess:
    def __init__(self, env: dict[str, str], queue: str, pool: str, log: Path) -> None:
        self.log = log.open("ab")
        args = [
            sys.executable,
            "-c",
            WORKER_MAIN,
            "worker",
            "-Q",
            queue,
            "--pool",
            pool,
            "--concurrency",
            "1",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
            "-l",
            "INFO",
            "-n",
            f"test-{secrets.token_hex(3)}@%h",
        ]
        self.proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT)  # noqa: S603

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.log.close()


@pytest.fixture
def broker_env(database_url: str, tmp_path: Path) -> Iterator[dict[str, Any]]:
    queue = f"rs-test-prov-{secrets.token_hex(4)}"
    gate = tmp_path / "gate"
    gate.mkdir()
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "REDIS_URL": REDIS_URL,
        "CELERY_QUEUE": queue,
        "ENVIRONMENT": "test",
        "JWT_SECRET_KEY": "test-secret-" + "x" * 40,
        "ROBOSYSTEMS_DATA_DIR": str(ROOT / ".robosystems" / "test" / "data"),
        "GRAPH_STORAGE_DIR": str(GRAPH_ROOT),
        "TASK_RETRY_BACKOFF_SECONDS": "0.2",
        "TASK_RETRY_BACKOFF_MAX_SECONDS": "1",
        "LOG_JSON": "false",
        "TEST_GATE_DIR": str(gate),
        "PYTHONPATH": str(ROOT),
    }
    workers: list[WorkerProcess] = []
    yield {"env": env, "queue": queue, "gate": gate, "workers": workers, "log": tmp_path / "worker.log"}
    for w in workers:
        w.stop()
    client = redis.Redis.from_url(REDIS_URL)
    client.delete(queue)


def publish(ctx: WorkerContext, queue: str, sub_id: str) -> None:
    """Through the transactional outbox and its Celery relay, as ``serve`` does with a broker."""
    settings = worker_settings(ctx.settings.database_url, redis_url=REDIS_URL, celery_queue=queue)
    app = create_celery_app(settings)
    with ctx.maker.begin() as s:
        outbox.enqueue(s, PROVISION_GRAPH_TASK, [sub_id])
    assert outbox.drain(ctx.engine, outbox.CeleryDispatcher(settings, app=app)) >= 1


def child_pids(pid: int) -> set[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True, check=False)  # noqa: S603,S607
    return {int(p) for p in out.stdout.split()}


def finished_with_one_graph(engine: Engine, sub_id: str, gate: Path) -> None:
    sub = sub_row(engine, sub_id)
    graph_id = graph_id_for(sub_id)
    assert sub["status"] == "active" and sub["resource_id"] == graph_id
    assert sub["provisioning_attempt"] == 2  # the killed run, then the redelivered one
    assert count(engine, "SELECT count(*) FROM graphs WHERE org_id = :o", o=sub["org_id"]) == 1
    assert (
        count(
            engine,
            "SELECT count(*) FROM graph_credit_transactions WHERE graph_id = :g AND transaction_type = 'allocation'",
            g=graph_id,
        )
        == 1
    )
    assert [p.name for p in GRAPH_ROOT.iterdir() if p.name == graph_id] == [graph_id]
    assert sorted(p.name for p in gate.glob("entered-*")) == ["entered-1", "entered-2"]


def test_killed_pool_child_is_redelivered_and_finishes_once(
    broker_env: dict[str, Any], worker: WorkerContext, sync_engine: Engine
) -> None:
    user_id, org_id = seed_org(sync_engine)
    sub_id = seed_subscription(worker, org_id, actor=user_id)
    w = WorkerProcess(broker_env["env"], broker_env["queue"], "prefork", broker_env["log"])
    broker_env["workers"].append(w)
    publish(worker, broker_env["queue"], sub_id)

    gate: Path = broker_env["gate"]
    pid = int(wait_for(lambda: (gate / "entered-1").exists() and (gate / "entered-1").read_text(), "first run"))
    assert pid != w.proc.pid and pid in child_pids(w.proc.pid)  # a pool child runs the task
    os.kill(pid, signal.SIGKILL)

    wait_for(lambda: sub_row(sync_engine, sub_id)["status"] == "active", "redelivered run to finish")
    finished_with_one_graph(sync_engine, sub_id, gate)
    assert w.proc.poll() is None  # the worker itself survived


def test_killed_worker_is_redelivered_to_a_new_worker(
    broker_env: dict[str, Any], worker: WorkerContext, sync_engine: Engine
) -> None:
    user_id, org_id = seed_org(sync_engine)
    sub_id = seed_subscription(worker, org_id, actor=user_id)
    env = {**broker_env["env"], "TEST_VISIBILITY_TIMEOUT": "3"}
    first = WorkerProcess(env, broker_env["queue"], "solo", broker_env["log"])
    broker_env["workers"].append(first)
    publish(worker, broker_env["queue"], sub_id)

    gate: Path = broker_env["gate"]
    pid = int(wait_for(lambda: (gate / "entered-1").exists() and (gate / "entered-1").read_text(), "first run"))
    assert pid == first.proc.pid  # --pool solo: the worker process itself runs the task
    os.kill(pid, signal.SIGKILL)
    first.proc.wait(10)
    assert sub_row(sync_engine, sub_id)["status"] == "provisioning"  # nothing half-visible

    # The replacement worker arrives after the visibility timeout has passed, as one would in
    # production (visibility timeout: an hour by default); kombu restores the unacked message
    # when the new worker starts consuming (kombu 5.6 has no faster periodic restore option).
    time.sleep(int(env["TEST_VISIBILITY_TIMEOUT"]) + 2)
    second = WorkerProcess(env, broker_env["queue"], "solo", broker_env["log"])
    broker_env["workers"].append(second)
    wait_for(lambda: sub_row(sync_engine, sub_id)["status"] == "active", "restored message to finish")
    finished_with_one_graph(sync_engine, sub_id, gate)
