"""A 1,000-user legacy database from ``bench/legacy_data.py`` (every edge case E1–E11 planted at known counts):
preflight -> fix the blockers as the operator guide says -> upgrade -> verify clean; an upgrade killed in the middle of
a revision resumes without duplicates; lock waits are bounded; verify catches damage.

One legacy database is generated per test module (a few seconds) and used as a TEMPLATE: each test gets its own copy
(``CREATE DATABASE … TEMPLATE``), so tests never share state.
"""

from __future__ import annotations

import importlib.util
import json
import os
import secrets
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa
from sqlalchemy.exc import DBAPIError
from sqlalchemy.pool import NullPool
from typer.testing import CliRunner

from robosystems import migrations
from robosystems.cli import app as cli_app
from robosystems.db import sync_url
from robosystems.migrate_tools import checksums, preflight, snapshot, verify
from robosystems.migrate_tools.cli import db_error_hint
from tests.conftest import _admin_conninfo

ROOT = Path(__file__).resolve().parent.parent
SCALE = 0.01  # 1,000 users, 1,500 graphs, 4,000 user_graphs, 600 subscriptions, 1,200 invoices, 10,000 usage rows
SEED = 7

# preflight finding id -> generator manifest key (design counts)
PREFLIGHT_VS_MANIFEST = {
    "case_duplicate_emails": "case_duplicate_emails",
    "orphan_graphs": "orphan_graphs",
    "graphs_multiple_admins": "graphs_multiple_admins",
    "graphs_ownership_disagreement": "graphs_ownership_disagreement",
    "graphs_without_admin": "graphs_without_admin",
    "graphs_owner_from_member_grant": "graphs_owner_from_member_grant",
    "subgraphs": "subgraphs",
    "subgraphs_parent_missing": "subgraphs_parent_missing",
    "repositories": "repositories",
    "graphs_without_grants": "graphs_without_grants",
    "graphs_without_credits": "graphs_without_credits",
    "graphs_without_subscription": "graphs_without_subscription",
    "users_without_graphs": "users_without_graphs",
    "users_without_limits": "users_without_limits",
    "mixed_case_emails": "mixed_case_emails",
    "inactive_users": "inactive_users",
    "duplicate_storage_snapshots": "duplicate_storage_snapshots",
    "repository_subscriptions": "repository_subscriptions",
    "legacy_tier_graphs": "legacy_tier_graphs",
    "legacy_tier_usage_rows": "legacy_tier_usage_rows",
    "user_repository_enum_rows": "user_repository_uppercase_enum_rows",
    "orphan_enum_subscriptionstatus": "orphan_enum_subscriptionstatus",
    "pending_checkout_subscriptions": "pending_checkouts",
    "checkout_session_ids": "pending_checkouts",
    "legacy_subscription_status": "legacy_pending_status",
    "credit_pools_ledger_mismatch": "credit_pools_planted_mismatch",
    "audit_logs_without_reference": "audit_logs_without_reference",
    "orphan_user_tokens": "orphan_user_tokens",
    "usage_rows_unknown_user": "usage_rows_unknown_user",
    "usage_rows_unknown_graph": "usage_rows_unknown_graph",
    "credit_transactions_unknown_user": "credit_transactions_unknown_user",
    "users_with_several_selected_graphs": "users_with_several_selected_graphs",
    "odd_role_grants": "odd_role_grants",
}

# The operator guide's fix for E5: give the upper-case twin its own address (keeps both accounts).
RENAME_CASE_DUPLICATES = """
UPDATE users u SET email = 'dup+' || lower(u.id) || '@example.invalid'
WHERE EXISTS (SELECT 1 FROM users v WHERE v.id <> u.id AND lower(btrim(v.email)) = lower(btrim(u.email))
              AND v.id < u.id)
"""


def _load_generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_legacy_data", ROOT / "bench" / "legacy_data.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


gen = _load_generator()


def _dbname(url: str) -> str:
    return str(sa.engine.make_url(url).database)


@pytest.fixture(scope="module")
def legacy_template(pg_server_url: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """A generated legacy database (blockers included) used only as a template; (url, manifest)."""
    admin = _admin_conninfo(pg_server_url, "postgres")
    name = f"rs_legacy_tmpl_{secrets.token_hex(4)}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = _admin_conninfo(pg_server_url, name)
    try:
        result = gen.generate(url, gen.Plan.for_scale(SCALE, SEED))
        yield url, result.manifest
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def copy_of(pg_server_url: str) -> Iterator[Callable[[str], str]]:
    admin = _admin_conninfo(pg_server_url, "postgres")
    made: list[str] = []

    def make(template_url: str) -> str:
        name = f"rs_legacy_{secrets.token_hex(5)}"
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{_dbname(template_url)}"')
        made.append(name)
        return _admin_conninfo(pg_server_url, name)

    yield make
    with psycopg.connect(admin, autocommit=True) as conn:
        for name in made:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def legacy_db(legacy_template: tuple[str, dict[str, Any]], copy_of: Callable[[str], str]) -> tuple[str, dict[str, Any]]:
    url, manifest = legacy_template
    return copy_of(url), manifest


def _engine(url: str) -> sa.Engine:
    return sa.create_engine(sync_url(url), poolclass=NullPool)


def _scalar(url: str, sql: str, **params: Any) -> Any:
    engine = _engine(url)
    try:
        with engine.connect() as conn:
            return conn.execute(sa.text(sql), params).scalar()
    finally:
        engine.dispose()


def _execute(url: str, sql: str, **params: Any) -> int:
    engine = _engine(url)
    try:
        with engine.begin() as conn:
            return conn.execute(sa.text(sql), params).rowcount
    finally:
        engine.dispose()


def _some_user(url: str) -> str:
    return str(_scalar(url, "SELECT id FROM users WHERE is_active ORDER BY id LIMIT 1"))


def _resolve_blockers(url: str) -> str:
    """The operator guide's remedies: rename case twins; pick the user whose personal org takes the orphans."""
    _execute(url, RENAME_CASE_DUPLICATES)
    return _some_user(url)


# --------------------------------------------------------------------------------------------------------------------
# 1. the whole operator flow on the 1,000-user database with every edge case
# --------------------------------------------------------------------------------------------------------------------


def test_preflight_reports_every_planted_edge_case(legacy_db: tuple[str, dict[str, Any]]) -> None:
    url, manifest = legacy_db
    planted = manifest["edge_cases"]
    report = preflight.run_url(url)

    assert report.error is None and report.state == "legacy"
    assert report.exit_code == 1
    assert {f.id for f in report.blockers} == {"case_duplicate_emails", "orphan_graphs"}
    mismatches = {
        finding_id: (report.count(finding_id), planted[key])
        for finding_id, key in PREFLIGHT_VS_MANIFEST.items()
        if report.count(finding_id) != planted[key]
    }
    assert mismatches == {}
    assert report.count("graphs_creator_gone") == planted["graphs_owner_from_member_grant"] + planted["orphan_graphs"]
    assert report.row_counts == {**manifest["row_counts"]}
    # every edge case of legacy-schema.md is named in the report
    assert {f.edge_case for f in report.findings if f.edge_case} >= {f"E{i}" for i in range(1, 12)}


def test_upgrade_after_fixing_the_blockers_verifies_clean(legacy_db: tuple[str, dict[str, Any]]) -> None:
    url, manifest = legacy_db
    planted = manifest["edge_cases"]
    owner = _resolve_blockers(url)

    ready = preflight.run_url(url, preflight.Options(orphan_graphs_owner=owner))
    assert ready.exit_code == 0, ready.render_text()
    assert ready.finding("orphan_graphs") is not None and ready.finding("orphan_graphs").severity == "warning"

    migrations.upgrade("head", url, x_args=[f"orphan_graphs_owner={owner}"])
    result = verify.run_url(url)
    assert result.exit_code == 0, result.render_text()
    assert result.tables and all(t.ok for t in result.tables)
    assert {t.name for t in result.tables} == {s.name for s in checksums.specs()}

    # what each edge case became
    users = manifest["row_counts"]["users"]
    assert _scalar(url, "SELECT count(*) FROM orgs WHERE org_type = 'personal'") == users
    assert _scalar(url, "SELECT count(*) FROM org_users WHERE role = 'owner'") == users
    assert _scalar(url, "SELECT count(*) FROM graphs WHERE is_repository AND org_id IS NULL") == 3  # E8
    assert _scalar(url, "SELECT count(*) FROM graph_users") == manifest["row_counts"]["user_graphs"]
    assert _scalar(url, "SELECT count(*) FROM legacy_email_case") == ready.count("mixed_case_emails")  # E5
    assert _scalar(url, "SELECT count(*) FROM users WHERE email <> lower(email)") == 0
    owner_org = _scalar(url, "SELECT id FROM orgs WHERE personal_user_id = :u", u=owner)
    assert (
        _scalar(
            url,
            "SELECT count(*) FROM graph_ownership_conflicts "
            "WHERE 'orphan_assigned' = ANY(reasons) AND chosen_org_id = :o",
            o=owner_org,
        )
        == planted["orphan_graphs"]
    )  # E2, no signal: the operator's org
    assert (
        _scalar(url, "SELECT count(*) FROM graph_ownership_conflicts WHERE 'owner_from_member_grant' = ANY(reasons)")
        == planted["graphs_owner_from_member_grant"]
    )
    assert (
        _scalar(url, "SELECT count(*) FROM graph_ownership_conflicts WHERE 'signals_disagree' = ANY(reasons)")
        == planted["graphs_ownership_disagreement"]
    )  # E1
    assert (
        _scalar(
            url,
            "SELECT count(*) FROM billing_subscriptions WHERE resource_type = 'repository' AND org_id = "
            "(SELECT id FROM orgs WHERE personal_user_id = billing_customer_user_id)",
        )
        == planted["repository_subscriptions"]
    )  # E8
    assert (
        _scalar(url, "SELECT count(*) FROM users u JOIN orgs o ON o.personal_user_id = u.id WHERE NOT u.is_active")
        == planted["inactive_users"]
    )  # E6
    assert (
        _scalar(url, "SELECT count(*) FROM graphs WHERE graph_tier IN ('standard', 'enterprise', 'premium')")
        == planted["legacy_tier_graphs"]
    )  # E9 kept
    assert _scalar(url, "SELECT count(*) FROM pg_type WHERE typname = 'subscriptionstatus'") == 1  # E11 left alone
    assert (
        _scalar(
            url, "SELECT count(*) FROM graph_credit_transactions WHERE starts_with(idempotency_key, 'legacy_opening_')"
        )
        == planted["credit_pools_planted_mismatch"]
    )

    # after the upgrade the preflight has nothing left to do, and the CLI says so too
    assert preflight.run_url(url).state == "head"
    runner = CliRunner()
    out = runner.invoke(cli_app, ["migrate", "verify", "--database-url", url, "--json"])
    assert out.exit_code == 0, out.output
    assert json.loads(out.output)["ok"] is True


def test_cli_preflight_exit_codes_and_json(legacy_db: tuple[str, dict[str, Any]]) -> None:
    url, _ = legacy_db
    runner = CliRunner()
    blocked = runner.invoke(cli_app, ["migrate", "preflight", "--database-url", url, "--json"])
    assert blocked.exit_code == 1
    body = json.loads(blocked.output)
    assert body["ready"] is False and body["blockers"] == 2
    text = runner.invoke(cli_app, ["migrate", "preflight", "--database-url", url])
    assert text.exit_code == 1 and "NOT READY" in text.output and "case_duplicate_emails" in text.output

    owner = _resolve_blockers(url)
    ready = runner.invoke(cli_app, ["migrate", "preflight", "--database-url", url, "--orphan-graphs-owner", owner])
    assert ready.exit_code == 0, ready.output
    assert "READY" in ready.output

    unreachable = runner.invoke(
        cli_app, ["migrate", "preflight", "--database-url", "postgresql://postgres@127.0.0.1:1/nowhere"]
    )
    assert unreachable.exit_code == 2
    not_upgraded = runner.invoke(cli_app, ["migrate", "verify", "--database-url", url])
    assert not_upgraded.exit_code == 2 and "not at head" in not_upgraded.output


def test_preflight_changes_nothing(legacy_db: tuple[str, dict[str, Any]]) -> None:
    url, _ = legacy_db
    engine = _engine(url)
    try:
        with engine.connect() as conn:
            before = checksums.compute(conn, checksums.LEGACY)
            tables_before = set(conn.execute(sa.text("SELECT tablename FROM pg_tables")).scalars())
        preflight.run_url(url)
        with engine.connect() as conn:
            assert checksums.compute(conn, checksums.LEGACY) == before
            assert set(conn.execute(sa.text("SELECT tablename FROM pg_tables")).scalars()) == tables_before
            assert conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar() == checksums.LEGACY
    finally:
        engine.dispose()


# --------------------------------------------------------------------------------------------------------------------
# 2. verify is not vacuous: it catches lost, moved and changed rows
# --------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def upgraded_template(
    legacy_template: tuple[str, dict[str, Any]], pg_server_url: str
) -> Iterator[tuple[str, dict[str, Any]]]:
    url, manifest = legacy_template
    admin = _admin_conninfo(pg_server_url, "postgres")
    name = f"rs_upgraded_tmpl_{secrets.token_hex(4)}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{_dbname(url)}"')
    copy = _admin_conninfo(pg_server_url, name)
    try:
        owner = _resolve_blockers(copy)
        migrations.upgrade("head", copy, x_args=[f"orphan_graphs_owner={owner}"])
        yield copy, manifest
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


DAMAGE = {
    # a legacy grant lost
    "legacy_grants_missing": "DELETE FROM graph_users WHERE id = (SELECT min(id) FROM graph_users)",
    # a subscription moved to somebody else's org
    "billing_subscriptions_wrong_org": (
        "UPDATE billing_subscriptions SET org_id = (SELECT id FROM orgs ORDER BY id DESC LIMIT 1) "
        "WHERE id = (SELECT min(id) FROM billing_subscriptions WHERE billing_customer_user_id <> "
        "(SELECT personal_user_id FROM orgs ORDER BY id DESC LIMIT 1))"
    ),
    # a balance changed (and the ledger no longer sums to it)
    "credit_balances_changed": (
        "UPDATE graph_credits SET current_balance = current_balance + 1 WHERE id = (SELECT min(id) FROM graph_credits)"
    ),
    # a graph given to an org with no legacy tie to it
    "graphs_in_unrelated_org": (
        "UPDATE graphs SET org_id = (SELECT o.id FROM orgs o WHERE NOT EXISTS (SELECT 1 FROM graph_users m "
        "WHERE m.user_id = o.personal_user_id) ORDER BY o.id LIMIT 1) "
        "WHERE graph_id = (SELECT min(graph_id) FROM graphs WHERE NOT is_repository AND NOT is_subgraph "
        "AND NOT EXISTS (SELECT 1 FROM graphs s WHERE s.parent_graph_id = graphs.graph_id))"
    ),
    # a user without personal org
    "users_without_one_personal_org": (
        "DELETE FROM orgs WHERE id = (SELECT o.id FROM orgs o WHERE NOT EXISTS (SELECT 1 FROM graphs g "
        "WHERE g.org_id = o.id) AND NOT EXISTS (SELECT 1 FROM billing_customers c WHERE c.org_id = o.id) "
        "AND NOT EXISTS (SELECT 1 FROM billing_subscriptions s WHERE s.org_id = o.id) "
        "AND NOT EXISTS (SELECT 1 FROM billing_invoices i WHERE i.org_id = o.id) ORDER BY o.id LIMIT 1)"
    ),
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_verify_catches_damage(
    upgraded_template: tuple[str, dict[str, Any]], copy_of: Callable[[str], str], damage: str
) -> None:
    url = copy_of(upgraded_template[0])
    assert verify.run_url(url).exit_code == 0
    assert _execute(url, DAMAGE[damage]) == 1
    report = verify.run_url(url)
    assert report.exit_code == 1
    failed = {f.id for f in report.failures}
    assert damage in failed, report.render_text()


# --------------------------------------------------------------------------------------------------------------------
# 3. interruption: killed mid-revision -> previous revision intact -> rerun completes, nothing duplicated
# --------------------------------------------------------------------------------------------------------------------

# revision to interrupt -> a legacy table the revision needs an ACCESS EXCLUSIVE lock on after it has moved data
# (the test holds ACCESS SHARE on it, so the revision blocks exactly there, with its data moved but not committed)
INTERRUPT_AT = {
    checksums.IDENTITY: "user_limits",  # DROP TABLE after every personal org, membership and limit was inserted
    checksums.GRAPH_OWNERSHIP: "graph_usage_tracking",  # the last rename, after org_id/graph_users were done
    checksums.ORG_BILLING: "graph_credits",  # the last ALTER, after every billing table moved to orgs
}


def _migration_backend(admin: psycopg.Connection[Any], dbname: str) -> int | None:
    """pid of the upgrade's backend once it waits for a lock in ``dbname`` (event, not time)."""
    row = admin.execute(
        "SELECT a.pid FROM pg_stat_activity a JOIN pg_locks l ON l.pid = a.pid AND NOT l.granted "
        "WHERE a.datname = %s AND (a.application_name = 'legacy-upgrade-test' "
        "OR starts_with(a.application_name, 'robosystems-migrate'))",
        (dbname,),
    ).fetchone()
    return None if row is None else int(row[0])


@pytest.mark.parametrize("revision", sorted(INTERRUPT_AT))
def test_upgrade_killed_mid_revision_resumes_without_duplicates(
    legacy_db: tuple[str, dict[str, Any]], pg_server_url: str, revision: str
) -> None:
    url, manifest = legacy_db
    owner = _resolve_blockers(url)
    order = checksums.revision_order()
    previous = checksums.chain()[order[revision] - 1]
    if order[previous] > order[checksums.LEGACY]:
        migrations.upgrade(previous, url, x_args=[f"orphan_graphs_owner={owner}"])
    dbname = _dbname(url)
    blocker = psycopg.connect(url)  # holds ACCESS SHARE on the table until released
    blocker.execute(f"LOCK TABLE {INTERRUPT_AT[revision]} IN ACCESS SHARE MODE")
    env = {
        **os.environ,
        "PGAPPNAME": "legacy-upgrade-test",
        "MIGRATION_LOCK_TIMEOUT": "10min",  # wait (until killed) instead of timing out
        "ROBOSYSTEMS_ORPHAN_GRAPHS_OWNER": owner,
    }
    code = f"from robosystems import migrations; migrations.upgrade('head', {url!r})"
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, cwd=ROOT, start_new_session=True)
    admin = psycopg.connect(_admin_conninfo(pg_server_url, "postgres"), autocommit=True)
    try:
        pid = None
        while pid is None:
            if proc.poll() is not None:
                pytest.fail(f"the upgrade ended (exit {proc.returncode}) before reaching the lock of {revision}")
            pid = _migration_backend(admin, dbname)
            if pid is None:
                admin.execute("SELECT pg_sleep(0.05)")
        # "crash": the migration process dies and its server session is terminated mid-revision
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        while admin.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = %s", (pid,)).fetchone() != (0,):
            admin.execute("SELECT pg_sleep(0.05)")
    finally:
        blocker.rollback()
        blocker.close()
        admin.close()
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)

    # everything of the interrupted revision is gone; the revisions before it are committed
    assert _scalar(url, "SELECT version_num FROM alembic_version") == previous
    if revision == checksums.IDENTITY:
        assert _scalar(url, "SELECT to_regclass('public.orgs')") is None
    elif revision == checksums.GRAPH_OWNERSHIP:
        assert _scalar(url, "SELECT to_regclass('public.graph_users')") is None
        assert (
            _scalar(
                url,
                "SELECT count(*) FROM information_schema.columns WHERE column_name = 'org_id' "
                "AND table_name = 'graphs'",
            )
            == 0
        )
    else:
        assert (
            _scalar(
                url,
                "SELECT count(*) FROM information_schema.columns WHERE column_name = 'org_id' "
                "AND table_name = 'billing_subscriptions'",
            )
            == 0
        )

    migrations.upgrade("head", url, x_args=[f"orphan_graphs_owner={owner}"])
    users = manifest["row_counts"]["users"]
    assert _scalar(url, "SELECT count(*) FROM orgs") == users
    assert (
        _scalar(url, "SELECT count(*) FROM (SELECT personal_user_id FROM orgs GROUP BY 1 HAVING count(*) > 1) x") == 0
    )
    assert _scalar(url, "SELECT count(*) FROM org_users") == users
    assert _scalar(url, "SELECT count(*) FROM org_limits") == users
    report = verify.run_url(url)
    assert report.exit_code == 0, report.render_text()


def test_lock_timeout_bounds_the_wait_and_leaves_nothing(
    legacy_db: tuple[str, dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A session that holds a table the upgrade needs makes the revision fail after MIGRATION_LOCK_TIMEOUT (not
    hang), rolled back entirely; the operator gets guidance; the rerun works."""
    url, manifest = legacy_db
    owner = _resolve_blockers(url)
    migrations.upgrade(checksums.SNAPSHOT, url)
    monkeypatch.setenv("MIGRATION_LOCK_TIMEOUT", "200ms")
    with psycopg.connect(url) as blocker:
        blocker.execute("LOCK TABLE user_limits IN ACCESS SHARE MODE")
        with pytest.raises(DBAPIError) as info:
            migrations.upgrade(checksums.IDENTITY, url)
        blocker.rollback()
    assert getattr(info.value.orig, "sqlstate", None) == "55P03"
    hint = db_error_hint(info.value)
    assert hint is not None and "MIGRATION_LOCK_TIMEOUT" in hint and "pg_stat_activity" in hint
    assert _scalar(url, "SELECT version_num FROM alembic_version") == checksums.SNAPSHOT
    assert _scalar(url, "SELECT to_regclass('public.orgs')") is None

    migrations.upgrade("head", url, x_args=[f"orphan_graphs_owner={owner}"])
    assert _scalar(url, "SELECT count(*) FROM orgs") == manifest["row_counts"]["users"]
    assert verify.run_url(url).exit_code == 0


def test_invalid_migration_settings_stop_before_any_change(
    legacy_db: tuple[str, dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    url, _ = legacy_db
    monkeypatch.setenv("MIGRATION_STATEMENT_TIMEOUT", "forever")
    report = preflight.run_url(url)
    assert "migration_settings" in {f.id for f in report.blockers}
    with pytest.raises(RuntimeError, match="MIGRATION_STATEMENT_TIMEOUT"):
        migrations.upgrade("head", url)
    assert _scalar(url, "SELECT version_num FROM alembic_version") == checksums.LEGACY


# --------------------------------------------------------------------------------------------------------------------
# 4. the upgrade stopped at a blocker, the operator changed legacy data: re-record the snapshot, verify stays exact
# --------------------------------------------------------------------------------------------------------------------


def test_snapshot_rerecorded_after_a_data_fix_mid_upgrade(legacy_db: tuple[str, dict[str, Any]]) -> None:
    url, _ = legacy_db
    _execute(url, RENAME_CASE_DUPLICATES)
    with pytest.raises(RuntimeError, match="no owner signal"):
        migrations.upgrade("head", url)  # c4d5 stops on the orphan graphs; identity is committed
    assert _scalar(url, "SELECT version_num FROM alembic_version") == checksums.IDENTITY
    # the operator's fix: delete the orphan graphs (and their viewer grants, usage rows stay)
    orphans = preflight.run_url(url).finding("orphan_graphs")
    assert orphans is not None and orphans.severity == "blocker"
    _execute(
        url,
        "DELETE FROM user_graphs WHERE graph_id IN (SELECT g.graph_id FROM graphs g WHERE NOT g.is_repository "
        "AND NOT EXISTS (SELECT 1 FROM user_graphs m WHERE m.graph_id = g.graph_id AND m.role IN ('admin','member')) "
        "AND NOT EXISTS (SELECT 1 FROM graph_credits c WHERE c.graph_id = g.graph_id) "
        "AND NOT EXISTS (SELECT 1 FROM billing_subscriptions s WHERE s.resource_id = g.graph_id) "
        "AND NOT EXISTS (SELECT 1 FROM users u WHERE u.id = g.graph_metadata ->> 'created_by'))",
    )
    deleted = _execute(
        url,
        "DELETE FROM graphs g WHERE NOT g.is_repository AND NOT g.is_subgraph "
        "AND NOT EXISTS (SELECT 1 FROM user_graphs m WHERE m.graph_id = g.graph_id) "
        "AND NOT EXISTS (SELECT 1 FROM graph_credits c WHERE c.graph_id = g.graph_id) "
        "AND NOT EXISTS (SELECT 1 FROM billing_subscriptions s WHERE s.resource_id = g.graph_id) "
        "AND NOT EXISTS (SELECT 1 FROM users u WHERE u.id = g.graph_metadata ->> 'created_by')",
    )
    assert deleted == orphans.count
    assert preflight.run_url(url).exit_code == 0

    runner = CliRunner()
    out = runner.invoke(cli_app, ["migrate", "snapshot", "--database-url", url])
    assert out.exit_code == 0, out.output
    engine = _engine(url)
    try:
        with engine.connect() as conn:
            taken = snapshot.load(conn)
    finally:
        engine.dispose()
    assert taken is not None and taken.revision == checksums.IDENTITY

    migrations.upgrade("head", url)
    report = verify.run_url(url)
    assert report.exit_code == 0, report.render_text()
    # at head a new snapshot is refused (it would compare the data with itself)
    refused = runner.invoke(cli_app, ["migrate", "snapshot", "--database-url", url])
    assert refused.exit_code == 2 and "at head" in refused.output


def test_blocker_fixed_between_runs_is_picked_up_without_a_manual_snapshot(
    legacy_db: tuple[str, dict[str, Any]],
) -> None:
    """The common operator path: upgrade right away, stop at the case twins (the snapshot revision is committed by
    then), rename them, upgrade again.  The identity revision re-checks the tables it reshapes first, so verify is
    clean and reports that the users changed between the runs."""
    url, _ = legacy_db
    owner = _some_user(url)
    with pytest.raises(RuntimeError, match="differ only by case"):
        migrations.upgrade("head", url, x_args=[f"orphan_graphs_owner={owner}"])
    assert _scalar(url, "SELECT version_num FROM alembic_version") == checksums.SNAPSHOT
    assert _execute(url, RENAME_CASE_DUPLICATES) == 2
    migrations.upgrade("head", url, x_args=[f"orphan_graphs_owner={owner}"])
    report = verify.run_url(url)
    assert report.exit_code == 0, report.render_text()
    refreshed = report.finding("snapshot_refreshed")
    assert refreshed is not None and refreshed.severity == "warning"
    names = {e.split(":")[0] for e in refreshed.examples}
    assert "users" in names and names <= {"users", "user_email_spelling"}


def test_discard_snapshot_after_clean_verify(
    upgraded_template: tuple[str, dict[str, Any]], copy_of: Callable[[str], str]
) -> None:
    url = copy_of(upgraded_template[0])
    out = CliRunner().invoke(cli_app, ["migrate", "verify", "--database-url", url, "--discard-snapshot"])
    assert out.exit_code == 0, out.output
    assert _scalar(url, f"SELECT count(*) FROM {snapshot.TABLE}") == 0
    assert _scalar(url, f"SELECT count(*) FROM {snapshot.MEMBERSHIPS_TABLE}") == 0
    again = verify.run_url(url)
    assert again.exit_code == 0 and again.finding("no_snapshot") is not None


# --------------------------------------------------------------------------------------------------------------------
# 5. downgrade policy on real data: every step down either goes through or refuses naming the loss; at the bottom
#    the legacy business data is exactly what it was
# --------------------------------------------------------------------------------------------------------------------


def test_downgrade_one_revision_at_a_time_back_to_the_legacy_data(legacy_db: tuple[str, dict[str, Any]]) -> None:
    url, _ = legacy_db
    owner = _resolve_blockers(url)
    engine = _engine(url)
    try:
        with engine.connect() as conn:
            legacy = checksums.compute(conn, checksums.LEGACY)
        migrations.upgrade("head", url, x_args=[f"orphan_graphs_owner={owner}"])
        chain = checksums.chain()
        refused: dict[str, str] = {}
        for position in range(len(chain) - 1, 0, -1):
            target = chain[position - 1]
            try:
                migrations.downgrade(target, url)
            except RuntimeError as exc:
                refused[chain[position]] = str(exc)
                migrations.downgrade(target, url, allow_data_loss=True)
            assert _scalar(url, "SELECT version_num FROM alembic_version") == target
        # only the graph-ownership step refuses here: the orphans' org was the operator's choice, which the legacy
        # signals can't express; the message names the graphs and the way to accept
        assert set(refused) == {checksums.GRAPH_OWNERSHIP}
        message = refused[checksums.GRAPH_OWNERSHIP]
        assert "allow_data_loss" in message and "orphans assigned by an operator" in message
        with engine.connect() as conn:
            assert checksums.compute(conn, checksums.LEGACY) == legacy
            assert conn.execute(sa.text("SELECT to_regclass('public.user_graphs') IS NOT NULL")).scalar()
            assert conn.execute(sa.text("SELECT to_regclass('public.orgs')")).scalar() is None
    finally:
        engine.dispose()
