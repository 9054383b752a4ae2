"""Shared pieces of the webhook/worker tests: Stripe-shaped payloads (from Stripe's published fixtures),
signing the way Stripe does (the SDK's own helper), billing rows to act on, a toggleable TCP proxy
(to take PostgreSQL or Redis "down" for one test without touching the shared servers)."""

from __future__ import annotations

import copy
import json
import secrets
import select
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import stripe
from fastapi import FastAPI
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session, sessionmaker

from robosystems.billing import credits
from robosystems.billing import subscriptions as subs
from robosystems.ids import new_id
from robosystems.webhooks import service
from robosystems.worker import context, outbox
from robosystems.worker.context import WorkerContext
from tests.conftest import base_settings

SECRET = "whsec_test_" + "s" * 32
ADMIN_KEY = "admin-test-key-" + "k" * 40
FIXTURES: dict[str, Any] = json.loads(
    (Path(__file__).parent / "fixtures" / "stripe" / "fixtures.json").read_text(encoding="utf-8")
)["resources"]
WEBHOOK_TASKS = (service.PROCESS_EVENT_TASK,)
T0 = 1_790_000_000  # a fixed epoch second for event.created ordering


# --- payloads ----------------------------------------------------------------------------------------------------


def fixture(name: str) -> dict[str, Any]:
    return copy.deepcopy(FIXTURES[name])


def event(event_type: str, obj: dict[str, Any], *, created: int | None = None, event_id: str | None = None) -> dict:
    evt = fixture("event")
    evt.update(
        {
            "id": event_id or f"evt_{secrets.token_hex(12)}",
            "type": event_type,
            "created": created if created is not None else int(time.time()),
            "api_version": "2025-03-31.basil",
            "data": {"object": obj},
            "pending_webhooks": 1,
        }
    )
    return evt


def subscription_obj(
    sub_id: str,
    customer: str,
    status: str,
    *,
    period_start: int = T0,
    period_end: int = T0 + 30 * 86400,
    cancel_at_period_end: bool = False,
    metadata: dict[str, str] | None = None,
) -> dict[str, Any]:
    obj = fixture("subscription")
    obj.update(
        {
            "id": sub_id,
            "customer": customer,
            "status": status,
            "cancel_at_period_end": cancel_at_period_end,
            "cancel_at": None,
            "canceled_at": None,
            "ended_at": None,
            "metadata": metadata or {},
        }
    )
    item = obj["items"]["data"][0]
    item.update({"subscription": sub_id, "current_period_start": period_start, "current_period_end": period_end})
    obj["items"]["url"] = f"/v1/subscription_items?subscription={sub_id}"
    return obj


def checkout_obj(
    cs_id: str, *, subscription: str | None, customer: str | None, payment_status: str, reference: str | None
) -> dict[str, Any]:
    obj = fixture("checkout.session")
    obj.update(
        {
            "id": cs_id,
            "mode": "subscription",
            "subscription": subscription,
            "customer": customer,
            "payment_status": payment_status,
            "status": "complete" if payment_status == "paid" else "open",
            "client_reference_id": reference,
            "metadata": {"subscription_id": reference} if reference else {},
            "payment_intent": None,
        }
    )
    return obj


def invoice_obj(
    in_id: str, *, customer: str, subscription: str | None, status: str, amount: int = 4999, created: int = T0
) -> dict[str, Any]:
    obj = fixture("invoice")
    paid = status == "paid"
    obj.update(
        {
            "id": in_id,
            "customer": customer,
            "status": status,
            "amount_due": amount,
            "amount_paid": amount if paid else 0,
            "amount_remaining": 0 if paid else amount,
            "subtotal": amount,
            "subtotal_excluding_tax": amount,
            "total": amount,
            "total_excluding_tax": amount,
            "created": created,
            "billing_reason": "subscription_create",
            "parent": (
                {
                    "type": "subscription_details",
                    "quote_details": None,
                    "subscription_details": {"subscription": subscription, "metadata": {}},
                }
                if subscription
                else None
            ),
        }
    )
    obj["status_transitions"]["paid_at"] = created if paid else None
    line = obj["lines"]["data"][0]
    line.update({"amount": amount, "invoice": in_id, "subtotal": amount})
    line["parent"]["subscription_item_details"]["subscription"] = subscription
    line["parent"]["invoice_item_details"]["subscription"] = subscription
    line["period"] = {"start": created, "end": created + 30 * 86400}
    return obj


def payment_method_obj(pm_id: str, customer: str) -> dict[str, Any]:
    obj = fixture("payment_method")
    obj.update({"id": pm_id, "customer": customer})
    return obj


# --- signing and posting ------------------------------------------------------------------------------------------


def sign(payload: str, secret: str = SECRET, timestamp: int | None = None) -> str:
    header: str = stripe.WebhookSignature.generate_signature_header(payload, secret, timestamp=timestamp)
    return header


def body_of(evt: dict[str, Any]) -> str:
    return json.dumps(evt, separators=(",", ":"))


async def post_event(
    client: httpx.AsyncClient,
    evt: dict[str, Any] | None = None,
    *,
    body: str | bytes | None = None,
    header: str | None = None,
    secret: str = SECRET,
    timestamp: int | None = None,
) -> httpx.Response:
    raw = body if body is not None else body_of(evt or {})
    text_body = raw.decode("utf-8") if isinstance(raw, bytes) else raw
    signature = header if header is not None else sign(text_body, secret, timestamp)
    headers = {"Content-Type": "application/json"}
    if signature:
        headers["Stripe-Signature"] = signature
    return await client.post("/admin/v1/webhooks/stripe", content=raw, headers=headers)


# --- app, worker context, draining --------------------------------------------------------------------------------


@pytest.fixture
async def wh(app_factory: Callable[..., Any]) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    async with app_factory(stripe_webhook_secret=SECRET, admin_api_key=ADMIN_KEY) as pair:
        yield pair


@pytest.fixture
def worker_ctx(database_url: str, sync_engine: Engine) -> Iterator[WorkerContext]:
    settings = base_settings(database_url, stripe_webhook_secret=SECRET, admin_api_key=ADMIN_KEY)
    ctx = context.configure(settings, engine=sync_engine)
    yield ctx
    context.reset()


def run_worker(ctx: WorkerContext, only: tuple[str, ...] | None = WEBHOOK_TASKS) -> int:
    """Run every due outbox row of the webhook tasks in this thread (what the in-process worker does)."""
    return outbox.drain_until_idle(ctx.engine, outbox.InlineDispatcher(ctx.settings), only=only)


def make_due(engine: Engine) -> None:
    """Bring re-scheduled outbox rows forward (instead of waiting for their backoff)."""
    with engine.begin() as conn:
        conn.execute(text("UPDATE task_outbox SET next_attempt_at = now() WHERE status = 'pending'"))


def scalar(engine: Engine, sql: str, **params: Any) -> Any:
    with engine.connect() as conn:
        return conn.execute(text(sql), params).scalar()


def one(engine: Engine, sql: str, **params: Any) -> Any:
    """Exactly one row (the connection is returned to the pool before the row is used)."""
    with engine.connect() as conn:
        return conn.execute(text(sql), params).one()


def event_row(engine: Engine, event_id: str) -> dict[str, Any]:
    with engine.connect() as conn:
        row = conn.execute(text("SELECT * FROM webhook_events WHERE id = :id"), {"id": event_id}).mappings().one()
        return dict(row)


# --- billing rows ------------------------------------------------------------------------------------------------


def make_org(engine: Engine) -> tuple[str, str]:
    """A user with a personal org: (user_id, org_id)."""
    user_id, org_id = new_id("user"), new_id("org")
    with engine.begin() as conn:
        conn.execute(
            text("INSERT INTO users (id, email, name, password_hash) VALUES (:id, :e, 'Payer', 'x')"),
            {"id": user_id, "e": f"payer-{secrets.token_hex(4)}@example.com"},
        )
        conn.execute(
            text("INSERT INTO orgs (id, name, org_type, personal_user_id) VALUES (:o, 'Payer org', 'personal', :u)"),
            {"o": org_id, "u": user_id},
        )
        conn.execute(
            text("INSERT INTO org_users (id, org_id, user_id, role) VALUES (:i, :o, :u, 'owner')"),
            {"i": new_id("ou"), "o": org_id, "u": user_id},
        )
    return user_id, org_id


class Billing:
    """An org with a billing customer and one graph subscription, in a chosen state."""

    def __init__(
        self,
        ctx: WorkerContext,
        *,
        status: str = "pending_payment",
        linked: bool = True,
        with_graph: bool = False,
        customer: str | None = None,
    ) -> None:
        self.ctx = ctx
        self.user_id, self.org_id = make_org(ctx.engine)
        self.customer = customer or f"cus_{secrets.token_hex(8)}"
        self.provider_sub = f"sub_{secrets.token_hex(8)}"
        self.checkout_session = f"cs_test_{secrets.token_hex(12)}"
        self.graph_id: str | None = None
        maker: sessionmaker[Session] = ctx.maker
        with maker.begin() as s:
            s.execute(
                text("INSERT INTO billing_customers (org_id, provider, stripe_customer_id) VALUES (:o, 'stripe', :c)"),
                {"o": self.org_id, "c": self.customer},
            )
            sub, _ = subs.create_subscription(
                s,
                org_id=self.org_id,
                plan_name="kuzu-standard",
                base_price_cents=4999,
                resource_config={"graph_name": "Webhook graph"},
                payment_provider="stripe",
            )
            self.sub_id = sub.id
            if with_graph:
                self.graph_id = f"kg{secrets.token_hex(8)}"
                s.execute(
                    text(
                        "INSERT INTO graphs (graph_id, graph_name, graph_type, schema_extensions, graph_instance_id, "
                        "graph_tier, org_id) VALUES (:g, 'G', 'entity', '[]'::jsonb, 'default', 'kuzu-standard', :o)"
                    ),
                    {"g": self.graph_id, "o": self.org_id},
                )
                credits.ensure_pool(s, self.graph_id, user_id=self.user_id)
            s.execute(
                text(
                    "UPDATE billing_subscriptions SET status = :st, provider_checkout_session_id = :cs, "
                    "provider_subscription_id = :ps, provider_customer_id = :pc, resource_id = :g WHERE id = :id"
                ),
                {
                    "st": status,
                    "cs": self.checkout_session,
                    "ps": self.provider_sub if linked else None,
                    "pc": self.customer if linked else None,
                    "g": self.graph_id,
                    "id": self.sub_id,
                },
            )

    def sub(self) -> dict[str, Any]:
        with self.ctx.engine.connect() as conn:
            row = (
                conn.execute(text("SELECT * FROM billing_subscriptions WHERE id = :id"), {"id": self.sub_id})
                .mappings()
                .one()
            )
            return dict(row)

    def status(self) -> str:
        return str(self.sub()["status"])


# --- a TCP proxy that can be taken down -------------------------------------------------------------------------


class ToggleProxy:
    """127.0.0.1:<port> -> target.  ``down()`` closes the listener and every open connection (connections are
    refused, like a stopped server); ``up()`` listens again on the same port."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        self.port = int(probe.getsockname()[1])
        probe.close()
        self._listener: socket.socket | None = None
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()

    def up(self) -> None:
        with self._lock:
            if self._listener is not None:
                return
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("127.0.0.1", self.port))
            sock.listen(128)
            self._listener = sock
        threading.Thread(target=self._accept, args=(sock,), daemon=True).start()

    def down(self) -> None:
        with self._lock:
            listener, self._listener = self._listener, None
            conns, self._conns = self._conns, []
        if listener is not None:
            listener.close()
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self.down()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            with self._lock:
                if self._listener is not listener:
                    client.close()
                    upstream.close()
                    return
                self._conns += [client, upstream]
            threading.Thread(target=self._pipe, args=(client, upstream), daemon=True).start()

    @staticmethod
    def _pipe(a: socket.socket, b: socket.socket) -> None:
        sockets = [a, b]
        try:
            while True:
                readable, _, _ = select.select(sockets, [], [], 1.0)
                for sock in readable:
                    data = sock.recv(65536)
                    if not data:
                        return
                    (b if sock is a else a).sendall(data)
        except (OSError, ValueError):  # closed by down() under our feet
            return
        finally:
            for sock in sockets:
                try:
                    sock.close()
                except OSError:
                    pass


def wait_for(predicate: Callable[[], bool], timeout: float = 60.0, interval: float = 0.1) -> bool:
    """Poll a condition (for work done by another process/thread); False if it never became true."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()
