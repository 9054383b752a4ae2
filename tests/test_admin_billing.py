"""Admin billing API (/admin/v1): subscriptions, invoices, customers, credits, deleted orgs, audit query.

Real database, real domain functions; every change is checked for its audit row."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session

from robosystems.billing import credits, invoices
from robosystems.billing import subscriptions as subs
from robosystems.models import Graph
from robosystems.webhooks.service import PROCESS_EVENT_TASK
from robosystems.worker import context, outbox
from robosystems.worker.context import WorkerContext
from tests.conftest import base_settings
from tests.helpers import count
from tests.org_helpers import Person, make_org, person

SECRET = "whsec_admin_billing_test_" + "a" * 24
ADMIN_KEY = "admin-billing-test-key-" + "k" * 40
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
PROVISION = "robosystems.graphs.provision_graph"


@pytest.fixture
async def api(app_factory: Callable[..., Any]) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    async with app_factory(stripe_webhook_secret=SECRET, admin_api_key=ADMIN_KEY) as pair:
        yield pair


@pytest.fixture
def worker(database_url: str, sync_engine: Engine) -> Iterator[WorkerContext]:
    ctx = context.configure(base_settings(database_url, stripe_webhook_secret=SECRET), engine=sync_engine)
    yield ctx
    context.reset()


def one(engine: Engine, sql: str, **params: Any) -> dict[str, Any]:
    with engine.connect() as conn:
        return dict(conn.execute(text(sql), params).mappings().one())


async def new_checkout(client: httpx.AsyncClient, who: Person, org_id: str) -> dict[str, Any]:
    body = {
        "plan_name": "kuzu-standard",
        "resource_type": "graph",
        "resource_config": {"graph_name": "G"},
        "org_id": org_id,
    }
    response = await client.post("/v1/billing/checkout", json=body, headers=who.auth)
    assert response.status_code == 201, response.text
    result: dict[str, Any] = response.json()
    return result


async def test_admin_key_is_required(api: tuple[FastAPI, httpx.AsyncClient]) -> None:
    _, client = api
    for path in ("/admin/v1/subscriptions", "/admin/v1/invoices", "/admin/v1/audit", "/admin/v1/orgs/deleted"):
        assert (await client.get(path)).status_code == 401
        wrong = await client.get(path, headers={"Authorization": "Bearer " + "x" * 60})
        assert wrong.status_code == 401 and wrong.json()["code"] == "invalid_admin_key"
    user = await person(client)
    assert (await client.get("/admin/v1/subscriptions", headers=user.auth)).status_code == 401
    schema = (await client.get("/openapi.json")).json()
    assert not [p for p in schema["paths"] if p.startswith("/admin/")]


async def test_subscriptions_list_get_patch(
    api: tuple[FastAPI, httpx.AsyncClient], sync_engine: Engine, worker: WorkerContext
) -> None:
    _, client = api
    owner = await person(client)
    org = await make_org(client, owner)
    first = await new_checkout(client, owner, org["id"])
    second = await new_checkout(client, owner, owner.personal_org_id)

    listed = (await client.get(f"/admin/v1/subscriptions?org_id={org['id']}", headers=ADMIN)).json()
    assert listed["total"] == 1 and listed["subscriptions"][0]["id"] == first["subscription_id"]
    assert listed["subscriptions"][0]["provider_checkout_session_id"] == first["session_id"]
    by_status = (await client.get("/admin/v1/subscriptions?status=pending_payment", headers=ADMIN)).json()
    assert {s["id"] for s in by_status["subscriptions"]} == {first["subscription_id"], second["subscription_id"]}
    got = await client.get(f"/admin/v1/subscriptions/{second['subscription_id']}", headers=ADMIN)
    assert got.status_code == 200 and got.json()["org_id"] == owner.personal_org_id
    assert (await client.get("/admin/v1/subscriptions/bsub_missing", headers=ADMIN)).status_code == 404

    url = f"/admin/v1/subscriptions/{first['subscription_id']}"
    no_reason = await client.patch(url, json={"status": "canceled"}, headers=ADMIN)
    assert no_reason.status_code == 422
    empty = await client.patch(url, json={"reason": "nothing"}, headers=ADMIN)
    assert empty.status_code == 422 and empty.json()["code"] == "empty_patch"
    bad_status = await client.patch(url, json={"status": "bogus", "reason": "x" * 5}, headers=ADMIN)
    assert bad_status.status_code == 422
    illegal = await client.patch(url, json={"status": "active", "reason": "skip payment"}, headers=ADMIN)
    assert illegal.status_code == 409 and illegal.json()["code"] == "illegal_transition"

    # payment confirmed out of band: provisioning is requested
    confirmed = await client.patch(
        url, json={"status": "provisioning", "reason": "paid by wire, ticket 7"}, headers=ADMIN
    )
    assert confirmed.status_code == 200, confirmed.text
    assert confirmed.json()["status"] == "provisioning"
    assert (
        count(
            sync_engine,
            "SELECT count(*) FROM task_outbox WHERE task_name = :t AND args ->> 0 = :s",
            t=PROVISION,
            s=first["subscription_id"],
        )
        == 1
    )
    audit = one(
        sync_engine,
        "SELECT * FROM billing_audit_logs WHERE subscription_id = :s AND event_type = 'subscription_provisioning'",
        s=first["subscription_id"],
    )
    assert audit["actor_type"] == "admin" and audit["reason"] == "paid by wire, ticket 7"

    # failed -> provisioning is the admin retry; it enqueues provisioning again
    with Session(sync_engine) as session, session.begin():
        subs.transition(session, first["subscription_id"], "failed", actor="system", reason="disk full")
    retried = await client.patch(url, json={"status": "provisioning", "reason": "retry after fix"}, headers=ADMIN)
    assert retried.status_code == 200 and retried.json()["status"] == "provisioning"
    assert (
        count(
            sync_engine,
            "SELECT count(*) FROM task_outbox WHERE task_name = :t AND args ->> 0 = :s",
            t=PROVISION,
            s=first["subscription_id"],
        )
        == 2
    )

    flag = await client.patch(
        f"/admin/v1/subscriptions/{second['subscription_id']}",
        json={"cancel_at_period_end": True, "reason": "customer asked by phone"},
        headers=ADMIN,
    )
    assert flag.status_code == 200 and flag.json()["cancel_at_period_end"] is True
    assert (
        count(
            sync_engine,
            "SELECT count(*) FROM billing_audit_logs WHERE subscription_id = :s AND "
            "event_type = 'subscription_updated' AND actor_type = 'admin'",
            s=second["subscription_id"],
        )
        == 1
    )


async def test_invoices_list_get_mark_paid(api: tuple[FastAPI, httpx.AsyncClient], sync_engine: Engine) -> None:
    _, client = api
    owner = await person(client)
    now = datetime.now(UTC)
    with Session(sync_engine) as session, session.begin():
        inv = invoices.create_invoice(
            session,
            org_id=owner.personal_org_id,
            period_start=now,
            period_end=now + timedelta(days=30),
            subtotal_cents=12000,
            status="open",
            lines=[
                invoices.LineItemInput(
                    description="Enterprise graph",
                    amount_cents=12000,
                    period_start=now,
                    period_end=now + timedelta(days=30),
                )
            ],
        )
        invoice_id, number = inv.id, inv.invoice_number

    listed = (await client.get(f"/admin/v1/invoices?org_id={owner.personal_org_id}", headers=ADMIN)).json()
    assert listed["total"] == 1 and listed["invoices"][0]["number"] == number
    assert (await client.get("/admin/v1/invoices?status=paid", headers=ADMIN)).json()["total"] == 0
    assert (await client.get("/admin/v1/invoices?status=weird", headers=ADMIN)).status_code == 422
    got = (await client.get(f"/admin/v1/invoices/{invoice_id}", headers=ADMIN)).json()
    assert got["status"] == "open" and got["line_items"][0]["amount_cents"] == 12000

    paid = await client.post(
        f"/admin/v1/invoices/{invoice_id}/mark-paid",
        json={"reason": "wire received", "payment_reference": "WIRE-991"},
        headers=ADMIN,
    )
    assert paid.status_code == 200, paid.text
    body = paid.json()
    assert body["status"] == "paid" and body["amount_paid_cents"] == 12000 and body["paid_at"]
    assert body["payment_reference"] == "WIRE-991" and body["payment_method"] == "manual"
    audit = one(
        sync_engine,
        "SELECT * FROM billing_audit_logs WHERE invoice_id = :i AND event_type = 'invoice_paid'",
        i=invoice_id,
    )
    assert audit["actor_type"] == "admin" and audit["reason"] == "wire received"
    again = await client.post(f"/admin/v1/invoices/{invoice_id}/mark-paid", json={"reason": "again"}, headers=ADMIN)
    assert again.status_code == 200  # idempotent
    assert (
        count(
            sync_engine,
            "SELECT count(*) FROM billing_audit_logs WHERE invoice_id = :i AND event_type = 'invoice_paid'",
            i=invoice_id,
        )
        == 1
    )
    missing = await client.post("/admin/v1/invoices/binv_missing/mark-paid", json={"reason": "xyz"}, headers=ADMIN)
    assert missing.status_code == 404


async def test_customer_patch_enables_invoice_billing(
    api: tuple[FastAPI, httpx.AsyncClient], sync_engine: Engine
) -> None:
    _, client = api
    owner = await person(client)
    url = f"/admin/v1/customers/{owner.personal_org_id}"
    patched = await client.patch(
        url,
        json={
            "invoice_billing_enabled": True,
            "payment_terms": "net_45",
            "billing_email": "ap@example.com",
            "reason": "enterprise contract",
        },
        headers=ADMIN,
    )
    assert patched.status_code == 200, patched.text
    assert patched.json()["invoice_billing_enabled"] is True and patched.json()["payment_terms"] == "net_45"
    view = (await client.get(f"/v1/billing/customer/{owner.personal_org_id}", headers=owner.auth)).json()
    assert view["invoice_billing_enabled"] is True and view["payment_terms"] == "net_45"
    audit = one(
        sync_engine,
        "SELECT * FROM billing_audit_logs WHERE org_id = :o AND event_type = 'customer_updated'",
        o=owner.personal_org_id,
    )
    assert audit["reason"] == "enterprise contract" and audit["event_data"]["after"]["payment_terms"] == "net_45"
    assert (
        await client.patch(url, json={"payment_terms": "whenever", "reason": "bad"}, headers=ADMIN)
    ).status_code == 422
    assert (
        await client.patch(
            "/admin/v1/customers/org_missing", json={"invoice_billing_enabled": True, "reason": "nope"}, headers=ADMIN
        )
    ).status_code == 404


async def test_credit_adjustment(api: tuple[FastAPI, httpx.AsyncClient], sync_engine: Engine) -> None:
    _, client = api
    owner = await person(client)
    graph_id = "kg" + secrets.token_hex(8)
    with Session(sync_engine) as session, session.begin():
        session.add(Graph(graph_id=graph_id, org_id=owner.personal_org_id, graph_name="Ledger", graph_type="generic"))
        session.flush()
        credits.ensure_pool(session, graph_id, user_id=owner.id)
    url = f"/admin/v1/credits/{graph_id}/adjust"
    added = await client.post(url, json={"amount": "150.50", "reason": "goodwill for outage"}, headers=ADMIN)
    assert added.status_code == 200, added.text
    assert Decimal(added.json()["balance"]) == Decimal("150.50")
    too_much = await client.post(url, json={"amount": "-500", "reason": "clawback"}, headers=ADMIN)
    assert too_much.status_code == 409
    removed = await client.post(url, json={"amount": -50, "reason": "correction"}, headers=ADMIN)
    assert Decimal(removed.json()["balance"]) == Decimal("100.50")
    assert (await client.post(url, json={"amount": 0, "reason": "zero"}, headers=ADMIN)).status_code == 422
    ledger = count(
        sync_engine,
        "SELECT count(*) FROM graph_credit_transactions WHERE graph_id = :g AND transaction_type = 'adjustment'",
        g=graph_id,
    )
    assert ledger == 2
    unknown = await client.post(
        "/admin/v1/credits/kg0000000000000000/adjust", json={"amount": 1, "reason": "x" * 3}, headers=ADMIN
    )
    assert unknown.status_code == 404


async def test_deleted_orgs_list_and_restore_and_audit_query(
    api: tuple[FastAPI, httpx.AsyncClient], sync_engine: Engine
) -> None:
    _, client = api
    owner = await person(client)
    org = await make_org(client, owner, "Gone Inc")
    deleted = await client.delete(f"/v1/orgs/{org['id']}", headers=owner.auth)
    assert deleted.status_code == 202, deleted.text
    listed = (await client.get("/admin/v1/orgs/deleted", headers=ADMIN)).json()
    assert [o["id"] for o in listed["orgs"]] == [org["id"]] and listed["orgs"][0]["restorable_until"]
    restored = await client.post(
        f"/admin/v1/orgs/{org['id']}/restore", json={"reason": "deleted by mistake"}, headers=ADMIN
    )
    assert restored.status_code == 200 and restored.json()["restored"] is True
    assert (await client.get(f"/v1/orgs/{org['id']}", headers=owner.auth)).status_code == 200
    again = await client.post(f"/admin/v1/orgs/{org['id']}/restore", json={"reason": "again"}, headers=ADMIN)
    assert again.status_code == 404

    created = await new_checkout(client, owner, org["id"])
    audit = (
        await client.get(f"/admin/v1/audit?org_id={org['id']}&event_type=subscription_created", headers=ADMIN)
    ).json()
    assert audit["total"] == 1 and audit["events"][0]["subscription_id"] == created["subscription_id"]
    assert audit["events"][0]["actor_user_id"] == owner.id
    since = (datetime.now(UTC) + timedelta(minutes=5)).isoformat().replace("+00:00", "Z")
    later = (await client.get("/admin/v1/audit", params={"org_id": org["id"], "since": since}, headers=ADMIN)).json()
    assert later["total"] == 0
    assert (await client.get("/admin/v1/audit?since=yesterday", headers=ADMIN)).status_code == 422
    assert (await client.get("/admin/v1/audit?limit=1000", headers=ADMIN)).status_code == 422


async def test_admin_retry_after_real_payment_flow(
    api: tuple[FastAPI, httpx.AsyncClient], sync_engine: Engine, worker: WorkerContext
) -> None:
    _, client = api
    owner = await person(client)
    created = await new_checkout(client, owner, owner.personal_org_id)
    paid = await client.post(f"/billing/local/checkout/{created['session_id']}/pay", data={"card_number": "4242" * 4})
    assert paid.status_code == 303
    outbox.drain_until_idle(worker.engine, outbox.InlineDispatcher(worker.settings), only=(PROCESS_EVENT_TASK,))
    got = (await client.get(f"/admin/v1/subscriptions/{created['subscription_id']}", headers=ADMIN)).json()
    assert got["status"] == "provisioning" and got["provider_subscription_id"].startswith("sub_local_")
    invoices_listed = (await client.get(f"/admin/v1/invoices?org_id={owner.personal_org_id}", headers=ADMIN)).json()
    assert invoices_listed["total"] == 1 and invoices_listed["invoices"][0]["status"] == "paid"
