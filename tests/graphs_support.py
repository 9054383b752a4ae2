"""Shared pieces of the graph / provisioning tests: an app and a worker context that share one graph storage
root, creating graphs through the API, running the provisioning task the way the in-process worker does, and
backend wrappers that fail or block on demand (real LadybugDB underneath)."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import Engine, text

from robosystems.graphs import backend as backend_module
from robosystems.graphs.backend import GraphBackendError, LadybugBackend
from robosystems.graphs.provisioning import PROVISION_GRAPH_TASK
from robosystems.worker import context, outbox
from robosystems.worker.context import WorkerContext
from tests.conftest import TEST_DATA_DIR, base_settings
from tests.org_helpers import Person

GRAPH_ROOT = TEST_DATA_DIR / "graphs"
SECRET = "whsec_graphs_test_" + "g" * 24
ADMIN_KEY = "admin-graphs-key-" + "a" * 40
SETTINGS: dict[str, Any] = {
    "graph_storage_dir": GRAPH_ROOT,
    "stripe_webhook_secret": SECRET,
    "admin_api_key": ADMIN_KEY,
    "task_retry_backoff_seconds": 0.01,
    "task_retry_backoff_max_seconds": 0.05,
}


@pytest.fixture
async def free_app(app_factory: Callable[..., Any]) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    """BILLING_ENABLED=false: graphs are provisioned at once."""
    async with app_factory(billing_enabled=False, **SETTINGS) as pair:
        yield pair


@pytest.fixture
async def paid_app(app_factory: Callable[..., Any]) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    """Billing enabled with the local payment provider."""
    async with app_factory(**SETTINGS) as pair:
        yield pair


def worker_settings(database_url: str, **overrides: Any) -> Any:
    return base_settings(database_url, **{**SETTINGS, **overrides})


@pytest.fixture
def worker(database_url: str, sync_engine: Engine) -> Iterator[WorkerContext]:
    ctx = context.configure(worker_settings(database_url), engine=sync_engine)
    yield ctx
    context.reset()


@pytest.fixture(autouse=True)
def _real_backend() -> Iterator[None]:
    yield
    backend_module.set_backend_factory(None)


def run_provisioning(ctx: WorkerContext) -> int:
    """Run every due provisioning outbox row in this thread (what the in-process worker does)."""
    return outbox.drain_until_idle(ctx.engine, outbox.InlineDispatcher(ctx.settings), only=(PROVISION_GRAPH_TASK,))


def run_all(ctx: WorkerContext) -> int:
    return outbox.drain_until_idle(ctx.engine, outbox.InlineDispatcher(ctx.settings))


def make_due(engine: Engine) -> None:
    with engine.begin() as conn:
        conn.execute(text("UPDATE task_outbox SET next_attempt_at = now() WHERE status = 'pending'"))


def row(engine: Engine, sql: str, **params: Any) -> dict[str, Any]:
    with engine.connect() as conn:
        return dict(conn.execute(text(sql), params).mappings().one())


def rows(engine: Engine, sql: str, **params: Any) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        return [dict(r) for r in conn.execute(text(sql), params).mappings().all()]


def sub_row(engine: Engine, sub_id: str) -> dict[str, Any]:
    return row(engine, "SELECT * FROM billing_subscriptions WHERE id = :id", id=sub_id)


async def create_graph(
    client: httpx.AsyncClient,
    who: Person,
    org_id: str | None = None,
    *,
    name: str = "Research graph",
    tier: str | None = None,
    key: str | None = None,
) -> httpx.Response:
    body: dict[str, Any] = {"metadata": {"graph_name": name, "description": "filings", "tags": ["sec"]}}
    if tier is not None:
        body["instance_tier"] = tier
    if org_id is not None:
        body["org_id"] = org_id
    headers = dict(who.auth)
    if key is not None:
        headers["Idempotency-Key"] = key
    return await client.post("/v1/graphs", json=body, headers=headers)


async def provisioned_graph(
    client: httpx.AsyncClient, ctx: WorkerContext, who: Person, org_id: str | None = None, **kwargs: Any
) -> str:
    """Create a graph (billing disabled) and run its provisioning; returns the graph id."""
    response = await create_graph(client, who, org_id, **kwargs)
    assert response.status_code == 202, response.text
    assert run_provisioning(ctx) >= 1
    status = await client.get(response.json()["status_url"], headers=who.auth)
    assert status.status_code == 200 and status.json()["status"] == "completed", status.text
    graph_id: str = status.json()["graph_id"]
    return graph_id


async def query(client: httpx.AsyncClient, who: Person, graph_id: str, cypher: str, **extra: Any) -> httpx.Response:
    return await client.post(f"/v1/graphs/{graph_id}/query", json={"query": cypher, **extra}, headers=who.auth)


# --- backend wrappers ------------------------------------------------------------------------------------------


class FailingBackend(LadybugBackend):
    """``create`` writes partial files, then fails (every attempt, or the first ``failures``)."""

    def __init__(self, root: Path, failures: int | None = None) -> None:
        super().__init__(root)
        self.failures = failures
        self.calls = 0

    def create(self, graph_id: str) -> None:
        self.calls += 1
        directory = self.root / graph_id
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "partial.tmp").write_bytes(b"x" * 1024)
        if self.failures is None or self.calls <= self.failures:
            raise GraphBackendError("simulated disk failure")
        super().create(graph_id)


class GateBackend(LadybugBackend):
    """``create`` signals ``entered`` and waits for ``release`` (a provisioning held mid-flight)."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.entered = threading.Event()
        self.release = threading.Event()
        self.creates = 0
        self._count = threading.Lock()

    def create(self, graph_id: str) -> None:
        with self._count:
            self.creates += 1
        self.entered.set()
        assert self.release.wait(60), "gate never released"
        super().create(graph_id)


# --- rows ------------------------------------------------------------------------------------------------------


def seed_org(engine: Engine, *, max_graphs: int | None = None) -> tuple[str, str]:
    """A user owning a personal org (+ org_limits when ``max_graphs``): (user_id, org_id)."""
    from robosystems.ids import new_id

    user_id, org_id = new_id("user"), new_id("org")
    with engine.begin() as conn:
        conn.execute(
            text("INSERT INTO users (id, email, name, password_hash) VALUES (:id, :e, 'Owner', 'x')"),
            {"id": user_id, "e": f"{user_id.lower()}@example.com"},
        )
        conn.execute(
            text("INSERT INTO orgs (id, name, org_type, personal_user_id) VALUES (:o, 'Org', 'personal', :u)"),
            {"o": org_id, "u": user_id},
        )
        conn.execute(
            text("INSERT INTO org_users (id, org_id, user_id, role) VALUES (:i, :o, :u, 'owner')"),
            {"i": new_id("ou"), "o": org_id, "u": user_id},
        )
        if max_graphs is not None:
            conn.execute(
                text("INSERT INTO org_limits (id, org_id, max_graphs) VALUES (:i, :o, :m)"),
                {"i": new_id("olim"), "o": org_id, "m": max_graphs},
            )
    return user_id, org_id


def seed_subscription(
    ctx: WorkerContext,
    org_id: str,
    *,
    plan: str = "kuzu-standard",
    status: str = "provisioning",
    config: dict[str, Any] | None = None,
    billing_disabled: bool = True,
    actor: str | None = None,
) -> str:
    from robosystems.billing import subscriptions as subs

    with ctx.maker.begin() as s:
        sub, _ = subs.create_subscription(
            s,
            org_id=org_id,
            plan_name=plan,
            base_price_cents=4900,
            resource_type="graph",
            resource_config=config or {"graph_name": "Seeded graph"},
            status=status,
            payment_provider="local",
            metadata={"billing_disabled": True} if billing_disabled else None,
            actor=actor,
        )
        return str(sub.id)


WEBHOOK_TASK = "robosystems.webhooks.process_event"


def run_webhooks(ctx: WorkerContext) -> int:
    return outbox.drain_until_idle(ctx.engine, outbox.InlineDispatcher(ctx.settings), only=(WEBHOOK_TASK,))


async def pay_for_graph(
    client: httpx.AsyncClient, ctx: WorkerContext, who: Person, org_id: str | None = None, **kwargs: Any
) -> dict[str, Any]:
    """POST /v1/graphs -> 402 -> pay on the local hosted page (HTML form POST) -> webhooks applied.
    Returns the 402 body (subscription_id, session_id, checkout_url); the subscription is ``provisioning``."""
    response = await create_graph(client, who, org_id, **kwargs)
    assert response.status_code == 402, response.text
    body: dict[str, Any] = response.json()
    assert body["code"] == "payment_required" and body["checkout_url"]
    page = await client.get(f"/billing/local/checkout/{body['session_id']}")
    assert page.status_code == 200 and "<form" in page.text
    paid = await client.post(
        f"/billing/local/checkout/{body['session_id']}/pay", data={"card_number": "4242424242424242"}
    )
    assert paid.status_code == 303, paid.text
    assert run_webhooks(ctx) >= 4
    assert sub_row(ctx.engine, body["subscription_id"])["status"] == "provisioning"
    return body


def provision_until_settled(ctx: WorkerContext, sub_id: str, rounds: int = 20) -> str:
    """Run the provisioning task (and its retries, brought forward) until the subscription leaves
    ``provisioning``; returns the final status."""
    for _ in range(rounds):
        make_due(ctx.engine)
        run_provisioning(ctx)
        status = str(sub_row(ctx.engine, sub_id)["status"])
        if status != "provisioning":
            return status
    return str(sub_row(ctx.engine, sub_id)["status"])
