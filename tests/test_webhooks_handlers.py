"""What the worker does with each event: provisioning requests, ordering, credits, failures and replays."""

from __future__ import annotations

import itertools
import secrets
import threading
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import Engine, text

from robosystems.billing.plans import get_catalog
from robosystems.webhooks import service
from robosystems.worker.context import WorkerContext
from tests.helpers import count
from tests.webhooks_support import (
    ADMIN_KEY,
    T0,
    Billing,
    checkout_obj,
    event,
    event_row,
    invoice_obj,
    make_due,
    one,
    payment_method_obj,
    post_event,
    run_worker,
    scalar,
    subscription_obj,
    wh,
    worker_ctx,
)

__all__ = ["wh", "worker_ctx"]  # fixtures

PROVISION = "robosystems.graphs.provision_graph"


def _checkout(billing: Billing, event_type: str = "checkout.session.completed", **kw: Any) -> dict[str, Any]:
    obj = checkout_obj(
        billing.checkout_session,
        subscription=billing.provider_sub,
        customer=billing.customer,
        payment_status=kw.pop("payment_status", "paid"),
        reference=billing.sub_id,
    )
    return event(event_type, obj, **kw)


def _provision_rows(engine: Engine, sub_id: str) -> int:
    return count(
        engine,
        "SELECT count(*) FROM task_outbox WHERE task_name = :t AND args = jsonb_build_array(CAST(:s AS text))",
        t=PROVISION,
        s=sub_id,
    )


async def _deliver(client: Any, ctx: WorkerContext, *events: dict[str, Any]) -> None:
    for evt in events:
        response = await post_event(client, evt)
        assert response.status_code == 200, response.text
    run_worker(ctx)


# --- checkout ----------------------------------------------------------------------------------------------------


async def test_paid_checkout_links_ids_and_requests_provisioning(
    wh: Any, worker_ctx: WorkerContext, sync_engine: Engine
) -> None:
    _, client = wh
    billing = Billing(worker_ctx, linked=False)
    evt = _checkout(billing)
    await _deliver(client, worker_ctx, evt)
    sub = billing.sub()
    assert sub["status"] == "provisioning"
    assert sub["provider_subscription_id"] == billing.provider_sub
    assert sub["provider_customer_id"] == billing.customer
    assert event_row(sync_engine, evt["id"])["note"] == "provisioning_requested"
    assert _provision_rows(sync_engine, billing.sub_id) == 1
    # the provisioning task is another helper's: until it is registered the row waits, saying why
    status, last_error = one(
        sync_engine, "SELECT status, last_error FROM task_outbox WHERE task_name = :t", t=PROVISION
    )
    assert status == "pending"
    from robosystems.worker.celery_app import registered_task_names

    if PROVISION not in registered_task_names():
        assert last_error and last_error.startswith("unknown task")
    # replaying the same event is a no-op
    await _deliver(client, worker_ctx, evt | {"id": "evt_other_delivery_" + secrets.token_hex(4)})
    assert _provision_rows(sync_engine, billing.sub_id) == 1


async def test_unpaid_checkout_provisions_nothing_until_async_payment_succeeds(
    wh: Any, worker_ctx: WorkerContext, sync_engine: Engine
) -> None:
    _, client = wh
    billing = Billing(worker_ctx, linked=False)
    unpaid = _checkout(billing, payment_status="unpaid")
    await _deliver(client, worker_ctx, unpaid)
    assert billing.status() == "pending_payment"
    assert billing.sub()["provider_subscription_id"] == billing.provider_sub  # linked, nothing else
    assert _provision_rows(sync_engine, billing.sub_id) == 0
    assert event_row(sync_engine, unpaid["id"])["note"] == "awaiting_payment_unpaid"

    succeeded = _checkout(billing, "checkout.session.async_payment_succeeded", payment_status="paid")
    await _deliver(client, worker_ctx, succeeded)
    assert billing.status() == "provisioning"
    assert _provision_rows(sync_engine, billing.sub_id) == 1


@pytest.mark.parametrize(
    ("event_type", "final"),
    [("checkout.session.async_payment_failed", "canceled"), ("checkout.session.expired", "expired")],
)
async def test_failed_or_expired_checkout_ends_the_pending_subscription(
    event_type: str, final: str, wh: Any, worker_ctx: WorkerContext, sync_engine: Engine
) -> None:
    _, client = wh
    billing = Billing(worker_ctx, linked=False)
    await _deliver(client, worker_ctx, _checkout(billing, event_type, payment_status="unpaid"))
    assert billing.status() == final
    assert _provision_rows(sync_engine, billing.sub_id) == 0


# --- subscription ordering ---------------------------------------------------------------------------------------

LIFECYCLE = [  # (event type, provider status, created offset)
    ("customer.subscription.created", "active", 0),
    ("customer.subscription.updated", "active", 10),
    ("customer.subscription.updated", "past_due", 20),
    ("customer.subscription.deleted", "canceled", 30),
]


@pytest.mark.parametrize("order", list(itertools.permutations(range(4))), ids=lambda o: "".join(map(str, o)))
async def test_every_delivery_order_ends_in_the_newest_events_state(
    order: tuple[int, ...], wh: Any, worker_ctx: WorkerContext, sync_engine: Engine
) -> None:
    _, client = wh
    billing = Billing(worker_ctx, status="active")
    events = [
        event(
            kind,
            subscription_obj(billing.provider_sub, billing.customer, status, period_start=T0 + offset),
            created=T0 + offset,
        )
        for kind, status, offset in LIFECYCLE
    ]
    for index in order:  # each delivered and applied before the next arrives
        await _deliver(client, worker_ctx, events[index])
    sub = billing.sub()
    assert sub["status"] == "canceled"  # the deleted event is the newest by `created`
    assert int(sub["last_event_at"].timestamp()) == T0 + 30
    assert sub["canceled_at"] is not None
    statuses = [event_row(sync_engine, e["id"])["status"] for e in events]
    assert set(statuses) <= {"processed", "ignored"}
    assert statuses[3] == "processed"


@pytest.mark.parametrize("order", list(itertools.permutations(range(3))), ids=lambda o: "".join(map(str, o)))
async def test_recovered_payment_orderings_end_active(
    order: tuple[int, ...], wh: Any, worker_ctx: WorkerContext
) -> None:
    _, client = wh
    billing = Billing(worker_ctx, status="active")
    spec = [
        ("customer.subscription.created", "active", 0),
        ("customer.subscription.updated", "past_due", 5),
        ("customer.subscription.updated", "active", 9),
    ]
    events = [
        event(kind, subscription_obj(billing.provider_sub, billing.customer, status), created=T0 + offset)
        for kind, status, offset in spec
    ]
    for index in order:
        await _deliver(client, worker_ctx, events[index])
    assert billing.status() == "active"
    assert int(billing.sub()["last_event_at"].timestamp()) == T0 + 9


async def test_all_lifecycle_events_queued_together_apply_in_created_order(wh: Any, worker_ctx: WorkerContext) -> None:
    _, client = wh
    billing = Billing(worker_ctx, status="active")
    events = [
        event(kind, subscription_obj(billing.provider_sub, billing.customer, status), created=T0 + offset)
        for kind, status, offset in LIFECYCLE
    ]
    for evt in reversed(events):
        assert (await post_event(client, evt)).status_code == 200
    run_worker(worker_ctx)
    assert billing.status() == "canceled"


async def test_periods_and_cancel_at_period_end_come_from_the_items(wh: Any, worker_ctx: WorkerContext) -> None:
    _, client = wh
    billing = Billing(worker_ctx, status="active")
    obj = subscription_obj(
        billing.provider_sub,
        billing.customer,
        "active",
        period_start=T0,
        period_end=T0 + 2_592_000,
        cancel_at_period_end=True,
    )
    obj["cancel_at"] = T0 + 2_592_000
    obj["canceled_at"] = T0 + 100
    await _deliver(client, worker_ctx, event("customer.subscription.updated", obj, created=T0 + 100))
    sub = billing.sub()
    assert sub["status"] == "active"  # canceled only when the period ends (customer.subscription.deleted)
    assert int(sub["current_period_start"].timestamp()) == T0
    assert int(sub["current_period_end"].timestamp()) == T0 + 2_592_000
    assert sub["cancel_at_period_end"] is True
    assert int(sub["ends_at"].timestamp()) == T0 + 2_592_000


async def test_subscription_event_before_checkout_is_applied_once_checkout_links_it(
    wh: Any, worker_ctx: WorkerContext, sync_engine: Engine
) -> None:
    _, client = wh
    billing = Billing(worker_ctx, linked=False)
    early = event(
        "customer.subscription.created",
        subscription_obj(billing.provider_sub, billing.customer, "active", period_end=T0 + 777),
        created=T0,
    )
    await _deliver(client, worker_ctx, early)
    row = event_row(sync_engine, early["id"])
    assert (row["status"], row["note"]) == ("ignored", "unknown_subscription")
    await _deliver(client, worker_ctx, _checkout(billing, created=T0))
    row = event_row(sync_engine, early["id"])
    assert row["status"] == "processed"
    assert row["note"] == "provider_active_while_provisioning"
    sub = billing.sub()
    assert sub["status"] == "provisioning"
    assert int(sub["current_period_end"].timestamp()) == T0 + 777


# --- invoices and credits ---------------------------------------------------------------------------------------


def _credits_of(engine: Engine, graph_id: str) -> tuple[int, Decimal]:
    with engine.connect() as conn:
        rows, total = conn.execute(
            text(
                "SELECT count(*), coalesce(sum(amount), 0) FROM graph_credit_transactions "
                "WHERE graph_id = :g AND transaction_type = 'allocation'"
            ),
            {"g": graph_id},
        ).one()
    return int(rows), Decimal(total)


async def test_invoice_paid_and_payment_succeeded_grant_credits_once(
    wh: Any, worker_ctx: WorkerContext, sync_engine: Engine
) -> None:
    _, client = wh
    billing = Billing(worker_ctx, status="active", with_graph=True)
    assert billing.graph_id
    in_id = f"in_{secrets.token_hex(8)}"
    obj = invoice_obj(in_id, customer=billing.customer, subscription=billing.provider_sub, status="paid")
    finalized = event(
        "invoice.finalized",
        invoice_obj(in_id, customer=billing.customer, subscription=billing.provider_sub, status="open"),
        created=T0,
    )
    paid = event("invoice.paid", obj, created=T0 + 1)
    succeeded = event("invoice.payment_succeeded", obj, created=T0 + 1)
    for evt in (finalized, paid, succeeded):
        assert (await post_event(client, evt)).status_code == 200
    # the two paid events applied at the same time by two workers
    ids = [paid["id"], succeeded["id"], finalized["id"]]
    barrier = threading.Barrier(2)

    def apply(event_id: str) -> None:
        barrier.wait()
        service.process_event(worker_ctx, event_id)

    service.process_event(worker_ctx, finalized["id"])
    threads = [threading.Thread(target=apply, args=(i,)) for i in ids[:2]]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    run_worker(worker_ctx)  # their outbox rows now find the events done
    expected = Decimal(get_catalog(worker_ctx.settings.billing_plans_file).plan("kuzu-standard").monthly_credits)
    assert _credits_of(sync_engine, billing.graph_id) == (1, expected)
    assert (
        scalar(sync_engine, "SELECT current_balance FROM graph_credits WHERE graph_id = :g", g=billing.graph_id)
        == expected
    )
    invoice = one(
        sync_engine,
        "SELECT status, subscription_id, invoice_number, amount_paid_cents FROM billing_invoices "
        "WHERE stripe_invoice_id = :i",
        i=in_id,
    )
    assert invoice.status == "paid"
    assert invoice.subscription_id == billing.sub_id
    assert invoice.invoice_number.startswith("INV-")
    assert invoice.amount_paid_cents == 4999
    assert count(sync_engine, "SELECT count(*) FROM billing_invoices") == 1
    assert {event_row(sync_engine, i)["status"] for i in ids} == {"processed"}


async def test_first_invoice_before_the_graph_exists_leaves_credits_to_provisioning(
    wh: Any, worker_ctx: WorkerContext, sync_engine: Engine
) -> None:
    _, client = wh
    billing = Billing(worker_ctx, status="provisioning")
    in_id = f"in_{secrets.token_hex(8)}"
    paid = event(
        "invoice.paid", invoice_obj(in_id, customer=billing.customer, subscription=billing.provider_sub, status="paid")
    )
    await _deliver(client, worker_ctx, paid)
    assert event_row(sync_engine, paid["id"])["note"] == "credits_at_provisioning"
    assert count(sync_engine, "SELECT count(*) FROM graph_credit_transactions") == 0
    assert (
        scalar(sync_engine, "SELECT subscription_id FROM billing_invoices WHERE stripe_invoice_id = :i", i=in_id)
        == billing.sub_id
    )


async def test_payment_failure_makes_past_due_and_payment_recovers_it(wh: Any, worker_ctx: WorkerContext) -> None:
    _, client = wh
    billing = Billing(worker_ctx, status="active", with_graph=True)
    in_id = f"in_{secrets.token_hex(8)}"
    failed = event(
        "invoice.payment_failed",
        invoice_obj(in_id, customer=billing.customer, subscription=billing.provider_sub, status="open"),
        created=T0,
    )
    await _deliver(client, worker_ctx, failed)
    assert billing.status() == "past_due"
    paid = event(
        "invoice.paid",
        invoice_obj(in_id, customer=billing.customer, subscription=billing.provider_sub, status="paid"),
        created=T0 + 60,
    )
    await _deliver(client, worker_ctx, paid)
    assert billing.status() == "active"


async def test_unknown_customer_and_unknown_type_are_stored_ignored(
    wh: Any, worker_ctx: WorkerContext, sync_engine: Engine
) -> None:
    _, client = wh
    stray_invoice = event(
        "invoice.paid", invoice_obj("in_stray", customer="cus_nobody", subscription=None, status="paid")
    )
    unknown_type = event("plan.created", {"id": "plan_x", "object": "plan"})
    await _deliver(client, worker_ctx, stray_invoice, unknown_type)
    assert (
        event_row(sync_engine, stray_invoice["id"])["status"],
        event_row(sync_engine, stray_invoice["id"])["note"],
    ) == (
        "ignored",
        "unknown_customer",
    )
    assert (
        event_row(sync_engine, unknown_type["id"])["status"],
        event_row(sync_engine, unknown_type["id"])["note"],
    ) == (
        "ignored",
        "unhandled_type",
    )
    assert count(sync_engine, "SELECT count(*) FROM billing_invoices") == 0


async def test_payment_method_attached_records_it_on_the_customer(
    wh: Any, worker_ctx: WorkerContext, sync_engine: Engine
) -> None:
    _, client = wh
    billing = Billing(worker_ctx, status="active")
    await _deliver(
        client, worker_ctx, event("payment_method.attached", payment_method_obj("pm_card_1", billing.customer))
    )
    row = one(
        sync_engine,
        "SELECT has_payment_method, default_payment_method_id, payment_method_summary FROM billing_customers "
        "WHERE org_id = :o",
        o=billing.org_id,
    )
    assert row.has_payment_method is True
    assert row.default_payment_method_id == "pm_card_1"
    assert row.payment_method_summary == {"brand": "visa", "last4": "4242", "exp_month": 8, "exp_year": 2030}


# --- failures, retries, replay ----------------------------------------------------------------------------------


async def test_transient_failure_is_retried_and_then_applied(
    wh: Any, worker_ctx: WorkerContext, sync_engine: Engine
) -> None:
    """A provider cancellation while the graph is still provisioning waits (retried with backoff)."""
    _, client = wh
    billing = Billing(worker_ctx, status="provisioning")
    deleted = event(
        "customer.subscription.deleted",
        subscription_obj(billing.provider_sub, billing.customer, "canceled"),
        created=T0,
    )
    await _deliver(client, worker_ctx, deleted)
    row = event_row(sync_engine, deleted["id"])
    assert (row["status"], row["attempts"]) == ("received", 1)
    assert "provisioning" in row["last_error"]
    assert billing.status() == "provisioning"
    # provisioning finishes; the retry (brought forward instead of waiting for the backoff) applies it
    with sync_engine.begin() as conn:
        conn.execute(text("UPDATE billing_subscriptions SET status = 'active' WHERE id = :s"), {"s": billing.sub_id})
    make_due(sync_engine)
    run_worker(worker_ctx)
    row = event_row(sync_engine, deleted["id"])
    assert (row["status"], row["attempts"], row["last_error"]) == ("processed", 2, None)
    assert billing.status() == "canceled"


async def test_failed_event_is_replayed_from_the_admin_api(
    app_factory: Any, database_url: str, sync_engine: Engine
) -> None:
    from robosystems.worker import context
    from tests.conftest import base_settings
    from tests.webhooks_support import SECRET

    ctx = context.configure(
        base_settings(database_url, stripe_webhook_secret=SECRET, task_max_retries=1), engine=sync_engine
    )
    try:
        async with app_factory(stripe_webhook_secret=SECRET, admin_api_key=ADMIN_KEY) as (_, client):
            billing = Billing(ctx, status="provisioning")
            past_due = event(
                "customer.subscription.updated",
                subscription_obj(billing.provider_sub, billing.customer, "past_due"),
                created=T0,
            )
            await _deliver(client, ctx, past_due)
            make_due(sync_engine)
            run_worker(ctx)
            row = event_row(sync_engine, past_due["id"])
            assert (row["status"], row["attempts"]) == ("failed", 2)
            assert row["last_error"]
            listed = await client.get(
                "/admin/v1/webhooks/events",
                params={"status": "failed"},
                headers={"Authorization": f"Bearer {ADMIN_KEY}"},
            )
            assert listed.json()["total"] == 1 and listed.json()["events"][0]["id"] == past_due["id"]

            with sync_engine.begin() as conn:
                conn.execute(
                    text("UPDATE billing_subscriptions SET status = 'active' WHERE id = :s"), {"s": billing.sub_id}
                )
            replay = await client.post(
                f"/admin/v1/webhooks/events/{past_due['id']}/replay", headers={"Authorization": f"Bearer {ADMIN_KEY}"}
            )
            assert replay.status_code == 200, replay.text
            assert replay.json() == {"id": past_due["id"], "status": "received", "replayed": True}
            run_worker(ctx)
            row = event_row(sync_engine, past_due["id"])
            assert (row["status"], row["last_error"]) == ("processed", None)
            assert billing.status() == "past_due"
    finally:
        context.reset()


async def test_malformed_provider_data_fails_at_once_without_retries(
    wh: Any, worker_ctx: WorkerContext, sync_engine: Engine
) -> None:
    _, client = wh
    billing = Billing(worker_ctx, status="active")
    bad = invoice_obj("in_bad", customer=billing.customer, subscription=billing.provider_sub, status="paid")
    bad["status"] = "exploded"
    evt = event("invoice.paid", bad)
    await _deliver(client, worker_ctx, evt)
    row = event_row(sync_engine, evt["id"])
    assert (row["status"], row["attempts"]) == ("failed", 1)
    assert row["last_error"].startswith("invalid_provider_invoice")
