"""Periodic work, by task name (never by import): used by ``robosystems beat`` and, without a
broker, by the in-process runner in ``serve``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from robosystems.config import Settings

DRAIN_OUTBOX = "robosystems.worker.drain_outbox"


@dataclass(frozen=True)
class ScheduleEntry:
    name: str
    task: str
    every_seconds: float
    args: tuple[Any, ...] = ()


def entries(settings: Settings) -> list[ScheduleEntry]:
    return [
        ScheduleEntry("drain-task-outbox", DRAIN_OUTBOX, settings.outbox_poll_interval_seconds),
        ScheduleEntry("webhooks-sweep-stale", "robosystems.webhooks.sweep_stale_events", 60.0),
        ScheduleEntry("webhooks-prune", "robosystems.webhooks.prune_events", 3600.0),
        ScheduleEntry(
            "billing-reconcile-subscriptions",
            "robosystems.webhooks.reconcile_subscriptions",
            float(settings.webhook_reconcile_interval_seconds),
        ),
        # graphs / org maintenance (robosystems/graphs/tasks.py): each idempotent, safe to run twice
        ScheduleEntry("graphs-resume-provisioning", "robosystems.graphs.resume_provisioning", 300.0),
        ScheduleEntry(
            "graphs-allocate-credits",
            "robosystems.graphs.allocate_monthly_credits",
            settings.graph_maintenance_interval_seconds,
        ),
        # the local payment provider's clock (renewals, scheduled plan changes); a no-op with Stripe
        ScheduleEntry(
            "billing-local-renewals", "robosystems.billing.local_renewals", settings.local_renewal_interval_seconds
        ),
        ScheduleEntry("graphs-storage-snapshots", "robosystems.graphs.snapshot_storage", 3600.0),
        ScheduleEntry(
            "graphs-remove-expired",
            "robosystems.graphs.remove_expired_graphs",
            settings.graph_maintenance_interval_seconds,
        ),
        ScheduleEntry(
            "orgs-expire-invitations",
            "robosystems.graphs.expire_invitations",
            settings.graph_maintenance_interval_seconds,
        ),
        ScheduleEntry(
            "orgs-purge-deleted", "robosystems.graphs.purge_deleted_orgs", settings.graph_maintenance_interval_seconds
        ),
        # outbound webhooks (robosystems/outbound/tasks.py): due retries, retention, past-due graphs turning read-only
        ScheduleEntry(
            "outbound-deliver", "robosystems.outbound.deliver", settings.outbound_webhooks_poll_interval_seconds
        ),
        ScheduleEntry("outbound-prune", "robosystems.outbound.prune_events", 3600.0),
        ScheduleEntry(
            "outbound-past-due-read-only",
            "robosystems.outbound.past_due_read_only",
            settings.graph_maintenance_interval_seconds,
        ),
    ]


def beat_schedule(settings: Settings) -> dict[str, dict[str, Any]]:
    """Celery ``beat_schedule``: each run expires when the next one is due (no pile-up while workers are down)."""
    return {
        e.name: {"task": e.task, "schedule": e.every_seconds, "args": e.args, "options": {"expires": e.every_seconds}}
        for e in entries(settings)
    }
