"""Celery tasks of the webhook inbox (found by autodiscovery).  Each is a thin wrapper around one service
function, which is also what the in-process runner executes: one code path."""

from __future__ import annotations

from robosystems.webhooks import reconcile, service
from robosystems.worker.celery_app import task
from robosystems.worker.context import get_context


@task(service.PROCESS_EVENT_TASK, ignore_result=True)
def process_event(event_id: str) -> str:
    """Apply one stored webhook event (idempotent; retried with backoff via RetryLater)."""
    return service.process_event(get_context(), event_id)


@task("robosystems.webhooks.sweep_stale_events", ignore_result=True, acks_late=False)
def sweep_stale_events() -> int:
    return service.sweep_stale(get_context())


@task("robosystems.webhooks.prune_events", ignore_result=True, acks_late=False)
def prune_events() -> int:
    return service.prune(get_context())


@task("robosystems.webhooks.reconcile_subscriptions", ignore_result=True, acks_late=False)
def reconcile_subscriptions() -> dict[str, int]:
    return reconcile.reconcile(get_context())
