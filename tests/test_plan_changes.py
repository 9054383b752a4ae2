"""Plan changes end to end with the local provider (Stripe's proration formula to the second), on the real database,
the real local provider, our webhook endpoint and the in-process worker's code path:

* an upgrade's preview is exactly what its proration invoice charges; the plan, graph tier, limits and credit
  allocation switch when that invoice is paid; a replayed ``invoice.paid`` changes nothing more;
* a failed charge changes nothing and says why (402), the attempt is audited;
* a downgrade is scheduled for the period end, shown on the subscription, can be called off, and takes effect at the
  renewal, whose credits RESET (no rollover) once, however often the renewal's event is replayed;
* two simultaneous changes (real parallel connections): one wins, the other 409;
* strangers 404, members 403, unknown plan 422, bad proration dates 422, downgrades "immediate" 422.
"""

from __future__ import annotations

import asyncio
from decimal import Decimal

from fastapi import FastAPI
from sqlalchemy import Engine

from robosystems.worker.context import WorkerContext
from tests.billing_depth_support import (
    App,
    age,
    buy_graph,
    change_path,
    deliver,
    depth_app,
    local,
    renew,
    scalar,
)
from tests.graphs_support import ADMIN_KEY, _real_backend, query, rows, run_all, sub_row, worker
from tests.org_helpers import add_member, make_org, person

__all__ = ["_real_backend", "depth_app", "worker"]  # fixtures

ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}


async def _events(app: FastAPI, ctx: WorkerContext, sub_id: str) -> None:
    await deliver(app, local(ctx), "subscriptions", sub_row(ctx.engine, sub_id)["provider_subscription_id"])
    run_all(ctx)


async def test_upgrade_preview_equals_the_paid_proration_invoice(
    depth_app: App, worker: WorkerContext, sync_engine: Engine
) -> None:
    app, client = depth_app
    owner = await person(client, "upgrader")
    org = owner.personal_org_id
    sub_id, graph_id = await buy_graph(client, worker, owner, tier="kuzu-standard")
    age(worker, sub_id, 10)  # a third of the period used
    credits_before = Decimal(
        scalar(sync_engine, "SELECT current_balance FROM graph_credits WHERE graph_id = :g", g=graph_id)
    )

    preview = await client.post(
        change_path(org, sub_id, "change/preview"), json={"plan_name": "kuzu-large"}, headers=owner.auth
    )
    assert preview.status_code == 200, preview.text
    p = preview.json()
    assert p["when"] == "immediate" and p["direction"] == "upgrade" and p["currency"] == "usd"
    assert 0 < p["amount_due_now"] < 15000 and p["next_invoice_total"] == 19900
    assert [line["amount"] < 0 for line in p["lines"]] == [True, False]
    assert sum(line["amount"] for line in p["lines"]) == p["amount_due_now"]
    assert "Unused time" in p["lines"][0]["description"] and "Remaining time" in p["lines"][1]["description"]
    # ~20 of ~30 days left: (19900 - 4900) * 2/3 give or take the month's length
    assert 9000 < p["amount_due_now"] < 11000

    changed = await client.post(
        change_path(org, sub_id),
        json={"plan_name": "kuzu-large", "proration_date": p["proration_date"]},
        headers=owner.auth,
    )
    assert changed.status_code == 200, changed.text
    body = changed.json()
    assert body["change"]["status"] == "applied" and body["change"]["amount_due_now"] == p["amount_due_now"]
    assert body["subscription"]["plan_name"] == "kuzu-large" and body["subscription"]["base_price_cents"] == 19900

    await _events(app, worker, sub_id)
    invoices = (await client.get(f"/v1/billing/invoices/{org}", headers=owner.auth)).json()["invoices"]
    proration = [i for i in invoices if i["id"] != invoices[-1]["id"]]
    assert len(invoices) == 2 and len(proration) == 1
    assert proration[0]["status"] == "paid"
    assert abs(proration[0]["amount_paid"] - p["amount_due_now"]) <= 1  # to the cent (the same formula, same date)
    assert sorted(li["amount"] for li in proration[0]["line_items"]) == sorted(li["amount"] for li in p["lines"])

    limits = (await client.get(f"/v1/graphs/{graph_id}/limits", headers=owner.auth)).json()
    assert limits["subscription_tier"] == "kuzu-large" and limits["queries"]["max_timeout_seconds"] == 300
    assert scalar(sync_engine, "SELECT graph_tier FROM graphs WHERE graph_id = :g", g=graph_id) == "kuzu-large"
    pool = rows(
        sync_engine, "SELECT current_balance, monthly_allocation FROM graph_credits WHERE graph_id = :g", g=graph_id
    )[0]
    assert pool["monthly_allocation"] == 50000
    top_up = pool["current_balance"] - credits_before
    assert 20000 < top_up < 30000  # the 40,000 more credits of the larger plan, for the ~2/3 of the period left
    ent = (await client.get(f"/v1/orgs/{org}/entitlements", headers=owner.auth)).json()
    assert ent["limits"]["max_graphs"]["value"] == 100 and ent["graphs"][0]["tier"] == "kuzu-large"

    # the provider's events again (a redelivery / replay): nothing switches or tops up twice
    provider_sub = sub_row(sync_engine, sub_id)["provider_subscription_id"]
    for event in local(worker).subscription_events(provider_sub):
        payload, headers = local(worker).signed(event)
        assert (await client.post("/admin/v1/webhooks/stripe", content=payload, headers=headers)).status_code == 200
    for event_id in [r["id"] for r in rows(sync_engine, "SELECT id FROM webhook_events")]:
        assert (await client.post(f"/admin/v1/webhooks/events/{event_id}/replay", headers=ADMIN)).status_code == 200
    run_all(worker)
    assert (
        scalar(sync_engine, "SELECT current_balance FROM graph_credits WHERE graph_id = :g", g=graph_id)
        == pool["current_balance"]
    )
    assert scalar(sync_engine, "SELECT count(*) FROM billing_plan_changes WHERE subscription_id = :s", s=sub_id) == 1
    audit = [
        r["event_type"]
        for r in rows(sync_engine, "SELECT event_type FROM billing_audit_logs WHERE subscription_id = :s", s=sub_id)
    ]
    assert audit.count("plan_change_requested") == 1 and audit.count("subscription_plan_changed") == 1


async def test_failed_charge_changes_nothing_and_says_why(
    depth_app: App, worker: WorkerContext, sync_engine: Engine
) -> None:
    app, client = depth_app
    owner = await person(client, "declined")
    org = owner.personal_org_id
    sub_id, graph_id = await buy_graph(client, worker, owner, tier="kuzu-standard")
    card = await client.post(
        f"/v1/billing/customer/{org}/payment-method",
        json={"payment_method_id": "pm_card_chargeCustomerFail"},
        headers=owner.auth,
    )
    assert card.status_code == 200, card.text
    refused = await client.post(change_path(org, sub_id), json={"plan_name": "kuzu-large"}, headers=owner.auth)
    assert refused.status_code == 402, refused.text
    assert refused.json()["code"] == "payment_failed" and "declined" in refused.json()["detail"]
    assert sub_row(sync_engine, sub_id)["plan_name"] == "kuzu-standard"
    await _events(app, worker, sub_id)
    assert sub_row(sync_engine, sub_id)["status"] == "active"  # a failed change never makes it past due
    assert sub_row(sync_engine, sub_id)["plan_name"] == "kuzu-standard"
    assert scalar(sync_engine, "SELECT graph_tier FROM graphs WHERE graph_id = :g", g=graph_id) == "kuzu-standard"
    failed = rows(
        sync_engine, "SELECT status, failure_reason FROM billing_plan_changes WHERE subscription_id = :s", s=sub_id
    )
    assert [r["status"] for r in failed] == ["failed"] and "declined" in failed[0]["failure_reason"]
    assert (
        scalar(
            sync_engine,
            "SELECT count(*) FROM billing_audit_logs WHERE event_type = 'plan_change_failed' AND subscription_id = :s",
            s=sub_id,
        )
        == 1
    )
    provider_sub = local(worker).retrieve_subscription(sub_row(sync_engine, sub_id)["provider_subscription_id"])
    assert provider_sub.raw["items"]["data"][0]["price"]["nickname"] == "kuzu-standard"
    statuses = [r["status"] for r in rows(sync_engine, "SELECT status FROM billing_invoices WHERE org_id = :o", o=org)]
    assert sorted(statuses) == ["paid", "void"]


async def test_downgrade_scheduled_called_off_then_taking_effect_at_renewal(
    depth_app: App, worker: WorkerContext, sync_engine: Engine
) -> None:
    app, client = depth_app
    owner = await person(client, "downgrader")
    org = owner.personal_org_id
    sub_id, graph_id = await buy_graph(client, worker, owner, tier="kuzu-large")
    subscription = await client.get(f"/v1/billing/subscriptions/{org}/subscription/{sub_id}", headers=owner.auth)
    period_end = subscription.json()["current_period_end"]

    now = await client.post(
        change_path(org, sub_id), json={"plan_name": "kuzu-standard", "when": "immediate"}, headers=owner.auth
    )
    assert now.status_code == 422 and now.json()["code"] == "downgrade_at_period_end"
    preview = (
        await client.post(
            change_path(org, sub_id, "change/preview"), json={"plan_name": "kuzu-standard"}, headers=owner.auth
        )
    ).json()
    assert preview["when"] == "period_end" and preview["amount_due_now"] == 0 and preview["lines"] == []
    assert preview["next_invoice_total"] == 4900 and preview["effective_at"] == period_end

    scheduled = await client.post(change_path(org, sub_id), json={"plan_name": "kuzu-standard"}, headers=owner.auth)
    assert scheduled.status_code == 200, scheduled.text
    view = scheduled.json()["subscription"]
    assert view["plan_name"] == "kuzu-large"  # unchanged until the period ends
    assert (
        view["scheduled_change"]["plan_name"] == "kuzu-standard"
        and view["scheduled_change"]["effective_at"] == period_end
    )
    upcoming = (await client.get(f"/v1/billing/invoices/{org}/upcoming", headers=owner.auth)).json()
    assert upcoming["amount_due"] == 4900 and upcoming["period_start"] == period_end  # the renewal bills the new plan
    listed = (await client.get(f"/v1/billing/subscriptions/{org}", headers=owner.auth)).json()
    assert listed[0]["scheduled_change"]["plan_name"] == "kuzu-standard"
    again = await client.post(change_path(org, sub_id), json={"plan_name": "kuzu-xlarge"}, headers=owner.auth)
    assert again.status_code == 409 and again.json()["code"] == "change_in_progress"

    off = await client.delete(change_path(org, sub_id, "scheduled-change"), headers=owner.auth)
    assert off.status_code == 200 and off.json()["scheduled_change"] is None
    assert (await client.delete(change_path(org, sub_id, "scheduled-change"), headers=owner.auth)).status_code == 404
    assert (
        "scheduled_change"
        not in local(worker).store.get("subscriptions", sub_row(sync_engine, sub_id)["provider_subscription_id"])[
            "local"
        ]
    )

    assert (
        await client.post(change_path(org, sub_id), json={"plan_name": "kuzu-standard"}, headers=owner.auth)
    ).status_code == 200
    spent = await query(client, owner, graph_id, "RETURN 1 AS one")
    assert spent.status_code == 200

    assert await renew(app, worker, sub_id) == 1
    sub = sub_row(sync_engine, sub_id)
    assert sub["plan_name"] == "kuzu-standard" and sub["base_price_cents"] == 4900 and sub["status"] == "active"
    limits = (await client.get(f"/v1/graphs/{graph_id}/limits", headers=owner.auth)).json()
    assert limits["subscription_tier"] == "kuzu-standard"
    # the renewal reset the allocation to the standard plan's 10,000 (the unused large allocation expired)
    assert scalar(sync_engine, "SELECT current_balance FROM graph_credits WHERE graph_id = :g", g=graph_id) == 10000
    renewal = rows(
        sync_engine,
        "SELECT id, total_cents, billing_reason FROM billing_invoices WHERE org_id = :o ORDER BY created_at",
        o=org,
    )[-1]
    assert (renewal["total_cents"], renewal["billing_reason"]) == (4900, "subscription_cycle")
    assert (
        scalar(
            sync_engine,
            "SELECT status FROM billing_plan_changes WHERE subscription_id = :s AND status <> 'canceled'",
            s=sub_id,
        )
        == "applied"
    )

    # replay the renewal's invoice.paid twice after spending credits: the reset happened once
    for _ in range(3):
        assert (await query(client, owner, graph_id, "RETURN 1 AS one")).status_code == 200
    paid_events = [
        r["id"]
        for r in rows(sync_engine, "SELECT id, payload FROM webhook_events WHERE type = 'invoice.paid'")
        if r["payload"]["data"]["object"].get("billing_reason") == "subscription_cycle"
    ]
    assert len(paid_events) == 1
    for _ in range(2):
        assert (
            await client.post(f"/admin/v1/webhooks/events/{paid_events[0]}/replay", headers=ADMIN)
        ).status_code == 200
        run_all(worker)
    assert scalar(sync_engine, "SELECT current_balance FROM graph_credits WHERE graph_id = :g", g=graph_id) == 9997
    resets = scalar(
        sync_engine,
        "SELECT count(*) FROM graph_credit_transactions WHERE idempotency_key IN (:a, :b)",
        a=f"invoice:{renewal['id']}",
        b=f"expire:invoice:{renewal['id']}",
    )
    assert resets == 2  # one expiration + one allocation, once
    balance = scalar(sync_engine, "SELECT current_balance FROM graph_credits WHERE graph_id = :g", g=graph_id)
    ledger = scalar(sync_engine, "SELECT sum(amount) FROM graph_credit_transactions WHERE graph_id = :g", g=graph_id)
    assert balance == ledger


async def test_two_simultaneous_changes_one_wins(depth_app: App, worker: WorkerContext, sync_engine: Engine) -> None:
    app, client = depth_app
    owner = await person(client, "racer")
    org = owner.personal_org_id
    sub_id, _ = await buy_graph(client, worker, owner, tier="kuzu-standard")
    age(worker, sub_id, 3)
    for round_ in range(2):
        target = ("kuzu-large", "kuzu-xlarge")[round_]
        answers = await asyncio.gather(
            *(client.post(change_path(org, sub_id), json={"plan_name": target}, headers=owner.auth) for _ in range(4))
        )
        codes = sorted(a.status_code for a in answers)
        assert codes == [200, 409, 409, 409], [a.text for a in answers]
        assert {a.json()["code"] for a in answers if a.status_code == 409} <= {"change_in_progress", "no_change"}
        assert sub_row(sync_engine, sub_id)["plan_name"] == target
    charged = [
        r for r in rows(sync_engine, "SELECT status FROM billing_plan_changes WHERE subscription_id = :s", s=sub_id)
    ]
    assert [r["status"] for r in charged] == ["applied", "applied"]  # one change (and one charge) per round
    provider_sub = sub_row(sync_engine, sub_id)["provider_subscription_id"]
    events = [e["type"] for e in local(worker).subscription_events(provider_sub)]
    assert events.count("invoice.paid") == 2  # one proration invoice per round (the purchase's are the checkout's)


async def test_who_may_change_and_what_is_refused(depth_app: App, worker: WorkerContext, sync_engine: Engine) -> None:
    _, client = depth_app
    owner = await person(client, "team-owner")
    team = await make_org(client, owner, "Changers")
    member = await add_member(client, sync_engine, owner, team["id"], "member", "viewer")
    stranger = await person(client, "stranger")
    sub_id, _ = await buy_graph(client, worker, owner, team["id"], tier="kuzu-standard")
    path = change_path(team["id"], sub_id)
    large = {"plan_name": "kuzu-large"}
    assert (await client.post(path, json=large, headers=stranger.auth)).status_code == 404
    assert (await client.post(path + "/preview", json=large, headers=stranger.auth)).status_code == 404
    assert (await client.post(path, json=large, headers=member.auth)).status_code == 403
    assert (await client.post(path + "/preview", json=large, headers=member.auth)).status_code == 403
    unknown = await client.post(path + "/preview", json={"plan_name": "kuzu-gigantic"}, headers=owner.auth)
    assert unknown.status_code == 422 and unknown.json()["code"] == "unknown_plan"
    same = await client.post(path, json={"plan_name": "kuzu-standard"}, headers=owner.auth)
    assert same.status_code == 409 and same.json()["code"] == "no_change"
    stale = await client.post(path, json={**large, "proration_date": 1_600_000_000}, headers=owner.auth)
    assert stale.status_code == 422 and stale.json()["code"] == "invalid_proration_date"
    other = change_path(team["id"], "bsub_01NOTAREALSUBSCRIPTION")
    assert (await client.post(other, json=large, headers=owner.auth)).status_code == 404
    seats = await client.post(path, json={**large, "quantity": 3}, headers=owner.auth)
    assert seats.status_code == 422 and seats.json()["code"] == "quantity_not_supported"
    assert sub_row(sync_engine, sub_id)["plan_name"] == "kuzu-standard"
    assert scalar(sync_engine, "SELECT count(*) FROM billing_plan_changes") == 0
