"""Scheduled outbound-webhook jobs: event retention, and ``graph.read_only`` for graphs whose past-due grace
period just ran out (the only read-only cause that no transaction marks: it is a matter of time)."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import Any, cast

from sqlalchemy import CursorResult, text

from robosystems.db import sync_unit_of_work
from robosystems.graphs import lifecycle
from robosystems.outbound import events
from robosystems.worker.context import WorkerContext

log = logging.getLogger("robosystems.outbound.jobs")

PRUNE_BATCH = 5000

_PRUNE = text(
    "DELETE FROM outbound_events WHERE id IN "
    "(SELECT id FROM outbound_events WHERE created_at < :cutoff ORDER BY created_at LIMIT :batch)"
)
_PAST_DUE = text(
    """
    SELECT s.id, s.org_id, s.resource_id, s.updated_at,
           (SELECT max(a.event_timestamp) FROM billing_audit_logs a
             WHERE a.subscription_id = s.id AND a.event_type = 'subscription_past_due') AS past_due_since
    FROM billing_subscriptions s
    JOIN graphs g ON g.graph_id = s.resource_id
    WHERE s.status = 'past_due' AND s.resource_type = 'graph'
    """
)


def prune_events(ctx: WorkerContext, *, now: datetime | None = None) -> int:
    """Delete events (with their deliveries and attempts) older than OUTBOUND_WEBHOOKS_EVENT_RETENTION_DAYS."""
    cutoff = (now or datetime.now(UTC)) - timedelta(days=ctx.settings.outbound_webhooks_event_retention_days)
    total = 0
    while True:
        with sync_unit_of_work(ctx.maker) as session:
            result = cast(CursorResult[Any], session.execute(_PRUNE, {"cutoff": cutoff, "batch": PRUNE_BATCH}))
            removed = int(result.rowcount or 0)
        total += removed
        if removed < PRUNE_BATCH:
            break
    if total:
        log.info("pruned %s outbound webhook events older than %s", total, cutoff.date())
    return total


def past_due_read_only(ctx: WorkerContext, *, now: datetime | None = None) -> int:
    """``graph.read_only`` (reason ``past_due``) once per past-due episode whose grace period has ended; returns how
    many were new."""
    now = now or datetime.now(UTC)
    emitted = 0
    with sync_unit_of_work(ctx.maker) as session:
        for row in session.execute(_PAST_DUE).all():
            state = lifecycle.evaluate(
                "past_due", settings=ctx.settings, past_due_since=row.past_due_since, updated_at=row.updated_at, now=now
            )
            if state.writable:
                continue
            since = (row.past_due_since or row.updated_at).isoformat()
            if events.graph_read_only(session, row.org_id, row.resource_id, row.id, reason="past_due", since=since):
                emitted += 1
    return emitted
