"""Orgs over HTTP against the migrated DB: list, create, read, update, soft delete, restore, purge,
ownership transfer and the org audit log (plus the operator CLI)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import Engine, event, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession

from robosystems.errors import Conflict, NotFound
from robosystems.orgs import service as org_service
from robosystems.orgs.schemas import OrgDetailResponse, OrgListResponse
from tests.helpers import count, snapshot
from tests.org_helpers import invite, make_org, org_with_roles, person

ORG_TABLES = (
    "users",
    "orgs",
    "org_users",
    "org_limits",
    "org_invitations",
    "org_audit_log",
    "auth_sessions",
    "mail_outbox",
)


INSERT_SUBSCRIPTION = (
    "INSERT INTO billing_subscriptions (id, org_id, resource_type, resource_id, plan_name, billing_interval, "
    "base_price_cents, status, created_at, updated_at, payment_provider) "
    "VALUES (:id, :o, 'graph', :r, 'kuzu-standard', 'monthly', 4900, :s, now(), now(), 'stripe')"
)


def insert_graph(
    engine: Engine, org_id: str, graph_id: str, *, name: str = "G", subgraph_of: str | None = None
) -> None:
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO graphs (graph_id, org_id, graph_name, graph_type, schema_extensions, graph_instance_id, "
                "graph_tier, created_at, updated_at, is_subgraph, parent_graph_id, subgraph_index, subgraph_name) "
                "VALUES (:g, :o, :n, 'generic', '[]', 'default', 'kuzu-standard', now(), now(), :sub, :parent, "
                ":idx, :sname)"
            ),
            {
                "g": graph_id,
                "o": org_id,
                "n": name,
                "sub": subgraph_of is not None,
                "parent": subgraph_of,
                "idx": 1 if subgraph_of else None,
                "sname": "s1" if subgraph_of else None,
            },
        )


def audit_types(engine: Engine, org_id: str) -> list[str]:
    with engine.connect() as conn:
        return list(
            conn.execute(
                text("SELECT event_type FROM org_audit_log WHERE org_id = :o ORDER BY created_at, id"), {"o": org_id}
            ).scalars()
        )


# --- create ------------------------------------------------------------------------------------


async def test_create_org_makes_caller_owner_with_limits_and_audit(
    client: httpx.AsyncClient, sync_engine: Engine
) -> None:
    owner = await person(client)
    response = await client.post(
        "/v1/orgs",
        json={"name": "  Acme Research ", "org_type": "enterprise"},
        headers={**owner.auth, "X-Request-ID": "req-create-1"},
    )
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["id"].startswith("org_")
    assert body["name"] == "Acme Research"
    assert body["org_type"] == "enterprise"
    assert body["user_role"] == "owner"
    assert [m["user_id"] for m in body["members"]] == [owner.id]
    assert body["members"][0]["role"] == "owner"
    assert body["graphs"] == []
    assert body["limits"]["max_graphs"] == 100
    assert body["created_at"] and body["updated_at"]
    assert (
        count(
            sync_engine,
            "SELECT count(*) FROM org_users WHERE org_id = :o AND user_id = :u AND role = 'owner' AND is_active",
            o=body["id"],
            u=owner.id,
        )
        == 1
    )
    assert count(sync_engine, "SELECT max_graphs FROM org_limits WHERE org_id = :o", o=body["id"]) == 100
    with sync_engine.connect() as conn:
        row = conn.execute(
            text("SELECT event_type, actor_user_id, request_id, details FROM org_audit_log WHERE org_id = :o"),
            {"o": body["id"]},
        ).one()
    assert row.event_type == "org.created"
    assert row.actor_user_id == owner.id
    assert row.request_id == "req-create-1"
    assert row.details == {"name": "Acme Research", "org_type": "enterprise"}


async def test_create_org_defaults_to_team(client: httpx.AsyncClient) -> None:
    owner = await person(client)
    response = await client.post("/v1/orgs", json={"name": "T"}, headers=owner.auth)
    assert response.status_code == 201
    assert response.json()["org_type"] == "team"


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        ({"name": "P", "org_type": "personal"}, "invalid_org_type"),
        ({"name": "P", "org_type": "galaxy"}, None),
        ({"name": "   "}, None),
        ({"name": "x" * 201}, None),
        ({}, None),
    ],
)
async def test_create_org_rejects_bad_input_with_422(
    client: httpx.AsyncClient, sync_engine: Engine, payload: dict[str, Any], code: str | None
) -> None:
    owner = await person(client)
    before = snapshot(sync_engine, ORG_TABLES)
    response = await client.post("/v1/orgs", json=payload, headers=owner.auth)
    assert response.status_code == 422
    if code:
        assert response.json()["code"] == code
    assert snapshot(sync_engine, ORG_TABLES) == before


async def test_owned_org_cap_holds_under_concurrency(app_factory, sync_engine: Engine) -> None:  # type: ignore[no-untyped-def]
    async with app_factory(org_max_owned_orgs=3) as (_, client):
        owner = await person(client)
        statuses = await asyncio.gather(
            *(client.post("/v1/orgs", json={"name": f"O{i}"}, headers=owner.auth) for i in range(10))
        )
        codes = sorted(r.status_code for r in statuses)
        assert codes == [201] * 3 + [403] * 7
        refused = next(r for r in statuses if r.status_code == 403)
        assert refused.json()["code"] == "org_limit_reached"
        assert count(sync_engine, "SELECT count(*) FROM orgs WHERE org_type = 'team'") == 3
        # A deleted org frees its slot; the personal org never counts.
        org_id = next(r.json()["id"] for r in statuses if r.status_code == 201)
        assert (await client.delete(f"/v1/orgs/{org_id}", headers=owner.auth)).status_code == 202
        assert (await client.post("/v1/orgs", json={"name": "again"}, headers=owner.auth)).status_code == 201


# --- list ----------------------------------------------------------------------------------------


async def test_list_orgs_counts_roles_pagination_and_deleted(client: httpx.AsyncClient, sync_engine: Engine) -> None:
    setup = await org_with_roles(client, sync_engine)
    insert_graph(sync_engine, setup.org_id, "kg0000000000000001")
    insert_graph(sync_engine, setup.org_id, "kg0000000000000002")
    insert_graph(sync_engine, setup.org_id, "kg0000000000000003", subgraph_of="kg0000000000000001")
    second = await make_org(client, setup.member, "Member's team")
    await invite(client, setup.owner, setup.org_id, "pending@example.com")  # pending: not counted

    response = await client.get("/v1/orgs", headers=setup.member.auth)
    assert response.status_code == 200
    body = response.json()
    assert body["total"] == 3
    by_id = {o["id"]: o for o in body["orgs"]}
    assert by_id[setup.member.personal_org_id]["org_type"] == "personal"
    acme = by_id[setup.org_id]
    assert (acme["role"], acme["member_count"], acme["graph_count"], acme["org_type"]) == ("member", 3, 2, "team")
    assert by_id[second["id"]]["role"] == "owner"
    assert by_id[second["id"]]["member_count"] == 1
    assert set(acme) == {"id", "name", "org_type", "role", "member_count", "graph_count", "created_at", "joined_at"}

    page = (await client.get("/v1/orgs?limit=2&offset=0", headers=setup.member.auth)).json()
    rest = (await client.get("/v1/orgs?limit=2&offset=2", headers=setup.member.auth)).json()
    assert page["total"] == rest["total"] == 3
    assert len(page["orgs"]) == 2 and len(rest["orgs"]) == 1
    assert {o["id"] for o in page["orgs"] + rest["orgs"]} == set(by_id)
    beyond = (await client.get("/v1/orgs?offset=10", headers=setup.member.auth)).json()
    assert beyond == {"orgs": [], "total": 3}

    assert (await client.delete(f"/v1/orgs/{second['id']}", headers=setup.member.auth)).status_code == 202
    after = (await client.get("/v1/orgs", headers=setup.member.auth)).json()
    assert after["total"] == 2
    assert second["id"] not in {o["id"] for o in after["orgs"]}


@pytest.mark.parametrize("query", ["limit=0", "limit=101", "offset=-1", "limit=abc"])
async def test_list_orgs_pagination_out_of_range_is_422(client: httpx.AsyncClient, query: str) -> None:
    owner = await person(client)
    assert (await client.get(f"/v1/orgs?{query}", headers=owner.auth)).status_code == 422


async def test_list_orgs_is_one_statement_whatever_the_number_of_orgs(
    client: httpx.AsyncClient, app: FastAPI, sync_engine: Engine
) -> None:
    owner = await person(client)
    statements: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        statements.append(statement)

    engine = app.state.services.engine.sync_engine
    pool = app.state.services.statements_pool

    async def statements_for_list() -> int:
        statements.clear()
        before = pool.statements
        event.listen(engine, "before_cursor_execute", record)
        try:
            assert (await client.get("/v1/orgs", headers=owner.auth)).status_code == 200
        finally:
            event.remove(engine, "before_cursor_execute", record)
        return len(statements) + pool.statements - before

    few = await statements_for_list()
    for i in range(8):
        org = await make_org(client, owner, f"Org {i}")
        insert_graph(sync_engine, org["id"], f"kg{i:016x}")
    many = await statements_for_list()
    assert many == few == 2  # the principal lookup + one list statement


# --- read ------------------------------------------------------------------------------------------


async def test_get_org_detail_for_each_role(client: httpx.AsyncClient, sync_engine: Engine) -> None:
    setup = await org_with_roles(client, sync_engine)
    insert_graph(sync_engine, setup.org_id, "kg00000000000000aa", name="Ledger")
    await invite(client, setup.owner, setup.org_id, "pending@example.com")
    for who, role in ((setup.owner, "owner"), (setup.admin, "admin"), (setup.member, "member")):
        response = await client.get(f"/v1/orgs/{setup.org_id}", headers=who.auth)
        assert response.status_code == 200
        body = response.json()
        assert body["user_role"] == role
        assert {m["user_id"]: m["role"] for m in body["members"]} == {
            setup.owner.id: "owner",
            setup.admin.id: "admin",
            setup.member.id: "member",
        }
        assert set(body["members"][0]) == {"user_id", "name", "email", "role", "joined_at"}
        assert [(g["graph_id"], g["graph_name"], g["graph_type"], g["graph_tier"]) for g in body["graphs"]] == [
            ("kg00000000000000aa", "Ledger", "generic", "kuzu-standard")
        ]
        assert body["limits"]["max_graphs"] == 100


async def test_org_reads_rendered_by_postgres_equal_pydantics_rendering(
    client: httpx.AsyncClient, app: FastAPI, sync_engine: Engine
) -> None:
    """The org detail and list bodies are JSON text built by PostgreSQL (robosystems.sqljson): they
    must be exactly what the declared response models would render -- same keys, same values, same
    timestamp spelling (with and without a fraction of a second) -- and cost two statements."""
    setup = await org_with_roles(client, sync_engine)
    insert_graph(sync_engine, setup.org_id, "kg00000000000000b1", name='Quote " and \\ backslash é')
    insert_graph(sync_engine, setup.org_id, "kg00000000000000b2")
    with sync_engine.begin() as conn:  # one whole-second timestamp, one with microseconds
        conn.execute(
            text("UPDATE org_users SET joined_at = '2026-01-02 03:04:05+00' WHERE org_id = :o AND user_id = :u"),
            {"o": setup.org_id, "u": setup.admin.id},
        )
        conn.execute(
            text("UPDATE org_users SET joined_at = '2026-01-01 23:00:00.5+01' WHERE org_id = :o AND user_id = :u"),
            {"o": setup.org_id, "u": setup.owner.id},
        )
        conn.execute(
            text("UPDATE graphs SET created_at = '2026-01-02 03:04:05.12+00' WHERE graph_id = 'kg00000000000000b2'")
        )
        conn.execute(text("UPDATE orgs SET name = 'Acme <team> ☃' WHERE id = :o"), {"o": setup.org_id})

    statements: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        statements.append(statement)

    engine = app.state.services.engine.sync_engine
    before = app.state.services.statements_pool.statements
    event.listen(engine, "before_cursor_execute", record)
    try:
        detail = await client.get(f"/v1/orgs/{setup.org_id}", headers=setup.member.auth)
    finally:
        event.remove(engine, "before_cursor_execute", record)
    assert detail.status_code == 200
    assert detail.headers["content-type"] == "application/json"
    # principal + live membership in the org (one statement), then the detail; no transaction
    assert statements == [] and app.state.services.statements_pool.statements - before == 2
    listing = await client.get("/v1/orgs", headers=setup.member.auth)
    assert listing.status_code == 200

    for response, model in ((detail, OrgDetailResponse), (listing, OrgListResponse)):
        rendered = json.loads(model.model_validate_json(response.content).model_dump_json())
        assert response.json() == rendered
    body = detail.json()
    assert body["name"] == "Acme <team> ☃"
    joined = {m["user_id"]: m["joined_at"] for m in body["members"]}
    assert joined[setup.admin.id] == "2026-01-02T03:04:05Z"
    assert joined[setup.owner.id] == "2026-01-01T22:00:00.500000Z"
    graphs = {g["graph_id"]: g for g in body["graphs"]}
    assert graphs["kg00000000000000b2"]["created_at"] == "2026-01-02T03:04:05.120000Z"
    assert graphs["kg00000000000000b1"]["graph_name"] == 'Quote " and \\ backslash é'
    assert [g["graph_id"] for g in body["graphs"]] == ["kg00000000000000b2", "kg00000000000000b1"]


async def test_unknown_and_foreign_orgs_are_404(client: httpx.AsyncClient) -> None:
    a, b = await person(client), await person(client)
    org = await make_org(client, a)
    for org_id in (org["id"], b.personal_org_id, "org_doesnotexist", "x" * 64):
        response = await client.get(f"/v1/orgs/{org_id}", headers=(b if org_id == org["id"] else a).auth)
        assert response.status_code == 404
        assert response.json()["code"] == "org_not_found"
    assert (await client.get("/v1/orgs/" + "x" * 65, headers=a.auth)).status_code == 422


# --- update ----------------------------------------------------------------------------------------


async def test_update_org_name_and_type_rules(client: httpx.AsyncClient, sync_engine: Engine) -> None:
    setup = await org_with_roles(client, sync_engine)
    url = f"/v1/orgs/{setup.org_id}"
    renamed = await client.put(url, json={"name": "Renamed by admin"}, headers=setup.admin.auth)
    assert renamed.status_code == 200
    assert renamed.json()["name"] == "Renamed by admin"
    assert renamed.json()["user_role"] == "admin"

    before = snapshot(sync_engine, ORG_TABLES)
    refused = await client.put(url, json={"org_type": "enterprise"}, headers=setup.admin.auth)
    assert refused.status_code == 403
    assert (await client.put(url, json={"name": "nope"}, headers=setup.member.auth)).status_code == 403
    to_personal = await client.put(url, json={"org_type": "personal"}, headers=setup.owner.auth)
    assert to_personal.status_code == 422
    assert to_personal.json()["code"] == "invalid_org_type"
    assert (await client.put(url, json={"name": ""}, headers=setup.owner.auth)).status_code == 422
    assert snapshot(sync_engine, ORG_TABLES) == before

    changed = await client.put(url, json={"org_type": "enterprise", "id": "org_hijack"}, headers=setup.owner.auth)
    assert changed.status_code == 200
    assert changed.json()["org_type"] == "enterprise"
    assert changed.json()["id"] == setup.org_id
    # the same type again (also by an admin) is not a change
    assert (await client.put(url, json={"org_type": "enterprise"}, headers=setup.admin.auth)).status_code == 200
    assert audit_types(sync_engine, setup.org_id).count("org.updated") == 2

    personal = f"/v1/orgs/{setup.owner.personal_org_id}"
    refused_personal = await client.put(personal, json={"org_type": "team"}, headers=setup.owner.auth)
    assert refused_personal.status_code == 409
    assert refused_personal.json()["code"] == "personal_org"
    assert (await client.put(personal, json={"name": "My space"}, headers=setup.owner.auth)).status_code == 200


# --- soft delete, restore, purge -----------------------------------------------------------------


async def test_delete_is_owner_only_soft_and_hides_the_org(client: httpx.AsyncClient, sync_engine: Engine) -> None:
    setup = await org_with_roles(client, sync_engine)
    url = f"/v1/orgs/{setup.org_id}"
    before = snapshot(sync_engine, ORG_TABLES)
    for who in (setup.admin, setup.member):
        response = await client.delete(url, headers=who.auth)
        assert response.status_code == 403
    assert snapshot(sync_engine, ORG_TABLES) == before

    response = await client.delete(url, headers=setup.owner.auth)
    assert response.status_code == 202
    body = response.json()
    deleted_at = datetime.fromisoformat(body["deleted_at"])
    assert datetime.fromisoformat(body["restorable_until"]) - deleted_at == timedelta(days=30)
    assert count(sync_engine, "SELECT count(*) FROM orgs WHERE id = :o AND deleted_at IS NOT NULL", o=setup.org_id) == 1
    assert count(sync_engine, "SELECT count(*) FROM org_users WHERE org_id = :o", o=setup.org_id) == 3
    for who in (setup.owner, setup.admin, setup.member):
        for path in ("", "/members", "/invitations", "/audit"):
            assert (await client.get(url + path, headers=who.auth)).status_code == 404
        assert (await client.delete(url, headers=who.auth)).status_code == 404
        listed = (await client.get("/v1/orgs", headers=who.auth)).json()
        assert setup.org_id not in {o["id"] for o in listed["orgs"]}
    assert audit_types(sync_engine, setup.org_id)[-1] == "org.deleted"


async def test_personal_org_cannot_be_deleted_or_left(client: httpx.AsyncClient, sync_engine: Engine) -> None:
    user = await person(client)
    before = snapshot(sync_engine, ORG_TABLES)
    deleted = await client.delete(f"/v1/orgs/{user.personal_org_id}", headers=user.auth)
    assert deleted.status_code == 409
    assert deleted.json()["code"] == "personal_org"
    left = await client.post(f"/v1/orgs/{user.personal_org_id}/leave", headers=user.auth)
    assert left.status_code == 409
    assert left.json()["code"] == "personal_org"
    removed = await client.delete(f"/v1/orgs/{user.personal_org_id}/members/{user.id}", headers=user.auth)
    assert removed.status_code == 409
    assert snapshot(sync_engine, ORG_TABLES) == before


async def test_live_subscriptions_block_deletion_with_reasons(client: httpx.AsyncClient, sync_engine: Engine) -> None:
    setup = await org_with_roles(client, sync_engine)
    statuses = ("active", "past_due", "canceled", "provisioning", "pending_payment", "unpaid", "failed")
    with sync_engine.begin() as conn:
        for i, status in enumerate(statuses):
            conn.execute(
                text(INSERT_SUBSCRIPTION),
                {"id": f"bsub_{i}", "o": setup.org_id, "r": f"kg{i:016x}", "s": status},
            )
    before = snapshot(sync_engine, ORG_TABLES)
    refused = await client.delete(f"/v1/orgs/{setup.org_id}", headers=setup.owner.auth)
    assert refused.status_code == 409
    body = refused.json()
    assert body["code"] == "org_has_active_subscriptions"
    assert body["reasons"] == [
        "subscription bsub_0 for graph kg0000000000000000 is active",
        "subscription bsub_1 for graph kg0000000000000001 is past_due",
        "subscription bsub_3 for graph kg0000000000000003 is provisioning",
        "subscription bsub_4 for graph kg0000000000000004 is pending_payment",
        "subscription bsub_5 for graph kg0000000000000005 is unpaid",
    ]
    assert snapshot(sync_engine, ORG_TABLES) == before
    with sync_engine.begin() as conn:
        conn.execute(text("UPDATE billing_subscriptions SET status = 'canceled' WHERE status <> 'failed'"))
    assert (await client.delete(f"/v1/orgs/{setup.org_id}", headers=setup.owner.auth)).status_code == 202


async def test_blocking_subscriptions_is_empty_below_the_org_billing_revision(make_database: Any) -> None:
    """On a database whose billing_subscriptions is still keyed by user (revision d5e6f7a8b9c0, before
    the org billing migration) nothing can be attributed to an org: no blocking reasons."""
    from sqlalchemy.ext.asyncio import create_async_engine

    from robosystems import migrations
    from robosystems.db import sync_url

    url = make_database()
    migrations.upgrade("d5e6f7a8b9c0", url)
    engine = create_async_engine(sync_url(url))
    try:
        async with AsyncSession(engine) as session:
            assert await org_service.blocking_subscriptions(session, "org_any") == []
    finally:
        await engine.dispose()


async def test_restore_within_grace_and_not_after(app: FastAPI, client: httpx.AsyncClient, sync_engine: Engine) -> None:
    setup = await org_with_roles(client, sync_engine)
    assert (await client.delete(f"/v1/orgs/{setup.org_id}", headers=setup.owner.auth)).status_code == 202
    maker = app.state.sessionmaker
    async with maker() as session, session.begin():
        restored = await org_service.restore_org(session, setup.org_id, grace_days=30, reason="customer asked")
    assert restored["restored"] is True
    assert (await client.get(f"/v1/orgs/{setup.org_id}", headers=setup.member.auth)).status_code == 200
    assert audit_types(sync_engine, setup.org_id)[-1] == "org.restored"

    async with maker() as session, session.begin():
        with pytest.raises(NotFound):
            await org_service.restore_org(session, setup.org_id, grace_days=30)  # not deleted
    assert (await client.delete(f"/v1/orgs/{setup.org_id}", headers=setup.owner.auth)).status_code == 202
    with sync_engine.begin() as conn:
        conn.execute(text("UPDATE orgs SET deleted_at = now() - interval '31 days' WHERE id = :o"), {"o": setup.org_id})
    async with maker() as session, session.begin():
        with pytest.raises(Conflict):
            await org_service.restore_org(session, setup.org_id, grace_days=30)
        listing = await org_service.list_deleted_orgs(session, grace_days=30)
    assert [o["id"] for o in listing["orgs"]] == [setup.org_id]


def _cli(database_url: str, tmp_path: Path, *args: str) -> Any:
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "ENVIRONMENT": "test",
        "LOG_JSON": "false",
        "LOG_LEVEL": "WARNING",
        "ROBOSYSTEMS_DATA_DIR": str(tmp_path / "data"),
    }
    result = subprocess.run(
        [sys.executable, "-c", "from robosystems.admin_cli import admin_app; admin_app()", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


async def test_purge_after_grace_via_cli(
    client: httpx.AsyncClient, sync_engine: Engine, database_url: str, tmp_path: Path
) -> None:
    old = await org_with_roles(client, sync_engine, "Old")
    await invite(client, old.owner, old.org_id, "someone@example.com")
    with_graph = await make_org(client, old.owner, "Has a graph")
    recent = await make_org(client, old.owner, "Recent")
    billed = await make_org(client, old.owner, "Has billing history")
    insert_graph(sync_engine, with_graph["id"], "kg00000000000000bb")
    with sync_engine.begin() as conn:
        conn.execute(text(INSERT_SUBSCRIPTION), {"id": "bsub_old", "o": billed["id"], "r": None, "s": "canceled"})
    for org_id in (old.org_id, with_graph["id"], recent["id"], billed["id"]):
        assert (await client.delete(f"/v1/orgs/{org_id}", headers=old.owner.auth)).status_code == 202
    with sync_engine.begin() as conn:
        conn.execute(
            text("UPDATE orgs SET deleted_at = now() - interval '40 days' WHERE id = ANY(:ids)"),
            {"ids": [old.org_id, with_graph["id"], billed["id"]]},
        )

    dry = _cli(database_url, tmp_path, "purge-orgs", "--dry-run")
    assert dry["skipped"] == {with_graph["id"]: "still owns 1 graph(s)"}
    assert sorted(dry["purged"]) == sorted([old.org_id, billed["id"]])  # a dry run doesn't try the delete
    assert count(sync_engine, "SELECT count(*) FROM orgs WHERE id = :o", o=old.org_id) == 1

    report = _cli(database_url, tmp_path, "purge-orgs")
    assert report["purged"] == [old.org_id]
    # billing rows reference the org (FK RESTRICT): skipped and reported, never force-deleted
    assert report["skipped"] == {
        with_graph["id"]: "still owns 1 graph(s)",
        billed["id"]: "still referenced by other records",
    }
    assert audit_types(sync_engine, billed["id"])[-1] == "org.deleted"  # its purge event was rolled back too
    assert count(sync_engine, "SELECT count(*) FROM orgs WHERE id = :o", o=old.org_id) == 0
    for table in ("org_users", "org_limits", "org_invitations"):
        assert count(sync_engine, f"SELECT count(*) FROM {table} WHERE org_id = :o", o=old.org_id) == 0
    types = audit_types(sync_engine, old.org_id)
    assert types[0] == "org.created" and types[-1] == "org.purged"  # the trail outlives the org
    survivors = [with_graph["id"], recent["id"], billed["id"]]
    assert count(sync_engine, "SELECT count(*) FROM orgs WHERE id = ANY(:ids)", ids=survivors) == 3
    # users keep their accounts and personal orgs
    assert count(sync_engine, "SELECT count(*) FROM users") == 3

    listed = _cli(database_url, tmp_path, "list-deleted-orgs")
    assert {o["id"] for o in listed["orgs"]} == set(survivors)
    restored = _cli(database_url, tmp_path, "restore-org", recent["id"], "--reason", "mistake")
    assert restored["restored"] is True
    assert (await client.get(f"/v1/orgs/{recent['id']}", headers=old.owner.auth)).status_code == 200


# --- ownership transfer --------------------------------------------------------------------------


async def test_transfer_ownership(client: httpx.AsyncClient, sync_engine: Engine) -> None:
    setup = await org_with_roles(client, sync_engine)
    base = f"/v1/orgs/{setup.org_id}/transfer-ownership"
    pending = (await invite(client, setup.owner, setup.org_id, "pending@example.com")).json()
    outsider = await person(client)
    before = snapshot(sync_engine, ORG_TABLES)
    assert (await client.post(base, json={"user_id": setup.member.id}, headers=setup.admin.auth)).status_code == 403
    assert (await client.post(base, json={"user_id": setup.admin.id}, headers=setup.member.auth)).status_code == 403
    for target in (outsider.id, pending["user_id"], "user_nope"):
        response = await client.post(base, json={"user_id": target}, headers=setup.owner.auth)
        assert response.status_code == 404
        assert response.json()["code"] == "member_not_found"
    self_transfer = await client.post(base, json={"user_id": setup.owner.id}, headers=setup.owner.auth)
    assert self_transfer.status_code == 422
    assert (await client.post(base, json={}, headers=setup.owner.auth)).status_code == 422
    assert snapshot(sync_engine, ORG_TABLES) == before

    response = await client.post(base, json={"user_id": setup.member.id}, headers=setup.owner.auth)
    assert response.status_code == 200
    body = response.json()
    assert body["user_role"] == "admin"
    roles = {m["user_id"]: m["role"] for m in body["members"]}
    assert roles == {setup.owner.id: "admin", setup.admin.id: "admin", setup.member.id: "owner"}
    # the former owner can no longer act as owner
    assert (await client.delete(f"/v1/orgs/{setup.org_id}", headers=setup.owner.auth)).status_code == 403
    with sync_engine.connect() as conn:
        row = conn.execute(
            text(
                "SELECT actor_user_id, target_user_id FROM org_audit_log WHERE org_id = :o "
                "AND event_type = 'org.ownership_transferred'"
            ),
            {"o": setup.org_id},
        ).one()
    assert (row.actor_user_id, row.target_user_id) == (setup.owner.id, setup.member.id)

    personal = await client.post(
        f"/v1/orgs/{setup.owner.personal_org_id}/transfer-ownership",
        json={"user_id": setup.member.id},
        headers=setup.owner.auth,
    )
    assert personal.status_code == 409


async def test_concurrent_transfers_leave_exactly_one_new_owner_chain(
    client: httpx.AsyncClient, sync_engine: Engine
) -> None:
    """Two owners transferring at once to different members: both may succeed (serialized), the org
    always ends with at least one owner and every caller ends as admin."""
    for _ in range(5):
        setup = await org_with_roles(client, sync_engine)
        await client.put(
            f"/v1/orgs/{setup.org_id}/members/{setup.admin.id}", json={"role": "owner"}, headers=setup.owner.auth
        )
        results = await asyncio.gather(
            client.post(
                f"/v1/orgs/{setup.org_id}/transfer-ownership",
                json={"user_id": setup.member.id},
                headers=setup.owner.auth,
            ),
            client.post(
                f"/v1/orgs/{setup.org_id}/transfer-ownership",
                json={"user_id": setup.owner.id},
                headers=setup.admin.auth,
            ),
        )
        assert all(r.status_code in (200, 403) for r in results), [r.text for r in results]
        assert (
            count(sync_engine, "SELECT count(*) FROM org_users WHERE org_id = :o AND role = 'owner'", o=setup.org_id)
            >= 1
        )


# --- audit log -----------------------------------------------------------------------------------


async def test_audit_log_endpoint_filters_and_is_append_only(client: httpx.AsyncClient, sync_engine: Engine) -> None:
    setup = await org_with_roles(client, sync_engine)
    url = f"/v1/orgs/{setup.org_id}/audit"
    await client.put(f"/v1/orgs/{setup.org_id}", json={"name": "New name"}, headers=setup.owner.auth)
    response = await client.get(url, headers=setup.admin.auth)
    assert response.status_code == 200
    body = response.json()
    types = [e["event_type"] for e in body["events"]]
    assert body["total"] == len(types) == 6
    assert sorted(types) == sorted(
        ["org.created", "member.invited", "member.joined", "member.invited", "member.joined", "org.updated"]
    )
    event = body["events"][0]
    assert set(event) == {
        "id",
        "org_id",
        "event_type",
        "actor_user_id",
        "target_user_id",
        "details",
        "request_id",
        "created_at",
    }
    assert event["event_type"] == "org.updated"
    assert event["details"] == {"name": ["Acme", "New name"]}

    joined = (await client.get(url + "?event_type=member.joined", headers=setup.owner.auth)).json()
    assert joined["total"] == 2
    assert {e["target_user_id"] for e in joined["events"]} == {setup.admin.id, setup.member.id}
    page = (await client.get(url + "?limit=2&offset=1", headers=setup.owner.auth)).json()
    assert [e["id"] for e in page["events"]] == [e["id"] for e in body["events"][1:3]]
    future = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    assert (await client.get(url, params={"since": future}, headers=setup.owner.auth)).json()["total"] == 0
    assert (await client.get(url, params={"until": future}, headers=setup.owner.auth)).json()["total"] == 6
    assert (await client.get(url + "?since=yesterday", headers=setup.owner.auth)).status_code == 422
    assert (await client.get(url, headers=setup.member.auth)).status_code == 403

    with pytest.raises(DBAPIError, match="append-only"), sync_engine.begin() as conn:
        conn.execute(text("UPDATE org_audit_log SET event_type = 'org.hidden' WHERE org_id = :o"), {"o": setup.org_id})
    with pytest.raises(DBAPIError, match="append-only"), sync_engine.begin() as conn:
        conn.execute(text("DELETE FROM org_audit_log WHERE org_id = :o"), {"o": setup.org_id})
    assert count(sync_engine, "SELECT count(*) FROM org_audit_log WHERE org_id = :o", o=setup.org_id) == 6


async def test_query_org_audit_service_for_operators(
    app: FastAPI, client: httpx.AsyncClient, sync_engine: Engine
) -> None:
    setup = await org_with_roles(client, sync_engine)
    from robosystems.orgs.audit import query_org_audit

    async with app.state.sessionmaker() as session:
        assert isinstance(session, AsyncSession)
        result = await query_org_audit(session, setup.org_id, event_type="member.invited", limit=1)
    assert result["total"] == 2
    assert len(result["events"]) == 1


# --- the published client ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def live_server(database_url: str) -> Iterator[str]:
    from tests.live_server import running_server

    with running_server(database_url) as base_url:
        yield base_url


async def test_client_org_operations(live_server: str, sync_engine: Engine) -> None:
    from robosystems_client import AuthenticatedClient
    from robosystems_client.api.org import create_org, get_org, list_org_graphs, list_user_orgs, update_org
    from robosystems_client.models import (
        CreateOrgRequest,
        OrgDetailResponse,
        OrgListResponse,
        OrgResponse,
        UpdateOrgRequest,
    )
    from robosystems_client.models.org_role import OrgRole
    from robosystems_client.models.org_type import OrgType

    async with httpx.AsyncClient(base_url=live_server, timeout=30) as raw:
        owner = await person(raw)
    client = AuthenticatedClient(base_url=live_server, token=owner.token, timeout=httpx.Timeout(30.0))
    try:
        created = create_org.sync_detailed(
            client=client, body=CreateOrgRequest(name="Client Co", org_type=OrgType.ENTERPRISE)
        )
        assert created.status_code == 201
        assert isinstance(created.parsed, OrgDetailResponse)
        org = created.parsed
        assert org.org_type == OrgType.ENTERPRISE
        assert org.user_role == OrgRole.OWNER
        assert org.limits is not None and org.limits["max_graphs"] == 100
        assert org.created_at.tzinfo is not None
        insert_graph(sync_engine, org.id, "kg00000000000000cc", name="Client graph")

        fetched = get_org.sync_detailed(org.id, client=client)
        assert fetched.status_code == 200
        assert isinstance(fetched.parsed, OrgDetailResponse)
        assert fetched.parsed.members[0]["user_id"] == owner.id
        assert fetched.parsed.graphs[0]["graph_id"] == "kg00000000000000cc"

        listed = list_user_orgs.sync_detailed(client=client)
        assert listed.status_code == 200
        assert isinstance(listed.parsed, OrgListResponse)
        assert listed.parsed.total == 2
        assert all(isinstance(o, OrgResponse) for o in listed.parsed.orgs)
        mine = next(o for o in listed.parsed.orgs if o.id == org.id)
        assert (mine.role, mine.member_count, mine.graph_count) == (OrgRole.OWNER, 1, 1)

        updated = update_org.sync_detailed(org.id, client=client, body=UpdateOrgRequest(name="Renamed Co"))
        assert updated.status_code == 200
        assert isinstance(updated.parsed, OrgDetailResponse)
        assert updated.parsed.name == "Renamed Co"
        assert updated.parsed.org_type == OrgType.ENTERPRISE

        graphs = list_org_graphs.sync_detailed(org.id, client=client)
        assert graphs.status_code == 200
    finally:
        client.get_httpx_client().close()
