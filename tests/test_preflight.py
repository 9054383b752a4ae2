"""``robosystems migrate preflight`` on hand-built legacy databases: every blocker is reported exactly when a revision
would stop on it (the upgrade is run to prove it), the documented fix clears it, warnings don't block, the report
works on partly upgraded and fresh databases, and the batching helper used by the revisions covers every row once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa
from alembic.script import ScriptDirectory
from sqlalchemy.pool import NullPool

from robosystems import migrations
from robosystems.db import sync_url
from robosystems.migrate_tools import checksums, preflight, runtime, verify
from tests.legacy_seed import (
    insert_billing_invoice,
    insert_billing_subscription,
    insert_credit_transaction,
    insert_graph,
    insert_graph_credits,
    insert_user,
    insert_user_graph,
    seed_legacy_sample,
)

BASELINE = checksums.LEGACY


@pytest.fixture
def legacy_url(make_database: Callable[[], str]) -> str:
    url = make_database()
    migrations.upgrade(BASELINE, url)
    return url


@pytest.fixture
def engine(legacy_url: str) -> Iterator[sa.Engine]:
    eng = sa.create_engine(sync_url(legacy_url), poolclass=NullPool)
    yield eng
    eng.dispose()


def _version(engine: sa.Engine) -> str | None:
    with engine.connect() as conn:
        return conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar()


# --------------------------------------------------------------------------------------------------------------------
# blockers: reported <=> the upgrade stops; the documented fix clears them
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class Blocker:
    finding: str
    plant: Callable[[sa.Connection, dict[str, Any]], None]
    refusal: str  # what the revision's error says
    fix: Callable[[sa.Connection, dict[str, Any]], None] | None = None  # data fix, or None: an option
    options: Callable[[dict[str, Any]], preflight.Options] | None = None
    x_args: Callable[[dict[str, Any]], list[str]] | None = None
    env: dict[str, str] | None = None


def _owned_graph(conn: sa.Connection, user: str) -> tuple[str, str]:
    graph = insert_graph(conn, name="Owned", created_by=user)
    insert_user_graph(conn, user, graph, "admin")
    pool = insert_graph_credits(conn, graph, user, user, balance=Decimal("10.00"))
    insert_credit_transaction(conn, graph_credits_id=pool, graph_id=graph, transaction_type="allocation", amount=10)
    return graph, pool


def _plant_case_duplicates(conn: sa.Connection, ctx: dict[str, Any]) -> None:
    ctx["twin"] = insert_user(conn, email="ALICE.ADMIN@example.com", name="Alice twin")


def _fix_case_duplicates(conn: sa.Connection, ctx: dict[str, Any]) -> None:
    conn.execute(sa.text("UPDATE users SET email = 'alice.twin@example.com' WHERE id = :u"), {"u": ctx["twin"]})


def _plant_orphans(conn: sa.Connection, ctx: dict[str, Any]) -> None:
    insert_graph(conn, name="Nobody's")  # no grant, no credits, no billing, no created_by
    viewer_only = insert_graph(conn, name="Viewer only", created_by="user_deleted_long_ago")
    insert_user_graph(conn, ctx["users"]["erin"], viewer_only, "viewer")


def _plant_bad_subscription_status(conn: sa.Connection, ctx: dict[str, Any]) -> None:
    graph, _ = _owned_graph(conn, ctx["users"]["erin"])
    ctx["sub"] = insert_billing_subscription(
        conn,
        billing_customer_user_id=ctx["users"]["erin"],
        resource_type="graph",
        resource_id=graph,
        plan_name="kuzu-standard",
        base_price_cents=4900,
        status="trialing",
    )


def _fix_bad_subscription_status(conn: sa.Connection, ctx: dict[str, Any]) -> None:
    conn.execute(sa.text("UPDATE billing_subscriptions SET status = 'active' WHERE id = :s"), {"s": ctx["sub"]})


def _plant_bad_invoice_status(conn: sa.Connection, ctx: dict[str, Any]) -> None:
    ctx["invoice"] = insert_billing_invoice(
        conn,
        billing_customer_user_id=ctx["users"]["erin"],
        period_start=datetime(2025, 1, 1),
        period_end=datetime(2025, 2, 1),
        subtotal_cents=100,
        status="pending",
    )


def _fix_bad_invoice_status(conn: sa.Connection, ctx: dict[str, Any]) -> None:
    conn.execute(sa.text("UPDATE billing_invoices SET status = 'open' WHERE id = :i"), {"i": ctx["invoice"]})


def _plant_two_live_subscriptions(conn: sa.Connection, ctx: dict[str, Any]) -> None:
    graph, _ = _owned_graph(conn, ctx["users"]["erin"])
    for status in ("active", "past_due"):
        ctx[status] = insert_billing_subscription(
            conn,
            billing_customer_user_id=ctx["users"]["erin"],
            resource_type="graph",
            resource_id=graph,
            plan_name="kuzu-standard",
            base_price_cents=4900,
            status=status,
        )


def _fix_two_live_subscriptions(conn: sa.Connection, ctx: dict[str, Any]) -> None:
    conn.execute(
        sa.text("UPDATE billing_subscriptions SET status = 'canceled', canceled_at = now() WHERE id = :s"),
        {"s": ctx["past_due"]},
    )


def _plant_bad_transaction_type(conn: sa.Connection, ctx: dict[str, Any]) -> None:
    graph, pool = _owned_graph(conn, ctx["users"]["erin"])
    ctx["txn"] = insert_credit_transaction(
        conn, graph_credits_id=pool, graph_id=graph, transaction_type="transfer", amount=0
    )


def _fix_bad_transaction_type(conn: sa.Connection, ctx: dict[str, Any]) -> None:
    conn.execute(
        sa.text("UPDATE graph_credit_transactions SET transaction_type = 'adjustment' WHERE id = :t"), {"t": ctx["txn"]}
    )


def _plant_negative_pool(conn: sa.Connection, ctx: dict[str, Any]) -> None:
    graph, pool = _owned_graph(conn, ctx["users"]["erin"])
    conn.execute(sa.text("UPDATE graph_credits SET current_balance = -5 WHERE id = :p"), {"p": pool})


BLOCKERS = {
    "case_duplicate_emails": Blocker(
        "case_duplicate_emails", _plant_case_duplicates, "differ only by case", fix=_fix_case_duplicates
    ),
    "orphan_graphs": Blocker(
        "orphan_graphs",
        _plant_orphans,
        "no owner signal",
        options=lambda ctx: preflight.Options(orphan_graphs_owner=ctx["users"]["bob"]),
        x_args=lambda ctx: [f"orphan_graphs_owner={ctx['users']['bob']}"],
    ),
    "subscription_status_unknown": Blocker(
        "subscription_status_unknown", _plant_bad_subscription_status, "trialing", fix=_fix_bad_subscription_status
    ),
    "invoice_status_unknown": Blocker(
        "invoice_status_unknown", _plant_bad_invoice_status, "status outside", fix=_fix_bad_invoice_status
    ),
    "graphs_with_several_live_subscriptions": Blocker(
        "graphs_with_several_live_subscriptions",
        _plant_two_live_subscriptions,
        "more than one live subscription",
        fix=_fix_two_live_subscriptions,
    ),
    "credit_transaction_type_unknown": Blocker(
        "credit_transaction_type_unknown", _plant_bad_transaction_type, "transfer", fix=_fix_bad_transaction_type
    ),
    "negative_credit_pools": Blocker(
        "negative_credit_pools",
        _plant_negative_pool,
        "negative balance",
        options=lambda ctx: preflight.Options(clamp_negative_credit_balances=True),
        x_args=lambda ctx: ["clamp_negative_credit_balances=true"],
    ),
}


@pytest.mark.parametrize("name", sorted(BLOCKERS))
def test_blocker_reported_iff_the_upgrade_stops(name: str, legacy_url: str, engine: sa.Engine) -> None:
    blocker = BLOCKERS[name]
    with engine.begin() as conn:
        ctx: dict[str, Any] = dict(seed_legacy_sample(conn))
        blocker.plant(conn, ctx)

    report = preflight.run_url(legacy_url)
    assert report.exit_code == 1, report.render_text()
    assert [f.id for f in report.blockers] == [blocker.finding]
    assert report.blockers[0].remedy  # the report says how to fix it
    assert report.blockers[0].examples

    with pytest.raises(RuntimeError, match=blocker.refusal):
        migrations.upgrade("head", legacy_url)
    stopped_at = _version(engine)
    assert stopped_at != checksums.head()

    options = preflight.Options()
    x_args: list[str] = []
    if blocker.fix is not None:
        with engine.begin() as conn:
            blocker.fix(conn, ctx)
    else:
        assert blocker.options is not None and blocker.x_args is not None
        options, x_args = blocker.options(ctx), blocker.x_args(ctx)
    fixed = preflight.run_url(legacy_url, options)
    assert fixed.exit_code == 0, fixed.render_text()
    if blocker.fix is None:  # an option turns the blocker into a warning naming what will happen
        finding = fixed.finding(blocker.finding)
        assert finding is not None and finding.severity == "warning"

    migrations.upgrade("head", legacy_url, x_args=x_args)
    assert _version(engine) == checksums.head()


def test_invalid_default_limit_is_a_blocker(
    legacy_url: str, engine: sa.Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ORG_GRAPHS_DEFAULT_LIMIT", "five")
    report = preflight.run_url(legacy_url)
    assert [f.id for f in report.blockers] == ["org_graphs_default_limit"]
    with pytest.raises(RuntimeError, match="ORG_GRAPHS_DEFAULT_LIMIT"):
        migrations.upgrade("head", legacy_url)
    monkeypatch.setenv("ORG_GRAPHS_DEFAULT_LIMIT", "5")
    assert preflight.run_url(legacy_url).exit_code == 0


def test_unknown_orphan_owner_is_a_blocker(legacy_url: str, engine: sa.Engine) -> None:
    with engine.begin() as conn:
        seed_legacy_sample(conn)
        insert_graph(conn, name="Nobody's")
    report = preflight.run_url(legacy_url, preflight.Options(orphan_graphs_owner="user_nobody"))
    assert {f.id for f in report.blockers} == {"orphan_graphs_owner", "orphan_graphs"}


# --------------------------------------------------------------------------------------------------------------------
# clean data, warnings, states
# --------------------------------------------------------------------------------------------------------------------


def test_seeded_sample_is_ready_and_verifies_clean_after_upgrade(legacy_url: str, engine: sa.Engine) -> None:
    with engine.begin() as conn:
        seed_legacy_sample(conn)
    report = preflight.run_url(legacy_url)
    assert report.exit_code == 0, report.render_text()
    assert report.state == "legacy"
    assert report.count("inactive_users") == 1  # dave
    assert report.count("mixed_case_emails") == 2  # alice, carol
    assert report.count("users_without_limits") == 2  # carol, erin
    assert report.count("repositories") == 1 and report.count("subgraphs") == 1
    assert report.count("graphs_multiple_admins") == 1  # bob & carol
    assert report.count("repository_subscriptions") == 1 and report.count("pending_checkout_subscriptions") == 1
    assert report.finding("orphan_enum_subscriptionstatus") is not None
    assert "READY" in report.render_text()

    migrations.upgrade("head", legacy_url)
    result = verify.run_url(legacy_url)
    assert result.exit_code == 0, result.render_text()


def test_other_sessions_are_a_warning_not_a_blocker(legacy_url: str, engine: sa.Engine) -> None:
    with engine.begin() as conn:
        seed_legacy_sample(conn)
    with psycopg.connect(legacy_url, application_name="legacy-app-still-running"):
        report = preflight.run_url(legacy_url)
    finding = report.finding("other_sessions")
    assert finding is not None and finding.severity == "warning" and finding.count >= 1
    assert any("legacy-app-still-running" in e for e in finding.examples)
    assert report.exit_code == 0


def test_partly_upgraded_database_gets_the_remaining_checks(legacy_url: str, engine: sa.Engine) -> None:
    with engine.begin() as conn:
        seed_legacy_sample(conn)
        insert_graph(conn, name="Nobody's")
    with pytest.raises(RuntimeError, match="no owner signal"):
        migrations.upgrade("head", legacy_url)
    assert _version(engine) == checksums.IDENTITY
    report = preflight.run_url(legacy_url)
    assert report.state == "partial"
    assert [f.id for f in report.blockers] == ["orphan_graphs"]
    assert report.finding("partial_upgrade") is not None
    assert report.finding("mixed_case_emails") is None  # identity is done: its checks no longer apply
    assert report.finding("repository_subscriptions") is not None  # billing is still to come


def test_fresh_and_foreign_databases(make_database: Callable[[], str]) -> None:
    empty = make_database()
    report = preflight.run_url(empty)
    assert report.state == "empty" and report.exit_code == 0
    foreign = make_database()
    with psycopg.connect(foreign, autocommit=True) as conn:
        conn.execute("CREATE TABLE users (id text)")
    assert preflight.run_url(foreign).exit_code == 2
    head = make_database()
    migrations.upgrade("head", head)
    at_head = preflight.run_url(head)
    assert at_head.state == "head" and at_head.exit_code == 0
    assert verify.run_url(head).exit_code == 0  # fresh install: snapshot of nothing, invariants hold


# --------------------------------------------------------------------------------------------------------------------
# the preflight's rules are the revisions' rules
# --------------------------------------------------------------------------------------------------------------------


def test_vocabulary_matches_the_billing_revision() -> None:
    script = ScriptDirectory.from_config(migrations.alembic_config("postgresql://unused@localhost/unused"))
    module = script.get_revision(checksums.ORG_BILLING).module
    assert tuple(module.SUBSCRIPTION_STATUSES) == preflight.SUBSCRIPTION_STATUSES
    assert tuple(module.LIVE_STATUSES) == preflight.LIVE_STATUSES
    assert tuple(module.INVOICE_STATUSES) == preflight.INVOICE_STATUSES
    assert tuple(module.TRANSACTION_TYPES) == preflight.TRANSACTION_TYPES
    assert module._STATUS_MAP_SQL == preflight.STATUS_MAP_SQL
    ownership = script.get_revision(checksums.GRAPH_OWNERSHIP).module
    assert ownership.ORPHAN_OWNER_ENV == preflight.ORPHAN_OWNER_ENV


def test_chain_order() -> None:
    chain = checksums.chain()
    assert chain[:6] == (
        checksums.LEGACY,
        checksums.SNAPSHOT,
        checksums.IDENTITY,
        checksums.GRAPH_OWNERSHIP,
        "d5e6f7a8b9c0",
        checksums.ORG_BILLING,
    )
    script = ScriptDirectory.from_config(migrations.alembic_config("postgresql://unused@localhost/unused"))
    assert checksums.head() == script.get_current_head()


# --------------------------------------------------------------------------------------------------------------------
# batching helper of the data-moving revisions
# --------------------------------------------------------------------------------------------------------------------


def test_key_ranges_cover_every_row_exactly_once(make_database: Callable[[], str]) -> None:
    url = make_database()
    eng = sa.create_engine(sync_url(url), poolclass=NullPool)
    try:
        with eng.begin() as conn:
            conn.execute(sa.text("CREATE TABLE src (id varchar PRIMARY KEY)"))
            conn.execute(sa.text("CREATE TABLE dst (id varchar PRIMARY KEY, n int NOT NULL DEFAULT 1)"))
            conn.execute(sa.text("INSERT INTO src SELECT 'k_' || md5(i::text) FROM generate_series(1, 1003) i"))
            ranges = runtime.key_ranges(conn, "src", "id", size=100)
            assert len(ranges) == 11  # 10 full batches + the open-ended tail
            assert ranges[0][0] is None and ranges[-1][1] is None
            progress = runtime.begin(conn, "test")
            total = progress.batched(
                "copy",
                "INSERT INTO dst (id) SELECT s.id FROM src s WHERE {range} "
                "ON CONFLICT (id) DO UPDATE SET n = dst.n + 1",
                ranges,
                key="s.id",
            )
            assert total == 1003
            assert conn.execute(sa.text("SELECT count(*), max(n) FROM dst")).one() == (1003, 1)
            settings = conn.execute(
                sa.text("SELECT current_setting('lock_timeout'), current_setting('application_name')")
            ).one()
            assert settings == ("10s", "robosystems-migrate test")
    finally:
        eng.dispose()


@pytest.mark.parametrize(
    ("variable", "value"),
    [("MIGRATION_LOCK_TIMEOUT", "soon"), ("MIGRATION_STATEMENT_TIMEOUT", "10 parsecs"), ("MIGRATION_BATCH_SIZE", "0")],
)
def test_unusable_migration_settings_are_refused(variable: str, value: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(RuntimeError, match=variable):
        runtime.settings()
