"""Scheduled jobs: each one does its work once, and running it again (or twice at once) changes nothing."""

from __future__ import annotations

import os
import threading
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from sqlalchemy import Engine, text

from robosystems.billing import subscriptions as subs
from robosystems.billing.audit import Actor
from robosystems.graphs import jobs, tasks
from robosystems.graphs.provisioning import PROVISION_GRAPH_TASK, graph_id_for
from robosystems.ids import new_id
from robosystems.worker.celery_app import registered_task_names
from robosystems.worker.context import WorkerContext
from robosystems.worker.schedule import beat_schedule
from tests.graphs_support import (
    GRAPH_ROOT,
    _real_backend,
    row,
    rows,
    seed_org,
    seed_subscription,
    sub_row,
    worker,
)
from tests.helpers import count

__all__ = ["_real_backend", "worker"]  # fixtures


def provisioned(ctx: WorkerContext, engine: Engine, **kwargs: object) -> tuple[str, str, str]:
    """(org_id, subscription_id, graph_id) of an active graph."""
    user_id, org_id = seed_org(engine)
    sub_id = seed_subscription(ctx, org_id, actor=user_id, **kwargs)  # type: ignore[arg-type]
    assert tasks.provision_graph(sub_id) == "active"
    return org_id, sub_id, graph_id_for(sub_id)


def balance(engine: Engine, graph_id: str) -> Decimal:
    return Decimal(
        row(engine, "SELECT current_balance FROM graph_credits WHERE graph_id = :g", g=graph_id)["current_balance"]
    )


def test_months_between_clamps_like_stripe_periods() -> None:
    start = datetime(2025, 1, 31, 12, tzinfo=UTC)
    assert jobs.months_between(start, datetime(2025, 2, 27, tzinfo=UTC)) == 0
    assert jobs.months_between(start, datetime(2025, 2, 28, 12, tzinfo=UTC)) == 1
    assert jobs.months_between(start, datetime(2025, 3, 31, 11, tzinfo=UTC)) == 1
    assert jobs.months_between(start, datetime(2025, 3, 31, 12, tzinfo=UTC)) == 2
    assert jobs.months_between(start, datetime(2024, 12, 1, tzinfo=UTC)) == 0


def test_monthly_allocation_once_per_period(worker: WorkerContext, sync_engine: Engine) -> None:
    _, sub_id, graph_id = provisioned(worker, sync_engine)
    assert balance(sync_engine, graph_id) == 10000  # period 0, granted at provisioning
    assert jobs.allocate_monthly_credits(worker)["period_grants"] == 0  # period 0 again: nothing

    with sync_engine.begin() as conn:
        conn.execute(
            text("UPDATE billing_subscriptions SET started_at = now() - interval '2 months 1 day' WHERE id = :s"),
            {"s": sub_id},
        )
    from robosystems.billing import credits

    with worker.maker.begin() as s:  # spend some of period 0: the unused rest expires, nothing rolls over
        credits.consume(s, graph_id, 2500)
    assert jobs.allocate_monthly_credits(worker)["period_grants"] == 1
    assert jobs.allocate_monthly_credits(worker)["period_grants"] == 0
    assert balance(sync_engine, graph_id) == 10000  # reset to the plan's allocation (no rollover)
    expired = rows(
        sync_engine,
        "SELECT amount, idempotency_key FROM graph_credit_transactions WHERE graph_id = :g "
        "AND transaction_type = 'expiration'",
        g=graph_id,
    )
    assert [(r["amount"], r["idempotency_key"]) for r in expired] == [(-7500, f"expire:invoice:period:{sub_id}:2")]
    keys = [
        r["idempotency_key"]
        for r in rows(
            sync_engine,
            "SELECT idempotency_key FROM graph_credit_transactions WHERE graph_id = :g "
            "AND transaction_type = 'allocation' ORDER BY created_at",
            g=graph_id,
        )
    ]
    assert keys == [f"invoice:period:{sub_id}:0", f"invoice:period:{sub_id}:2"]


def test_paid_invoice_without_grant_is_caught_up_once(worker: WorkerContext, sync_engine: Engine) -> None:
    org_id, sub_id, graph_id = provisioned(worker, sync_engine, billing_disabled=False)
    assert balance(sync_engine, graph_id) == 0  # paid by a provider: the invoice grants, none known yet
    invoice_id = new_id("binv")
    with sync_engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO billing_invoices (id, org_id, subscription_id, invoice_number, period_start, "
                "period_end, subtotal_cents, total_cents, amount_paid_cents, status, paid_at) VALUES (:i, :o, :s, "
                ":n, now(), now() + interval '1 month', 4900, 4900, 4900, 'paid', now())"
            ),
            {"i": invoice_id, "o": org_id, "s": sub_id, "n": f"INV-TEST-{invoice_id[-6:]}"},
        )
    results = []
    threads = [threading.Thread(target=lambda: results.append(jobs.allocate_monthly_credits(worker))) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sum(r["invoice_grants"] for r in results) == 1 and all(r["errors"] == 0 for r in results)
    assert balance(sync_engine, graph_id) == 10000
    assert (
        count(
            sync_engine,
            "SELECT count(*) FROM graph_credit_transactions WHERE idempotency_key = :k",
            k=f"invoice:{invoice_id}",
        )
        == 1
    )


def test_storage_snapshots_once_per_graph_and_hour(worker: WorkerContext, sync_engine: Engine) -> None:
    org_id, _, graph_id = provisioned(worker, sync_engine)
    with sync_engine.begin() as conn:  # a second member: snapshots are still one per graph (legacy E7)
        user = new_id("user")
        conn.execute(
            text("INSERT INTO users (id, email, name, password_hash) VALUES (:u, :e, 'M', 'x')"),
            {"u": user, "e": f"{user.lower()}@example.com"},
        )
        conn.execute(
            text("INSERT INTO org_users (id, org_id, user_id, role) VALUES (:i, :o, :u, 'member')"),
            {"i": new_id("ou"), "o": org_id, "u": user},
        )
    _, _, other_graph = provisioned(worker, sync_engine)
    results: list[int] = []
    threads = [threading.Thread(target=lambda: results.append(jobs.snapshot_storage(worker))) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(results) == [0, 2]
    snaps = rows(
        sync_engine,
        "SELECT graph_id, storage_bytes, graph_tier FROM graph_usage "
        "WHERE event_type = 'storage_snapshot' ORDER BY graph_id",
    )
    assert sorted(s["graph_id"] for s in snaps) == sorted([graph_id, other_graph])
    assert all(s["storage_bytes"] > 0 and s["graph_tier"] == "kuzu-standard" for s in snaps)
    assert jobs.snapshot_storage(worker) == 0


def test_ended_graphs_are_removed_after_retention(worker: WorkerContext, sync_engine: Engine) -> None:
    _, old_sub, old_graph = provisioned(worker, sync_engine)
    _, recent_sub, recent_graph = provisioned(worker, sync_engine)
    _, _, live_graph = provisioned(worker, sync_engine)
    for sub_id, ended in ((old_sub, "31 days"), (recent_sub, "1 day")):
        with worker.maker.begin() as s:
            subs.transition(s, sub_id, "canceled", actor=Actor.system(), reason="test")
        with sync_engine.begin() as conn:
            conn.execute(
                text(
                    f"UPDATE billing_subscriptions SET ends_at = now() - interval '{ended}' "  # noqa: S608
                    "WHERE id = :s"
                ),
                {"s": sub_id},
            )
    orphan = GRAPH_ROOT / ("kg" + "0" * 15 + "1")
    orphan.mkdir(parents=True, exist_ok=True)
    (orphan / "graph.lbug").write_bytes(b"x")
    old = time.time() - 2 * 3600
    os.utime(orphan / "graph.lbug", (old, old))

    result = jobs.remove_expired_graphs(worker)
    assert result == {"removed": 1, "kept": 1, "orphans": 1}
    assert not (GRAPH_ROOT / old_graph).exists() and not orphan.exists()
    assert (GRAPH_ROOT / recent_graph).exists() and (GRAPH_ROOT / live_graph).exists()
    assert count(sync_engine, "SELECT count(*) FROM graphs WHERE graph_id = :g", g=old_graph) == 0
    assert count(sync_engine, "SELECT count(*) FROM graph_credits WHERE graph_id = :g", g=old_graph) == 0
    assert count(sync_engine, "SELECT count(*) FROM graph_credit_transactions WHERE graph_id = :g", g=old_graph) == 0
    assert (
        count(
            sync_engine,
            "SELECT count(*) FROM billing_audit_logs WHERE event_type = 'graph_removed' AND subscription_id = :s",
            s=old_sub,
        )
        == 1
    )
    assert jobs.remove_expired_graphs(worker) == {"removed": 0, "kept": 1, "orphans": 0}


def test_stalled_provisioning_and_pending_compensation_are_resumed_once(
    worker: WorkerContext, sync_engine: Engine
) -> None:
    _, org_id = seed_org(sync_engine)
    stalled = seed_subscription(worker, org_id)
    fresh = seed_subscription(worker, org_id)
    with sync_engine.begin() as conn:
        conn.execute(
            text(
                "UPDATE billing_subscriptions SET provisioning_claimed_at = now() - interval '1 hour', "
                "provisioning_attempt = 1 WHERE id = :s"
            ),
            {"s": stalled},
        )
    assert jobs.resume_provisioning(worker) == {"provisioning": 1, "compensation": 0}
    assert jobs.resume_provisioning(worker) == {"provisioning": 0, "compensation": 0}  # already queued
    queued = rows(
        sync_engine, "SELECT args FROM task_outbox WHERE task_name = :t AND status = 'pending'", t=PROVISION_GRAPH_TASK
    )
    assert [q["args"] for q in queued] == [[stalled]]
    assert sub_row(sync_engine, fresh)["status"] == "provisioning"


def test_org_maintenance_jobs_run_the_org_functions(worker: WorkerContext, sync_engine: Engine) -> None:
    _, org_id = seed_org(sync_engine)
    with sync_engine.begin() as conn:
        conn.execute(
            text("UPDATE orgs SET deleted_at = :d WHERE id = :o"),
            {"d": datetime.now(UTC) - timedelta(days=worker.settings.org_deletion_grace_days + 1), "o": org_id},
        )
    assert jobs.purge_deleted_orgs(worker) == {"purged": 1, "skipped": 0}
    assert count(sync_engine, "SELECT count(*) FROM orgs WHERE id = :o", o=org_id) == 0
    assert jobs.expire_invitations(worker) == {"expired": 0, "deleted": 0}


def test_jobs_are_scheduled_by_name_and_registered(worker: WorkerContext) -> None:
    schedule = beat_schedule(worker.settings)
    names = {entry["task"] for entry in schedule.values()}
    ours = {
        tasks.ALLOCATE_CREDITS_TASK,
        tasks.SNAPSHOT_STORAGE_TASK,
        tasks.REMOVE_EXPIRED_TASK,
        tasks.RESUME_PROVISIONING_TASK,
        tasks.EXPIRE_INVITATIONS_TASK,
        tasks.PURGE_ORGS_TASK,
        "robosystems.webhooks.prune_events",
        "robosystems.webhooks.reconcile_subscriptions",
    }
    assert ours <= names
    assert ours | {PROVISION_GRAPH_TASK} <= registered_task_names()
