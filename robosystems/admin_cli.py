"""``robosystems admin …``: operator tasks on orgs and invitations.

Mount with ``app.add_typer(admin_app, name="admin")``.  Each command is one transaction on the
configured database (embedded PostgreSQL when DATABASE_URL is unset) and prints a JSON summary.
The same service functions back the scheduled tasks and the operator API.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, TypeVar

import typer
from sqlalchemy.ext.asyncio import AsyncSession

from robosystems.config import ConfigError, Settings, get_settings
from robosystems.errors import AppError

admin_app = typer.Typer(help="Operator tasks (orgs, invitations).", no_args_is_help=True)

T = TypeVar("T")


def _settings() -> Settings:
    from robosystems.observability import configure_logging

    try:
        settings = get_settings()
    except ConfigError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(code=2) from exc
    configure_logging(settings.log_level, settings.log_json)
    return settings


def _run(settings: Settings, work: Callable[[AsyncSession], Awaitable[T]]) -> T:
    """Run ``work`` in one committed transaction (rolled back on error)."""
    from robosystems.db import make_async_engine, make_async_sessionmaker

    async def main() -> T:
        engine = make_async_engine(settings)
        try:
            maker = make_async_sessionmaker(engine)
            async with maker() as session, session.begin():
                return await work(session)
        finally:
            await engine.dispose()

    try:
        return asyncio.run(main())
    except AppError as exc:
        typer.echo(f"error: {exc.detail} ({exc.code})", err=True)
        raise typer.Exit(code=1) from exc


def _echo(payload: Any) -> None:
    typer.echo(json.dumps(payload, default=str, indent=2))


@admin_app.command("cleanup-invitations")
def cleanup_invitations(
    retention_days: Annotated[
        int | None,
        typer.Option(min=0, help="Keep finished invitations this many days (default INVITATION_RETENTION_DAYS)"),
    ] = None,
) -> None:
    """Mark overdue invitations expired and delete finished ones past the retention period."""
    settings = _settings()
    from robosystems.orgs.invitations import cleanup_invitations as cleanup

    days = settings.invitation_retention_days if retention_days is None else retention_days
    _echo(_run(settings, lambda s: cleanup(s, retention_days=days)))


@admin_app.command("purge-orgs")
def purge_orgs(
    grace_days: Annotated[
        int | None,
        typer.Option(min=0, help="Purge orgs deleted more than this many days ago (default ORG_DELETION_GRACE_DAYS)"),
    ] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only list what would be purged")] = False,
) -> None:
    """Permanently remove orgs soft-deleted longer than the grace period."""
    settings = _settings()
    from robosystems.orgs.service import purge_deleted_orgs

    days = settings.org_deletion_grace_days if grace_days is None else grace_days
    report = _run(settings, lambda s: purge_deleted_orgs(s, grace_days=days, dry_run=dry_run))
    _echo({"dry_run": dry_run, "purged": report.purged, "skipped": report.skipped})


@admin_app.command("list-deleted-orgs")
def list_deleted_orgs(
    limit: Annotated[int, typer.Option(min=1, max=1000)] = 100,
    offset: Annotated[int, typer.Option(min=0)] = 0,
) -> None:
    """Soft-deleted orgs with their restore deadline."""
    settings = _settings()
    from robosystems.orgs.service import list_deleted_orgs as listing

    _echo(_run(settings, lambda s: listing(s, grace_days=settings.org_deletion_grace_days, limit=limit, offset=offset)))


@admin_app.command("restore-org")
def restore_org(
    org_id: Annotated[str, typer.Argument(help="The deleted org's id")],
    reason: Annotated[str, typer.Option(help="Recorded in the org audit log")] = "",
) -> None:
    """Undo a soft delete within ORG_DELETION_GRACE_DAYS."""
    settings = _settings()
    from robosystems.orgs.service import restore_org as restore

    _echo(_run(settings, lambda s: restore(s, org_id, grace_days=settings.org_deletion_grace_days, reason=reason)))
