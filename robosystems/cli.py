"""The ``robosystems`` command: serve | migrate …"""

from __future__ import annotations

import logging
import os
import signal
import sys
from typing import Annotated

import typer

from robosystems.config import ConfigError, get_settings
from robosystems.migrate_tools import cli as migrate_tools_cli
from robosystems.observability import configure_logging
from robosystems.webhooks import cli as webhooks_cli
from robosystems.worker import cli as worker_cli

app = typer.Typer(help="RoboSystems: org-centric identity and billing service.", no_args_is_help=True)
migrate_app = typer.Typer(help="Database migrations (Alembic).", no_args_is_help=True)
app.add_typer(migrate_app, name="migrate")

from robosystems.admin_cli import admin_app  # noqa: E402 - sub-app defined in its own module

app.add_typer(admin_app, name="admin")
migrate_tools_cli.register(migrate_app)  # `migrate preflight | verify | snapshot`
app.add_typer(webhooks_cli.app, name="webhooks")
worker_cli.register(app)  # `robosystems worker` / `robosystems beat`
log = logging.getLogger("robosystems.cli")


def _bootstrap() -> None:
    settings = get_settings()
    configure_logging(settings.log_level, settings.log_json)


def _exit_cleanly_on_sigterm() -> None:
    """SIGTERM ends the process through ``SystemExit`` so ``atexit`` handlers run (the embedded PostgreSQL
    is stopped by one).  uvicorn handles the signal itself while serving and, after its graceful shutdown,
    re-raises it against the handler installed before it: with the default one the process would die
    by the signal and skip ``atexit``, leaving the embedded PostgreSQL running."""

    def handler(signum: int, frame: object) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, handler)


def _fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code=2)


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Bind address (default: HOST setting)")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default: PORT setting)")] = None,
    workers: Annotated[int | None, typer.Option(help="uvicorn worker processes")] = None,
    migrate: Annotated[bool, typer.Option("--migrate/--no-migrate", help="Apply migrations first")] = True,
) -> None:
    """Start the API (embedded PostgreSQL when DATABASE_URL is unset)."""
    try:
        _bootstrap()
        settings = get_settings()
    except ConfigError as exc:
        _fail(str(exc))
        return
    import uvicorn

    from robosystems import migrations
    from robosystems.db import resolve_database_url

    settings.host = host or settings.host
    settings.port = port or settings.port
    os.environ.setdefault("HOST", settings.host)
    os.environ["PORT"] = str(settings.port)
    os.environ["JWT_SECRET_KEY"] = settings.jwt_secret_key
    url = resolve_database_url(settings)
    if migrate:
        log.info("applying migrations")
        migrations.upgrade("head", url)
    log.info("serving on http://%s:%s", settings.host, settings.port)
    _exit_cleanly_on_sigterm()
    uvicorn.run(
        "robosystems.app:create_app",
        factory=True,
        host=settings.host,
        port=settings.port,
        workers=workers or settings.workers,
        log_config=None,
        access_log=False,
        loop="uvloop",
        http="httptools",
    )


@migrate_app.command("upgrade")
def migrate_upgrade(
    revision: Annotated[str, typer.Argument()] = "head",
    orphan_graphs_owner: Annotated[
        str | None, typer.Option(help="User (or org) id that takes the graphs with no owner signal at all")
    ] = None,
    clamp_negative_credit_balances: Annotated[
        bool, typer.Option(help="Clear negative credit pools to 0 (one audited adjustment row each)")
    ] = False,
) -> None:
    """Upgrade the database to REVISION (default head)."""
    _bootstrap()
    from sqlalchemy.exc import DBAPIError

    from robosystems import migrations

    x_args = [f"orphan_graphs_owner={orphan_graphs_owner}"] if orphan_graphs_owner else []
    if clamp_negative_credit_balances:
        x_args.append("clamp_negative_credit_balances=true")
    try:
        migrations.upgrade(revision, x_args=x_args)
    except RuntimeError as exc:
        _fail(str(exc))
    except DBAPIError as exc:
        hint = migrate_tools_cli.db_error_hint(exc)
        if hint is None:
            raise
        _fail(hint)


@migrate_app.command("downgrade")
def migrate_downgrade(
    revision: Annotated[str, typer.Argument()],
    allow_data_loss: Annotated[bool, typer.Option(help="Accept losing data the legacy shape can't hold")] = False,
) -> None:
    """Downgrade the database to REVISION."""
    _bootstrap()
    from robosystems import migrations

    try:
        migrations.downgrade(revision, allow_data_loss=allow_data_loss)
    except RuntimeError as exc:
        _fail(str(exc))


@migrate_app.command("current")
def migrate_current() -> None:
    """Show the database's current revision."""
    _bootstrap()
    from alembic import command
    from robosystems import migrations

    command.current(migrations.alembic_config(), verbose=False)


@migrate_app.command("history")
def migrate_history() -> None:
    """List the migration chain."""
    from alembic import command
    from robosystems import migrations

    command.history(migrations.alembic_config("postgresql://unused@localhost/unused"), verbose=False)


def main() -> None:  # pragma: no cover - console entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
