"""Plan changes through the Stripe provider (the official SDK, over HTTP, ``STRIPE_API_VERSION`` pinned).

localstripe's invoice preview credits the whole previous invoice (not the unused time), knows no pending updates
and no subscription schedules, so those calls are answered by ``tests/localstripe_server.py`` with responses of the
real API's shapes — Stripe's own published example objects (``tests/fixtures/stripe/fixtures.json``) filled for the
case — while the request log shows exactly what the SDK sent (proration date pinned, ``always_invoice``,
``pending_if_incomplete``, the item id, the price on the plan's product, the idempotency key, the API version).

The webhook half: Stripe-shaped ``customer.subscription.updated`` events whose items name another plan (a change
made in the Stripe dashboard) switch the plan through the same code path as the API; one with a ``pending_update``
(payment not made) changes nothing.
"""

from __future__ import annotations

import copy
import json
import time
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine

from robosystems.payments.base import SubscriptionChange
from robosystems.payments.stripe_provider import StripeProvider
from robosystems.webhooks.verify import sign
from robosystems.worker.context import WorkerContext
from tests.billing_depth_support import App, buy_graph, depth_app, scalar
from tests.graphs_support import SECRET, _real_backend, rows, run_all, sub_row, worker
from tests.org_helpers import person
from tests.test_stripe_provider import API_VERSION, localstripe
from tests.webhooks_support import FIXTURES, event

__all__ = ["_real_backend", "depth_app", "localstripe", "worker"]  # fixtures

pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=<...>' to upload raw bytes:DeprecationWarning")

SUB, ITEM, CUSTOMER = "sub_1Pfx0000000000000000", "si_Pfx000000000", "cus_Pfx0000000000"
START = int(time.time()) - 10 * 86400
END = START + 30 * 86400
PRORATION_DATE = int(time.time())


def _subscription(product: str = "robosystems_plan_kuzu_standard", unit: int = 4900, **extra: Any) -> dict[str, Any]:
    obj = copy.deepcopy(FIXTURES["subscription"])
    obj.update(
        {
            "id": SUB,
            "customer": CUSTOMER,
            "status": "active",
            "cancel_at_period_end": False,
            "cancel_at": None,
            "canceled_at": None,
            "ended_at": None,
            "pending_update": None,
            "schedule": None,
            "metadata": {},
            **extra,
        }
    )
    item = obj["items"]["data"][0]
    item.update(id=ITEM, subscription=SUB, quantity=1, current_period_start=START, current_period_end=END)
    item["price"].update(id=f"price_{product}", product=product, unit_amount=unit, metadata={})
    return obj


def _line(amount: int, description: str, *, proration: bool) -> dict[str, Any]:
    line = copy.deepcopy(FIXTURES["invoice"]["lines"]["data"][0])
    line.update(amount=amount, description=description, subscription=SUB)
    line["parent"]["subscription_item_details"].update(subscription=SUB, subscription_item=ITEM, proration=proration)
    line["period"] = {"start": PRORATION_DATE, "end": END}
    return line


def _invoice(invoice_id: str, lines: list[dict[str, Any]], *, status: str, reason: str) -> dict[str, Any]:
    inv = copy.deepcopy(FIXTURES["invoice"])
    total = sum(line["amount"] for line in lines)
    inv.update(
        id=invoice_id,
        customer=CUSTOMER,
        status=status,
        billing_reason=reason,
        amount_due=max(total, 0),
        amount_paid=max(total, 0) if status == "paid" else 0,
        total=total,
        subtotal=total,
        currency="usd",
    )
    inv["lines"] = {"object": "list", "data": lines, "has_more": False, "url": f"/v1/invoices/{invoice_id}/lines"}
    inv["parent"] = {"type": "subscription_details", "subscription_details": {"subscription": SUB, "metadata": {}}}
    return inv


def _fixture(base: str, method: str, path: str, body: dict[str, Any], status: int = 200) -> None:
    httpx.post(f"{base}/_config/fixtures", json={"method": method, "path": path, "status": status, "body": body})


@pytest.fixture
def stripe_fx(localstripe: str) -> StripeProvider:
    httpx.delete(f"{localstripe}/_config/fixtures")
    httpx.delete(f"{localstripe}/_config/requests")
    _fixture(localstripe, "GET", f"/v1/subscriptions/{SUB}", _subscription())
    for plan in ("kuzu_large", "kuzu_standard"):
        product = {"id": f"robosystems_plan_{plan}", "object": "product", "name": plan, "metadata": {}}
        _fixture(localstripe, "GET", f"/v1/products/robosystems_plan_{plan}", product)
    return StripeProvider(secret_key="sk_test_changes", api_version=API_VERSION, api_base=localstripe)


def _change(**overrides: Any) -> SubscriptionChange:
    values: dict[str, Any] = {
        "subscription_id": SUB,
        "plan_name": "kuzu-large",
        "amount_cents": 19900,
        "quantity": 1,
        "currency": "usd",
        "interval": "month",
        "proration_date": PRORATION_DATE,
        "idempotency_key": "change:bsub_1:kuzu-large",
    }
    return SubscriptionChange(**{**values, **overrides})


def _sent(base: str, method: str, path: str) -> list[dict[str, Any]]:
    log: list[dict[str, Any]] = httpx.get(f"{base}/_config/requests").json()
    return [r for r in log if r["method"] == method and r["path"] == path]


def test_preview_pins_the_proration_date_and_reads_only_proration_lines(
    stripe_fx: StripeProvider, localstripe: str
) -> None:
    lines = [
        _line(-3267, "Unused time on Standard after 7 Dec", proration=True),
        _line(13267, "Remaining time on Large after 7 Dec", proration=True),
        _line(19900, "1 × Large (at $199.00 / month)", proration=False),  # the next period: not due now
    ]
    _fixture(
        localstripe,
        "POST",
        "/v1/invoices/create_preview",
        _invoice("upcoming_in_1", lines, status="draft", reason="upcoming"),
    )
    preview = stripe_fx.preview_subscription_change(_change())
    assert preview.amount_due_now == 10000 and preview.currency == "usd"
    assert [(li.description, li.amount) for li in preview.lines] == [
        ("Unused time on Standard after 7 Dec", -3267),
        ("Remaining time on Large after 7 Dec", 13267),
    ]
    assert preview.next_invoice_total == 19900 and preview.proration_date == PRORATION_DATE
    (sent,) = _sent(localstripe, "POST", "/v1/invoices/create_preview")
    params = sent["params"]
    assert sent["stripe_version"] == API_VERSION
    assert params["subscription"] == SUB and params["customer"] == CUSTOMER
    assert params["subscription_details[proration_date]"] == str(PRORATION_DATE)
    assert params["subscription_details[proration_behavior]"] == "always_invoice"
    assert params["subscription_details[items][0][id]"] == ITEM
    assert params["subscription_details[items][0][price_data][unit_amount]"] == "19900"
    assert params["subscription_details[items][0][price_data][product]"] == "robosystems_plan_kuzu_large"


def test_change_is_a_pending_update_and_a_failed_charge_is_voided(stripe_fx: StripeProvider, localstripe: str) -> None:
    paid_invoice = _invoice(
        "in_chg_paid", [_line(10000, "proration", proration=True)], status="paid", reason="subscription_update"
    )
    _fixture(
        localstripe,
        "POST",
        f"/v1/subscriptions/{SUB}",
        _subscription("robosystems_plan_kuzu_large", 19900, latest_invoice=paid_invoice),
    )
    result = stripe_fx.change_subscription(_change())
    assert (result.status, result.invoice_id, result.amount_due) == ("paid", "in_chg_paid", 10000)
    (sent,) = _sent(localstripe, "POST", f"/v1/subscriptions/{SUB}")
    params = sent["params"]
    assert params["payment_behavior"] == "pending_if_incomplete"
    assert params["proration_behavior"] == "always_invoice" and params["proration_date"] == str(PRORATION_DATE)
    assert params["items[0][id]"] == ITEM and params["items[0][quantity]"] == "1"
    assert params["items[0][price_data][product]"] == "robosystems_plan_kuzu_large"
    assert params["expand[0]"] == "latest_invoice"
    assert sent["idempotency_key"] == "change:bsub_1:kuzu-large" and sent["stripe_version"] == API_VERSION

    open_invoice = _invoice(
        "in_chg_open", [_line(10000, "proration", proration=True)], status="open", reason="subscription_update"
    )
    pending = _subscription(latest_invoice=open_invoice, pending_update={"expires_at": END, "subscription_items": []})
    _fixture(localstripe, "POST", f"/v1/subscriptions/{SUB}", pending)
    _fixture(localstripe, "POST", "/v1/invoices/in_chg_open/void", {**open_invoice, "status": "void"})
    failed = stripe_fx.change_subscription(_change(idempotency_key="change:bsub_1:kuzu-large:2"))
    assert failed.status == "failed" and failed.invoice_id == "in_chg_open" and failed.failure_reason
    (void,) = _sent(localstripe, "POST", "/v1/invoices/in_chg_open/void")
    assert void["idempotency_key"] == "change:bsub_1:kuzu-large:2:void"


def test_period_end_change_is_a_schedule_and_calling_it_off_releases_it(
    stripe_fx: StripeProvider, localstripe: str
) -> None:
    schedule = {
        "id": "sub_sched_1",
        "object": "subscription_schedule",
        "subscription": SUB,
        "end_behavior": "release",
        "phases": [
            {
                "start_date": START,
                "end_date": END,
                "items": [{"price": "price_robosystems_plan_kuzu_standard", "quantity": 1}],
            }
        ],
    }
    _fixture(localstripe, "POST", "/v1/subscription_schedules", schedule)
    _fixture(localstripe, "POST", "/v1/subscription_schedules/sub_sched_1", schedule)
    _fixture(localstripe, "POST", "/v1/subscription_schedules/sub_sched_1/release", {**schedule, "status": "released"})
    scheduled = stripe_fx.schedule_subscription_change(_change(plan_name="kuzu-standard", amount_cents=4900))
    assert scheduled.schedule_id == "sub_sched_1"
    assert scheduled.effective_at is not None and int(scheduled.effective_at.timestamp()) == END
    (created,) = _sent(localstripe, "POST", "/v1/subscription_schedules")
    assert created["params"]["from_subscription"] == SUB
    (phases,) = _sent(localstripe, "POST", "/v1/subscription_schedules/sub_sched_1")
    p = phases["params"]
    assert p["end_behavior"] == "release" and p["phases[0][end_date]"] == str(END)
    assert p["phases[0][items][0][price]"] == "price_robosystems_plan_kuzu_standard"
    assert p["phases[1][items][0][price_data][unit_amount]"] == "4900"
    assert p["phases[1][proration_behavior]"] == "none"
    stripe_fx.cancel_scheduled_change(SUB, "sub_sched_1")
    assert len(_sent(localstripe, "POST", "/v1/subscription_schedules/sub_sched_1/release")) == 1


# --- the webhook half: a change made in the Stripe dashboard ----------------------------------------------------


async def _post(client: httpx.AsyncClient, evt: dict[str, Any]) -> None:
    payload = json.dumps(evt, separators=(",", ":"))
    response = await client.post(
        "/admin/v1/webhooks/stripe",
        content=payload,
        headers={"Content-Type": "application/json", "Stripe-Signature": sign(payload, SECRET)},
    )
    assert response.status_code == 200, response.text


async def test_dashboard_change_is_applied_through_the_same_path(
    depth_app: App, worker: WorkerContext, sync_engine: Engine
) -> None:
    _, client = depth_app
    owner = await person(client, "dashboard")
    sub_id, graph_id = await buy_graph(client, worker, owner, tier="kuzu-standard")
    sub = sub_row(sync_engine, sub_id)
    obj = _subscription("robosystems_plan_kuzu_large", 19900)
    obj.update(id=sub["provider_subscription_id"], customer=sub["provider_customer_id"])
    later = int(time.time()) + 5

    pending = copy.deepcopy(obj)
    pending["items"]["data"][0]["price"].update(product="robosystems_plan_kuzu_standard", unit_amount=4900)
    pending["pending_update"] = {"expires_at": END, "subscription_items": []}
    await _post(client, event("customer.subscription.updated", pending, created=later))
    run_all(worker)
    assert sub_row(sync_engine, sub_id)["plan_name"] == "kuzu-standard"  # not paid yet: nothing changes

    await _post(client, event("customer.subscription.updated", obj, created=later + 1))
    run_all(worker)
    assert sub_row(sync_engine, sub_id)["plan_name"] == "kuzu-large"
    assert scalar(sync_engine, "SELECT graph_tier FROM graphs WHERE graph_id = :g", g=graph_id) == "kuzu-large"
    limits = (await client.get(f"/v1/graphs/{graph_id}/limits", headers=owner.auth)).json()
    assert limits["subscription_tier"] == "kuzu-large"
    changes = rows(
        sync_engine, "SELECT source, status, to_plan FROM billing_plan_changes WHERE subscription_id = :s", s=sub_id
    )
    assert changes == [{"source": "provider", "status": "applied", "to_plan": "kuzu-large"}]
    # an older event (redelivered late) does not undo it
    await _post(client, event("customer.subscription.updated", pending | {"pending_update": None}, created=later))
    run_all(worker)
    assert sub_row(sync_engine, sub_id)["plan_name"] == "kuzu-large"
