"""``robosystems migrate verify``: after the upgrade, compare with the pre-upgrade snapshot and check invariants.

Read-only (one READ ONLY transaction).  Run it right after ``migrate upgrade``, before the application is started
again: the snapshot describes the legacy data, so writes made since then show up as differences.

* **Snapshot comparison** (``migration_snapshots``, recorded by revision ``a1b2c3d4e5f6``): per legacy table the row
  count and the checksum of its business columns, recomputed on the upgraded schema (robosystems.migrate_tools
  .checksums explains how renamed tables, lower-cased emails and mapped statuses are compared).
* **Invariants**:

  - every user has exactly one personal org, with that user as active owner, and org_limits;
  - no user graph without org, no repository with an org, subgraphs in their parent's org, every graph's org is
    the personal org of a user with a legacy tie to the graph (payer, credits user/billing admin, creator, grant)
    or was assigned by the operator (orphans);
  - every legacy ``user_graphs`` row is in ``graph_users`` (same id, user, graph and role);
  - every billing customer, subscription, invoice and audit row is in the personal org of its legacy payer;
  - every credit pool's balance is unchanged, ``sum(ledger) == balance`` for every pool, and each legacy pool whose
    balance differed from its ledger got exactly the one opening adjustment that closes the gap;
  - emails are unique case-insensitively.

Exit status (CLI): 0 = clean, 1 = a check failed, 2 = could not run (e.g. the database is not at head).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from robosystems.migrate_tools import checksums, snapshot
from robosystems.migrate_tools.report import Finding, render, table

EXAMPLES = 5


@dataclass
class TableComparison:
    name: str
    before_rows: int
    after_rows: int
    before_checksum: str
    after_checksum: str

    @property
    def ok(self) -> bool:
        return self.before_rows == self.after_rows and self.before_checksum == self.after_checksum


@dataclass
class VerifyReport:
    database: str
    revision: str | None
    head: str
    snapshot_revision: str | None = None
    snapshot_taken_at: str | None = None
    tables: list[TableComparison] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    seconds: float = 0.0
    error: str | None = None

    @property
    def failures(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "fail"]

    @property
    def ok(self) -> bool:
        return self.error is None and not self.failures

    @property
    def exit_code(self) -> int:
        if self.error is not None:
            return 2
        return 0 if self.ok else 1

    def finding(self, finding_id: str) -> Finding | None:
        return next((f for f in self.findings if f.id == finding_id), None)

    def as_dict(self) -> dict[str, Any]:
        return {
            "database": self.database,
            "revision": self.revision,
            "head": self.head,
            "ok": self.ok,
            "exit_code": self.exit_code,
            "error": self.error,
            "snapshot_revision": self.snapshot_revision,
            "snapshot_taken_at": self.snapshot_taken_at,
            "tables": [
                {
                    "name": t.name,
                    "before_rows": t.before_rows,
                    "after_rows": t.after_rows,
                    "before_checksum": t.before_checksum,
                    "after_checksum": t.after_checksum,
                    "ok": t.ok,
                }
                for t in self.tables
            ],
            "findings": [f.as_dict() for f in self.findings],
            "seconds": round(self.seconds, 2),
        }

    def render_text(self) -> str:
        lines = [
            f"RoboSystems upgrade verification: database {self.database}",
            f"  revision {self.revision or '(none)'} (head {self.head}); snapshot "
            + (
                f"taken at {self.snapshot_taken_at} (schema {self.snapshot_revision})"
                if self.snapshot_revision
                else "-"
            ),
        ]
        if self.error:
            lines += ["", f"ERROR: {self.error}", "", "Result: verification could not run (exit 2)"]
            return "\n".join(lines)
        if self.tables:
            lines += ["", "Snapshot comparison (rows and checksum of the business columns)"]
            rows = [
                (t.name, f"{t.before_rows:,}", f"{t.after_rows:,}", "ok" if t.ok else "DIFFERS") for t in self.tables
            ]
            lines += ["  " + x for x in table(rows, ("table", "before", "after", "checksum"))]
        lines += render(self.findings, headings={"info": "NOTES", "warning": "WARNINGS", "ok": "PASSED CHECKS"})
        lines.append("")
        if self.ok:
            lines.append(f"Result: CLEAN (exit 0; {self.seconds:.1f}s)")
        else:
            lines.append(f"Result: {len(self.failures)} check(s) FAILED (exit 1; {self.seconds:.1f}s)")
        return "\n".join(lines)


class _Checks:
    def __init__(self, conn: sa.Connection, report: VerifyReport) -> None:
        self.conn = conn
        self.report = report

    def one(self, sql: str) -> Any:
        return self.conn.execute(sa.text(sql)).one()

    def check(
        self,
        finding_id: str,
        title: str,
        sql: str,
        *,
        severity: Any = "fail",
        edge_case: str | None = None,
        remedy: str = "",
    ) -> int:
        """``sql`` yields (count, examples); count 0 -> ok."""
        raw_count, examples = self.one(sql)
        count = int(raw_count or 0)
        self.report.findings.append(
            Finding(
                finding_id,
                severity if count else "ok",
                title,
                count,
                edge_case,
                examples=[str(e) for e in (examples or [])][:EXAMPLES],
                remedy=remedy if count else "",
            )
        )
        return count

    def info(self, finding_id: str, title: str, count: int, *, edge_case: str | None = None) -> None:
        self.report.findings.append(Finding(finding_id, "info", title, count, edge_case))


def _ex(expr: str, order: str | None = None) -> str:
    return f"(array_agg({expr} ORDER BY {order or expr}))[1:{EXAMPLES}]"


def _compare_snapshot(checks: _Checks, taken: snapshot.Snapshot, revision: str) -> None:
    after = checksums.compute(checks.conn, revision)
    for name, (count, checksum) in after.items():
        before = taken.tables.get(name)
        if before is None:
            continue
        checks.report.tables.append(TableComparison(name, before[0], count, before[1], checksum))
    clamped = int(
        checks.conn.execute(
            sa.text(
                "SELECT count(*) FROM graph_credit_transactions "
                "WHERE starts_with(idempotency_key, 'legacy_negative_cleared_')"
            )
        ).scalar_one()
    )
    for t in checks.report.tables:
        if t.ok:
            continue
        if t.name == "graph_credits" and clamped and t.before_rows == t.after_rows:
            checks.report.findings.append(
                Finding(
                    "snapshot_graph_credits",
                    "warning",
                    f"graph_credits differs from the snapshot: {clamped} negative pool(s) were cleared to 0 on "
                    "request (--clamp-negative-credit-balances)",
                    clamped,
                )
            )
            continue
        checks.report.findings.append(
            Finding(
                f"snapshot_{t.name}",
                "fail",
                f"{t.name}: "
                + (
                    f"{t.before_rows:,} row(s) before, {t.after_rows:,} after"
                    if t.before_rows != t.after_rows
                    else "same row count, but business values changed"
                ),
                abs(t.after_rows - t.before_rows) or 1,
                remedy="compare with the backup; if the application wrote since the upgrade, the difference may be "
                "legitimate (verify is meant to run before the application starts again)",
            )
        )
    refreshed = {
        name: details["refreshed"]
        for name, details in taken.details.items()
        if isinstance(details, dict) and isinstance(details.get("refreshed"), dict)
    }
    if refreshed:
        checks.report.findings.append(
            Finding(
                "snapshot_refreshed",
                "warning",
                "legacy tables that changed between upgrade runs (edited to clear a blocker?): their snapshot was "
                "re-recorded right before the revision that reshapes them",
                len(refreshed),
                examples=[
                    f"{name}: {info.get('previous_row_count')} -> "
                    f"{taken.tables.get(name, (0, ''))[0]} rows, before {info.get('before_revision')}"
                    for name, info in sorted(refreshed.items())
                ],
            )
        )
    checks.report.findings.append(
        Finding(
            "snapshot_tables",
            "ok" if all(t.ok for t in checks.report.tables) else "info",
            f"{sum(t.ok for t in checks.report.tables)} of {len(checks.report.tables)} legacy tables identical to the "
            "snapshot (rows and business-column checksum)",
            0,
        )
    )


def _identity(checks: _Checks) -> None:
    checks.check(
        "users_without_one_personal_org",
        "every user has exactly one personal org",
        f"SELECT count(*), {_ex('u.id')} FROM users u LEFT JOIN (SELECT personal_user_id, count(*) AS n FROM orgs "
        "WHERE org_type = 'personal' GROUP BY 1) o ON o.personal_user_id = u.id WHERE COALESCE(o.n, 0) <> 1",
    )
    checks.check(
        "personal_orgs_without_owner",
        "each personal org has its user as active owner",
        f"SELECT count(*), {_ex('o.id')} FROM orgs o WHERE o.org_type = 'personal' AND NOT EXISTS ("
        "SELECT 1 FROM org_users ou WHERE ou.org_id = o.id AND ou.user_id = o.personal_user_id "
        "AND ou.role = 'owner' AND ou.is_active)",
    )
    checks.check(
        "personal_orgs_without_limits",
        "each personal org has org_limits",
        f"SELECT count(*), {_ex('o.id')} FROM orgs o WHERE o.org_type = 'personal' AND NOT EXISTS ("
        "SELECT 1 FROM org_limits l WHERE l.org_id = o.id)",
    )
    checks.check(
        "duplicate_emails",
        "emails are unique case-insensitively",
        f"SELECT count(*), {_ex('e')} FROM (SELECT lower(email) AS e FROM users GROUP BY 1 HAVING count(*) > 1) x",
        edge_case="E5",
    )


def _graphs(checks: _Checks, has_snapshot: bool) -> None:
    checks.check(
        "user_graphs_without_org",
        "no user graph (or subgraph) without org",
        f"SELECT count(*), {_ex('graph_id')} FROM graphs WHERE NOT is_repository AND org_id IS NULL",
        edge_case="E2",
    )
    checks.check(
        "repositories_with_org",
        "shared repositories belong to no org",
        f"SELECT count(*), {_ex('graph_id')} FROM graphs WHERE is_repository AND org_id IS NOT NULL",
        edge_case="E8",
    )
    checks.check(
        "subgraphs_outside_parent_org",
        "subgraphs are in their parent's org",
        f"SELECT count(*), {_ex('s.graph_id')} FROM graphs s JOIN graphs p ON p.graph_id = s.parent_graph_id "
        "WHERE s.is_subgraph AND NOT p.is_repository AND s.org_id IS DISTINCT FROM p.org_id",
        edge_case="E2",
    )
    checks.check(
        "graphs_in_unrelated_org",
        "each graph's org is the personal org of a user tied to it in the legacy data, or the operator's choice",
        f"""
        WITH ties AS (
            SELECT resource_id AS graph_id, billing_customer_user_id AS user_id FROM billing_subscriptions
            WHERE resource_type = 'graph' AND resource_id IS NOT NULL
          UNION SELECT graph_id, user_id FROM graph_credits
          UNION SELECT graph_id, billing_admin_id FROM graph_credits
          UNION SELECT graph_id, graph_metadata ->> 'created_by' FROM graphs
                WHERE jsonb_typeof(graph_metadata) = 'object' AND graph_metadata ->> 'created_by' IS NOT NULL
          UNION SELECT graph_id, user_id FROM graph_users
        )
        SELECT count(*), {_ex("g.graph_id")} FROM graphs g
        JOIN orgs o ON o.id = g.org_id
        LEFT JOIN graphs p ON p.graph_id = g.parent_graph_id
        WHERE NOT g.is_repository
          AND p.org_id IS DISTINCT FROM g.org_id
          AND NOT EXISTS (SELECT 1 FROM ties t WHERE t.graph_id = g.graph_id AND t.user_id = o.personal_user_id)
          AND NOT EXISTS (SELECT 1 FROM graph_ownership_conflicts c WHERE c.graph_id = g.graph_id
                          AND c.chosen_source = 'operator')
        """,
        edge_case="E1",
    )
    if has_snapshot:
        checks.check(
            "legacy_grants_missing",
            "every legacy user_graphs row is in graph_users (same id, user, graph, role)",
            f"SELECT count(*), {_ex('s.id')} FROM {snapshot.MEMBERSHIPS_TABLE} s WHERE NOT EXISTS ("
            "SELECT 1 FROM graph_users m WHERE m.id = s.id AND m.user_id = s.user_id AND m.graph_id = s.graph_id "
            "AND m.role = s.role)",
        )
    conflicts = int(checks.conn.execute(sa.text("SELECT count(*) FROM graph_ownership_conflicts")).scalar_one())
    if conflicts:
        checks.info(
            "graph_ownership_conflicts",
            "graphs whose ownership needed a rule (disagreeing signals, member-only, operator-assigned orphans): "
            "review graph_ownership_conflicts",
            conflicts,
            edge_case="E1",
        )


def _billing(checks: _Checks) -> None:
    for table_name, user_column in (
        ("billing_customers", "user_id"),
        ("billing_subscriptions", "billing_customer_user_id"),
        ("billing_invoices", "billing_customer_user_id"),
        ("billing_audit_logs", "billing_customer_user_id"),
    ):
        key = "user_id" if table_name == "billing_customers" else "id"
        checks.check(
            f"{table_name}_wrong_org",
            f"every {table_name} row is in the personal org of its legacy payer ({user_column})",
            f"SELECT count(*), {_ex('t.' + key)} FROM {table_name} t "
            f"LEFT JOIN orgs o ON o.personal_user_id = t.{user_column} AND o.org_type = 'personal' "
            f"WHERE t.{user_column} IS NOT NULL AND t.org_id IS DISTINCT FROM o.id",
        )
    checks.check(
        "line_items_org_mismatch",
        "invoice line items: the invoice and the subscription are in the same org",
        f"SELECT count(*), {_ex('li.id')} FROM billing_invoice_line_items li "
        "JOIN billing_invoices i ON i.id = li.invoice_id JOIN billing_subscriptions s ON s.id = li.subscription_id "
        "WHERE i.org_id <> s.org_id",
        severity="warning",
    )


def _credits(checks: _Checks, has_snapshot: bool) -> None:
    checks.check(
        "ledger_sum_differs_from_balance",
        "sum(ledger) == current_balance for every credit pool",
        f"SELECT count(*), {_ex('gc.graph_id')} FROM graph_credits gc LEFT JOIN (SELECT graph_credits_id, "
        "sum(amount) AS total FROM graph_credit_transactions GROUP BY 1) t ON t.graph_credits_id = gc.id "
        "WHERE gc.current_balance <> COALESCE(t.total, 0)",
    )
    if not has_snapshot:
        return
    checks.check(
        "credit_pools_missing",
        "every legacy credit pool still exists",
        f"SELECT count(*), {_ex('s.graph_credits_id')} FROM {snapshot.CREDITS_TABLE} s "
        "WHERE NOT EXISTS (SELECT 1 FROM graph_credits gc WHERE gc.id = s.graph_credits_id)",
    )
    checks.check(
        "credit_balances_changed",
        "every credit pool's balance is unchanged (pools cleared on request excluded)",
        f"SELECT count(*), {_ex('s.graph_id')} FROM {snapshot.CREDITS_TABLE} s "
        "JOIN graph_credits gc ON gc.id = s.graph_credits_id WHERE gc.current_balance <> s.current_balance "
        "AND NOT EXISTS (SELECT 1 FROM graph_credit_transactions t "
        "WHERE t.idempotency_key = 'legacy_negative_cleared_' || s.graph_credits_id)",
    )
    checks.check(
        "opening_adjustments_wrong",
        "each legacy pool whose balance differed from its ledger got exactly one opening adjustment closing the gap",
        f"SELECT count(*), {_ex('s.graph_id')} FROM {snapshot.CREDITS_TABLE} s "
        "LEFT JOIN graph_credit_transactions t ON t.idempotency_key = 'legacy_opening_' || s.graph_credits_id "
        "WHERE (s.current_balance <> s.ledger_sum AND (t.id IS NULL OR t.amount <> s.current_balance - s.ledger_sum "
        "OR t.transaction_type <> 'adjustment')) OR (s.current_balance = s.ledger_sum AND t.id IS NOT NULL)",
    )
    opened = int(
        checks.conn.execute(
            sa.text(
                "SELECT count(*) FROM graph_credit_transactions WHERE starts_with(idempotency_key, 'legacy_opening_')"
            )
        ).scalar_one()
    )
    if opened:
        checks.info(
            "opening_adjustments",
            "credit pools given a 'legacy opening balance' adjustment (balance unchanged, ledger now sums to it)",
            opened,
        )


def run(conn: sa.Connection, *, database: str = "") -> VerifyReport:
    started = time.perf_counter()
    report = VerifyReport(database=database, revision=None, head=checksums.head())
    with conn.begin():
        conn.execute(sa.text("SET TRANSACTION READ ONLY"))
        conn.execute(sa.text("SET LOCAL statement_timeout = 0"))
        if conn.execute(sa.text("SELECT to_regclass('public.alembic_version')")).scalar() is None:
            report.error = "no alembic_version: run `robosystems migrate upgrade` first"
            return report
        report.revision = conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar()
        if report.revision != report.head:
            report.error = (
                f"the database is at {report.revision}, not at head {report.head}: verification checks the upgraded "
                "schema; finish `robosystems migrate upgrade` first"
            )
            return report
        checks = _Checks(conn, report)
        taken = snapshot.load(conn)
        if taken is None:
            report.findings.append(
                Finding(
                    "no_snapshot",
                    "warning",
                    "no pre-upgrade snapshot (fresh database, or discarded): only the invariants are checked",
                    0,
                )
            )
        else:
            report.snapshot_revision = taken.revision
            report.snapshot_taken_at = taken.taken_at.isoformat()
            _compare_snapshot(checks, taken, report.revision)
        _identity(checks)
        _graphs(checks, taken is not None)
        _billing(checks)
        _credits(checks, taken is not None)
        enum_left = conn.execute(
            sa.text("SELECT count(*) FROM pg_type WHERE typname = 'subscriptionstatus'")
        ).scalar_one()
        if enum_left:
            checks.info(
                "orphan_enum_subscriptionstatus",
                "the unused legacy enum type subscriptionstatus is still there",
                1,
                edge_case="E11",
            )
    report.seconds = time.perf_counter() - started
    return report


def run_url(url: str) -> VerifyReport:
    from robosystems.db import sync_url

    engine = sa.create_engine(sync_url(url), poolclass=NullPool)
    parsed = make_url(sync_url(url))
    name = f"{parsed.database} on {parsed.host or 'local socket'}:{parsed.port or 5432}"
    try:
        with engine.connect() as conn:
            return run(conn, database=name)
    except sa.exc.SQLAlchemyError as exc:
        report = VerifyReport(database=name, revision=None, head=checksums.head())
        report.error = f"{type(exc).__name__}: {str(exc).splitlines()[0]}"
        return report
    finally:
        engine.dispose()


def discard_snapshot_url(url: str) -> None:
    from robosystems.db import sync_url

    engine = sa.create_engine(sync_url(url), poolclass=NullPool)
    try:
        with engine.begin() as conn:
            if snapshot.exists(conn):
                snapshot.discard(conn)
    finally:
        engine.dispose()
