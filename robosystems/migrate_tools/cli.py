"""``robosystems migrate preflight | verify | snapshot`` (registered on the ``migrate`` Typer app)."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from robosystems.migrate_tools.report import Finding

DatabaseUrl = Annotated[
    str | None, typer.Option("--database-url", help="Database to inspect (default: the DATABASE_URL setting)")
]
JsonOutput = Annotated[bool, typer.Option("--json", help="Print the report as JSON")]


def _url(database_url: str | None) -> str:
    if database_url:
        return database_url
    from robosystems.db import resolve_database_url

    return resolve_database_url()


def db_error_hint(exc: BaseException) -> str | None:
    """Operator guidance for the errors a bounded migration raises on purpose (lock/statement timeouts)."""
    orig = getattr(exc, "orig", None)
    sqlstate = getattr(orig, "sqlstate", None)
    if sqlstate == "55P03":
        return (
            "the migration waited longer than MIGRATION_LOCK_TIMEOUT for a table lock and stopped; the revision was "
            "rolled back (nothing of it was kept). Another session holds a lock: find it with\n"
            "  SELECT pid, application_name, state, query FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid();\n"
            "stop the application/workers (or pg_terminate_backend(pid)), then rerun `robosystems migrate upgrade`"
        )
    if sqlstate == "57014":
        return (
            "a migration statement ran longer than MIGRATION_STATEMENT_TIMEOUT and was cancelled; the revision was "
            "rolled back. Raise MIGRATION_STATEMENT_TIMEOUT (e.g. 30min) and rerun `robosystems migrate upgrade`"
        )
    return None


def register(migrate_app: typer.Typer) -> None:
    @migrate_app.command("preflight")
    def migrate_preflight(
        database_url: DatabaseUrl = None,
        json_output: JsonOutput = False,
        orphan_graphs_owner: Annotated[
            str | None,
            typer.Option(help="User id whose personal org takes graphs with no owner signal (also for upgrade)"),
        ] = None,
        clamp_negative_credit_balances: Annotated[
            bool, typer.Option(help="Negative credit pools will be cleared to 0 (also pass it to upgrade)")
        ] = False,
    ) -> None:
        """Read-only report on a legacy database before the upgrade. Exit 0: the upgrade can run unattended;
        1: blockers; 2: could not run."""
        from robosystems.migrate_tools import preflight

        report = preflight.run_url(
            _url(database_url),
            preflight.Options(
                orphan_graphs_owner=orphan_graphs_owner,
                clamp_negative_credit_balances=clamp_negative_credit_balances,
            ),
        )
        typer.echo(json.dumps(report.as_dict(), indent=2, default=str) if json_output else report.render_text())
        raise typer.Exit(code=report.exit_code)

    @migrate_app.command("verify")
    def migrate_verify(
        database_url: DatabaseUrl = None,
        json_output: JsonOutput = False,
        discard_snapshot: Annotated[
            bool, typer.Option(help="After a CLEAN result, empty the migration_snapshot* tables")
        ] = False,
    ) -> None:
        """After the upgrade: compare with the pre-upgrade snapshot and check the invariants. Exit 0: clean;
        1: a check failed; 2: could not run."""
        from robosystems.migrate_tools import verify

        url = _url(database_url)
        report = verify.run_url(url)
        if discard_snapshot and report.ok:
            verify.discard_snapshot_url(url)
            report.findings.append(Finding("snapshot_discarded", "info", "snapshot rows discarded", 0))
        typer.echo(json.dumps(report.as_dict(), indent=2, default=str) if json_output else report.render_text())
        raise typer.Exit(code=report.exit_code)

    @migrate_app.command("snapshot")
    def migrate_snapshot(database_url: DatabaseUrl = None) -> None:
        """Record the pre-upgrade snapshot again from the data as it stands (only between a1b2c3d4e5f6 and head:
        after an interrupted upgrade whose blocker you fixed by changing legacy data)."""
        from robosystems.migrate_tools import snapshot

        try:
            taken = snapshot.record_url(_url(database_url))
        except RuntimeError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(code=2) from exc
        typer.echo(
            f"snapshot recorded from the schema of {taken.revision}: "
            + ", ".join(f"{name}={count}" for name, (count, _) in sorted(taken.tables.items()))
        )
