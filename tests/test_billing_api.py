"""Billing endpoints beyond checkout: customer, payment method, portal, subscriptions (+ cancel at the
provider), invoices, upcoming invoice, and the public offering / tiers -- all on the real database with
the local provider."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session

from robosystems.billing import subscriptions as subs
from robosystems.billing.plans import DEFAULT_PLANS_FILE, get_catalog
from robosystems.payments.factory import get_provider
from robosystems.payments.local import LocalPaymentProvider
from robosystems.webhooks.service import PROCESS_EVENT_TASK
from robosystems.worker import context, outbox
from robosystems.worker.context import WorkerContext
from tests.conftest import base_settings
from tests.helpers import count, snapshot
from tests.org_helpers import OrgSetup, org_with_roles, person

SECRET = "whsec_billing_api_test_" + "b" * 24
BILLING_TABLES = ("billing_customers", "billing_subscriptions", "billing_invoices", "billing_audit_logs")


@pytest.fixture
async def billing(app_factory: Callable[..., Any]) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    async with app_factory(stripe_webhook_secret=SECRET) as pair:
        yield pair


@pytest.fixture
def worker(database_url: str, sync_engine: Engine) -> Iterator[WorkerContext]:
    ctx = context.configure(base_settings(database_url, stripe_webhook_secret=SECRET), engine=sync_engine)
    yield ctx
    context.reset()


@pytest.fixture
async def setup(billing: tuple[FastAPI, httpx.AsyncClient], sync_engine: Engine) -> OrgSetup:
    return await org_with_roles(billing[1], sync_engine)


def local(app: FastAPI) -> LocalPaymentProvider:
    provider = get_provider(app.state.services.settings)
    assert isinstance(provider, LocalPaymentProvider)
    return provider


def one(engine: Engine, sql: str, **params: Any) -> dict[str, Any]:
    with engine.connect() as conn:
        return dict(conn.execute(text(sql), params).mappings().one())


async def paid_subscription(
    client: httpx.AsyncClient, setup: OrgSetup, worker: WorkerContext, *, activate: bool = True
) -> dict[str, Any]:
    """Checkout -> pay on the local page -> webhook worker -> (provisioning ->) active."""
    body = {
        "plan_name": "kuzu-standard",
        "resource_type": "graph",
        "resource_config": {"graph_name": "Paid"},
        "org_id": setup.org_id,
    }
    created = (await client.post("/v1/billing/checkout", json=body, headers=setup.owner.auth)).json()
    paid = await client.post(
        f"/billing/local/checkout/{created['session_id']}/pay", data={"card_number": "4242 4242 4242 4242"}
    )
    assert paid.status_code == 303, paid.text
    outbox.drain_until_idle(worker.engine, outbox.InlineDispatcher(worker.settings), only=(PROCESS_EVENT_TASK,))
    if activate:  # what the provisioning task does once the graph exists
        with Session(worker.engine) as session, session.begin():
            subs.transition(session, created["subscription_id"], "active", actor="system", reason="test provisioned")
    return created


# --- customer and payment method ----------------------------------------------------------------------------------


async def test_customer_get_never_writes_and_hides_details_from_members(
    billing: tuple[FastAPI, httpx.AsyncClient], setup: OrgSetup, sync_engine: Engine
) -> None:
    _, client = billing
    before = snapshot(sync_engine, BILLING_TABLES)
    response = await client.get(f"/v1/billing/customer/{setup.org_id}", headers=setup.member.auth)
    assert response.status_code == 200
    body = response.json()
    assert body["org_id"] == setup.org_id and body["has_payment_method"] is False
    assert body["payment_methods"] == [] and body["stripe_customer_id"] is None and body["created_at"]
    assert snapshot(sync_engine, BILLING_TABLES) == before  # a GET never writes

    attached = await client.post(
        f"/v1/billing/customer/{setup.org_id}/payment-method",
        json={"payment_method_id": "pm_card_visa"},
        headers=setup.owner.auth,
    )
    assert attached.status_code == 200, attached.text
    pm = attached.json()["payment_method"]
    assert attached.json()["message"] and pm["brand"] == "visa" and pm["last4"] == "4242" and pm["is_default"]

    owner_view = (await client.get(f"/v1/billing/customer/{setup.org_id}", headers=setup.owner.auth)).json()
    assert owner_view["has_payment_method"] is True
    assert owner_view["stripe_customer_id"].startswith("cus_local_")
    assert owner_view["payment_methods"] == [pm]
    admin_view = (await client.get(f"/v1/billing/customer/{setup.org_id}", headers=setup.admin.auth)).json()
    assert admin_view["payment_methods"] == [pm]
    member_view = (await client.get(f"/v1/billing/customer/{setup.org_id}", headers=setup.member.auth)).json()
    assert member_view["has_payment_method"] is True
    assert member_view["payment_methods"] == [] and member_view["stripe_customer_id"] is None

    outsider = await person(client, "outsider")
    hidden = await client.get(f"/v1/billing/customer/{setup.org_id}", headers=outsider.auth)
    assert hidden.status_code == 404


async def test_payment_method_is_attached_at_the_provider_and_recorded(
    billing: tuple[FastAPI, httpx.AsyncClient], setup: OrgSetup, sync_engine: Engine
) -> None:
    app, client = billing
    url = f"/v1/billing/customer/{setup.org_id}/payment-method"
    admin = await client.post(url, json={"payment_method_id": "pm_card_visa"}, headers=setup.admin.auth)
    assert admin.status_code == 403 and admin.json()["code"] == "insufficient_role"
    declined = await client.post(url, json={"payment_method_id": "pm_card_chargeDeclined"}, headers=setup.owner.auth)
    assert declined.status_code == 402 and declined.json()["code"] == "card_declined"
    unknown = await client.post(url, json={"payment_method_id": "pm_unknown_123"}, headers=setup.owner.auth)
    assert unknown.status_code == 422 and unknown.json()["code"] == "invalid_payment_method"
    malformed = await client.post(url, json={"payment_method_id": "pm card; drop"}, headers=setup.owner.auth)
    assert malformed.status_code == 422
    # a refused method records nothing (the request's transaction, customer row included, rolled back)
    assert count(sync_engine, "SELECT count(*) FROM billing_customers WHERE org_id = :o", o=setup.org_id) == 0

    ok = await client.post(url, json={"payment_method_id": "pm_card_mastercard"}, headers=setup.owner.auth)
    assert ok.status_code == 200, ok.text
    customer = one(sync_engine, "SELECT * FROM billing_customers WHERE org_id = :o", o=setup.org_id)
    pm_id = ok.json()["payment_method"]["id"]
    assert customer["has_payment_method"] is True and customer["default_payment_method_id"] == pm_id
    assert customer["payment_method_summary"]["last4"] == "4444"
    # attached at the provider too: it is the customer's default there
    remote = local(app).store.get("customers", customer["stripe_customer_id"])["object"]
    assert remote["invoice_settings"]["default_payment_method"] == pm_id
    audit = one(
        sync_engine,
        "SELECT * FROM billing_audit_logs WHERE org_id = :o AND event_type = 'payment_method_updated'",
        o=setup.org_id,
    )
    assert audit["actor_user_id"] == setup.owner.id
    assert count(sync_engine, "SELECT count(*) FROM billing_customers WHERE org_id = :o", o=setup.org_id) == 1


async def test_portal_session(billing: tuple[FastAPI, httpx.AsyncClient], setup: OrgSetup) -> None:
    _, client = billing
    url = f"/v1/billing/customer/{setup.org_id}/portal"
    member = await client.post(url, headers=setup.member.auth)
    assert member.status_code == 403
    response = await client.post(url, headers=setup.admin.auth)
    assert response.status_code == 200, response.text
    portal_url = response.json()["portal_url"]
    assert "/billing/local/portal/bps_local_" in portal_url
    page = await client.get(portal_url[portal_url.index("/billing/") :])
    assert page.status_code == 200 and "cus_local_" in page.text and "<script" not in page.text


# --- subscriptions ------------------------------------------------------------------------------------------------


async def test_list_get_and_cancel_subscriptions(
    billing: tuple[FastAPI, httpx.AsyncClient], setup: OrgSetup, sync_engine: Engine, worker: WorkerContext
) -> None:
    app, client = billing
    active = await paid_subscription(client, setup, worker)
    pending = (
        await client.post(
            "/v1/billing/checkout",
            headers=setup.owner.auth,
            json={
                "plan_name": "kuzu-large",
                "resource_type": "graph",
                "resource_config": {"graph_name": "Later"},
                "org_id": setup.org_id,
            },
        )
    ).json()

    listed = await client.get(f"/v1/billing/subscriptions/{setup.org_id}", headers=setup.member.auth)
    assert listed.status_code == 200
    by_id = {s["id"]: s for s in listed.json()}
    assert set(by_id) == {active["subscription_id"], pending["subscription_id"]}
    sub = by_id[active["subscription_id"]]
    assert (sub["status"], sub["plan_name"], sub["base_price_cents"], sub["billing_interval"]) == (
        "active",
        "kuzu-standard",
        4900,
        "monthly",
    )
    assert sub["resource_type"] == "graph" and sub["resource_id"] == ""
    assert sub["current_period_start"] and sub["current_period_end"] and sub["started_at"]
    assert by_id[pending["subscription_id"]]["status"] == "pending_payment"
    page = await client.get(f"/v1/billing/subscriptions/{setup.org_id}?limit=1&offset=1", headers=setup.owner.auth)
    assert len(page.json()) == 1
    assert (
        await client.get(f"/v1/billing/subscriptions/{setup.org_id}?limit=0", headers=setup.owner.auth)
    ).status_code == 422

    one_url = f"/v1/billing/subscriptions/{setup.org_id}/subscription/{active['subscription_id']}"
    got = await client.get(one_url, headers=setup.member.auth)
    assert got.status_code == 200 and got.json()["id"] == active["subscription_id"]
    other = await person(client, "other")
    assert (await client.get(one_url, headers=other.auth)).status_code == 404
    foreign = await client.get(
        f"/v1/billing/subscriptions/{other.personal_org_id}/subscription/{active['subscription_id']}",
        headers=other.auth,
    )
    assert foreign.status_code == 404

    # cancel: members can't; an active one is canceled AT THE PROVIDER at period end
    assert (await client.post(one_url + "/cancel", headers=setup.member.auth)).status_code == 403
    canceled = await client.post(one_url + "/cancel", headers=setup.admin.auth)
    assert canceled.status_code == 200, canceled.text
    body = canceled.json()
    assert body["status"] == "active" and body["cancel_at_period_end"] is True and body["canceled_at"]
    assert body["ends_at"] == body["current_period_end"]
    row = one(sync_engine, "SELECT * FROM billing_subscriptions WHERE id = :s", s=active["subscription_id"])
    remote = local(app).retrieve_subscription(row["provider_subscription_id"])
    assert remote.cancel_at_period_end is True
    again = await client.post(one_url + "/cancel", headers=setup.owner.auth)
    assert again.status_code == 409 and again.json()["code"] == "already_canceled"
    assert (
        count(
            sync_engine,
            "SELECT count(*) FROM billing_audit_logs WHERE subscription_id = :s AND "
            "event_type = 'subscription_cancel_requested'",
            s=active["subscription_id"],
        )
        == 1
    )

    # a checkout not paid yet ends now, and its provider session with it
    pending_url = f"/v1/billing/subscriptions/{setup.org_id}/subscription/{pending['subscription_id']}/cancel"
    ended = await client.post(pending_url, headers=setup.owner.auth)
    assert ended.status_code == 200 and ended.json()["status"] == "canceled"
    assert local(app).view(pending["session_id"]).status == "expired"
    assert (await client.post(pending_url, headers=setup.owner.auth)).status_code == 409


async def test_provisioning_subscription_cannot_be_canceled(
    billing: tuple[FastAPI, httpx.AsyncClient], setup: OrgSetup, worker: WorkerContext
) -> None:
    _, client = billing
    sub = await paid_subscription(client, setup, worker, activate=False)
    response = await client.post(
        f"/v1/billing/subscriptions/{setup.org_id}/subscription/{sub['subscription_id']}/cancel",
        headers=setup.owner.auth,
    )
    assert response.status_code == 409 and response.json()["code"] == "subscription_not_cancelable"


# --- invoices -----------------------------------------------------------------------------------------------------


async def test_invoices_and_upcoming(
    billing: tuple[FastAPI, httpx.AsyncClient], setup: OrgSetup, sync_engine: Engine, worker: WorkerContext
) -> None:
    _, client = billing
    url = f"/v1/billing/invoices/{setup.org_id}"
    empty = await client.get(url, headers=setup.admin.auth)
    assert empty.json() == {"invoices": [], "total_count": 0, "has_more": False}
    assert (await client.get(url + "/upcoming", headers=setup.owner.auth)).json() is None

    first = await paid_subscription(client, setup, worker)
    await paid_subscription(client, setup, worker)
    assert (await client.get(url, headers=setup.member.auth)).status_code == 403
    listed = await client.get(url, headers=setup.owner.auth)
    assert listed.status_code == 200
    body = listed.json()
    assert body["total_count"] == 2 and body["has_more"] is False
    invoice = next(i for i in body["invoices"] if i["subscription_id"] == first["subscription_id"])
    assert (invoice["status"], invoice["amount_due"], invoice["amount_paid"], invoice["currency"]) == (
        "paid",
        4900,
        4900,
        "usd",
    )
    assert invoice["number"].startswith("INV-") and invoice["paid_at"] and invoice["created"]
    assert invoice["id"].startswith("binv_")
    assert invoice["line_items"] and invoice["line_items"][0]["amount"] == 4900
    assert invoice["line_items"][0]["quantity"] == 1 and invoice["line_items"][0]["period_end"]
    numbers = sorted(i["number"] for i in body["invoices"])
    assert numbers[0] != numbers[1]
    paged = (await client.get(url + "?limit=1", headers=setup.owner.auth)).json()
    assert len(paged["invoices"]) == 1 and paged["has_more"] is True and paged["total_count"] == 2
    assert (await client.get(url + "?limit=101", headers=setup.owner.auth)).status_code == 422

    upcoming = (await client.get(url + "/upcoming", headers=setup.admin.auth)).json()
    assert upcoming["amount_due"] == 9800 and upcoming["currency"] == "usd"
    assert len(upcoming["line_items"]) == 2 and upcoming["due_date"] == upcoming["period_start"]
    assert upcoming["period_start"] < upcoming["period_end"] and upcoming["subscription_id"] is None


# --- offering and tiers -------------------------------------------------------------------------------------------


async def test_offering_and_tiers_come_from_the_catalog(billing: tuple[FastAPI, httpx.AsyncClient]) -> None:
    _, client = billing
    catalog = get_catalog()
    offering = await client.get("/v1/offering")  # public
    assert offering.status_code == 200
    body = offering.json()
    assert body["billing_enabled"] is True
    tiers = body["graph_subscriptions"]["tiers"]
    assert [t["name"] for t in tiers] == [p.name for p in catalog.graph_plans if p.enabled]
    standard = next(t for t in tiers if t["name"] == "kuzu-standard")
    assert standard["monthly_price_per_graph"] == 49.0 and standard["monthly_credits_per_graph"] == 10000
    assert body["summary"]["total_graph_tiers"] == len(tiers)
    assert {"description", "pricing_model", "repositories", "notes"} <= set(body["repository_subscriptions"])
    assert {"ai_operations", "token_pricing", "included_operations"} <= set(body["operation_costs"])
    for model in body["operation_costs"]["token_pricing"].values():  # the client's TokenPricing per model
        assert isinstance(model["input_per_1k_tokens"], int) and isinstance(model["output_per_1k_tokens"], int)

    response = await client.get("/v1/graphs/tiers")
    assert response.status_code == 200
    graph_tiers = response.json()["tiers"]
    assert [t["tier"] for t in graph_tiers] == [p.name for p in catalog.graph_plans if p.enabled]
    large = next(t for t in graph_tiers if t["tier"] == "kuzu-large")
    assert large["monthly_price"] == 199.0 and large["plan_name"] == "kuzu-large"
    assert large["instance"]["memory_mb"] > 0 and large["limits"]["copy_operations"]["timeout_seconds"] > 0


async def test_offering_reports_billing_disabled(app_factory: Callable[..., Any]) -> None:
    async with app_factory(billing_enabled=False) as (_, client):
        assert (await client.get("/v1/offering")).json()["billing_enabled"] is False


async def test_disabled_plans_are_hidden_and_not_sold(
    app_factory: Callable[..., Any], tmp_path: Path, sync_engine: Engine
) -> None:
    source = DEFAULT_PLANS_FILE.read_text(encoding="utf-8")
    marker = "[graph.plans.kuzu-xlarge]\n"
    assert marker in source
    plans = tmp_path / "plans.toml"
    plans.write_text(source.replace(marker, marker + "enabled = false\n"), encoding="utf-8")
    async with app_factory(billing_plans_file=plans, stripe_webhook_secret=SECRET) as (_, client):
        tiers = [t["tier"] for t in (await client.get("/v1/graphs/tiers")).json()["tiers"]]
        assert "kuzu-xlarge" not in tiers and "kuzu-standard" in tiers
        everything = (await client.get("/v1/graphs/tiers?include_disabled=true")).json()["tiers"]
        assert next(t for t in everything if t["tier"] == "kuzu-xlarge")["enabled"] is False
        offered = [t["name"] for t in (await client.get("/v1/offering")).json()["graph_subscriptions"]["tiers"]]
        assert "kuzu-xlarge" not in offered
        owner = await person(client)
        refused = await client.post(
            "/v1/billing/checkout",
            headers=owner.auth,
            json={"plan_name": "kuzu-xlarge", "resource_type": "graph", "resource_config": {"graph_name": "Big"}},
        )
        assert refused.status_code == 422 and refused.json()["code"] == "unknown_plan"
