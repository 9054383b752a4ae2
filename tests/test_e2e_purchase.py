"""The whole purchase on embedded defaults, over HTTP: register, create a team, ask for a graph (402 with the
hosted checkout), pay on the local provider's page (plain HTML form POST — the browser run of the same page is
tests/test_local_checkout_browser.py), the signed webhooks land in our inbox, the worker applies them and
provisions the graph, members query it (credits consumed), the subscription is canceled at the provider and
ends, the graph is frozen (read-only) and finally removed after its retention.

The worker is the in-process runner's code path (outbox rows executed in this thread), on the real database,
the real local payment provider and real LadybugDB files.
"""

from __future__ import annotations

import re
import time
from decimal import Decimal

import httpx
from fastapi import FastAPI
from sqlalchemy import Engine

from robosystems.graphs import jobs
from robosystems.payments.factory import get_provider
from robosystems.payments.local import LocalPaymentProvider
from robosystems.worker import context
from robosystems.worker.context import WorkerContext
from tests.graphs_support import (
    GRAPH_ROOT,
    _real_backend,
    paid_app,
    query,
    row,
    run_all,
    sub_row,
    worker,
    worker_settings,
)
from tests.helpers import PASSWORD, count, unique_email
from tests.org_helpers import Person, add_member

__all__ = ["_real_backend", "paid_app", "worker"]  # fixtures

App = tuple[FastAPI, httpx.AsyncClient]


async def test_purchase_to_queryable_graph_to_frozen_to_removed(
    paid_app: App, worker: WorkerContext, sync_engine: Engine
) -> None:
    _, client = paid_app

    # --- register, team ----------------------------------------------------------------------------------------
    email = unique_email("buyer")
    registered = await client.post("/v1/auth/register", json={"name": "Buyer", "email": email, "password": PASSWORD})
    assert registered.status_code == 201, registered.text
    owner = Person(registered.json()["user"]["id"], email, registered.json()["token"], registered.json()["org"]["id"])
    team = await client.post("/v1/orgs", json={"name": "Research team", "org_type": "team"}, headers=owner.auth)
    assert team.status_code == 201, team.text
    org_id = team.json()["id"]
    member = await add_member(client, sync_engine, owner, org_id, "member", "analyst")

    # --- ask for a graph: payment first ------------------------------------------------------------------------
    asked = await client.post(
        "/v1/graphs",
        json={
            "metadata": {"graph_name": "Filings", "description": "10-K", "tags": ["sec"]},
            "instance_tier": "kuzu-large",
            "org_id": org_id,
        },
        headers={**owner.auth, "Idempotency-Key": "buy-filings-1"},
    )
    assert asked.status_code == 402, asked.text
    payment = asked.json()
    assert payment["code"] == "payment_required" and payment["checkout_url"].endswith(payment["session_id"])
    sub_id, session_id = payment["subscription_id"], payment["session_id"]
    again = await client.post(
        "/v1/graphs",
        json={
            "metadata": {"graph_name": "Filings", "description": "10-K", "tags": ["sec"]},
            "instance_tier": "kuzu-large",
            "org_id": org_id,
        },
        headers={**owner.auth, "Idempotency-Key": "buy-filings-1"},
    )
    assert again.status_code == 402 and again.json()["subscription_id"] == sub_id  # same checkout, no second
    assert count(sync_engine, "SELECT count(*) FROM billing_subscriptions WHERE org_id = :o", o=org_id) == 1
    assert (await client.get("/v1/graphs", headers=owner.auth)).json()["graphs"] == []

    # --- pay on the hosted page (HTML form POST) ---------------------------------------------------------------
    page = await client.get(httpx.URL(payment["checkout_url"]).path)
    assert page.status_code == 200 and f'action="/billing/local/checkout/{session_id}/pay"' in page.text
    paid = await client.post(f"/billing/local/checkout/{session_id}/pay", data={"card_number": "4242424242424242"})
    assert paid.status_code == 303
    assert count(sync_engine, "SELECT count(*) FROM webhook_events") == 4  # signed, verified, stored
    assert sub_row(sync_engine, sub_id)["status"] == "pending_payment"  # nothing before the worker runs

    # --- the worker: webhooks, then provisioning ---------------------------------------------------------------
    assert run_all(worker) >= 5
    sub = sub_row(sync_engine, sub_id)
    graph_id = sub["resource_id"]
    assert sub["status"] == "active" and re.fullmatch(r"kg[0-9a-f]{16}", graph_id)
    status = (await client.get(f"/v1/operations/{sub_id}/status", headers=owner.auth)).json()
    assert status["status"] == "completed" and status["graph_id"] == graph_id
    checkout = (await client.get(f"/v1/billing/checkout/{session_id}/status", headers=owner.auth)).json()
    assert checkout["status"] == "active" and checkout["resource_id"] == graph_id
    graph = row(sync_engine, "SELECT org_id, graph_tier, graph_name FROM graphs WHERE graph_id = :g", g=graph_id)
    assert graph == {"org_id": org_id, "graph_tier": "kuzu-large", "graph_name": "Filings"}
    invoice = row(sync_engine, "SELECT id FROM billing_invoices WHERE subscription_id = :s", s=sub_id)
    grants = count(
        sync_engine,
        "SELECT count(*) FROM graph_credit_transactions WHERE idempotency_key = :k",
        k=f"invoice:{invoice['id']}",
    )
    assert grants == 1  # the invoice's credits: once, although webhook and provisioning both could grant them

    for who, role in ((owner, "admin"), (member, "member")):
        listed = (await client.get("/v1/graphs", headers=who.auth)).json()["graphs"]
        assert [(g["graphId"], g["role"]) for g in listed] == [(graph_id, role)]

    # --- query: credits consumed -------------------------------------------------------------------------------
    wrote = await query(client, member, graph_id, "CREATE (:Entity {identifier: 'aapl', name: 'Apple'})")
    assert wrote.status_code == 200, wrote.text
    read = await query(client, owner, graph_id, "MATCH (e:Entity) RETURN e.name AS name")
    assert read.json()["data"] == [{"name": "Apple"}]
    summary = (await client.get(f"/v1/graphs/{graph_id}/credits/summary", headers=owner.auth)).json()
    assert summary["current_balance"] == 49998 and summary["consumed_this_month"] == 2

    # --- cancel at the provider, then the period ends ------------------------------------------------------------
    canceled = await client.post(f"/v1/billing/subscriptions/{org_id}/subscription/{sub_id}/cancel", headers=owner.auth)
    assert canceled.status_code == 200, canceled.text
    assert (await query(client, member, graph_id, "CREATE (:Entity {identifier: 'msft'})")).status_code == 200

    provider = get_provider(worker.settings)
    assert isinstance(provider, LocalPaymentProvider)
    provider_sub = provider.store.get("subscriptions", sub["provider_subscription_id"])["object"]
    assert provider_sub["cancel_at_period_end"] is True
    ended = {**provider_sub, "status": "canceled", "ended_at": int(time.time())}
    event = provider._event("customer.subscription.deleted", ended, int(time.time()) + 1)  # what Stripe sends then
    body, headers = provider.signed(event)
    delivered = await client.post("/admin/v1/webhooks/stripe", content=body, headers=headers)
    assert delivered.status_code == 200, delivered.text
    run_all(worker)
    assert sub_row(sync_engine, sub_id)["status"] == "canceled"

    # --- frozen: reads work, writes are refused by the engine (and refunded) -----------------------------------
    frozen = await query(client, member, graph_id, "CREATE (:Entity {identifier: 'goog'})")
    assert frozen.status_code == 403 and frozen.json()["code"] == "graph_read_only"
    still = await query(client, owner, graph_id, "MATCH (e:Entity) RETURN count(e) AS n")
    assert still.status_code == 200 and still.json()["data"] == [{"n": 2}] and still.json()["read_only"] is True
    pool = row(sync_engine, "SELECT current_balance FROM graph_credits WHERE graph_id = :g", g=graph_id)
    assert Decimal(pool["current_balance"]) == Decimal(49996)  # the refused write was refunded
    jobs.remove_expired_graphs(worker)  # within GRAPH_RETENTION_DAYS: kept
    assert (GRAPH_ROOT / graph_id).exists()

    # --- removed after retention -------------------------------------------------------------------------------
    expired = context.configure(
        worker_settings(worker.settings.database_url, graph_retention_days=0), engine=sync_engine
    )
    assert jobs.remove_expired_graphs(expired)["removed"] == 1
    assert not (GRAPH_ROOT / graph_id).exists()
    gone = await query(client, owner, graph_id, "MATCH (e:Entity) RETURN count(e) AS n")
    assert gone.status_code == 404
    assert (await client.get("/v1/graphs", headers=member.auth)).json()["graphs"] == []
    assert (
        count(
            sync_engine,
            "SELECT count(*) FROM billing_audit_logs WHERE subscription_id = :s AND event_type "
            "IN ('graph_provisioned', 'graph_removed')",
            s=sub_id,
        )
        == 2
    )
