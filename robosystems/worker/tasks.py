"""Plumbing tasks: the outbox relay for ``robosystems beat`` + ``robosystems worker``."""

from __future__ import annotations

import threading
from typing import Any

from celery.signals import worker_init, worker_process_init

from robosystems.worker import outbox
from robosystems.worker.celery_app import task
from robosystems.worker.context import get_context
from robosystems.worker.schedule import DRAIN_OUTBOX


@task(DRAIN_OUTBOX, ignore_result=True, acks_late=False)
def drain_outbox() -> int:
    """Publish due outbox rows to the broker (scheduled by beat every OUTBOX_POLL_INTERVAL_SECONDS)."""
    ctx = get_context()
    return outbox.drain(ctx.engine, outbox.CeleryDispatcher(ctx.settings), limit=ctx.settings.outbox_batch_size)


_registered = threading.Lock()
_relay_listener_on = False


def _relay_now() -> None:
    """In a worker, work enqueued by a task is published right after the task's commit."""
    ctx = get_context()
    outbox.drain(ctx.engine, outbox.CeleryDispatcher(ctx.settings), limit=ctx.settings.outbox_batch_size)


def _install_relay_listener(**_: Any) -> None:
    global _relay_listener_on
    with _registered:
        if not _relay_listener_on:
            outbox.add_listener(_relay_now)
            _relay_listener_on = True


worker_init.connect(_install_relay_listener, weak=False)
worker_process_init.connect(_install_relay_listener, weak=False)
