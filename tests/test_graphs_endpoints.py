"""Graph endpoints on a provisioned LadybugDB graph (BILLING_ENABLED=false: provisioning starts at once).

Responses are parsed with the published robosystems-client 0.2.13 models (``from_dict``), so the shapes are the
client's.  The provisioning task runs in this thread through the outbox, exactly as the in-process worker runs it.
"""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Any

import httpx
from fastapi import FastAPI
from robosystems_client.models import (
    CreditSummaryResponse,
    DatabaseHealthResponse,
    DatabaseInfoResponse,
    DetailedTransactionsResponse,
    ErrorResponse,
    GraphLimitsResponse,
    GraphMetricsResponse,
    GraphUsageResponse,
    StorageLimitResponse,
    SuccessResponse,
    UserGraphsResponse,
)
from sqlalchemy import Engine, text

from robosystems.billing import credits
from robosystems.billing import subscriptions as subs
from robosystems.billing.audit import Actor
from robosystems.ids import new_id
from robosystems.worker.context import WorkerContext
from tests.graphs_support import (
    _real_backend,
    create_graph,
    free_app,
    provisioned_graph,
    query,
    row,
    rows,
    run_provisioning,
    worker,
)
from tests.helpers import count
from tests.org_helpers import add_member, make_org, person

__all__ = ["_real_backend", "free_app", "worker"]  # fixtures

App = tuple[FastAPI, httpx.AsyncClient]


def ledger_ok(engine: Engine, graph_id: str) -> Decimal:
    """Σ ledger == balance (the invariant); returns the balance."""
    pool = row(engine, "SELECT id, current_balance FROM graph_credits WHERE graph_id = :g", g=graph_id)
    total = row(
        engine,
        "SELECT COALESCE(sum(amount), 0) AS s FROM graph_credit_transactions WHERE graph_credits_id = :p",
        p=pool["id"],
    )["s"]
    assert Decimal(total) == Decimal(pool["current_balance"])
    return Decimal(pool["current_balance"])


async def test_create_provision_list_and_query(free_app: App, worker: WorkerContext, sync_engine: Engine) -> None:
    _, client = free_app
    owner = await person(client, "owner")
    created = await create_graph(client, owner, name="Filings")
    assert created.status_code == 202, created.text
    body = created.json()
    sub_id = body["subscription_id"]
    assert body["operation_id"] == sub_id and body["status_url"] == f"/v1/operations/{sub_id}/status"

    pending = (await client.get(body["status_url"], headers=owner.auth)).json()
    assert pending["status"] == "running" and pending["graph_id"] is None
    assert (await client.get("/v1/graphs", headers=owner.auth)).json()["graphs"] == []  # not visible yet

    assert run_provisioning(worker) == 1
    done = (await client.get(body["status_url"], headers=owner.auth)).json()
    assert done["status"] == "completed" and done["progress_percent"] == 100
    graph_id = done["graph_id"]
    assert re.fullmatch(r"kg[0-9a-f]{16}", graph_id)

    listed = UserGraphsResponse.from_dict((await client.get("/v1/graphs", headers=owner.auth)).json())
    assert [(g.graph_id, g.graph_name, g.role) for g in listed.graphs] == [(graph_id, "Filings", "admin")]
    graph = row(sync_engine, "SELECT * FROM graphs WHERE graph_id = :g", g=graph_id)
    assert graph["org_id"] == owner.personal_org_id and graph["graph_tier"] == "kuzu-standard"
    assert count(sync_engine, "SELECT count(*) FROM graph_users WHERE graph_id = :g", g=graph_id) == 0
    assert ledger_ok(sync_engine, graph_id) == Decimal(10000)

    write = await query(
        client,
        owner,
        graph_id,
        "CREATE (:Entity {identifier: $id, name: $name, kind: 'company'})",
        parameters={"id": "e1", "name": "Acme"},
    )
    assert write.status_code == 200, write.text
    read = await query(client, owner, graph_id, "MATCH (e:Entity) RETURN e.identifier AS id, e.name AS name")
    result = read.json()
    assert read.status_code == 200 and result["data"] == [{"id": "e1", "name": "Acme"}]
    assert result["columns"] == ["id", "name"] and result["row_count"] == 1 and result["truncated"] is False
    assert result["credits_consumed"] == 1.0 and result["credits_remaining"] == 9998.0
    assert ledger_ok(sync_engine, graph_id) == Decimal(9998)
    usage = rows(
        sync_engine, "SELECT * FROM graph_usage WHERE graph_id = :g AND event_type = 'query_execution'", g=graph_id
    )
    assert len(usage) == 2 and {u["status_code"] for u in usage} == {200}
    assert all(u["user_id"] == owner.id and u["credits_consumed"] == Decimal(1) for u in usage)

    selected = await client.post(f"/v1/graphs/{graph_id}/select", headers=owner.auth)
    assert selected.status_code == 200 and SuccessResponse.from_dict(selected.json()).success is True
    listed = UserGraphsResponse.from_dict((await client.get("/v1/graphs", headers=owner.auth)).json())
    assert listed.selected_graph_id == graph_id and listed.graphs[0].is_selected is True


async def test_query_guard_errors_refunds_timeouts_and_limits(
    free_app: App, worker: WorkerContext, sync_engine: Engine
) -> None:
    _, client = free_app
    owner = await person(client)
    graph_id = await provisioned_graph(client, worker, owner)

    # refused by the statement guard: nothing charged, nothing run
    for cypher in (
        "COPY Entity FROM '/etc/passwd' (file_format='csv')",
        "LOAD FROM '/etc/passwd' RETURN *",
        "ATTACH '/tmp/other.lbug' AS other (dbtype lbug)",
        "RETURN 1; RETURN 2",
        "CREATE NODE TABLE X(id INT64, PRIMARY KEY(id))",
        "CALL threads=1",
        "INSTALL httpfs",
    ):
        refused = await query(client, owner, graph_id, cypher)
        assert refused.status_code == 400 and refused.json()["code"] == "query_not_allowed", cypher
    assert ledger_ok(sync_engine, graph_id) == Decimal(10000)

    # refused by the engine: charged, then refunded (refund row keyed by the query)
    syntax = await query(client, owner, graph_id, "MATCHH (n) RETURN n")
    assert syntax.status_code == 400 and syntax.json()["code"] == "query_syntax_error"
    assert "MATCHH" not in syntax.text  # no engine text in the body
    unknown = await query(client, owner, graph_id, "MATCH (n:Nope) RETURN n")
    assert unknown.status_code == 400 and unknown.json()["code"] == "query_invalid"
    assert ledger_ok(sync_engine, graph_id) == Decimal(10000)
    assert (
        count(
            sync_engine,
            "SELECT count(*) FROM graph_credit_transactions WHERE graph_id = :g AND transaction_type = 'refund'",
            g=graph_id,
        )
        == 2
    )

    # a timeout is not refunded; the timeout asked for is capped by the plan (60 s for kuzu-standard)
    slow = await query(
        client,
        owner,
        graph_id,
        "UNWIND range(1, 100000) AS x UNWIND range(1, 100000) AS y RETURN sum(x * y) AS s",
        timeout=1,
    )
    assert slow.status_code == 408 and slow.json()["code"] == "query_timeout"
    assert ledger_ok(sync_engine, graph_id) == Decimal(9999)
    capped = await query(client, owner, graph_id, "RETURN 1 AS one", timeout=3600)
    assert capped.status_code == 200 and capped.json()["timeout_seconds"] == 60

    # the row cap (plan max_rows_per_query 10000, QUERY_MAX_ROWS 10000)
    many = await query(client, owner, graph_id, "UNWIND range(1, 10005) AS x RETURN x")
    assert many.status_code == 200
    assert many.json()["row_count"] == 10000 and many.json()["truncated"] is True

    # bad input -> 4xx, never 500
    assert (await query(client, owner, graph_id, "RETURN $x AS x", parameters={"bad name": 1})).status_code == 400
    assert (
        await client.post(f"/v1/graphs/{graph_id}/query", json={"query": ""}, headers=owner.auth)
    ).status_code == 422
    assert (await client.post(f"/v1/graphs/{graph_id}/query", json={"nope": 1}, headers=owner.auth)).status_code == 422
    param = await query(client, owner, graph_id, "RETURN $x AS x, $y AS y", parameters={"x": [1, 2, 3], "y": "s"})
    assert param.status_code == 200 and param.json()["data"] == [{"x": [1, 2, 3], "y": "s"}]

    # credits exhausted -> 402 before anything runs
    with worker.maker.begin() as s:
        balance = credits.balance(s, graph_id)
        assert balance is not None
        credits.adjust(s, graph_id, -balance, reason="test: drain the pool", actor=Actor.admin())
    before = count(sync_engine, "SELECT count(*) FROM graph_usage WHERE graph_id = :g", g=graph_id)
    broke = await query(client, owner, graph_id, "RETURN 1 AS one")
    assert broke.status_code == 402 and broke.json()["code"] == "insufficient_credits"
    assert ErrorResponse.from_dict(broke.json()).code == "insufficient_credits"
    assert count(sync_engine, "SELECT count(*) FROM graph_usage WHERE graph_id = :g", g=graph_id) == before
    assert ledger_ok(sync_engine, graph_id) == Decimal(0)


async def test_read_endpoints_have_the_client_shapes(free_app: App, worker: WorkerContext) -> None:
    _, client = free_app
    owner = await person(client)
    graph_id = await provisioned_graph(client, worker, owner, tier="kuzu-large")
    await query(
        client,
        owner,
        graph_id,
        "CREATE (:Entity {identifier: 'a'})-[:RELATES_TO {kind: 'owns'}]->(:Entity {identifier: 'b'})",
    )

    async def get(path: str, **params: Any) -> dict[str, Any]:
        response = await client.get(f"/v1/graphs/{graph_id}{path}", params=params, headers=owner.auth)
        assert response.status_code == 200, (path, response.text)
        body: dict[str, Any] = response.json()
        return body

    info = DatabaseInfoResponse.from_dict(await get("/info"))
    assert (info.node_count, info.relationship_count) == (2, 1)
    assert info.node_labels == ["Entity"] and info.relationship_types == ["RELATES_TO"]
    assert info.database_size_bytes > 0 and info.read_only is False and info.schema_version == "1"

    health = DatabaseHealthResponse.from_dict(await get("/health"))
    assert health.status == "healthy" and health.query_count_24h == 1

    limits = GraphLimitsResponse.from_dict(await get("/limits"))
    assert limits.graph_tier == "kuzu-large" and limits.queries.max_timeout_seconds == 300
    assert limits.credits_ is not None and limits.credits_.monthly_ai_credits == 50000
    assert limits.storage.max_storage_gb == 1000

    summary = CreditSummaryResponse.from_dict(await get("/credits/summary"))
    assert (summary.current_balance, summary.monthly_allocation, summary.consumed_this_month) == (49999, 50000, 1)
    assert summary.transaction_count == 2 and summary.last_allocation_date

    txns = DetailedTransactionsResponse.from_dict(await get("/credits/transactions"))
    assert sorted(t.type_ for t in txns.transactions) == ["allocation", "consumption"]
    assert txns.total_count == 2 and txns.filtered_count == 2
    only = DetailedTransactionsResponse.from_dict(await get("/credits/transactions", transaction_type="consumption"))
    assert [t.amount for t in only.transactions] == [-1.0] and only.total_count == 2 and only.filtered_count == 1
    bad = await client.get(
        f"/v1/graphs/{graph_id}/credits/transactions", params={"start_date": "yesterday"}, headers=owner.auth
    )
    assert bad.status_code == 400 and bad.json()["code"] == "invalid_date"

    check = await get("/credits/balance/check", base_cost="100.5")
    assert check["has_sufficient_credits"] is True and check["available_credits"] == 49999
    assert (await get("/credits/balance/check", base_cost="60000"))["has_sufficient_credits"] is False
    negative = await client.get(
        f"/v1/graphs/{graph_id}/credits/balance/check", params={"base_cost": "-1"}, headers=owner.auth
    )
    assert negative.status_code == 422

    usage = await get("/credits/storage/usage")
    assert usage["current_storage_bytes"] > 0 and usage["storage_limit_gb"] == 1000
    storage = StorageLimitResponse.from_dict(await get("/credits/storage/limits"))
    assert storage.within_limit is True and storage.has_override is False and storage.effective_limit_gb == 1000

    metrics = GraphMetricsResponse.from_dict(await get("/analytics"))
    assert metrics.node_counts.to_dict() == {"Entity": 2}
    assert metrics.relationship_counts.to_dict() == {"RELATES_TO": 1} and metrics.user_role == "admin"

    analytics = GraphUsageResponse.from_dict(
        await get("/analytics/usage", include_performance="true", include_events="true")
    )
    assert analytics.credit_summary and analytics.credit_summary.total_credits_consumed == 1
    assert analytics.performance_insights and analytics.performance_insights.total_operations == 1
    assert len(analytics.recent_events) == 1
    assert (
        await client.get(f"/v1/graphs/{graph_id}/analytics/usage", params={"time_range": "forever"}, headers=owner.auth)
    ).status_code == 422


async def test_access_follows_live_org_membership(free_app: App, worker: WorkerContext, sync_engine: Engine) -> None:
    _, client = free_app
    owner = await person(client, "owner")
    org = await make_org(client, owner, "Team")
    member = await add_member(client, sync_engine, owner, org["id"], "member", "member")
    outsider = await person(client, "outsider")
    graph_id = await provisioned_graph(client, worker, owner, org["id"])

    # a member may not create graphs (admin+)
    denied = await create_graph(client, member, org["id"])
    assert denied.status_code == 403 and denied.json()["code"] == "insufficient_role"

    listed = UserGraphsResponse.from_dict((await client.get("/v1/graphs", headers=member.auth)).json())
    assert [(g.graph_id, g.role) for g in listed.graphs] == [(graph_id, "member")]
    assert (await query(client, member, graph_id, "CREATE (:Entity {identifier: 'm'})")).status_code == 200

    for path in ("/info", "/limits", "/credits/summary", "/analytics"):
        hidden = await client.get(f"/v1/graphs/{graph_id}{path}", headers=outsider.auth)
        assert hidden.status_code == 404 and hidden.json()["code"] == "graph_not_found", path
    assert (await query(client, outsider, graph_id, "RETURN 1")).status_code == 404
    assert (await client.post(f"/v1/graphs/{graph_id}/select", headers=outsider.auth)).status_code == 404
    assert (
        await client.get(
            f"/v1/operations/{row(sync_engine, 'SELECT id FROM billing_subscriptions')['id']}/status",
            headers=outsider.auth,
        )
    ).status_code == 404

    removed = await client.delete(f"/v1/orgs/{org['id']}/members/{member.id}", headers=owner.auth)
    assert removed.status_code == 204, removed.text
    gone = await query(client, member, graph_id, "MATCH (e:Entity) RETURN count(e) AS n")
    assert gone.status_code == 404 and gone.json()["code"] == "graph_not_found"
    assert (await client.get("/v1/graphs", headers=member.auth)).json()["graphs"] == []


async def test_frozen_graph_is_read_only_until_paid(
    app_factory: Any, free_app: App, worker: WorkerContext, sync_engine: Engine
) -> None:
    _, client = free_app
    owner = await person(client)
    graph_id = await provisioned_graph(client, worker, owner)
    sub_id = row(sync_engine, "SELECT id FROM billing_subscriptions WHERE resource_id = :g", g=graph_id)["id"]

    def move(to: str) -> None:
        with worker.maker.begin() as s:
            subs.transition(s, sub_id, to, actor=Actor.system(), reason=f"test: {to}")

    move("past_due")  # within PAST_DUE_GRACE_DAYS (7): still writable
    assert (await query(client, owner, graph_id, "CREATE (:Entity {identifier: 'p1'})")).status_code == 200

    from tests.graphs_support import SETTINGS

    async with app_factory(billing_enabled=False, past_due_grace_days=0, **SETTINGS) as (_, strict):
        frozen = await query(strict, owner, graph_id, "CREATE (:Entity {identifier: 'p2'})")
        assert frozen.status_code == 403 and frozen.json()["code"] == "graph_read_only"
        read = await query(strict, owner, graph_id, "MATCH (e:Entity) RETURN count(e) AS n")
        assert read.status_code == 200 and read.json()["data"] == [{"n": 1}] and read.json()["read_only"] is True
        info = DatabaseInfoResponse.from_dict(
            (await strict.get(f"/v1/graphs/{graph_id}/info", headers=owner.auth)).json()
        )
        assert info.read_only is True
        move("active")  # paid again: writable at once
        assert (await query(strict, owner, graph_id, "CREATE (:Entity {identifier: 'p3'})")).status_code == 200

    move("canceled")
    canceled = await query(client, owner, graph_id, "CREATE (:Entity {identifier: 'c'})")
    assert canceled.status_code == 403 and canceled.json()["code"] == "graph_read_only"
    assert (await query(client, owner, graph_id, "MATCH (e:Entity) RETURN count(e) AS n")).json()["data"] == [{"n": 2}]
    listed = (await client.get("/v1/graphs", headers=owner.auth)).json()["graphs"]
    assert listed[0]["readOnly"] is True


async def test_explicit_viewer_grant_reads_but_cannot_write(
    free_app: App, worker: WorkerContext, sync_engine: Engine
) -> None:
    _, client = free_app
    owner = await person(client, "owner")
    viewer = await person(client, "viewer")
    graph_id = await provisioned_graph(client, worker, owner)
    assert (await query(client, owner, graph_id, "CREATE (:Entity {identifier: 'x'})")).status_code == 200
    with sync_engine.begin() as conn:  # a legacy share (graph_users), not an org membership
        conn.execute(
            text("INSERT INTO graph_users (id, user_id, graph_id, role) VALUES (:i, :u, :g, 'viewer')"),
            {"i": new_id("gu"), "u": viewer.id, "g": graph_id},
        )
    listed = UserGraphsResponse.from_dict((await client.get("/v1/graphs", headers=viewer.auth)).json())
    assert [(g.graph_id, g.role) for g in listed.graphs] == [(graph_id, "viewer")]
    read = await query(client, viewer, graph_id, "MATCH (e:Entity) RETURN count(e) AS n")
    assert read.status_code == 200 and read.json()["data"] == [{"n": 1}] and read.json()["read_only"] is True
    write = await query(client, viewer, graph_id, "CREATE (:Entity {identifier: 'y'})")
    assert write.status_code == 403 and write.json()["code"] == "graph_read_only"
    # the owner's connection is unaffected by the viewer's read-only transaction
    assert (await query(client, owner, graph_id, "CREATE (:Entity {identifier: 'z'})")).status_code == 200
    assert (await query(client, owner, graph_id, "MATCH (e:Entity) RETURN count(e) AS n")).json()["data"] == [
        {"n": 2}
    ]
