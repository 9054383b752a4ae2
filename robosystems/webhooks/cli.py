"""``robosystems webhooks list | show ID | replay ID | replay-failed`` (the admin API's inbox operations)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, TypeVar

import typer
from sqlalchemy.ext.asyncio import AsyncSession

from robosystems.errors import AppError

app = typer.Typer(help="Stripe webhook inbox: list, inspect and replay events.", no_args_is_help=True)
T = TypeVar("T")


def _run(fn: Callable[[AsyncSession], Awaitable[T]]) -> T:
    from robosystems.config import get_settings
    from robosystems.db import make_async_engine, make_async_sessionmaker

    settings = get_settings()

    async def main() -> T:
        engine = make_async_engine(settings)
        try:
            async with make_async_sessionmaker(engine)() as session, session.begin():
                return await fn(session)
        finally:
            await engine.dispose()

    try:
        return asyncio.run(main())
    except AppError as exc:
        typer.echo(f"error: {exc.detail} ({exc.code})", err=True)
        raise typer.Exit(code=1) from None


def _print(value: Any) -> None:
    typer.echo(json.dumps(value, indent=2, default=str))


@app.command("list")
def list_events(
    status: Annotated[str | None, typer.Option(help="received|processing|processed|failed|ignored")] = None,
    type: Annotated[str | None, typer.Option(help="Event type, e.g. invoice.paid")] = None,  # noqa: A002
    limit: Annotated[int, typer.Option(min=1, max=1000)] = 50,
    offset: Annotated[int, typer.Option(min=0)] = 0,
) -> None:
    """List stored events, newest first."""
    from robosystems.webhooks import service

    result = _run(lambda s: service.list_events(s, status=status, event_type=type, limit=limit, offset=offset))
    for event in result["events"]:
        typer.echo(
            f"{event['id']}  {event['type']:<40} {event['status']:<10} attempts={event['attempts']}"
            + (f"  error={event['last_error']}" if event["last_error"] else "")
        )
    typer.echo(f"total: {result['total']}")


@app.command("show")
def show(event_id: str) -> None:
    """Show one event (with its payload)."""
    from robosystems.webhooks import service

    _print(_run(lambda s: service.get_event(s, event_id)))


@app.command("replay")
def replay(event_id: str) -> None:
    """Process one event again (its attempt budget is reset)."""
    from robosystems.webhooks import service

    _print(_run(lambda s: service.replay_one(s, event_id)))


@app.command("replay-failed")
def replay_failed() -> None:
    """Process every failed event again."""
    from robosystems.webhooks import service

    _print(_run(lambda s: service.replay_failed(s)))
