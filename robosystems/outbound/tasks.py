"""Celery tasks of outbound webhooks (found by autodiscovery; the in-process runner executes the same objects).
The periodic ones are named in :mod:`robosystems.worker.schedule`."""

from __future__ import annotations

from typing import Any

from robosystems.outbound import delivery, jobs
from robosystems.outbound.events import DELIVER_TASK
from robosystems.worker.celery_app import task
from robosystems.worker.context import get_context

PRUNE_TASK = "robosystems.outbound.prune_events"
READ_ONLY_TASK = "robosystems.outbound.past_due_read_only"


@task(DELIVER_TASK, ignore_result=True, acks_late=False)
def deliver() -> dict[str, Any]:
    """Deliver what is due (idempotent: deliveries are leased in the database; a copy finds nothing to do).
    Not acked late: a lost run only delays the deliveries until the periodic run takes them."""
    return delivery.deliver(get_context())


@task(PRUNE_TASK, ignore_result=True, acks_late=False)
def prune_events() -> int:
    return jobs.prune_events(get_context())


@task(READ_ONLY_TASK, ignore_result=True, acks_late=False)
def past_due_read_only() -> int:
    return jobs.past_due_read_only(get_context())
