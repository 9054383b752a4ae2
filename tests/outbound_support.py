"""Shared pieces of the outbound-webhook tests: a real HTTP receiver in the test process, the worker context and
running the delivery task the way the in-process worker does."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from sqlalchemy import Engine, text

from robosystems.outbound.events import DELIVER_TASK
from robosystems.worker import context, outbox
from robosystems.worker.context import WorkerContext
from tests.conftest import base_settings

#: fast retries: a few attempts inside a window of seconds instead of days
FAST: dict[str, Any] = {
    "outbound_webhooks_allow_private": True,
    "outbound_webhooks_retry_base_seconds": 0.05,
    "outbound_webhooks_retry_max_delay_seconds": 0.2,
    "outbound_webhooks_retry_jitter": 0.0,
    "outbound_webhooks_connect_timeout_seconds": 2.0,
    "outbound_webhooks_read_timeout_seconds": 3.0,
}


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Receiver:
    """A real HTTP server (a thread of this process).  ``statuses[path]``: answers to give in order (then 200);
    ``delays[path]``: seconds to wait before answering; tracks the most requests in flight per path."""

    port: int = 0
    requests: list[Received] = field(default_factory=list)
    statuses: dict[str, list[int]] = field(default_factory=dict)
    delays: dict[str, float] = field(default_factory=dict)
    response_body: bytes = b"ok"
    in_flight: dict[str, int] = field(default_factory=dict)
    max_in_flight: dict[str, int] = field(default_factory=dict)
    _server: ThreadingHTTPServer | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        if not self.port:  # reserve a free port (nothing listens until start())
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                self.port = s.getsockname()[1]

    def url(self, path: str = "/hooks", host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"

    def start(self) -> Receiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                path = self.path
                with receiver._lock:
                    receiver.requests.append(Received(path, {k.lower(): v for k, v in self.headers.items()}, body))
                    receiver.in_flight[path] = receiver.in_flight.get(path, 0) + 1
                    receiver.max_in_flight[path] = max(receiver.max_in_flight.get(path, 0), receiver.in_flight[path])
                    queue = receiver.statuses.get(path, [])
                    status = queue.pop(0) if queue else 200
                time.sleep(receiver.delays.get(path, 0.0))
                with receiver._lock:
                    receiver.in_flight[path] -= 1
                self.send_response(status)
                self.send_header("content-length", str(len(receiver.response_body)))
                self.end_headers()
                self.wfile.write(receiver.response_body)

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def on(self, path: str) -> list[Received]:
        with self._lock:
            return [r for r in self.requests if r.path == path]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver().start()
    yield r
    r.stop()


def outbound_ctx(database_url: str, engine: Engine, **overrides: Any) -> WorkerContext:
    return context.configure(base_settings(database_url, **{**FAST, **overrides}), engine=engine)


@pytest.fixture
def outbound_worker(database_url: str, sync_engine: Engine) -> Iterator[WorkerContext]:
    yield outbound_ctx(database_url, sync_engine)
    context.reset()


async def deliver(ctx: WorkerContext) -> int:
    """Run the due delivery tasks from the task outbox (what the in-process worker does), off the event loop."""
    return await asyncio.to_thread(
        outbox.drain_until_idle, ctx.engine, outbox.InlineDispatcher(ctx.settings), only=[DELIVER_TASK]
    )


async def deliver_until(ctx: WorkerContext, predicate: Any, timeout: float = 15.0) -> bool:
    """Keep running due delivery tasks (retries become due as time passes) until ``predicate()``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        await deliver(ctx)
        if predicate():
            return True
        await asyncio.sleep(0.05)
    return bool(predicate())


def rows(engine: Engine, sql: str, **params: Any) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        return [dict(r) for r in conn.execute(text(sql), params).mappings()]


def event_types(engine: Engine, org_id: str) -> list[str]:
    return [
        r["type"]
        for r in rows(engine, "SELECT type FROM outbound_events WHERE org_id = :o ORDER BY created_at, id", o=org_id)
    ]


def event_data(engine: Engine, org_id: str, event_type: str) -> list[dict[str, Any]]:
    found = rows(
        engine,
        "SELECT body FROM outbound_events WHERE org_id = :o AND type = :t ORDER BY created_at, id",
        o=org_id,
        t=event_type,
    )
    return [json.loads(r["body"])["data"] for r in found]
