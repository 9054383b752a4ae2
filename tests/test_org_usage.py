"""Org graphs / limits / usage over HTTP, graph access and grant revocation, on real rows inserted by SQL."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import Engine, text

from robosystems.graphs.access import graph_access
from robosystems.orgs.usage import org_graph_count, org_limits, revoke_member_graph_access

try:
    from tests.helpers import bearer, count, register
except ModuleNotFoundError:  # pragma: no cover
    from helpers import bearer, count, register  # type: ignore[no-redef]


# --- row builders (the target schema: graphs.org_id, graph_users, graph_usage) ------------------------------


def add_graph(
    engine: Engine,
    org_id: str | None,
    *,
    name: str = "Graph",
    parent: str | None = None,
    repository: bool = False,
    graph_id: str | None = None,
    created_at: datetime | None = None,
) -> str:
    graph_id = graph_id or (f"{parent}_s{secrets.token_hex(2)}" if parent else f"kg{secrets.token_hex(8)}")
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO graphs (graph_id, org_id, graph_name, graph_type, schema_extensions, graph_instance_id, "
                "graph_tier, is_subgraph, parent_graph_id, subgraph_index, subgraph_name, is_repository, "
                "repository_type, created_at, updated_at) VALUES (:id, :org, :name, :type, '[]'::jsonb, 'default', "
                ":tier, :sub, :parent, :idx, :sname, :repo, :rtype, :created, :created)"
            ),
            {
                "id": graph_id,
                "org": org_id,
                "name": name,
                "type": "repository" if repository else "entity",
                "tier": "kuzu-shared" if repository else "kuzu-standard",
                "sub": parent is not None,
                "parent": parent,
                "idx": 1 if parent else None,
                "sname": "s" if parent else None,
                "repo": repository,
                "rtype": "sec" if repository else None,
                "created": created_at or datetime.now(UTC),
            },
        )
    return graph_id


def add_credits(
    engine: Engine,
    graph_id: str,
    user_id: str,
    balance: str = "1000",
    allocation: str = "1000",
    storage_limit: str = "500",
) -> str:
    credits_id = f"crd_{secrets.token_hex(8)}"
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO graph_credits (id, graph_id, user_id, current_balance, monthly_allocation, "
                "storage_limit_gb, auto_expand_enabled, storage_warning_threshold, billing_admin_id, created_at, "
                "updated_at) VALUES (:id, :g, :u, :b, :a, :s, false, 0.8, :u, now(), now())"
            ),
            {
                "id": credits_id,
                "g": graph_id,
                "u": user_id,
                "b": Decimal(balance),
                "a": Decimal(allocation),
                "s": Decimal(storage_limit),
            },
        )
    return credits_id


def add_txn(
    engine: Engine,
    credits_id: str,
    graph_id: str,
    amount: str,
    *,
    kind: str = "consumption",
    at: datetime | None = None,
) -> None:
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO graph_credit_transactions (id, graph_credits_id, graph_id, transaction_type, amount, "
                "description, created_at) VALUES (:id, :c, :g, :t, :a, 'test', :at)"
            ),
            {
                "id": f"txn_{secrets.token_hex(8)}",
                "c": credits_id,
                "g": graph_id,
                "t": kind,
                "a": Decimal(amount),
                "at": at or datetime.now(UTC) - timedelta(seconds=5),
            },
        )


def add_usage(engine: Engine, graph_id: str, user_id: str, event_type: str, at: datetime, **values: Any) -> None:
    naive = at.astimezone(UTC).replace(tzinfo=None)
    columns = {
        "id": f"usg_{secrets.token_hex(8)}",
        "user_id": user_id,
        "graph_id": graph_id,
        "event_type": event_type,
        "graph_tier": "kuzu-standard",
        "recorded_at": naive,
        "billing_year": naive.year,
        "billing_month": naive.month,
        "billing_day": naive.day,
        "billing_hour": naive.hour,
        **values,
    }
    with engine.begin() as conn:
        conn.execute(
            text(f"INSERT INTO graph_usage ({', '.join(columns)}) VALUES ({', '.join(':' + c for c in columns)})"),
            columns,
        )


def add_member(engine: Engine, org_id: str, user_id: str, role: str = "member", active: bool = True) -> None:
    with engine.begin() as conn:
        conn.execute(
            text("INSERT INTO org_users (id, org_id, user_id, role, is_active) VALUES (:id, :o, :u, :r, :a)"),
            {"id": f"ou_{secrets.token_hex(8)}", "o": org_id, "u": user_id, "r": role, "a": active},
        )


def add_grant(engine: Engine, graph_id: str, user_id: str, role: str) -> None:
    with engine.begin() as conn:
        conn.execute(
            text("INSERT INTO graph_users (id, user_id, graph_id, role) VALUES (:id, :u, :g, :r)"),
            {"id": f"gu_{secrets.token_hex(8)}", "u": user_id, "g": graph_id, "r": role},
        )


async def person(client: httpx.AsyncClient) -> dict[str, Any]:
    body = await register(client)
    return {"id": body["user"]["id"], "org": body["org"]["id"], "headers": bearer(body["token"])}


def yesterday_at(hour: int) -> datetime:
    d = datetime.now(UTC).date() - timedelta(days=1)
    return datetime(d.year, d.month, d.day, hour, tzinfo=UTC)


# --- usage ----------------------------------------------------------------------------------------------------


async def test_usage_limits_graphs_are_zero_for_an_empty_org(client: httpx.AsyncClient) -> None:
    me = await person(client)
    r = await client.get(f"/v1/orgs/{me['org']}/usage", headers=me["headers"])
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["org_id"] == me["org"] and body["period_days"] == 30
    assert body["graph_details"] == []
    assert len(body["daily_trend"]) == 30
    assert all(d["credits_used"] == 0 and d["api_calls"] == 0 and d["storage_gb"] == 0 for d in body["daily_trend"])
    assert body["daily_trend"][-1]["date"] == datetime.now(UTC).date().isoformat()
    s = body["summary"]
    assert s == {
        "total_credits_used": 0.0,
        "total_ai_operations": 0,
        "total_storage_gb": 0.0,
        "total_api_calls": 0,
        "daily_avg_credits": 0.0,
        "daily_avg_api_calls": 0.0,
        "projected_monthly_credits": 0.0,
        "projected_monthly_api_calls": 0,
        "credits_limit": None,
        "api_calls_limit": None,
        "storage_limit_gb": None,
    }

    r = await client.get(f"/v1/orgs/{me['org']}/limits", headers=me["headers"])
    assert r.status_code == 200, r.text
    limits = r.json()
    assert limits["current_usage"]["graphs"]["current"] == 0
    assert limits["current_usage"]["graphs"]["remaining"] == limits["max_graphs"]
    assert limits["can_create_graph"] is True and limits["warnings"] == []

    r = await client.get(f"/v1/orgs/{me['org']}/graphs", headers=me["headers"])
    assert r.status_code == 200 and r.json() == []


async def test_storage_is_counted_once_per_graph_and_hour(client: httpx.AsyncClient, sync_engine: Engine) -> None:
    me = await person(client)
    others = [await person(client) for _ in range(2)]
    graph = add_graph(sync_engine, me["org"])
    sharers = [me["id"], *(o["id"] for o in others)]
    for user in sharers:  # the legacy collector: one snapshot per grant and hour
        add_grant(sync_engine, graph, user, "member")
        add_usage(sync_engine, graph, user, "storage_snapshot", yesterday_at(10), storage_gb=2.0)
        add_usage(sync_engine, graph, user, "storage_snapshot", yesterday_at(11), storage_gb=3.0)
    r = await client.get(f"/v1/orgs/{me['org']}/usage", headers=me["headers"])
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["summary"]["total_storage_gb"] == pytest.approx(3.0)  # latest hour, not 3 x 3.0
    assert body["graph_details"][0]["storage_gb"] == pytest.approx(3.0)
    day = next(d for d in body["daily_trend"] if d["date"] == yesterday_at(0).date().isoformat())
    assert day["storage_gb"] == pytest.approx(2.5)  # mean of the two hours, not of six rows x members
    assert body["summary"]["total_api_calls"] == 0  # snapshots are not API calls


async def test_credits_come_from_the_ledger_and_add_up(client: httpx.AsyncClient, sync_engine: Engine) -> None:
    me = await person(client)
    g1 = add_graph(sync_engine, me["org"], name="one")
    g2 = add_graph(sync_engine, me["org"], name="two")
    sub = add_graph(sync_engine, me["org"], parent=g1)
    c1 = add_credits(sync_engine, g1, me["id"], balance="980", allocation="1000", storage_limit="500")
    c2 = add_credits(sync_engine, g2, me["id"], balance="92.5", allocation="100", storage_limit="100")
    add_txn(sync_engine, c1, g1, "1000", kind="allocation")
    add_txn(sync_engine, c1, g1, "-12.50")
    add_txn(sync_engine, c1, g1, "-7.50")
    add_txn(sync_engine, c2, g2, "-7.50", at=datetime.now(UTC) - timedelta(days=3))
    add_txn(sync_engine, c2, g2, "-100", at=datetime.now(UTC) - timedelta(days=40))  # outside the window
    add_txn(sync_engine, c1, sub, "-1.25")  # a subgraph's consumption is the org's too
    # the usage events repeat credit consumption: they must not be counted twice
    add_usage(
        sync_engine,
        g1,
        me["id"],
        "credit_consumption",
        datetime.now(UTC) - timedelta(minutes=1),
        credits_consumed=Decimal("12.50"),
    )
    for _ in range(3):
        add_usage(sync_engine, g2, me["id"], "api_call", datetime.now(UTC) - timedelta(minutes=1))
    add_usage(sync_engine, g2, me["id"], "query_execution", datetime.now(UTC) - timedelta(days=2))
    # another org's graph never leaks in
    other = await person(client)
    foreign = add_graph(sync_engine, other["org"])
    add_txn(sync_engine, add_credits(sync_engine, foreign, other["id"]), foreign, "-999")

    r = await client.get(f"/v1/orgs/{me['org']}/usage", headers=me["headers"])
    assert r.status_code == 200, r.text
    body = r.json()
    s = body["summary"]
    assert s["total_credits_used"] == pytest.approx(28.75)
    assert s["total_ai_operations"] == 4
    assert s["total_api_calls"] == 4
    assert s["daily_avg_credits"] == pytest.approx(round(28.75 / 30, 2))
    assert s["projected_monthly_credits"] == pytest.approx(28.75, abs=0.01)
    assert s["credits_limit"] == 1100 and s["storage_limit_gb"] == 600
    assert sum(d["credits_used"] for d in body["daily_trend"]) == pytest.approx(28.75)
    assert sum(d["api_calls"] for d in body["daily_trend"]) == 4
    details = {d["graph_id"]: d for d in body["graph_details"]}
    assert set(details) == {g1, g2, sub}
    assert details[g1]["credits_used"] == pytest.approx(20.0) and details[g1]["ai_operations"] == 2
    assert details[g1]["credits_available"] == pytest.approx(980.0)
    assert details[g2]["credits_used"] == pytest.approx(7.5) and details[g2]["api_calls"] == 4
    assert details[sub]["parent_graph_id"] == g1 and details[sub]["credits_used"] == pytest.approx(1.25)

    r = await client.get(f"/v1/orgs/{me['org']}/usage", params={"days": 1}, headers=me["headers"])
    assert r.status_code == 200
    assert len(r.json()["daily_trend"]) == 1
    assert r.json()["summary"]["total_credits_used"] <= 21.25  # the 3-day-old row is outside a 1-day window

    r = await client.get(f"/v1/orgs/{me['org']}/graphs", headers=me["headers"])
    assert r.status_code == 200
    graphs = {g["graph_id"]: g for g in r.json()}
    assert set(graphs) == {g1, g2}  # subgraphs are not listed
    assert graphs[g1]["credits_available"] == pytest.approx(980.0)
    assert graphs[g1]["graph_type"] == "entity" and graphs[g1]["graph_tier"] == "kuzu-standard"


@pytest.mark.parametrize("days", ["0", "366", "-1", "abc"])
async def test_days_out_of_range_is_422(client: httpx.AsyncClient, days: str) -> None:
    me = await person(client)
    r = await client.get(f"/v1/orgs/{me['org']}/usage", params={"days": days}, headers=me["headers"])
    assert r.status_code == 422


async def test_a_year_of_days(client: httpx.AsyncClient) -> None:
    me = await person(client)
    r = await client.get(f"/v1/orgs/{me['org']}/usage", params={"days": 365}, headers=me["headers"])
    assert r.status_code == 200 and len(r.json()["daily_trend"]) == 365


@pytest.mark.parametrize("path", ["graphs", "limits", "usage"])
async def test_non_member_gets_404(client: httpx.AsyncClient, sync_engine: Engine, path: str) -> None:
    owner = await person(client)
    stranger = await person(client)
    add_graph(sync_engine, owner["org"])
    r = await client.get(f"/v1/orgs/{owner['org']}/{path}", headers=stranger["headers"])
    assert r.status_code == 404 and r.json()["code"] == "org_not_found"
    r = await client.get(f"/v1/orgs/org_unknown/{path}", headers=stranger["headers"])
    assert r.status_code == 404
    r = await client.get(f"/v1/orgs/{owner['org']}/{path}")
    assert r.status_code == 401
    # a pending (inactive) membership is no membership
    add_member(sync_engine, owner["org"], stranger["id"], active=False)
    r = await client.get(f"/v1/orgs/{owner['org']}/{path}", headers=stranger["headers"])
    assert r.status_code == 404


# --- limits ---------------------------------------------------------------------------------------------------


async def test_limits_count_owned_graphs_and_respect_max(client: httpx.AsyncClient, sync_engine: Engine) -> None:
    me = await person(client)
    g = add_graph(sync_engine, me["org"])
    add_graph(sync_engine, me["org"])
    add_graph(sync_engine, me["org"], parent=g)  # not counted
    with sync_engine.begin() as conn:
        conn.execute(text("UPDATE org_limits SET max_graphs = 2 WHERE org_id = :o"), {"o": me["org"]})
    body = (await client.get(f"/v1/orgs/{me['org']}/limits", headers=me["headers"])).json()
    assert body["max_graphs"] == 2
    assert body["current_usage"]["graphs"] == {"current": 2, "limit": 2, "remaining": 0, "owned": 2, "pending": 0}
    assert body["can_create_graph"] is False
    assert body["warnings"] and "limit" in body["warnings"][0].lower()

    with sync_engine.begin() as conn:
        conn.execute(text("UPDATE org_limits SET max_graphs = -1 WHERE org_id = :o"), {"o": me["org"]})
    body = (await client.get(f"/v1/orgs/{me['org']}/limits", headers=me["headers"])).json()
    assert body["max_graphs"] == -1 and body["can_create_graph"] is True
    assert body["current_usage"]["graphs"]["remaining"] == -1 and body["warnings"] == []

    # a plain member sees the numbers but may not create graphs
    member = await person(client)
    add_member(sync_engine, me["org"], member["id"], "member")
    body = (await client.get(f"/v1/orgs/{me['org']}/limits", headers=member["headers"])).json()
    assert body["current_usage"]["graphs"]["current"] == 2 and body["can_create_graph"] is False


async def test_limits_count_pending_subscriptions_once_billing_is_org_keyed(
    app: FastAPI, client: httpx.AsyncClient, sync_engine: Engine
) -> None:
    """While billing_subscriptions is user-keyed the hook counts 0; once it has org_id, pending_payment and
    provisioning subscriptions without a graph count.  The column is added inside a rolled-back transaction
    when the billing migration has not added it yet (DDL is transactional in PostgreSQL)."""
    me = await person(client)
    graph = add_graph(sync_engine, me["org"])
    body = (await client.get(f"/v1/orgs/{me['org']}/limits", headers=me["headers"])).json()
    has_column = count(
        sync_engine,
        "SELECT count(*) FROM information_schema.columns WHERE table_name = 'billing_subscriptions' "
        "AND column_name = 'org_id'",
    )
    if not has_column:
        assert body["current_usage"]["graphs"]["pending"] == 0
    with sync_engine.connect() as conn:
        columns = {
            row.column_name: row.is_nullable
            for row in conn.execute(
                text(
                    "SELECT column_name, is_nullable FROM information_schema.columns "
                    "WHERE table_name = 'billing_subscriptions'"
                )
            )
        }
    async with app.state.sessionmaker() as session:
        if not has_column:
            await session.execute(text("ALTER TABLE billing_subscriptions ADD COLUMN org_id varchar"))
        base = {
            "resource_type": "graph",
            "plan_name": "kuzu-standard",
            "billing_interval": "monthly",
            "base_price_cents": 4900,
            "payment_provider": "stripe",
            "org_id": me["org"],
        }
        if columns.get("billing_customer_user_id") == "NO":
            base["billing_customer_user_id"] = me["id"]
        rows = [
            {"status": "pending_payment", "resource_id": None},
            {"status": "provisioning", "resource_id": "kg_not_yet_created"},
            {"status": "provisioning", "resource_id": graph},  # its graph exists: counted once, as owned
            {"status": "active", "resource_id": None},
            {"status": "canceled", "resource_id": None},
        ]
        for i, row in enumerate(rows):
            values = {**base, **row, "id": f"bsub_t{i}"}
            names = [*values, "created_at", "updated_at"]
            await session.execute(
                text(
                    f"INSERT INTO billing_subscriptions ({', '.join(names)}) "
                    f"VALUES ({', '.join(':' + n for n in values)}, now(), now())"
                ),
                values,
            )
        limits = await org_limits(session, me["org"])
        await session.rollback()
    assert limits["current_usage"]["graphs"]["pending"] == 2
    assert limits["current_usage"]["graphs"]["owned"] == 1
    assert limits["current_usage"]["graphs"]["current"] == 3


# --- graph access and revocation ------------------------------------------------------------------------------


async def test_graph_access_roles(app: FastAPI, client: httpx.AsyncClient, sync_engine: Engine) -> None:
    owner = await person(client)
    admin = await person(client)
    member = await person(client)
    sharer = await person(client)
    stranger = await person(client)
    add_member(sync_engine, owner["org"], admin["id"], "admin")
    add_member(sync_engine, owner["org"], member["id"], "member")
    graph = add_graph(sync_engine, owner["org"])
    sub = add_graph(sync_engine, owner["org"], parent=graph)
    add_grant(sync_engine, graph, sharer["id"], "viewer")  # legacy share to a non-member
    add_grant(sync_engine, graph, member["id"], "admin")  # explicit grant above the org role
    sec = add_graph(sync_engine, None, repository=True, graph_id=f"sec{secrets.token_hex(3)}")

    async with app.state.sessionmaker() as session:
        got = {
            name: await graph_access(session, who["id"], graph)
            for name, who in {
                "owner": owner,
                "admin": admin,
                "member": member,
                "sharer": sharer,
                "stranger": stranger,
            }.items()
        }
        assert got["owner"] is not None and got["owner"].role == "admin" and got["owner"].via == "org"
        assert got["admin"] is not None and got["admin"].role == "admin"
        assert got["member"] is not None and got["member"].role == "admin" and got["member"].via == "grant"
        assert got["sharer"] is not None and got["sharer"].role == "viewer" and not got["sharer"].can_write
        assert got["stranger"] is None
        assert await graph_access(session, owner["id"], "kg_missing") is None
        # subgraph: org access, and grants on the parent count
        sub_sharer = await graph_access(session, sharer["id"], sub)
        assert sub_sharer is not None and sub_sharer.role == "viewer" and sub_sharer.is_subgraph
        # shared repository: nobody through orgs, only user_repository / grants
        assert await graph_access(session, owner["id"], sec) is None
        with sync_engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO user_repository (id, user_id, repository_type, repository_name, access_level, "
                    "repository_plan, is_active, created_at, updated_at) VALUES ('urep_1', :u, 'SEC', :r, 'READ', "
                    "'STARTER', true, now(), now())"
                ),
                {"u": stranger["id"], "r": sec},
            )
        repo = await graph_access(session, stranger["id"], sec)
        assert repo is not None and repo.role == "viewer" and repo.via == "repository" and repo.org_id is None

    # membership ends -> access ends at once; a deleted org grants nothing
    with sync_engine.begin() as conn:
        conn.execute(text("UPDATE org_users SET is_active = false WHERE user_id = :u"), {"u": admin["id"]})
        conn.execute(text("UPDATE orgs SET deleted_at = now() WHERE id = :o"), {"o": owner["org"]})
    async with app.state.sessionmaker() as session:
        assert await graph_access(session, admin["id"], graph) is None
        assert await graph_access(session, owner["id"], graph) is None
        left = await graph_access(session, sharer["id"], graph)  # explicit grants are not org access
        assert left is not None and left.via == "grant"


async def test_revoke_member_graph_access_only_touches_that_org(
    app: FastAPI, client: httpx.AsyncClient, sync_engine: Engine
) -> None:
    owner = await person(client)
    other = await person(client)
    leaver = await person(client)
    mine = add_graph(sync_engine, owner["org"])
    mine_sub = add_graph(sync_engine, owner["org"], parent=mine)
    theirs = add_graph(sync_engine, other["org"])
    for g in (mine, mine_sub, theirs):
        add_grant(sync_engine, g, leaver["id"], "member")
    add_grant(sync_engine, mine, other["id"], "viewer")
    async with app.state.sessionmaker() as session:
        await revoke_member_graph_access(session, owner["org"], leaver["id"])
        assert await org_graph_count(session, owner["org"]) == 1
        await session.commit()
    assert count(sync_engine, "SELECT count(*) FROM graph_users WHERE user_id = :u", u=leaver["id"]) == 1
    assert (
        count(
            sync_engine,
            "SELECT count(*) FROM graph_users WHERE user_id = :u AND graph_id = :g",
            u=leaver["id"],
            g=theirs,
        )
        == 1
    )
    assert count(sync_engine, "SELECT count(*) FROM graph_users WHERE user_id = :u", u=other["id"]) == 1
