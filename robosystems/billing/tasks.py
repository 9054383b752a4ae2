"""Celery tasks of the billing feature (found by autodiscovery; periodic ones are named by string in
:mod:`robosystems.worker.schedule`).  Thin wrappers: the work is in the billing modules."""

from __future__ import annotations

from robosystems.billing import checkout, credit_alerts, credits, renewals
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


@task(renewals.LOCAL_RENEWALS_TASK, ignore_result=True, acks_late=False)
def local_renewals() -> dict[str, int]:
    """The local provider's clock: renew subscriptions whose period ended (periodic; no-op with Stripe)."""
    return renewals.run_local_renewals(get_context())


@task(credits.CREDITS_LOW_TASK, ignore_result=True)
def credits_low(graph_id: str, balance: str, threshold: str) -> str:
    """``credits.low``: audit row + mail to the org's owners and admins (enqueued once per crossing)."""
    return credit_alerts.notify_credits_low(get_context(), graph_id, balance, threshold)
