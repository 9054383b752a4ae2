"""Revision c4d5e6f7a8b9 on a seeded legacy database: graph ownership -> orgs, user_graphs -> graph_users.

Each test builds its own database: legacy baseline (7a89a1bfab0c) + rows, then upgrades through b3c1f0e2a9d4 to
c4d5e6f7a8b9 with Alembic and inspects the result with SQL.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
import sqlalchemy as sa

from robosystems import migrations
from robosystems.db import sync_url

try:
    from tests.legacy_seed import (
        insert_billing_subscription,
        insert_graph,
        insert_graph_credits,
        insert_user,
        insert_user_graph,
        seed_legacy_sample,
        utcnow_naive,
    )
except ModuleNotFoundError:  # pragma: no cover - tests/ on sys.path
    from legacy_seed import (  # type: ignore[no-redef]
        insert_billing_subscription,
        insert_graph,
        insert_graph_credits,
        insert_user,
        insert_user_graph,
        seed_legacy_sample,
        utcnow_naive,
    )

BASELINE = "7a89a1bfab0c"
ORG_IDENTITY = "b3c1f0e2a9d4"
GRAPH_OWNERSHIP = "c4d5e6f7a8b9"

USER_GRAPH_COLUMNS = "id, user_id, graph_id, role, is_selected, created_at, updated_at"


@pytest.fixture
def legacy_url(make_database: Callable[[], str]) -> str:
    url = make_database()
    migrations.upgrade(BASELINE, url)
    return url


@pytest.fixture
def engine(legacy_url: str) -> Iterator[sa.Engine]:
    eng = sa.create_engine(sync_url(legacy_url), poolclass=sa.pool.NullPool)
    yield eng
    eng.dispose()


def _rows(conn: sa.Connection, sql: str, **params: Any) -> list[Any]:
    return list(conn.execute(sa.text(sql), params).all())


def _personal_org(conn: sa.Connection, user_id: str) -> str:
    return str(conn.execute(sa.text("SELECT id FROM orgs WHERE personal_user_id = :u"), {"u": user_id}).scalar_one())


def _graph_org(conn: sa.Connection, graph_id: str) -> str | None:
    value = conn.execute(sa.text("SELECT org_id FROM graphs WHERE graph_id = :g"), {"g": graph_id}).scalar_one()
    return None if value is None else str(value)


def _user_graphs_as_naive(conn: sa.Connection, table: str) -> set[tuple[Any, ...]]:
    """Rows with timestamps rendered as naive UTC so legacy and migrated rows compare equal."""
    to_utc = "" if table == "user_graphs" else " AT TIME ZONE 'UTC'"
    sql = (
        f"SELECT id, user_id, graph_id, role, is_selected, "
        f"to_char(created_at{to_utc}, 'YYYY-MM-DD HH24:MI:SS.US'), "
        f"to_char(updated_at{to_utc}, 'YYYY-MM-DD HH24:MI:SS.US') FROM {table}"
    )
    return {tuple(r) for r in conn.execute(sa.text(sql)).all()}


def _seed_extra(conn: sa.Connection) -> dict[str, str]:
    """Rows beyond seed_legacy_sample: one per ownership rule."""
    now = utcnow_naive()
    frank = insert_user(conn, email="frank@example.com", name="Frank")
    gina = insert_user(conn, email="gina@example.com", name="Gina")
    hank = insert_user(conn, email="hank@example.com", name="Hank")

    # payer beats billing admin, creator and admin grant
    paid_by_gina = insert_graph(conn, name="Paid by Gina", created_by=frank)
    insert_user_graph(conn, frank, paid_by_gina, "admin", created_at=now - timedelta(days=5))
    insert_graph_credits(conn, paid_by_gina, frank, frank)
    insert_billing_subscription(
        conn,
        billing_customer_user_id=gina,
        resource_type="graph",
        resource_id=paid_by_gina,
        plan_name="kuzu-standard",
        base_price_cents=4900,
        status="active",
    )
    # a canceled subscription is no signal: the billing admin decides
    canceled_sub = insert_graph(conn, name="Canceled sub")
    insert_graph_credits(conn, canceled_sub, hank, hank)
    insert_billing_subscription(
        conn,
        billing_customer_user_id=gina,
        resource_type="graph",
        resource_id=canceled_sub,
        plan_name="kuzu-standard",
        base_price_cents=4900,
        status="canceled",
    )
    # only a member grant is left (creator deleted / unknown): falls back to the earliest member
    member_only = insert_graph(conn, name="Member only", graph_metadata={"created_by": "user_gone"})
    insert_user_graph(conn, hank, member_only, "member", created_at=now - timedelta(days=3))
    insert_user_graph(conn, gina, member_only, "member", created_at=now - timedelta(days=2))
    # two admins, no other signal: the earliest admin wins (tie-break on time)
    two_admins = insert_graph(conn, name="Two admins")
    insert_user_graph(conn, gina, two_admins, "admin", created_at=now - timedelta(days=9))
    insert_user_graph(conn, frank, two_admins, "admin", created_at=now - timedelta(days=10))
    # subgraph whose parent does not exist: its own signals decide
    lost_sub = insert_graph(
        conn, name="Lost subgraph", created_by=hank, parent_graph_id="kg00000000deadbeef", subgraph_name="x"
    )
    # a viewer-only grant and an odd role string survive the rename unchanged
    insert_user_graph(conn, hank, paid_by_gina, "viewer")
    insert_user_graph(conn, gina, canceled_sub, "Auditor")
    return {
        "frank": frank,
        "gina": gina,
        "hank": hank,
        "paid_by_gina": paid_by_gina,
        "canceled_sub": canceled_sub,
        "member_only": member_only,
        "two_admins": two_admins,
        "lost_sub": lost_sub,
    }


@pytest.fixture
def seeded(engine: sa.Engine) -> dict[str, Any]:
    with engine.begin() as conn:
        sample = seed_legacy_sample(conn)
        extra = _seed_extra(conn)
        before = _user_graphs_as_naive(conn, "user_graphs")
    return {"sample": sample, "extra": extra, "user_graphs_before": before}


def test_upgrade_assigns_every_graph_by_precedence(
    legacy_url: str, engine: sa.Engine, seeded: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    sample, extra = seeded["sample"], seeded["extra"]
    users, graphs = sample["users"], sample["graphs"]
    with caplog.at_level(logging.WARNING):
        migrations.upgrade(GRAPH_OWNERSHIP, legacy_url)

    with engine.connect() as conn:
        org = lambda user: _personal_org(conn, user)  # noqa: E731
        # ordinary graph: its single owner
        assert _graph_org(conn, graphs["alice"]) == org(users["alice"])
        # two admins (bob pays, carol is also admin): the payer's org wins
        assert _graph_org(conn, graphs["shared_admins"]) == org(users["bob"])
        # no admin row: created_by (dave, inactive but existing) decides
        assert _graph_org(conn, graphs["no_admin"]) == org(users["dave"])
        # subgraph inherits its parent's org
        assert _graph_org(conn, graphs["subgraph"]) == org(users["bob"])
        # shared repository: no org
        assert _graph_org(conn, graphs["sec"]) is None
        # payer beats billing admin / creator / admin grant
        assert _graph_org(conn, extra["paid_by_gina"]) == org(extra["gina"])
        # canceled subscription ignored -> billing admin
        assert _graph_org(conn, extra["canceled_sub"]) == org(extra["hank"])
        # member fallback: the earliest member
        assert _graph_org(conn, extra["member_only"]) == org(extra["hank"])
        # earliest admin
        assert _graph_org(conn, extra["two_admins"]) == org(extra["frank"])
        # subgraph with a missing parent: its own created_by
        assert _graph_org(conn, extra["lost_sub"]) == org(extra["hank"])

        # every non-repository graph has an org; the CHECK holds
        assert (
            conn.execute(sa.text("SELECT count(*) FROM graphs WHERE org_id IS NULL AND NOT is_repository")).scalar_one()
            == 0
        )
        ck = conn.execute(
            sa.text("SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conname = 'ck_graphs_org_required'")
        ).scalar_one()
        assert "org_id IS NOT NULL" in ck and "is_repository" in ck
        # a user with no graphs still has just a personal org and owns nothing
        erin_org = org(users["erin"])
        assert conn.execute(sa.text("SELECT count(*) FROM graphs WHERE org_id = :o"), {"o": erin_org}).scalar_one() == 0

        # conflicts recorded for review
        conflicts = {
            r.graph_id: r
            for r in _rows(
                conn, "SELECT graph_id, chosen_org_id, chosen_source, reasons, signals FROM graph_ownership_conflicts"
            )
        }
        shared = conflicts[graphs["shared_admins"]]
        assert shared.chosen_org_id == org(users["bob"])
        assert shared.chosen_source == "billing_subscription"
        assert shared.reasons == ["signals_disagree"]
        claimed = {(c["source"], c["user_id"]) for c in shared.signals["claims"]}
        assert ("admin_grant", users["carol"]) in claimed and ("billing_subscription", users["bob"]) in claimed
        assert conflicts[extra["paid_by_gina"]].reasons == ["signals_disagree"]
        assert conflicts[extra["two_admins"]].reasons == ["signals_disagree"]
        assert conflicts[extra["member_only"]].reasons == ["owner_from_member_grant"]
        assert {
            c["user_exists"]
            for c in conflicts[extra["member_only"]].signals["claims"]
            if c["source"] == "graph_metadata.created_by"
        } == {False}
        assert conflicts[extra["lost_sub"]].reasons == ["subgraph_parent_missing"]
        # agreeing signals -> no conflict row
        for quiet in (graphs["alice"], graphs["no_admin"], graphs["subgraph"], extra["canceled_sub"]):
            assert quiet not in conflicts
        assert graphs["sec"] not in conflicts

    assert any("graph_ownership_conflicts" in rec.getMessage() for rec in caplog.records)
    assert any(graphs["shared_admins"] in rec.getMessage() for rec in caplog.records)


def test_user_graphs_become_graph_users_unchanged(legacy_url: str, engine: sa.Engine, seeded: dict[str, Any]) -> None:
    migrations.upgrade(GRAPH_OWNERSHIP, legacy_url)
    with engine.connect() as conn:
        tables = set(conn.execute(sa.text("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")).scalars())
        assert "graph_users" in tables and "user_graphs" not in tables
        assert "graph_usage" in tables and "graph_usage_tracking" not in tables
        after = _user_graphs_as_naive(conn, "graph_users")
        assert after == seeded["user_graphs_before"]
        assert {r[3] for r in after} >= {"admin", "member", "viewer", "Auditor"}
        types = dict(
            _rows(
                conn,
                "SELECT column_name, data_type FROM information_schema.columns "
                "WHERE table_name = 'graph_users' AND column_name IN ('created_at', 'updated_at')",
            )
        )
        assert set(types.values()) == {"timestamp with time zone"}
        names = set(
            conn.execute(
                sa.text("SELECT conname FROM pg_constraint WHERE conrelid = 'graph_users'::regclass")
            ).scalars()
        )
        assert names == {
            "pk_graph_users",
            "uq_graph_users_user_id_graph_id",
            "fk_graph_users_user_id_users",
            "fk_graph_users_graph_id_graphs",
        }
        # usage rows untouched by the rename
        assert conn.execute(sa.text("SELECT count(*) FROM graph_usage")).scalar_one() == len(seeded["sample"]["usage"])


def test_empty_database_upgrades(legacy_url: str, engine: sa.Engine) -> None:
    migrations.upgrade(GRAPH_OWNERSHIP, legacy_url)
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM graph_ownership_conflicts")).scalar_one() == 0
        assert conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar_one() == GRAPH_OWNERSHIP


def test_orphan_graph_refuses_upgrade_without_changes(
    legacy_url: str, engine: sa.Engine, seeded: dict[str, Any]
) -> None:
    with engine.begin() as conn:
        orphan = insert_graph(conn, name="Nobody's")  # no grant, no credits, no billing, no created_by
        viewer_only = insert_graph(conn, name="Viewer only")
        insert_user_graph(conn, seeded["extra"]["hank"], viewer_only, "viewer")
    with pytest.raises(RuntimeError) as info:
        migrations.upgrade(GRAPH_OWNERSHIP, legacy_url)
    assert orphan in str(info.value) and viewer_only in str(info.value)
    with engine.connect() as conn:
        # b3c1f0e2a9d4 committed (one transaction per migration), ours rolled back entirely
        assert conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar_one() == ORG_IDENTITY
        assert conn.execute(sa.text("SELECT to_regclass('user_graphs') IS NOT NULL")).scalar_one()
        assert not conn.execute(
            sa.text(
                "SELECT count(*) FROM information_schema.columns WHERE table_name = 'graphs' AND column_name = 'org_id'"
            )
        ).scalar_one()


def test_orphans_go_to_the_org_the_operator_names(
    legacy_url: str, engine: sa.Engine, seeded: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    with engine.begin() as conn:
        orphan = insert_graph(conn, name="Nobody's")
        orphan_sub = insert_graph(conn, name="Nobody's sub", parent_graph_id=orphan, subgraph_name="s")
    monkeypatch.setenv("ROBOSYSTEMS_ORPHAN_GRAPHS_OWNER", seeded["extra"]["frank"])
    migrations.upgrade(GRAPH_OWNERSHIP, legacy_url)
    with engine.connect() as conn:
        frank_org = _personal_org(conn, seeded["extra"]["frank"])
        assert _graph_org(conn, orphan) == frank_org
        assert _graph_org(conn, orphan_sub) == frank_org
        reasons = conn.execute(
            sa.text("SELECT reasons FROM graph_ownership_conflicts WHERE graph_id = :g"), {"g": orphan}
        ).scalar_one()
        assert reasons == ["orphan_assigned"]


def test_downgrade_restores_user_graphs(legacy_url: str, engine: sa.Engine, seeded: dict[str, Any]) -> None:
    with engine.connect() as conn:
        graphs_before = _rows(conn, "SELECT graph_id, graph_name, created_at, updated_at FROM graphs ORDER BY 1")
        usage_before = conn.execute(sa.text("SELECT count(*) FROM graph_usage_tracking")).scalar_one()
        idx_before = set(
            conn.execute(sa.text("SELECT indexname FROM pg_indexes WHERE tablename = 'user_graphs'")).scalars()
        )
        con_before = set(
            conn.execute(
                sa.text(
                    "SELECT conname || ':' || pg_get_constraintdef(oid) FROM pg_constraint "
                    "WHERE conrelid = 'user_graphs'::regclass"
                )
            ).scalars()
        )
    migrations.upgrade(GRAPH_OWNERSHIP, legacy_url)
    migrations.downgrade(ORG_IDENTITY, legacy_url)
    with engine.connect() as conn:
        assert _user_graphs_as_naive(conn, "user_graphs") == seeded["user_graphs_before"]
        assert (
            _rows(conn, "SELECT graph_id, graph_name, created_at, updated_at FROM graphs ORDER BY 1") == graphs_before
        )
        assert conn.execute(sa.text("SELECT count(*) FROM graph_usage_tracking")).scalar_one() == usage_before
        assert (
            set(conn.execute(sa.text("SELECT indexname FROM pg_indexes WHERE tablename = 'user_graphs'")).scalars())
            == idx_before
        )
        assert (
            set(
                conn.execute(
                    sa.text(
                        "SELECT conname || ':' || pg_get_constraintdef(oid) FROM pg_constraint "
                        "WHERE conrelid = 'user_graphs'::regclass"
                    )
                ).scalars()
            )
            == con_before
        )
        assert conn.execute(sa.text("SELECT to_regclass('graph_users')")).scalar_one() is None
        assert conn.execute(sa.text("SELECT to_regclass('graph_ownership_conflicts')")).scalar_one() is None
        assert not conn.execute(
            sa.text(
                "SELECT count(*) FROM information_schema.columns WHERE table_name = 'graphs' AND column_name = 'org_id'"
            )
        ).scalar_one()
    # and up again: same result
    migrations.upgrade(GRAPH_OWNERSHIP, legacy_url)
    with engine.connect() as conn:
        assert _user_graphs_as_naive(conn, "graph_users") == seeded["user_graphs_before"]


def test_downgrade_refuses_to_lose_team_ownership(legacy_url: str, engine: sa.Engine, seeded: dict[str, Any]) -> None:
    migrations.upgrade(GRAPH_OWNERSHIP, legacy_url)
    graph = seeded["sample"]["graphs"]["alice"]
    with engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO orgs (id, name, org_type) VALUES ('org_team1', 'Team', 'team')"))
        conn.execute(sa.text("UPDATE graphs SET org_id = 'org_team1' WHERE graph_id = :g"), {"g": graph})
    with pytest.raises(RuntimeError) as info:
        migrations.downgrade(ORG_IDENTITY, legacy_url)
    assert graph in str(info.value) and "allow_data_loss" in str(info.value)
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar_one() == GRAPH_OWNERSHIP
        assert _graph_org(conn, graph) == "org_team1"
    # accepted explicitly: org_id is dropped, the legacy rows stay as they were
    migrations.downgrade(GRAPH_OWNERSHIP + "-1", legacy_url, allow_data_loss=True)
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar_one() == ORG_IDENTITY
        assert _user_graphs_as_naive(conn, "user_graphs") == seeded["user_graphs_before"]


def test_conflict_table_only_for_disagreement_on_clean_data(legacy_url: str, engine: sa.Engine) -> None:
    """Ordinary legacy data (all four signals agree) yields no conflict rows."""
    with engine.begin() as conn:
        owner = insert_user(conn, email="o@example.com")
        member = insert_user(conn, email="m@example.com")
        g = insert_graph(conn, created_by=owner)
        insert_user_graph(conn, owner, g, "admin", is_selected=True)
        insert_user_graph(conn, member, g, "member")
        insert_graph_credits(conn, g, owner, owner, Decimal("10"))
        insert_billing_subscription(
            conn,
            billing_customer_user_id=owner,
            resource_type="graph",
            resource_id=g,
            plan_name="kuzu-standard",
            base_price_cents=4900,
        )
    migrations.upgrade(GRAPH_OWNERSHIP, legacy_url)
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM graph_ownership_conflicts")).scalar_one() == 0
        assert _graph_org(conn, g) == _personal_org(conn, owner)
