"""Checkout: POST /v1/billing/checkout, its status, the local provider's hosted page, abandoned checkouts.

Everything runs on the real database and the real local provider; paying on the hosted page delivers
signed events into our own webhook endpoint (same verification path as Stripe's deliveries), and the
webhook worker is run in this thread (what the in-process worker does).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session

from robosystems.billing.checkout import expire_abandoned_checkouts
from robosystems.billing.tasks import expire_abandoned_checkouts as expire_task
from robosystems.payments.factory import get_provider
from robosystems.payments.local import LocalPaymentProvider
from robosystems.webhooks.service import PROCESS_EVENT_TASK
from robosystems.worker import context, outbox
from robosystems.worker.context import WorkerContext
from tests.conftest import base_settings
from tests.helpers import bearer, count
from tests.org_helpers import OrgSetup, Person, make_org, org_with_roles, person

SECRET = "whsec_checkout_test_" + "c" * 24
PROVISION = "robosystems.graphs.provision_graph"


def checkout_body(name: str = "Research graph", plan: str = "kuzu-standard", **extra: Any) -> dict[str, Any]:
    return {
        "plan_name": plan,
        "resource_type": "graph",
        "resource_config": {"graph_name": name, "description": "filings", "tags": ["sec"]},
        **extra,
    }


@pytest.fixture
async def billing(app_factory: Callable[..., Any]) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    async with app_factory(stripe_webhook_secret=SECRET) as pair:
        yield pair


@pytest.fixture
def worker(database_url: str, sync_engine: Engine) -> Iterator[WorkerContext]:
    ctx = context.configure(base_settings(database_url, stripe_webhook_secret=SECRET), engine=sync_engine)
    yield ctx
    context.reset()


def run_webhook_worker(ctx: WorkerContext) -> int:
    return outbox.drain_until_idle(ctx.engine, outbox.InlineDispatcher(ctx.settings), only=(PROCESS_EVENT_TASK,))


def row(engine: Engine, sql: str, **params: Any) -> dict[str, Any]:
    with engine.connect() as conn:
        return dict(conn.execute(text(sql), params).mappings().one())


def sub_row(engine: Engine, sub_id: str) -> dict[str, Any]:
    return row(engine, "SELECT * FROM billing_subscriptions WHERE id = :id", id=sub_id)


async def checkout(
    client: httpx.AsyncClient, who: Person, org_id: str | None, *, key: str | None = None, **body: Any
) -> httpx.Response:
    headers = dict(who.auth)
    if key is not None:
        headers["Idempotency-Key"] = key
    payload = checkout_body(**body)
    if org_id is not None:
        payload["org_id"] = org_id
    return await client.post("/v1/billing/checkout", json=payload, headers=headers)


def local(app: FastAPI) -> LocalPaymentProvider:
    provider = get_provider(app.state.services.settings)
    assert isinstance(provider, LocalPaymentProvider)
    return provider


# --- creating a checkout -----------------------------------------------------------------------------------------


async def test_checkout_creates_a_pending_subscription_and_a_session(
    billing: tuple[FastAPI, httpx.AsyncClient], sync_engine: Engine
) -> None:
    app, client = billing
    owner = await person(client, "owner")
    org = await make_org(client, owner, "Acme")
    before = datetime.now(UTC)
    response = await checkout(client, owner, org["id"])
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["requires_checkout"] is True and body["billing_disabled"] is False
    assert body["status"] == "pending_payment"
    assert body["subscription_id"].startswith("bsub_") and body["session_id"].startswith("cs_local_")
    assert body["checkout_url"].endswith(f"/billing/local/checkout/{body['session_id']}")

    sub = sub_row(sync_engine, body["subscription_id"])
    assert (sub["org_id"], sub["status"], sub["plan_name"], sub["base_price_cents"]) == (
        org["id"],
        "pending_payment",
        "kuzu-standard",
        4900,
    )
    assert sub["resource_type"] == "graph" and sub["resource_id"] is None
    assert sub["payment_provider"] == "local" and sub["provider_checkout_session_id"] == body["session_id"]
    assert sub["subscription_metadata"]["resource_config"] == {
        "graph_name": "Research graph",
        "description": "filings",
        "tags": ["sec"],
        "schema_extensions": [],
    }
    ttl = app.state.services.settings.checkout_ttl_minutes
    assert before + timedelta(minutes=ttl - 1) < sub["checkout_expires_at"] < before + timedelta(minutes=ttl + 1)

    customer = row(sync_engine, "SELECT * FROM billing_customers WHERE org_id = :o", o=org["id"])
    assert customer["provider"] == "local" and customer["stripe_customer_id"].startswith("cus_local_")
    assert sub["provider_customer_id"] == customer["stripe_customer_id"]
    events = {
        r for (r,) in _rows(sync_engine, "SELECT event_type FROM billing_audit_logs WHERE org_id = :o", o=org["id"])
    }
    assert {"subscription_created", "customer_created"} <= events
    # the provider holds the same session, for the same subscription and price
    view = local(app).view(body["session_id"])
    assert (view.status, view.amount_cents, view.interval) == ("open", 4900, "month")
    assert "Research graph" in view.description


def _rows(engine: Engine, sql: str, **params: Any) -> list[Any]:
    with engine.connect() as conn:
        return list(conn.execute(text(sql), params).all())


async def test_org_defaults_to_the_tokens_org_and_roles_are_enforced(
    billing: tuple[FastAPI, httpx.AsyncClient], sync_engine: Engine
) -> None:
    _, client = billing
    setup: OrgSetup = await org_with_roles(client, sync_engine)
    # no org_id: the token's org (the registration token is scoped to the personal org)
    response = await checkout(client, setup.owner, None)
    assert response.status_code == 201, response.text
    assert sub_row(sync_engine, response.json()["subscription_id"])["org_id"] == setup.owner.personal_org_id
    # a token scoped to the team org (switch-org) checks out for the team org
    switched = await client.post("/v1/auth/switch-org", json={"org_id": setup.org_id}, headers=setup.admin.auth)
    assert switched.status_code == 200, switched.text
    response = await client.post("/v1/billing/checkout", json=checkout_body(), headers=bearer(switched.json()["token"]))
    assert response.status_code == 201, response.text
    assert sub_row(sync_engine, response.json()["subscription_id"])["org_id"] == setup.org_id

    member = await checkout(client, setup.member, setup.org_id)
    assert member.status_code == 403 and member.json()["code"] == "insufficient_role"
    outsider = await person(client, "outsider")
    denied = await checkout(client, outsider, setup.org_id)
    assert denied.status_code == 404 and denied.json()["code"] == "org_not_found"
    unauthenticated = await client.post("/v1/billing/checkout", json=checkout_body(org_id=setup.org_id))
    assert unauthenticated.status_code == 401


async def test_bad_input_is_422(billing: tuple[FastAPI, httpx.AsyncClient], sync_engine: Engine) -> None:
    _, client = billing
    owner = await person(client)
    unknown = await checkout(client, owner, None, plan="kuzu-gigantic")
    assert unknown.status_code == 422 and unknown.json()["code"] == "unknown_plan"
    for payload in (
        {**checkout_body(), "resource_type": "repository"},
        {**checkout_body(), "resource_config": {}},
        {**checkout_body(), "resource_config": {"graph_name": "x" * 101}},
        {"plan_name": "kuzu-standard", "resource_type": "graph"},
        {**checkout_body(), "resource_config": {"graph_name": "ok", "tags": ["x" * 65]}},
    ):
        response = await client.post("/v1/billing/checkout", json=payload, headers=owner.auth)
        assert response.status_code == 422, payload
    bad_key = await checkout(client, owner, None, key="k" * 256)
    assert bad_key.status_code == 422 and bad_key.json()["code"] == "invalid_idempotency_key"
    # a legacy tier alias resolves to its plan; the stored plan is the catalog's name
    alias = await checkout(client, owner, None, plan="standard")
    assert alias.status_code == 201
    assert sub_row(sync_engine, alias.json()["subscription_id"])["plan_name"] == "kuzu-standard"
    assert count(sync_engine, "SELECT count(*) FROM billing_subscriptions") == 1


async def test_graph_limit_and_abandoned_checkouts(
    billing: tuple[FastAPI, httpx.AsyncClient], sync_engine: Engine
) -> None:
    _, client = billing
    owner = await person(client)
    org = await make_org(client, owner)
    with sync_engine.begin() as conn:
        conn.execute(text("UPDATE org_limits SET max_graphs = 2 WHERE org_id = :o"), {"o": org["id"]})
    first = await checkout(client, owner, org["id"], name="one")
    second = await checkout(client, owner, org["id"], name="two")
    assert first.status_code == second.status_code == 201
    third = await checkout(client, owner, org["id"], name="three")
    assert third.status_code == 403 and third.json()["code"] == "graph_limit_reached"
    limits = (await client.get(f"/v1/orgs/{org['id']}/limits", headers=owner.auth)).json()
    assert limits["current_usage"]["graphs"]["current"] == 2 and limits["can_create_graph"] is False

    # the first checkout is abandoned: its session expired more than the grace period ago
    with sync_engine.begin() as conn:
        conn.execute(
            text("UPDATE billing_subscriptions SET checkout_expires_at = now() - interval '6 minutes' WHERE id = :id"),
            {"id": first.json()["subscription_id"]},
        )
    retry = await checkout(client, owner, org["id"], name="three")
    assert retry.status_code == 201, retry.text
    assert sub_row(sync_engine, first.json()["subscription_id"])["status"] == "expired"
    limits = (await client.get(f"/v1/orgs/{org['id']}/limits", headers=owner.auth)).json()
    assert limits["current_usage"]["graphs"]["current"] == 2


async def test_expire_abandoned_checkouts_sweep(
    billing: tuple[FastAPI, httpx.AsyncClient], sync_engine: Engine, worker: WorkerContext
) -> None:
    _, client = billing
    owner = await person(client)
    fresh = (await checkout(client, owner, None, name="fresh")).json()["subscription_id"]
    stale = (await checkout(client, owner, None, name="stale")).json()["subscription_id"]
    in_grace = (await checkout(client, owner, None, name="grace")).json()["subscription_id"]
    with sync_engine.begin() as conn:
        conn.execute(
            text("UPDATE billing_subscriptions SET checkout_expires_at = now() - interval '1 hour' WHERE id = :id"),
            {"id": stale},
        )
        conn.execute(
            text("UPDATE billing_subscriptions SET checkout_expires_at = now() - interval '1 minute' WHERE id = :id"),
            {"id": in_grace},
        )
    with Session(sync_engine) as session, session.begin():
        assert expire_abandoned_checkouts(session) == 1
    with Session(sync_engine) as session, session.begin():
        assert expire_abandoned_checkouts(session) == 0  # idempotent
    statuses = {s: sub_row(sync_engine, s)["status"] for s in (fresh, stale, in_grace)}
    assert statuses == {fresh: "pending_payment", stale: "expired", in_grace: "pending_payment"}
    audit = row(
        sync_engine,
        "SELECT * FROM billing_audit_logs WHERE subscription_id = :s AND event_type = 'subscription_expired'",
        s=stale,
    )
    assert audit["actor_type"] == "system" and audit["reason"] == "checkout abandoned"
    # the periodic task (robosystems.billing.expire_abandoned_checkouts) runs the same sweep
    with sync_engine.begin() as conn:
        conn.execute(
            text("UPDATE billing_subscriptions SET checkout_expires_at = now() - interval '1 hour' WHERE id = :id"),
            {"id": in_grace},
        )
    assert expire_task() == 1
    assert sub_row(sync_engine, in_grace)["status"] == "expired"
    # later: everything past its expiry + grace ends
    with Session(sync_engine) as session, session.begin():
        assert expire_abandoned_checkouts(session, now=datetime.now(UTC) + timedelta(hours=3)) == 1
    assert sub_row(sync_engine, fresh)["status"] == "expired"


# --- idempotency -------------------------------------------------------------------------------------------------


async def test_ten_concurrent_identical_checkouts_make_one_subscription(
    billing: tuple[FastAPI, httpx.AsyncClient], sync_engine: Engine
) -> None:
    app, client = billing
    owner = await person(client)
    org = await make_org(client, owner)
    responses = await asyncio.gather(*(checkout(client, owner, org["id"], key="order-42") for _ in range(10)))
    assert [r.status_code for r in responses] == [201] * 10, [r.text for r in responses]
    bodies = [r.json() for r in responses]
    assert all(b == bodies[0] for b in bodies)
    assert count(sync_engine, "SELECT count(*) FROM billing_subscriptions WHERE org_id = :o", o=org["id"]) == 1
    assert count(sync_engine, "SELECT count(*) FROM billing_customers WHERE org_id = :o", o=org["id"]) == 1
    assert (
        count(
            sync_engine,
            "SELECT count(*) FROM billing_audit_logs WHERE org_id = :o AND event_type = 'subscription_created'",
            o=org["id"],
        )
        == 1
    )
    sessions = [p for p in (local(app).store.root / "checkout_sessions").glob("*.json") if org["id"] in p.read_text()]
    assert len(sessions) == 1  # one provider session

    # the same key later: the same answer; with a different body: refused
    again = await checkout(client, owner, org["id"], key="order-42")
    assert again.status_code == 201 and again.json() == bodies[0]
    other = await checkout(client, owner, org["id"], key="order-42", name="Another graph")
    assert other.status_code == 409 and other.json()["code"] == "idempotency_key_reused"
    # keys are per org: the same key in another org is another checkout
    elsewhere = await checkout(client, owner, None, key="order-42")
    assert elsewhere.status_code == 201 and elsewhere.json()["subscription_id"] != bodies[0]["subscription_id"]


async def test_concurrent_checkouts_respect_the_limit(
    billing: tuple[FastAPI, httpx.AsyncClient], sync_engine: Engine
) -> None:
    _, client = billing
    owner = await person(client)
    org = await make_org(client, owner)
    with sync_engine.begin() as conn:
        conn.execute(text("UPDATE org_limits SET max_graphs = 3 WHERE org_id = :o"), {"o": org["id"]})
    responses = await asyncio.gather(*(checkout(client, owner, org["id"], name=f"g{i}") for i in range(8)))
    codes = sorted(r.status_code for r in responses)
    assert codes == [201] * 3 + [403] * 5
    assert count(sync_engine, "SELECT count(*) FROM billing_subscriptions WHERE org_id = :o", o=org["id"]) == 3


# --- billing disabled ---------------------------------------------------------------------------------------------


async def test_billing_disabled_provisions_at_once(app_factory: Callable[..., Any], sync_engine: Engine) -> None:
    async with app_factory(billing_enabled=False, stripe_webhook_secret=SECRET) as (_, client):
        owner = await person(client)
        response = await checkout(client, owner, None, key="free-1")
        assert response.status_code == 201, response.text
        body = response.json()
        assert body["billing_disabled"] is True and body["requires_checkout"] is False
        assert body["checkout_url"] is None and body["session_id"] is None
        sub = sub_row(sync_engine, body["subscription_id"])
        assert sub["status"] == "provisioning"
        task = row(sync_engine, "SELECT task_name, args FROM task_outbox WHERE task_name = :t", t=PROVISION)
        assert task["args"] == [body["subscription_id"]]
        assert count(sync_engine, "SELECT count(*) FROM billing_customers") == 0  # no provider involved
        again = await checkout(client, owner, None, key="free-1")
        assert again.json() == body
        assert count(sync_engine, "SELECT count(*) FROM task_outbox WHERE task_name = :t", t=PROVISION) == 1
        status = await client.get(f"/v1/billing/checkout/{body['subscription_id']}/status", headers=owner.auth)
        assert status.status_code == 200 and status.json()["status"] == "provisioning"


# --- the hosted page, paying, the status ---------------------------------------------------------------------------


async def test_pay_on_the_local_page_reaches_our_webhook_and_provisioning(
    billing: tuple[FastAPI, httpx.AsyncClient], sync_engine: Engine, worker: WorkerContext
) -> None:
    _, client = billing
    owner = await person(client)
    created = (await checkout(client, owner, None)).json()
    session_id, sub_id = created["session_id"], created["subscription_id"]

    page = await client.get(f"/billing/local/checkout/{session_id}")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "<script" not in page.text.lower()
    assert f'action="/billing/local/checkout/{session_id}/pay"' in page.text
    assert f'action="/billing/local/checkout/{session_id}/cancel"' in page.text
    assert "49.00 USD" in page.text
    assert "default-src 'none'" in page.headers["content-security-policy"]

    declined = await client.post(
        f"/billing/local/checkout/{session_id}/pay", data={"card_number": "4000 0000 0000 0002"}
    )
    assert declined.status_code == 402 and "declined" in declined.text
    assert count(sync_engine, "SELECT count(*) FROM webhook_events") == 0

    paid = await client.post(f"/billing/local/checkout/{session_id}/pay", data={"card_number": "4242424242424242"})
    assert paid.status_code == 303
    assert paid.headers["location"].endswith(f"/billing/checkout/return?session_id={session_id}&result=success")
    types = [r[0] for r in _rows(sync_engine, "SELECT type FROM webhook_events ORDER BY type")]
    assert types == ["checkout.session.completed", "customer.subscription.created", "invoice.finalized", "invoice.paid"]
    assert sub_row(sync_engine, sub_id)["status"] == "pending_payment"  # nothing applied before the worker runs

    status = await client.get(f"/v1/billing/checkout/{session_id}/status", headers=owner.auth)
    assert status.json() == {
        "status": "pending_payment",
        "subscription_id": sub_id,
        "resource_id": None,
        "operation_id": None,
        "error": None,
    }
    assert run_webhook_worker(worker) >= 4
    sub = sub_row(sync_engine, sub_id)
    assert sub["status"] == "provisioning" and sub["provider_subscription_id"].startswith("sub_local_")
    assert (
        count(
            sync_engine,
            "SELECT count(*) FROM task_outbox WHERE task_name = :t AND args = jsonb_build_array(CAST(:s AS text))",
            t=PROVISION,
            s=sub_id,
        )
        == 1
    )
    invoice = row(sync_engine, "SELECT * FROM billing_invoices WHERE subscription_id = :s", s=sub_id)
    assert invoice["status"] == "paid" and invoice["total_cents"] == 4900
    assert re.fullmatch(r"INV-\d{4}-\d{2}-\d{4,}", invoice["invoice_number"])

    status = (await client.get(f"/v1/billing/checkout/{session_id}/status", headers=owner.auth)).json()
    assert status["status"] == "provisioning" and status["error"] is None
    assert status["operation_id"] == sub_id  # GET /v1/operations/{operation_id}/status follows the provisioning
    landing = await client.get(paid.headers["location"].removeprefix("http://127.0.0.1:8000"))
    assert landing.status_code == 200 and 'id="subscription-status">provisioning<' in landing.text

    # paying again, or reloading the page, sends nothing new
    again = await client.post(f"/billing/local/checkout/{session_id}/pay", data={"card_number": "4242424242424242"})
    assert again.status_code == 303
    reloaded = await client.get(f"/billing/local/checkout/{session_id}")
    assert reloaded.status_code == 200 and 'data-status="paid"' in reloaded.text
    assert count(sync_engine, "SELECT count(*) FROM webhook_events") == 4


async def test_cancel_on_the_page_expires_the_checkout(
    billing: tuple[FastAPI, httpx.AsyncClient], sync_engine: Engine, worker: WorkerContext
) -> None:
    _, client = billing
    owner = await person(client)
    created = (await checkout(client, owner, None)).json()
    response = await client.post(f"/billing/local/checkout/{created['session_id']}/cancel")
    assert response.status_code == 303 and response.headers["location"].endswith("result=canceled")
    assert [r[0] for r in _rows(sync_engine, "SELECT type FROM webhook_events")] == ["checkout.session.expired"]
    run_webhook_worker(worker)
    assert sub_row(sync_engine, created["subscription_id"])["status"] == "expired"
    status = (await client.get(f"/v1/billing/checkout/{created['session_id']}/status", headers=owner.auth)).json()
    assert status["status"] == "expired" and status["error"]
    page = await client.get(f"/billing/local/checkout/{created['session_id']}")
    assert page.status_code == 410 and "<form" not in page.text
    paid = await client.post(f"/billing/local/checkout/{created['session_id']}/pay", data={"card_number": "4242"})
    assert paid.status_code == 410
    assert count(sync_engine, "SELECT count(*) FROM webhook_events") == 1


async def test_checkout_status_is_tenant_scoped(
    billing: tuple[FastAPI, httpx.AsyncClient], sync_engine: Engine
) -> None:
    _, client = billing
    setup = await org_with_roles(client, sync_engine)
    created = (await checkout(client, setup.owner, setup.org_id)).json()
    url = f"/v1/billing/checkout/{created['session_id']}/status"
    assert (await client.get(url, headers=setup.member.auth)).status_code == 200
    outsider = await person(client, "outsider")
    hidden = await client.get(url, headers=outsider.auth)
    assert hidden.status_code == 404 and hidden.json()["code"] == "checkout_not_found"
    unknown = await client.get("/v1/billing/checkout/cs_local_nope/status", headers=setup.owner.auth)
    assert unknown.status_code == 404 and unknown.json()["code"] == "checkout_not_found"
    missing_page = await client.get("/billing/local/checkout/cs_local_doesnotexist")
    assert missing_page.status_code == 404
