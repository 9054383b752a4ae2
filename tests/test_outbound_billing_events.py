"""Billing and graph events on a real purchase (local payment provider, signed Stripe-shaped webhooks into our inbox,
the worker's code path, real LadybugDB files): every event is written in the transaction of its change and delivered,
signed, to an endpoint on a local receiver."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import Engine
from standardwebhooks import Webhook

from robosystems.graphs import jobs
from robosystems.outbound import jobs as outbound_jobs
from robosystems.outbound.catalogue import SUBSCRIBABLE
from robosystems.payments.factory import get_provider
from robosystems.payments.local import LocalPaymentProvider
from robosystems.worker import context
from robosystems.worker.context import WorkerContext
from tests.graphs_support import ADMIN_KEY, SETTINGS, _real_backend, query, row, run_all, sub_row, worker_settings
from tests.org_helpers import Person, make_org, person
from tests.outbound_support import FAST, Receiver, event_data, event_types, receiver

__all__ = ["_real_backend", "receiver"]  # fixtures

App = tuple[FastAPI, httpx.AsyncClient]
BILLING_EVENTS = [t for t in SUBSCRIBABLE if t.startswith(("subscription.", "invoice.", "graph.", "credits."))]


@pytest.fixture
async def paid_app(app_factory: Callable[..., Any]) -> AsyncIterator[App]:
    async with app_factory(**SETTINGS, **FAST) as pair:
        yield pair


@pytest.fixture
def worker(database_url: str, sync_engine: Engine) -> Iterator[WorkerContext]:
    ctx = context.configure(worker_settings(database_url, **FAST), engine=sync_engine)
    yield ctx
    context.reset()


async def _provider_event(client: httpx.AsyncClient, provider: LocalPaymentProvider, kind: str, obj: Any) -> None:
    event = provider._event(kind, obj, int(time.time()) + 1)  # what Stripe sends
    body, headers = provider.signed(event)
    for _ in range(2):  # Stripe delivers at least once: a redelivery changes nothing
        delivered = await client.post("/admin/v1/webhooks/stripe", content=body, headers=headers)
        assert delivered.status_code == 200, delivered.text


async def buy_graph(
    client: httpx.AsyncClient,
    worker: WorkerContext,
    owner: Person,
    org_id: str,
    name: str,
    before_paying: Callable[[], bool] = lambda: True,
) -> str:
    """Ask for a graph (402 + checkout), pay on the local provider's page, run the worker (webhooks, provisioning,
    deliveries); returns the subscription id."""
    asked = await client.post(
        "/v1/graphs",
        json={"metadata": {"graph_name": name}, "instance_tier": "kuzu-standard", "org_id": org_id},
        headers={**owner.auth, "Idempotency-Key": f"buy-{name}"},
    )
    assert asked.status_code == 402, asked.text
    assert before_paying()
    paid = await client.post(
        f"/billing/local/checkout/{asked.json()['session_id']}/pay", data={"card_number": "4242424242424242"}
    )
    assert paid.status_code == 303
    run_all(worker)
    sub_id: str = asked.json()["subscription_id"]
    return sub_id


async def test_purchase_lifecycle_events(
    paid_app: App, worker: WorkerContext, receiver: Receiver, sync_engine: Engine
) -> None:
    _, client = paid_app
    owner = await person(client, "buyer")
    org_id = (await make_org(client, owner, name="Buyers"))["id"]
    endpoint = (
        await client.post(
            f"/v1/orgs/{org_id}/webhook-endpoints",
            json={"url": receiver.url(), "events": BILLING_EVENTS},
            headers=owner.auth,
        )
    ).json()

    sub_id = await buy_graph(
        client,
        worker,
        owner,
        org_id,
        "Filings",
        before_paying=lambda: (
            event_types(sync_engine, org_id) == ["subscription.created"]  # with the checkout's transaction
        ),
    )
    sub = sub_row(sync_engine, sub_id)
    graph_id = sub["resource_id"]
    assert sub["status"] == "active"

    [provisioned] = event_data(sync_engine, org_id, "graph.provisioned")
    assert provisioned == {
        "graph_id": graph_id,
        "org_id": org_id,
        "subscription_id": sub_id,
        "graph_name": "Filings",
        "graph_tier": "kuzu-standard",
        "plan_name": "kuzu-standard",
        "created_at": provisioned["created_at"],
    }
    [invoice] = event_data(sync_engine, org_id, "invoice.paid")  # invoice.paid AND invoice.payment_succeeded: once
    assert invoice["status"] == "paid" and invoice["subscription_id"] == sub_id and invoice["number"].startswith("INV-")
    moves = [
        (d["previous_attributes"]["status"], d["status"])
        for d in event_data(sync_engine, org_id, "subscription.updated")
    ]
    assert moves == [("pending_payment", "provisioning"), ("provisioning", "active")]

    # credits.low once when the balance falls below 10 % of the monthly allocation
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    pool = row(
        sync_engine, "SELECT current_balance, monthly_allocation FROM graph_credits WHERE graph_id = :g", g=graph_id
    )
    down_to = pool["monthly_allocation"] / 10 - 1
    adjusted = await client.post(
        f"/admin/v1/credits/{graph_id}/adjust",
        json={"amount": str(down_to - pool["current_balance"]), "reason": "test"},
        headers=admin,
    )
    assert adjusted.status_code == 200, adjusted.text
    assert (await query(client, owner, graph_id, "RETURN 1 AS one")).status_code == 200  # below already: no repeat
    [low] = event_data(sync_engine, org_id, "credits.low")
    assert low["graph_id"] == graph_id and low["balance"] == float(down_to)

    # a failed payment attempt (Stripe redelivers it: one event), past_due
    provider = get_provider(worker.settings)
    assert isinstance(provider, LocalPaymentProvider)
    local_invoice = row(
        sync_engine, "SELECT stripe_invoice_id FROM billing_invoices WHERE subscription_id = :s", s=sub_id
    )
    provider_invoice = provider.store.get("invoices", local_invoice["stripe_invoice_id"])["object"]
    await _provider_event(client, provider, "invoice.payment_failed", {**provider_invoice, "attempt_count": 2})
    run_all(worker)
    [failed] = event_data(sync_engine, org_id, "invoice.payment_failed")
    assert failed["attempt_count"] == 2 and sub_row(sync_engine, sub_id)["status"] == "past_due"

    # cancel at period end (subscription.updated), then the period ends: canceled, graph read-only, then removed
    canceled = await client.post(f"/v1/billing/subscriptions/{org_id}/subscription/{sub_id}/cancel", headers=owner.auth)
    assert canceled.status_code == 200, canceled.text
    scheduled = event_data(sync_engine, org_id, "subscription.updated")[-1]
    assert scheduled["cancel_at_period_end"] is True
    assert scheduled["previous_attributes"] == {"cancel_at_period_end": False}
    provider_sub = provider.store.get("subscriptions", sub["provider_subscription_id"])["object"]
    ended = {**provider_sub, "status": "canceled", "ended_at": int(time.time())}
    await _provider_event(client, provider, "customer.subscription.deleted", ended)
    run_all(worker)
    assert sub_row(sync_engine, sub_id)["status"] == "canceled"
    [gone] = event_data(sync_engine, org_id, "subscription.canceled")
    assert gone["id"] == sub_id and gone["previous_attributes"] == {"status": "past_due"}
    [frozen] = event_data(sync_engine, org_id, "graph.read_only")
    assert frozen == {"graph_id": graph_id, "org_id": org_id, "subscription_id": sub_id, "reason": "canceled"}
    expired = context.configure(
        worker_settings(worker.settings.database_url, graph_retention_days=0, **FAST), engine=sync_engine
    )
    assert jobs.remove_expired_graphs(expired)["removed"] == 1
    run_all(expired)
    assert [d["graph_id"] for d in event_data(sync_engine, org_id, "graph.deleted")] == [graph_id]

    # everything recorded was delivered, signed
    recorded = event_types(sync_engine, org_id)
    delivered = [Webhook(endpoint["secret"]).verify(r.body, r.headers)["type"] for r in receiver.on("/hooks")]
    assert sorted(delivered) == sorted(recorded)
    assert set(recorded) == set(BILLING_EVENTS) - {"graph.provisioning_failed"}


async def test_past_due_beyond_grace_turns_read_only_once(
    paid_app: App, worker: WorkerContext, database_url: str, sync_engine: Engine
) -> None:
    """Past due is writable for PAST_DUE_GRACE_DAYS; the scheduled check tells when that ends (once)."""
    _, client = paid_app
    owner = await person(client, "late")
    org_id = (await make_org(client, owner, name="Late payers"))["id"]
    sub_id = await buy_graph(client, worker, owner, org_id, "G")
    provider = get_provider(worker.settings)
    assert isinstance(provider, LocalPaymentProvider)
    invoice_id = row(
        sync_engine, "SELECT stripe_invoice_id FROM billing_invoices WHERE subscription_id = :s", s=sub_id
    )["stripe_invoice_id"]
    await _provider_event(
        client, provider, "invoice.payment_failed", provider.store.get("invoices", invoice_id)["object"]
    )
    run_all(worker)
    assert sub_row(sync_engine, sub_id)["status"] == "past_due"
    assert outbound_jobs.past_due_read_only(worker) == 0  # within the grace period
    no_grace = context.configure(worker_settings(database_url, past_due_grace_days=0, **FAST), engine=sync_engine)
    assert outbound_jobs.past_due_read_only(no_grace) == 1
    outbound_jobs.past_due_read_only(no_grace)  # the next run: no second event for the same episode
    [frozen] = event_data(sync_engine, org_id, "graph.read_only")
    assert frozen["reason"] == "past_due"
