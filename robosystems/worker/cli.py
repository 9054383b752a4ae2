"""``robosystems worker`` and ``robosystems beat`` (registered on the main typer app by :func:`register`)."""

from __future__ import annotations

import os
from typing import Annotated

import typer

from robosystems.config import ConfigError, Settings, get_settings


def _fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code=2)


def _relay_in_this_worker(settings: Settings) -> None:
    """OUTBOX_RELAY=worker: run the outbox relay (LISTEN/NOTIFY) in the worker's main process while it runs."""
    from celery import signals

    from robosystems.worker.inprocess import BackgroundWorker, start_worker_relay

    running: list[BackgroundWorker] = []

    def started(**_: object) -> None:
        relay = start_worker_relay(settings)
        if relay is not None:
            running.append(relay)

    def stopping(**_: object) -> None:
        while running:
            running.pop().stop()

    signals.worker_ready.connect(started, weak=False)
    signals.worker_shutdown.connect(stopping, weak=False)


def _prompt_acks_with_threads_pool() -> None:
    """``--pool threads``: tick the consumer's event loop every 50 ms.

    With the threads pool a finished task's late ack is only flushed when the consumer's event loop next wakes,
    and with nothing else to do it sleeps on the broker socket for seconds; with prefetch 1 the next message is
    not fetched before that ack, so a burst crawled at ~2.6 tasks/s (bench/webhooks.py; celery/celery#6941).
    A periodic no-op timer bounds the wait."""
    from celery import signals

    def started(sender: object = None, **_: object) -> None:
        timer = getattr(sender, "timer", None)
        if timer is not None:
            timer.call_repeatedly(0.05, lambda: None)

    signals.worker_ready.connect(started, weak=False)


def register(app: typer.Typer) -> None:
    @app.command()
    def worker(
        concurrency: Annotated[int, typer.Option(help="Worker processes/threads")] = 2,
        pool: Annotated[
            str, typer.Option(help="prefork (recommended) | solo | threads")
        ] = "prefork",
        loglevel: Annotated[str, typer.Option(help="Log level")] = "INFO",
    ) -> None:
        """Run a Celery worker (needs CELERY_BROKER_URL or REDIS_URL)."""
        try:
            settings = get_settings()
        except ConfigError as exc:
            _fail(str(exc))
            return
        from robosystems.db import resolve_database_url
        from robosystems.observability import configure_logging
        from robosystems.worker.celery_app import broker_url, celery_app

        if not broker_url(settings):
            _fail("no broker: set CELERY_BROKER_URL or REDIS_URL (without one, `robosystems serve` runs tasks itself)")
        configure_logging(settings.log_level, settings.log_json)
        resolve_database_url(settings)
        if settings.worker_nice > 0 and hasattr(os, "nice"):
            os.nice(settings.worker_nice)  # inherited by the pool's children: on a shared host the API goes first
        _relay_in_this_worker(settings)
        if pool == "threads":
            _prompt_acks_with_threads_pool()
        celery_app.worker_main(
            [
                "worker",
                f"--loglevel={loglevel}",
                f"--concurrency={concurrency}",
                f"--pool={pool}",
                f"--queues={settings.celery_queue}",
                "--without-gossip",
                "--without-mingle",
            ]
        )

    @app.command()
    def beat(loglevel: Annotated[str, typer.Option(help="Log level")] = "INFO") -> None:
        """Run the Celery beat scheduler (outbox relay, sweeps, pruning, reconciliation)."""
        try:
            settings = get_settings()
        except ConfigError as exc:
            _fail(str(exc))
            return
        from robosystems.observability import configure_logging
        from robosystems.worker.celery_app import broker_url, celery_app

        if not broker_url(settings):
            _fail("no broker: set CELERY_BROKER_URL or REDIS_URL (without one, `robosystems serve` schedules itself)")
        configure_logging(settings.log_level, settings.log_json)
        settings.robosystems_data_dir.mkdir(parents=True, exist_ok=True)
        schedule = settings.robosystems_data_dir / "celerybeat-schedule"
        celery_app.start(["beat", f"--loglevel={loglevel}", f"--schedule={schedule}"])
