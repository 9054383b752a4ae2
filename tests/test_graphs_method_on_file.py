"""POST /v1/graphs for an org that pays without a checkout page (api.md Graphs create_graph): a payment method on
file (charged at once) or invoice billing (paid later).  The subscription is created at the provider and answered
202 {operation_id, subscription_id, status_url}; it stays ``pending_payment`` until the provider's ``invoice.paid``
arrives (signed webhook -> inbox -> worker), then provisions exactly once.  Without either: 402 with the checkout.

Real database, the real local payment provider (its Stripe-shaped signed events delivered through our webhook
endpoint) and the in-process worker's code path, as in tests/test_e2e_purchase.py.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session

from robosystems.billing.checkout import expire_abandoned_checkouts
from robosystems.payments.factory import get_provider
from robosystems.payments.local import LocalPaymentProvider
from robosystems.payments.local_delivery import wait_for_deliveries
from robosystems.payments.stripe_provider import StripeProvider
from robosystems.webhooks.verify import sign
from robosystems.worker.context import WorkerContext
from tests.graphs_support import ADMIN_KEY, SETTINGS, _real_backend, create_graph, query, row, run_all, sub_row, worker
from tests.helpers import count
from tests.org_helpers import Person, person
from tests.test_stripe_provider import API_VERSION, localstripe

__all__ = ["_real_backend", "localstripe", "worker"]  # fixtures

App = tuple[FastAPI, httpx.AsyncClient]
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
WEBHOOK_PATH = "/admin/v1/webhooks/stripe"
PROVISION_TASKS = "SELECT count(*) FROM task_outbox WHERE task_name = 'robosystems.graphs.provision_graph'"


@pytest.fixture
async def paid_app(app_factory: Callable[..., Any]) -> AsyncIterator[App]:
    # the app's own after-commit delivery goes to a closed port here (refused at once); the test delivers the
    # same events in process below, and the inbox keeps one copy of each
    async with app_factory(**SETTINGS, local_payments_webhook_url="http://127.0.0.1:9/webhooks") as pair:
        yield pair


def local(ctx: WorkerContext) -> LocalPaymentProvider:
    provider = get_provider(ctx.settings)
    assert isinstance(provider, LocalPaymentProvider)
    return provider


async def deliver(app: FastAPI, provider: LocalPaymentProvider, provider_subscription_id: str) -> None:
    """Send the provider's undelivered events of this subscription to our webhook endpoint (in process)."""
    await wait_for_deliveries()  # the app's own attempt has ended
    transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 0))
    async with httpx.AsyncClient(transport=transport, base_url="http://local-payments") as client:

        async def send(body: bytes, headers: dict[str, str]) -> int:
            return (await client.post(WEBHOOK_PATH, content=body, headers=headers)).status_code

        assert await provider.deliver_subscription(provider_subscription_id, send)


async def with_card(client: httpx.AsyncClient) -> Person:
    owner = await person(client, "carded")
    attached = await client.post(
        f"/v1/billing/customer/{owner.personal_org_id}/payment-method",
        json={"payment_method_id": "pm_card_visa"},
        headers=owner.auth,
    )
    assert attached.status_code == 200, attached.text
    return owner


async def test_method_on_file_is_charged_and_the_graph_provisions_after_invoice_paid(
    paid_app: App, worker: WorkerContext, sync_engine: Engine
) -> None:
    app, client = paid_app
    owner = await with_card(client)

    created = await create_graph(client, owner, tier="kuzu-standard", key="carded-1")
    assert created.status_code == 202, created.text
    body = created.json()
    sub_id = body["subscription_id"]
    assert body["operation_id"] == sub_id and body["status_url"] == f"/v1/operations/{sub_id}/status"
    assert body["status"] == "pending_payment" and "checkout_url" not in body
    sub = sub_row(sync_engine, sub_id)
    assert sub["status"] == "pending_payment" and sub["provider_checkout_session_id"] is None
    assert sub["provider_subscription_id"].startswith("sub_local_")
    assert sub["subscription_metadata"]["collection_method"] == "charge_automatically"

    provider = local(worker)
    provider_sub = provider.store.get("subscriptions", sub["provider_subscription_id"])["object"]
    assert provider_sub["collection_method"] == "charge_automatically"
    assert provider_sub["metadata"]["subscription_id"] == sub_id
    assert [e["type"] for e in provider.subscription_events(provider_sub["id"])] == [
        "customer.subscription.created",
        "invoice.finalized",
        "invoice.paid",
    ]
    status = await client.get(body["status_url"], headers=owner.auth)
    assert status.status_code == 200, status.text

    await deliver(app, provider, provider_sub["id"])
    assert count(sync_engine, "SELECT count(*) FROM webhook_events") == 3
    assert sub_row(sync_engine, sub_id)["status"] == "pending_payment"  # nothing before the worker runs

    assert run_all(worker) >= 4  # three events, then provisioning
    sub = sub_row(sync_engine, sub_id)
    assert sub["status"] == "active" and sub["resource_id"]
    graph_id = sub["resource_id"]
    assert count(sync_engine, PROVISION_TASKS) == 1
    done = (await client.get(body["status_url"], headers=owner.auth)).json()
    assert done["status"] == "completed" and done["graph_id"] == graph_id
    invoice = row(sync_engine, "SELECT id, status FROM billing_invoices WHERE subscription_id = :s", s=sub_id)
    assert invoice["status"] == "paid"
    grants = count(
        sync_engine,
        "SELECT count(*) FROM graph_credit_transactions WHERE idempotency_key = :k",
        k=f"invoice:{invoice['id']}",
    )
    assert grants == 1

    wrote = await query(client, owner, graph_id, "CREATE (:Entity {identifier: 'aapl', name: 'Apple'})")
    assert wrote.status_code == 200, wrote.text
    read = await query(client, owner, graph_id, "MATCH (e:Entity) RETURN e.name AS name")
    assert read.status_code == 200 and read.json()["data"] == [{"name": "Apple"}]

    # a redelivery of the whole batch changes nothing (inbox dedup; the transition happened once)
    for event in provider.subscription_events(provider_sub["id"]):
        payload, headers = provider.signed(event)
        assert (await client.post(WEBHOOK_PATH, content=payload, headers=headers)).status_code == 200
    run_all(worker)
    assert count(sync_engine, PROVISION_TASKS) == 1
    # the same request again: the same subscription, now with its graph
    again = await create_graph(client, owner, tier="kuzu-standard", key="carded-1")
    assert again.status_code == 202 and again.json()["subscription_id"] == sub_id
    assert again.json()["graph_id"] == graph_id


async def test_invoice_billing_waits_for_the_invoice_to_be_paid(
    paid_app: App, worker: WorkerContext, sync_engine: Engine
) -> None:
    app, client = paid_app
    owner = await person(client, "invoiced")
    patched = await client.patch(
        f"/admin/v1/customers/{owner.personal_org_id}",
        json={"invoice_billing_enabled": True, "payment_terms": "net_15", "reason": "enterprise contract"},
        headers=ADMIN,
    )
    assert patched.status_code == 200, patched.text

    created = await create_graph(client, owner, key="invoiced-1")
    assert created.status_code == 202, created.text
    sub_id = created.json()["subscription_id"]
    sub = sub_row(sync_engine, sub_id)
    assert sub["subscription_metadata"]["collection_method"] == "send_invoice"
    provider = local(worker)
    provider_sub = provider.store.get("subscriptions", sub["provider_subscription_id"])["object"]
    assert provider_sub["collection_method"] == "send_invoice" and provider_sub["days_until_due"] == 15
    assert [e["type"] for e in provider.subscription_events(provider_sub["id"])] == [
        "customer.subscription.created",
        "invoice.finalized",
    ]

    await deliver(app, provider, provider_sub["id"])
    run_all(worker)
    assert sub_row(sync_engine, sub_id)["status"] == "pending_payment"  # invoiced, not paid
    invoice = row(sync_engine, "SELECT id, status FROM billing_invoices WHERE subscription_id = :s", s=sub_id)
    assert invoice["status"] == "open"
    assert count(sync_engine, PROVISION_TASKS) == 0
    pending = (await client.get(created.json()["status_url"], headers=owner.auth)).json()
    assert pending["status"] != "completed"

    # the customer pays the invoice at the provider: invoice.paid -> provisioning -> active
    provider.pay_invoice(provider_sub["latest_invoice"])
    await deliver(app, provider, provider_sub["id"])
    assert run_all(worker) >= 2
    sub = sub_row(sync_engine, sub_id)
    assert sub["status"] == "active" and sub["resource_id"]
    assert row(sync_engine, "SELECT status FROM billing_invoices WHERE id = :i", i=invoice["id"])["status"] == "paid"
    wrote = await query(client, owner, sub["resource_id"], "CREATE (:Entity {identifier: 'msft', name: 'Microsoft'})")
    assert wrote.status_code == 200, wrote.text
    read = await query(client, owner, sub["resource_id"], "MATCH (e:Entity) RETURN e.name AS name")
    assert read.status_code == 200 and read.json()["data"] == [{"name": "Microsoft"}]


async def test_operator_marking_the_invoice_paid_provisions_once(
    paid_app: App, worker: WorkerContext, sync_engine: Engine
) -> None:
    """Invoice billing paid by wire: the operator's mark-paid is the payment confirmation (provisioning in the
    same transaction); the provider's later invoice.paid for the same invoice provisions nothing more."""
    app, client = paid_app
    owner = await person(client, "wired")
    patched = await client.patch(
        f"/admin/v1/customers/{owner.personal_org_id}",
        json={"invoice_billing_enabled": True, "payment_terms": "net_30", "reason": "enterprise contract"},
        headers=ADMIN,
    )
    assert patched.status_code == 200, patched.text
    created = await create_graph(client, owner, key="wired-1")
    assert created.status_code == 202, created.text
    sub_id = created.json()["subscription_id"]
    provider = local(worker)
    provider_sub = provider.store.get("subscriptions", sub_row(sync_engine, sub_id)["provider_subscription_id"])
    await deliver(app, provider, provider_sub["object"]["id"])
    run_all(worker)
    invoice = row(sync_engine, "SELECT id, status FROM billing_invoices WHERE subscription_id = :s", s=sub_id)
    assert invoice["status"] == "open" and sub_row(sync_engine, sub_id)["status"] == "pending_payment"

    marked = await client.post(
        f"/admin/v1/invoices/{invoice['id']}/mark-paid",
        json={"reason": "wire transfer received", "payment_reference": "WIRE-77"},
        headers=ADMIN,
    )
    assert marked.status_code == 200, marked.text
    assert marked.json()["status"] == "paid"
    assert sub_row(sync_engine, sub_id)["status"] == "provisioning"
    assert count(sync_engine, PROVISION_TASKS) == 1
    audit = row(
        sync_engine,
        "SELECT actor_type, reason FROM billing_audit_logs WHERE subscription_id = :s AND event_type = :e",
        s=sub_id,
        e="subscription_provisioning",
    )
    assert audit["actor_type"] == "admin" and "marked paid" in audit["reason"]
    assert run_all(worker) >= 1
    sub = sub_row(sync_engine, sub_id)
    assert sub["status"] == "active" and sub["resource_id"]

    # marking it again, and the provider's own invoice.paid afterwards, change nothing
    again = await client.post(f"/admin/v1/invoices/{invoice['id']}/mark-paid", json={"reason": "again"}, headers=ADMIN)
    assert again.status_code == 200
    provider.pay_invoice(provider_sub["object"]["latest_invoice"])
    await deliver(app, provider, provider_sub["object"]["id"])
    run_all(worker)
    assert count(sync_engine, PROVISION_TASKS) == 1
    assert count(sync_engine, "SELECT count(*) FROM graphs WHERE org_id = :o", o=owner.personal_org_id) == 1
    assert sub_row(sync_engine, sub_id)["status"] == "active"


async def test_an_event_with_a_truncated_line_list_gets_every_line_from_the_provider(
    paid_app: App, worker: WorkerContext, sync_engine: Engine
) -> None:
    """Stripe embeds the first page of an invoice's lines in the event (``lines.has_more``): the handler lists
    every line from the provider, so the local invoice is complete."""
    _app, client = paid_app
    owner = await person(client, "paged")
    patched = await client.patch(
        f"/admin/v1/customers/{owner.personal_org_id}",
        json={"invoice_billing_enabled": True, "reason": "enterprise contract"},
        headers=ADMIN,
    )
    assert patched.status_code == 200, patched.text
    created = await create_graph(client, owner, key="paged-1")
    assert created.status_code == 202, created.text
    sub_id = created.json()["subscription_id"]
    provider = local(worker)
    provider_sub_id = sub_row(sync_engine, sub_id)["provider_subscription_id"]
    finalized = next(e for e in provider.subscription_events(provider_sub_id) if e["type"] == "invoice.finalized")
    provider_lines = finalized["data"]["object"]["lines"]["data"]
    assert len(provider_lines) == 1

    truncated = json.loads(json.dumps(finalized))
    truncated["id"] = "evt_truncated_lines_1"
    truncated["data"]["object"]["lines"]["data"] = []
    truncated["data"]["object"]["lines"]["has_more"] = True
    body = json.dumps(truncated)
    posted = await client.post(
        WEBHOOK_PATH,
        content=body,
        headers={"Stripe-Signature": sign(body, provider.signing_secret), "Content-Type": "application/json"},
    )
    assert posted.status_code == 200, posted.text
    run_all(worker)
    invoice = row(sync_engine, "SELECT id, status FROM billing_invoices WHERE subscription_id = :s", s=sub_id)
    assert invoice["status"] == "open"
    lines = "SELECT line_metadata->>'provider_line_id' AS line FROM billing_invoice_line_items WHERE invoice_id = :i"
    with sync_engine.connect() as conn:
        stored = [r.line for r in conn.execute(text(lines), {"i": invoice["id"]})]
    assert stored == [provider_lines[0]["id"]]


async def test_no_method_and_no_invoice_billing_still_needs_checkout(
    paid_app: App, worker: WorkerContext, sync_engine: Engine
) -> None:
    _, client = paid_app
    owner = await person(client, "nomethod")
    asked = await create_graph(client, owner, key="nomethod-1")
    assert asked.status_code == 402, asked.text
    assert asked.json()["code"] == "payment_required" and asked.json()["checkout_url"]
    sub = sub_row(sync_engine, asked.json()["subscription_id"])
    assert sub["provider_subscription_id"] is None and sub["provider_checkout_session_id"]


async def test_same_idempotency_key_twice_creates_one_subscription(
    paid_app: App, worker: WorkerContext, sync_engine: Engine
) -> None:
    _, client = paid_app
    owner = await with_card(client)
    first = await create_graph(client, owner, key="twice-1")
    second = await create_graph(client, owner, key="twice-1")
    assert first.status_code == second.status_code == 202, (first.text, second.text)
    assert first.json()["subscription_id"] == second.json()["subscription_id"]
    org = owner.personal_org_id
    assert count(sync_engine, "SELECT count(*) FROM billing_subscriptions WHERE org_id = :o", o=org) == 1
    provider = local(worker)
    sub = sub_row(sync_engine, first.json()["subscription_id"])
    assert len(provider.subscription_events(sub["provider_subscription_id"])) == 3  # created once at the provider
    other = await create_graph(client, owner, name="Other graph", key="twice-1")
    assert other.status_code == 409 and other.json()["code"] == "idempotency_key_reused"


# --- Stripe: the product of a plan (localstripe has no price_data/collection_method on subscriptions, so the
# subscription call itself is not exercised here; its product lookup is) -----------------------------------------


@pytest.mark.filterwarnings("ignore:Use 'content=<...>' to upload raw bytes:DeprecationWarning")
def test_stripe_product_per_plan_is_created_once(localstripe: str) -> None:
    stripe_provider = StripeProvider(secret_key="sk_test_robosystems", api_version=API_VERSION, api_base=localstripe)
    httpx.delete(f"{localstripe}/_config/requests")
    first = stripe_provider._product_for_plan("kuzu-large")
    second = stripe_provider._product_for_plan("kuzu-large")
    assert first == second == "robosystems_plan_kuzu_large"
    product = stripe_provider.client.v1.products.retrieve(first)
    assert product.metadata["plan_name"] == "kuzu-large"
    seen = httpx.get(f"{localstripe}/_config/requests").json()
    creates = [r for r in seen if r["method"] == "POST" and r["path"].startswith("/v1/products")]
    assert len(creates) == 1 and creates[0]["idempotency_key"] == "product:kuzu-large"


async def test_an_open_invoice_is_not_swept_as_an_abandoned_checkout(
    paid_app: App, worker: WorkerContext, sync_engine: Engine
) -> None:
    _, client = paid_app
    invoiced = await person(client, "sweep-invoice")
    patched = await client.patch(
        f"/admin/v1/customers/{invoiced.personal_org_id}",
        json={"invoice_billing_enabled": True, "reason": "enterprise contract"},
        headers=ADMIN,
    )
    assert patched.status_code == 200, patched.text
    on_invoice = (await create_graph(client, invoiced, key="sweep-1")).json()["subscription_id"]
    carded = await with_card(client)
    charged = (await create_graph(client, carded, key="sweep-2")).json()["subscription_id"]
    with sync_engine.begin() as conn:  # both created two days ago, neither paid
        conn.execute(
            text("UPDATE billing_subscriptions SET created_at = now() - interval '2 days' WHERE id IN (:a, :b)"),
            {"a": on_invoice, "b": charged},
        )
    with Session(sync_engine) as session, session.begin():
        assert expire_abandoned_checkouts(session) == 1
    assert sub_row(sync_engine, on_invoice)["status"] == "pending_payment"  # net terms: still awaiting payment
    assert sub_row(sync_engine, charged)["status"] == "expired"  # an unpaid charge ends like an unpaid checkout
