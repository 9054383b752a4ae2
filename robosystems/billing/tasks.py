"""Celery tasks of the billing feature (found by autodiscovery; periodic ones are named by string in
:mod:`robosystems.worker.schedule`).  Thin wrappers: the work is in the billing modules."""

from __future__ import annotations

from robosystems.billing import checkout
from robosystems.db import sync_unit_of_work
from robosystems.worker.celery_app import task
from robosystems.worker.context import get_context

EXPIRE_ABANDONED_CHECKOUTS_TASK = "robosystems.billing.expire_abandoned_checkouts"


@task(EXPIRE_ABANDONED_CHECKOUTS_TASK, ignore_result=True, acks_late=False)
def expire_abandoned_checkouts() -> int:
    """End ``pending_payment`` subscriptions whose checkout session expired (periodic; idempotent)."""
    ctx = get_context()
    with sync_unit_of_work(ctx.maker) as session:
        return checkout.expire_abandoned_checkouts(session)
