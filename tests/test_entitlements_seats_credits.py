"""Entitlements (plans + operator overrides, one function behind every limit), per-seat plans (402 with the price of
one more seat, seats changed through the plan change flow), storage limits (413), credit packs (one-time checkout,
never reset), the low-credit threshold (``credits.low`` once per crossing).  Real database, the local provider, our
webhook endpoint and the worker's code path."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

from sqlalchemy import Engine, text

from robosystems.billing import credits
from robosystems.worker.context import WorkerContext
from tests.billing_depth_support import App, age, buy_graph, change_path, deliver, depth_app, local, renew, scalar
from tests.graphs_support import ADMIN_KEY, _real_backend, query, rows, run_all, sub_row, worker
from tests.org_helpers import add_member, invite, make_org, person

__all__ = ["_real_backend", "depth_app", "worker"]  # fixtures

ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}


async def test_entitlements_from_plans_and_overrides(
    depth_app: App, worker: WorkerContext, sync_engine: Engine
) -> None:
    _, client = depth_app
    owner = await person(client, "entitled")
    org = owner.personal_org_id
    stranger = await person(client, "outsider")
    sub_id, graph_id = await buy_graph(client, worker, owner, tier="kuzu-standard")

    ent = await client.get(f"/v1/orgs/{org}/entitlements", headers=owner.auth)
    assert ent.status_code == 200, ent.text
    body = ent.json()
    assert body["limits"]["max_graphs"] == {"value": 100, "source": "default", "expires_at": None}
    assert body["limits"]["max_members"]["value"] == 1000 and body["limits"]["max_webhook_endpoints"]["value"] == 10
    assert body["tiers"] == ["kuzu-standard", "kuzu-large", "kuzu-xlarge"] and body["seats"] is None
    (graph,) = body["graphs"]
    assert graph["graph_id"] == graph_id and graph["tier"] == "kuzu-standard"
    assert graph["limits"]["max_storage_bytes"]["value"] == 500 * 1024**3
    assert graph["limits"]["monthly_credits"]["value"] == 10000
    assert graph["limits"]["query_timeout_seconds"]["value"] == 60
    assert (await client.get(f"/v1/orgs/{org}/entitlements", headers=stranger.auth)).status_code == 404

    path = f"/admin/v1/orgs/{org}/entitlements"
    assert (await client.put(f"{path}/max_graphs", json={"value": 1, "reason": "trial"})).status_code == 401
    bad = await client.put(f"{path}/max_unicorns", json={"value": 1, "reason": "typo"}, headers=ADMIN)
    assert bad.status_code == 422 and bad.json()["code"] == "unknown_entitlement"
    wrong = await client.put(f"{path}/max_graphs", json={"value": "many", "reason": "typo"}, headers=ADMIN)
    assert wrong.status_code == 422 and wrong.json()["code"] == "invalid_entitlement_value"
    past = (datetime.now(UTC) - timedelta(days=1)).isoformat()
    expired = await client.put(
        f"{path}/max_graphs", json={"value": 1, "reason": "x", "expires_at": past}, headers=ADMIN
    )
    assert expired.status_code == 422
    until = (datetime.now(UTC) + timedelta(days=30)).isoformat()
    capped = await client.put(
        f"{path}/max_graphs", json={"value": 1, "reason": "trial org", "expires_at": until}, headers=ADMIN
    )
    assert capped.status_code == 200, capped.text
    assert capped.json()["limits"]["max_graphs"]["source"] == "override"
    timeout = await client.put(f"{path}/query_timeout_seconds", json={"value": 5, "reason": "noisy"}, headers=ADMIN)
    assert timeout.status_code == 200
    tiers = await client.put(f"{path}/tiers", json={"value": ["kuzu-standard"], "reason": "sandbox"}, headers=ADMIN)
    assert tiers.status_code == 200 and tiers.json()["tiers"] == ["kuzu-standard"]

    # every limit check reads the same answer: the org limit, the graph limits, checkout, plan changes
    limits = (await client.get(f"/v1/orgs/{org}/limits", headers=owner.auth)).json()
    assert limits["max_graphs"] == 1 and limits["can_create_graph"] is False
    refused = await client.post(
        "/v1/billing/checkout",
        json={"plan_name": "kuzu-standard", "resource_type": "graph", "resource_config": {"graph_name": "second"}},
        headers=owner.auth,
    )
    assert refused.status_code == 403 and refused.json()["code"] == "graph_limit_reached"
    assert (await client.get(f"/v1/graphs/{graph_id}/limits", headers=owner.auth)).json()["queries"][
        "max_timeout_seconds"
    ] == 5
    answered = await query(client, owner, graph_id, "RETURN 1 AS one", timeout=60)
    assert answered.status_code == 200 and answered.json()["timeout_seconds"] == 5
    upgrade = await client.post(
        change_path(org, sub_id, "change/preview"), json={"plan_name": "kuzu-large"}, headers=owner.auth
    )
    assert upgrade.status_code == 422 and upgrade.json()["code"] == "plan_not_allowed"

    removed = await client.put(f"{path}/max_graphs", json={"value": None, "reason": "trial over"}, headers=ADMIN)
    assert removed.status_code == 200 and removed.json()["limits"]["max_graphs"]["source"] == "default"
    audit = [
        r["event_type"]
        for r in rows(
            sync_engine, "SELECT event_type FROM billing_audit_logs WHERE org_id = :o ORDER BY event_timestamp", o=org
        )
    ]
    assert audit.count("entitlement_override_set") == 3 and audit.count("entitlement_override_removed") == 1
    # an override past its expiry no longer counts
    with sync_engine.begin() as conn:
        conn.execute(
            text("UPDATE org_entitlement_overrides SET expires_at = now() - interval '1 second' WHERE key = 'tiers'")
        )
    assert (await client.get(f"/v1/orgs/{org}/entitlements", headers=owner.auth)).json()["limits"]["tiers"][
        "source"
    ] == "default"


async def test_seats_limit_members_and_change_through_the_plan_flow(
    depth_app: App, worker: WorkerContext, sync_engine: Engine
) -> None:
    app, client = depth_app
    owner = await person(client, "seat-owner")
    team = await make_org(client, owner, "Seated")
    org = team["id"]
    bought = await client.post(
        "/v1/billing/checkout",
        json={"plan_name": "team", "resource_type": "org", "quantity": 2, "org_id": org},
        headers={**owner.auth, "Idempotency-Key": "seats-1"},
    )
    assert bought.status_code == 201, bought.text
    session_id, sub_id = bought.json()["session_id"], bought.json()["subscription_id"]
    page = await client.get(f"/billing/local/checkout/{session_id}")
    assert "24.00 USD" in page.text  # 2 seats x 12.00
    paid = await client.post(f"/billing/local/checkout/{session_id}/pay", data={"card_number": "4242424242424242"})
    assert paid.status_code == 303
    run_all(worker)
    sub = sub_row(sync_engine, sub_id)
    assert (sub["status"], sub["resource_type"], sub["resource_id"], sub["quantity"]) == ("active", "org_seats", org, 2)

    ent = (await client.get(f"/v1/orgs/{org}/entitlements", headers=owner.auth)).json()
    assert ent["seats"]["seats"] == 2 and ent["limits"]["max_members"] == {
        "value": 2,
        "source": "seats",
        "expires_at": None,
    }
    assert ent["limits"]["max_graphs"]["value"] == 25  # the team plan's entitlement
    await add_member(client, sync_engine, owner, org, "admin", "second")  # owner + 1 = 2 seats
    third = await invite(client, owner, org, "third@example.com")
    assert third.status_code == 402, third.text
    refused = third.json()
    assert refused["code"] == "seat_limit_reached" and refused["seat_price_cents"] == 1200
    assert refused["seats"] == 2 and "12.00 USD" in refused["detail"]

    age(worker, sub_id, 15)
    preview = (
        await client.post(change_path(org, sub_id, "change/preview"), json={"quantity": 3}, headers=owner.auth)
    ).json()
    assert preview["direction"] == "upgrade" and 0 < preview["amount_due_now"] < 1200
    changed = await client.post(change_path(org, sub_id), json={"quantity": 3}, headers=owner.auth)
    assert changed.status_code == 200, changed.text
    assert (
        changed.json()["subscription"]["quantity"] == 3 and changed.json()["subscription"]["base_price_cents"] == 3600
    )
    await deliver(app, local(worker), "subscriptions", sub["provider_subscription_id"])
    run_all(worker)
    assert (await invite(client, owner, org, "third@example.com")).status_code == 201
    below = await client.post(change_path(org, sub_id), json={"quantity": 2}, headers=owner.auth)
    assert below.status_code == 409 and below.json()["code"] == "below_current_usage"
    assert below.json()["limit"] == "max_members" and below.json()["current"] == 3
    stranger = await person(client, "seat-stranger")
    again = await client.post(
        "/v1/billing/checkout",
        json={"plan_name": "team", "resource_type": "org", "quantity": 5, "org_id": org},
        headers=owner.auth,
    )
    assert again.status_code == 409 and again.json()["code"] == "seat_subscription_exists"
    assert (
        await client.post(
            "/v1/billing/checkout",
            json={"plan_name": "team", "resource_type": "org", "org_id": org},
            headers=stranger.auth,
        )
    ).status_code == 404


async def test_storage_limit_refuses_writes_with_413(
    depth_app: App, worker: WorkerContext, sync_engine: Engine
) -> None:
    _, client = depth_app
    owner = await person(client, "storage")
    org = owner.personal_org_id
    _, graph_id = await buy_graph(client, worker, owner, tier="kuzu-standard")
    assert (await query(client, owner, graph_id, "CREATE (:Entity {identifier: 'a', name: 'A'})")).status_code == 200
    usage = (await client.get(f"/v1/graphs/{graph_id}/credits/storage/usage", headers=owner.auth)).json()
    assert usage["within_limit"] is True and usage["writes_allowed"] is True
    assert usage["storage_limit_bytes"] == 500 * 1024**3 and usage["limit_source"] == "plan:kuzu-standard"
    size = usage["current_storage_bytes"]
    assert size > 0

    capped = await client.put(
        f"/admin/v1/orgs/{org}/entitlements/max_storage_bytes",
        json={"value": size + 10, "reason": "test"},
        headers=ADMIN,
    )
    assert capped.status_code == 200
    balance = scalar(sync_engine, "SELECT current_balance FROM graph_credits WHERE graph_id = :g", g=graph_id)
    full = await query(client, owner, graph_id, "CREATE (:Entity {identifier: 'b', name: 'B'})")
    assert full.status_code == 413, full.text
    assert full.json()["code"] == "storage_limit_exceeded" and full.json()["limit_bytes"] == size + 10
    assert scalar(sync_engine, "SELECT current_balance FROM graph_credits WHERE graph_id = :g", g=graph_id) == balance
    read = await query(client, owner, graph_id, "MATCH (e:Entity) RETURN e.name AS name")
    assert read.status_code == 200 and read.json()["data"] == [{"name": "A"}]
    usage = (await client.get(f"/v1/graphs/{graph_id}/credits/storage/usage", headers=owner.auth)).json()
    assert usage["storage_limit_bytes"] == size + 10 and usage["limit_source"] == "override"
    limits = (await client.get(f"/v1/graphs/{graph_id}/credits/storage/limits", headers=owner.auth)).json()
    assert limits["has_override"] is True


async def test_credit_pack_adds_credits_that_survive_the_reset(
    depth_app: App, worker: WorkerContext, sync_engine: Engine
) -> None:
    app, client = depth_app
    owner = await person(client, "packer")
    member = await person(client, "not-in-org")
    sub_id, graph_id = await buy_graph(client, worker, owner, tier="kuzu-standard")
    body = {"kind": "credit_pack", "pack": "credits-10k", "graph_id": graph_id}
    assert (await client.post("/v1/billing/checkout", json=body, headers=member.auth)).status_code == 404
    unknown = await client.post("/v1/billing/checkout", json={**body, "pack": "credits-1m"}, headers=owner.auth)
    assert unknown.status_code == 422 and unknown.json()["code"] == "unknown_credit_pack"
    created = await client.post("/v1/billing/checkout", json=body, headers={**owner.auth, "Idempotency-Key": "pack-1"})
    again = await client.post("/v1/billing/checkout", json=body, headers={**owner.auth, "Idempotency-Key": "pack-1"})
    assert created.status_code == again.status_code == 201, created.text
    assert created.json() == again.json() and created.json()["purchase_id"].startswith("bcp_")
    session_id = created.json()["session_id"]
    page = await client.get(f"/billing/local/checkout/{session_id}")
    assert "10.00 USD" in page.text and "one-time" in page.text
    paid = await client.post(f"/billing/local/checkout/{session_id}/pay", data={"card_number": "4242424242424242"})
    assert paid.status_code == 303
    run_all(worker)
    status = (await client.get(f"/v1/billing/checkout/{session_id}/status", headers=owner.auth)).json()
    assert status["status"] == "paid" and status["resource_id"] == graph_id
    pool = rows(
        sync_engine, "SELECT current_balance, purchased_balance FROM graph_credits WHERE graph_id = :g", g=graph_id
    )[0]
    assert (pool["current_balance"], pool["purchased_balance"]) == (20000, 10000)
    # a replayed payment grants nothing more
    for event_id in [
        r["id"] for r in rows(sync_engine, "SELECT id FROM webhook_events WHERE type = 'checkout.session.completed'")
    ]:
        await client.post(f"/admin/v1/webhooks/events/{event_id}/replay", headers=ADMIN)
    run_all(worker)
    assert scalar(sync_engine, "SELECT current_balance FROM graph_credits WHERE graph_id = :g", g=graph_id) == 20000
    with worker.maker.begin() as s:  # the allocation is spent first, purchased credits after it
        credits.consume(s, graph_id, 12000)
    pool = rows(
        sync_engine, "SELECT current_balance, purchased_balance FROM graph_credits WHERE graph_id = :g", g=graph_id
    )[0]
    assert (pool["current_balance"], pool["purchased_balance"]) == (8000, 8000)
    assert await renew(app, worker, sub_id) == 1
    pool = rows(
        sync_engine, "SELECT current_balance, purchased_balance FROM graph_credits WHERE graph_id = :g", g=graph_id
    )[0]
    assert (pool["current_balance"], pool["purchased_balance"]) == (18000, 8000)  # 10,000 allocation + the rest bought
    invoices = (await client.get(f"/v1/billing/invoices/{owner.personal_org_id}", headers=owner.auth)).json()[
        "invoices"
    ]
    assert sorted(i["amount_paid"] for i in invoices) == [1000, 4900, 4900]
    assert all(i["invoice_pdf"] and i["invoice_pdf"].endswith(".pdf") for i in invoices)


async def test_credits_low_once_per_crossing(depth_app: App, worker: WorkerContext, sync_engine: Engine) -> None:
    _, client = depth_app
    owner = await person(client, "lowcredits")
    org = owner.personal_org_id
    _, graph_id = await buy_graph(client, worker, owner, tier="kuzu-standard")
    member = await person(client, "lowmember")
    assert (
        await client.put(f"/v1/orgs/{org}/credits/threshold", json={"threshold": 9998}, headers=member.auth)
    ).status_code == 404
    set_ = await client.put(f"/v1/orgs/{org}/credits/threshold", json={"threshold": 9998}, headers=owner.auth)
    assert set_.status_code == 200 and set_.json()["credits_low_threshold"] == 9998
    low_tasks = "SELECT count(*) FROM task_outbox WHERE task_name = 'robosystems.billing.credits_low'"
    for _ in range(4):  # 10000 -> 9996: crosses 9998 once
        assert (await query(client, owner, graph_id, "RETURN 1 AS one")).status_code == 200
    assert scalar(sync_engine, low_tasks) == 1
    run_all(worker)
    assert scalar(sync_engine, "SELECT count(*) FROM billing_audit_logs WHERE event_type = 'credits_low'") == 1
    assert scalar(sync_engine, "SELECT count(*) FROM mail_outbox WHERE kind = 'credits_low'") == 1
    with worker.maker.begin() as s:
        credits.adjust(s, graph_id, Decimal(10), reason="top up", actor="admin")  # back above: armed again
        credits.consume(s, graph_id, 20)
    assert scalar(sync_engine, low_tasks) == 2
