"""Scheduled jobs (beat / the in-process runner).  Each one is idempotent and safe to run twice at once:

* :func:`allocate_monthly_credits` — the current period's credits of every active graph subscription, keyed so
  a period is granted once: by the paid invoice (a safety net behind the ``invoice.paid`` webhook), or for a
  self-billed subscription (billing disabled) by ``period:<subscription>:<n>``, the n-th month since it started;
* :func:`snapshot_storage` — one ``storage_snapshot`` usage event per graph and hour (not one per member:
  legacy E7), serialized by an advisory lock;
* :func:`remove_expired_graphs` — databases (files and rows) of graphs whose subscription ended more than
  ``GRAPH_RETENTION_DAYS`` ago (``FOR UPDATE SKIP LOCKED``), plus orphaned graph directories;
* :func:`resume_provisioning` — provisioning that stopped (lost message, crashed in-process run) and
  compensations still pending are enqueued again (the task itself is idempotent);
* :func:`expire_invitations` / :func:`purge_deleted_orgs` — the org maintenance functions of
  :mod:`robosystems.orgs`, run on a short-lived async engine.
"""

from __future__ import annotations

import asyncio
import calendar
import logging
import re
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncSession

from robosystems.billing import credits, entitlements, provider_sync
from robosystems.billing.audit import record_billing_event
from robosystems.billing.plans import get_catalog
from robosystems.db import after_commit, make_async_engine, make_async_sessionmaker, sync_unit_of_work
from robosystems.graphs import lifecycle
from robosystems.graphs.provisioning import (
    PROVISION_GRAPH_TASK,
    backend_for,
    graph_id_for,
    period_grant_id,
    self_billed,
)
from robosystems.models import BillingInvoice, BillingSubscription
from robosystems.outbound import events as outbound
from robosystems.worker import outbox
from robosystems.worker.context import WorkerContext

log = logging.getLogger("robosystems.graphs.jobs")

_GIB = 1024**3
GRAPH_DIR_RE = re.compile(r"^kg[0-9a-f]{16,}$")
ORPHAN_MIN_AGE_SECONDS = 3600
BATCH = 500
INVOICE_GRANT_WINDOW_DAYS = 40
T = TypeVar("T")


def _now() -> datetime:
    return datetime.now(UTC)


def months_between(start: datetime, now: datetime) -> int:
    """Whole calendar months from ``start`` to ``now`` (the day clamped like Stripe's periods): the index of the
    period ``now`` falls in."""
    start, now = start.astimezone(UTC), now.astimezone(UTC)
    months = (now.year - start.year) * 12 + (now.month - start.month)
    if months <= 0:
        return 0
    year, month = divmod(start.month - 1 + months, 12)
    day = min(start.day, calendar.monthrange(start.year + year, month + 1)[1])
    anniversary = start.replace(year=start.year + year, month=month + 1, day=day)
    return months if now >= anniversary else months - 1


# --- credits ---------------------------------------------------------------------------------------------------


def allocate_monthly_credits(ctx: WorkerContext, *, now: datetime | None = None) -> dict[str, int]:
    now = now or _now()
    catalog = get_catalog(ctx.settings.billing_plans_file)
    counts = {"period_grants": 0, "invoice_grants": 0, "errors": 0}
    with ctx.maker() as session:
        live = (
            session.execute(
                select(BillingSubscription.id)
                .where(
                    BillingSubscription.resource_type == "graph",
                    BillingSubscription.status.in_(("active", "past_due")),
                    BillingSubscription.resource_id.is_not(None),
                    BillingSubscription.started_at.is_not(None),
                )
                .order_by(BillingSubscription.id)
            )
            .scalars()
            .all()
        )
        missing_invoices = session.execute(
            text(
                """
                SELECT i.id AS invoice_id, s.id AS subscription_id
                FROM billing_invoices i
                JOIN billing_subscriptions s ON s.id = i.subscription_id
                JOIN graphs g ON g.graph_id = s.resource_id
                WHERE i.status = 'paid' AND s.resource_type = 'graph'
                  AND i.billing_reason IS DISTINCT FROM 'subscription_update'
                  AND s.status IN ('active', 'past_due', 'unpaid') AND s.provisioning_attempt > 0
                  AND i.created_at >= :since
                  AND NOT EXISTS (SELECT 1 FROM graph_credit_transactions t
                                   WHERE t.idempotency_key IN ('invoice:' || i.id, 'expire:invoice:' || i.id))
                ORDER BY i.created_at
                """
            ),
            {"since": now - timedelta(days=INVOICE_GRANT_WINDOW_DAYS)},
        ).all()
    for sub_id in live:
        try:
            with sync_unit_of_work(ctx.maker) as session:
                sub = session.get(BillingSubscription, sub_id)
                if sub is None or not self_billed(sub) or sub.started_at is None or sub.resource_id is None:
                    continue
                plan = lifecycle.plan_for(catalog, sub.plan_name, None)
                if credits.balance(session, sub.resource_id) is None:
                    continue
                monthly = entitlements.graph_entitlements(
                    sub.resource_id, plan, entitlements.org_overrides_sync(session, sub.org_id)
                ).value("monthly_credits")
                index = months_between(sub.started_at, now)
                if credits.reset_allocation(  # no rollover: each period resets the allocation
                    session,
                    sub.resource_id,
                    f"invoice:{period_grant_id(sub.id, index)}",
                    monthly,
                    description=f"Monthly credits ({plan.name}), period {index + 1}",
                ):
                    counts["period_grants"] += 1
        except Exception:  # noqa: BLE001 - one subscription must not stop the others
            counts["errors"] += 1
            log.exception("credit allocation for %s failed", sub_id)
    for row in missing_invoices:
        try:
            with sync_unit_of_work(ctx.maker) as session:
                sub = session.execute(
                    select(BillingSubscription).where(BillingSubscription.id == row.subscription_id).with_for_update()
                ).scalar_one()
                invoice = session.get(BillingInvoice, row.invoice_id)
                done = invoice is not None and provider_sync.reset_credits(session, catalog, sub, invoice)
                if done == "credits_reset":
                    counts["invoice_grants"] += 1
        except Exception:  # noqa: BLE001
            counts["errors"] += 1
            log.exception("credit allocation for invoice %s failed", row.invoice_id)
    if counts["period_grants"] or counts["invoice_grants"]:
        log.info("monthly credits: %s", counts)
    return counts


# --- storage ---------------------------------------------------------------------------------------------------


def snapshot_storage(ctx: WorkerContext, *, now: datetime | None = None) -> int:
    """One storage snapshot per graph and hour; returns how many were written."""
    now = (now or _now()).astimezone(UTC)
    backend = backend_for(ctx.settings)
    catalog = get_catalog(ctx.settings.billing_plans_file)
    with ctx.maker() as session:
        graphs = session.execute(
            text(
                """
                SELECT g.graph_id, g.graph_tier, gc.billing_admin_id,
                       (SELECT s.plan_name FROM billing_subscriptions s
                         WHERE s.resource_type = 'graph' AND s.resource_id = g.graph_id
                         ORDER BY s.created_at DESC LIMIT 1) AS plan_name
                FROM graphs g LEFT JOIN graph_credits gc ON gc.graph_id = g.graph_id
                WHERE NOT g.is_repository
                ORDER BY g.graph_id
                """
            )
        ).all()
    sizes: dict[str, int] = {}
    for g in graphs:  # filesystem walk outside any transaction
        if backend.exists(g.graph_id):
            sizes[g.graph_id] = backend.size_bytes(g.graph_id)
    written = 0
    naive = now.replace(tzinfo=None)
    with sync_unit_of_work(ctx.maker) as session:
        session.execute(text("SELECT pg_advisory_xact_lock(hashtextextended('graphs.snapshot_storage', 0))"))
        done = set(
            session.execute(
                text(
                    "SELECT DISTINCT graph_id FROM graph_usage WHERE event_type = 'storage_snapshot' "
                    "AND billing_year = :y AND billing_month = :m AND billing_day = :d AND billing_hour = :h"
                ),
                {"y": now.year, "m": now.month, "d": now.day, "h": now.hour},
            ).scalars()
        )
        rows = []
        for g in graphs:
            if g.graph_id not in sizes or g.graph_id in done:
                continue
            size = sizes[g.graph_id]
            plan = lifecycle.plan_for(catalog, g.plan_name, g.graph_tier)
            rows.append(
                {
                    "id": f"usg_{_ulid()}",
                    "user_id": g.billing_admin_id or "system",
                    "graph_id": g.graph_id,
                    "event_type": "storage_snapshot",
                    "graph_tier": plan.name,
                    "storage_bytes": float(size),
                    "storage_gb": size / _GIB,
                    "graphs_storage_gb": size / _GIB,
                    "recorded_at": naive,
                    "billing_year": now.year,
                    "billing_month": now.month,
                    "billing_day": now.day,
                    "billing_hour": now.hour,
                }
            )
        if rows:
            session.execute(
                text(
                    "INSERT INTO graph_usage (id, user_id, graph_id, event_type, graph_tier, storage_bytes, storage_gb,"
                    " graphs_storage_gb, recorded_at, billing_year, billing_month, billing_day, billing_hour) VALUES "
                    "(:id, :user_id, :graph_id, :event_type, :graph_tier, :storage_bytes, :storage_gb,"
                    " :graphs_storage_gb, :recorded_at, :billing_year, :billing_month, :billing_day, :billing_hour)"
                ),
                rows,
            )
            written = len(rows)
    return written


def _ulid() -> str:
    from ulid import ULID

    return str(ULID())


# --- retention -------------------------------------------------------------------------------------------------

_ENDED_CANDIDATES = text(
    """
    SELECT g.graph_id FROM graphs g
    WHERE NOT g.is_repository AND NOT g.is_subgraph
      AND EXISTS (SELECT 1 FROM billing_subscriptions s WHERE s.resource_type = 'graph'
                   AND s.resource_id = g.graph_id AND s.status IN ('canceled', 'expired', 'refunded'))
      AND NOT EXISTS (SELECT 1 FROM billing_subscriptions s WHERE s.resource_type = 'graph'
                   AND s.resource_id = g.graph_id
                   AND s.status IN ('pending_payment', 'provisioning', 'active', 'past_due', 'unpaid', 'paused'))
    ORDER BY g.graph_id
    LIMIT :batch
    FOR UPDATE OF g SKIP LOCKED
    """
)


def delete_graph_rows(session: Any, graph_id: str) -> list[str]:
    """Delete a graph, its subgraphs and everything keyed by them (grants, selections, credit pool + ledger);
    usage events stay as history.  Returns the graph ids deleted (their files are the caller's)."""
    ids = [graph_id] + list(
        session.execute(text("SELECT graph_id FROM graphs WHERE parent_graph_id = :g"), {"g": graph_id}).scalars()
    )
    params = {"ids": ids}
    session.execute(
        text(
            "DELETE FROM graph_credit_transactions WHERE graph_credits_id IN "
            "(SELECT id FROM graph_credits WHERE graph_id = ANY(:ids))"
        ),
        params,
    )
    for statement in (
        "DELETE FROM graph_credits WHERE graph_id = ANY(:ids)",
        "DELETE FROM graph_users WHERE graph_id = ANY(:ids)",
        "DELETE FROM graph_selections WHERE graph_id = ANY(:ids)",
        "DELETE FROM graphs WHERE graph_id = ANY(:ids) AND is_subgraph",
        "DELETE FROM graphs WHERE graph_id = ANY(:ids)",
    ):
        session.execute(text(statement), params)
    return ids


def remove_expired_graphs(ctx: WorkerContext, *, now: datetime | None = None) -> dict[str, int]:
    now = now or _now()
    settings = ctx.settings
    backend = backend_for(settings)
    catalog = get_catalog(settings.billing_plans_file)
    removed: list[str] = []
    counts = {"removed": 0, "kept": 0, "orphans": 0}
    with sync_unit_of_work(ctx.maker) as session:
        for graph_id in session.execute(_ENDED_CANDIDATES, {"batch": BATCH}).scalars().all():
            row = session.execute(lifecycle.GRAPH_STATE_SQL, {"graph_id": graph_id}).one()
            state = lifecycle.state_from_row(row, catalog=catalog, settings=settings, now=now)
            due = state.lifecycle.removal_due_at
            if due is None or due > now:
                counts["kept"] += 1
                continue
            with session.begin_nested():
                ids = delete_graph_rows(session, graph_id)
                record_billing_event(
                    session,
                    "graph_removed",
                    org_id=state.org_id,
                    subscription_id=state.subscription_id,
                    reason=f"retention of {settings.graph_retention_days} days after the subscription ended",
                    description=f"Graph {graph_id} removed",
                    data={"graph_id": graph_id, "graph_ids": ids, "subscription_status": state.subscription_status},
                )
                outbound.graph_deleted(session, state.org_id, graph_id, state.subscription_id)
            removed.extend(ids)

        def remove_files() -> None:
            for graph_id in removed:
                backend.remove(graph_id)

        after_commit(session, remove_files)
    counts["removed"] = len(removed)
    counts["orphans"] = _remove_orphans(ctx)
    if counts["removed"] or counts["orphans"]:
        log.info("graph retention: %s", counts)
    return counts


def _remove_orphans(ctx: WorkerContext) -> int:
    """Graph directories with no graph row and no provisioning in progress (a crash between a removal's commit
    and its file deletion, or a partial provisioning whose failure handling did not finish)."""
    backend = backend_for(ctx.settings)
    root = backend.root
    if not root.is_dir():
        return 0
    cutoff = time.time() - ORPHAN_MIN_AGE_SECONDS
    listed = [p.name for p in root.iterdir() if p.is_dir() and GRAPH_DIR_RE.match(p.name)]
    listed = [name for name in listed if (backend.last_modified(name) or 0) < cutoff]
    if not listed:
        return 0
    with ctx.maker() as session:
        known = set(
            session.execute(text("SELECT graph_id FROM graphs WHERE graph_id = ANY(:ids)"), {"ids": listed}).scalars()
        )
        for sub_id, resource_id in session.execute(
            text("SELECT id, resource_id FROM billing_subscriptions WHERE status = 'provisioning'")
        ).all():
            known.add(resource_id or graph_id_for(sub_id))
    orphans = [name for name in listed if name not in known]
    for name in orphans:
        backend.remove(name)
        log.warning("removed orphaned graph directory %s", name)
    return len(orphans)


# --- provisioning safety net -----------------------------------------------------------------------------------


def resume_provisioning(ctx: WorkerContext) -> dict[str, int]:
    """Re-enqueue provisioning that stopped and compensations still pending (skipping those already queued)."""
    stale = timedelta(seconds=ctx.settings.provisioning_resume_after_seconds)
    with sync_unit_of_work(ctx.maker) as session:
        rows = session.execute(
            text(
                """
                SELECT s.id, s.status FROM billing_subscriptions s
                WHERE ((s.status = 'provisioning'
                        AND COALESCE(s.provisioning_claimed_at, s.updated_at) < now() - :stale)
                    OR (s.status = 'failed' AND s.compensation_status = 'pending' AND s.updated_at < now() - :stale))
                  AND NOT EXISTS (SELECT 1 FROM task_outbox o WHERE o.status = 'pending'
                                   AND o.task_name = :task AND o.args = jsonb_build_array(s.id))
                ORDER BY s.updated_at
                LIMIT :batch
                FOR UPDATE OF s SKIP LOCKED
                """
            ),
            {"stale": stale, "task": PROVISION_GRAPH_TASK, "batch": BATCH},
        ).all()
        for row in rows:
            outbox.enqueue(session, PROVISION_GRAPH_TASK, [row.id])
    counts = {
        "provisioning": sum(1 for r in rows if r.status == "provisioning"),
        "compensation": sum(1 for r in rows if r.status == "failed"),
    }
    if rows:
        log.warning("resumed stalled provisioning: %s", counts)
    return counts


# --- org maintenance (async functions of robosystems.orgs) -----------------------------------------------------


def _run_async(ctx: WorkerContext, fn: Callable[[AsyncSession], Awaitable[T]]) -> T:
    async def main() -> T:
        engine = make_async_engine(ctx.settings)
        try:
            async with make_async_sessionmaker(engine)() as session:
                result = await fn(session)
                await session.commit()
                return result
        finally:
            await engine.dispose()

    return asyncio.run(main())


def expire_invitations(ctx: WorkerContext) -> dict[str, Any]:
    from robosystems.orgs.invitations import cleanup_invitations

    retention = ctx.settings.invitation_retention_days
    return dict(_run_async(ctx, lambda s: cleanup_invitations(s, retention_days=retention)))


def purge_deleted_orgs(ctx: WorkerContext) -> dict[str, Any]:
    from robosystems.orgs.service import purge_deleted_orgs as purge

    grace = ctx.settings.org_deletion_grace_days
    report = _run_async(ctx, lambda s: purge(s, grace_days=grace))
    return {"purged": len(report.purged), "skipped": len(report.skipped)}
