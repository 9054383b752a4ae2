"""Beat work of the inbox: pruning, the stale sweep, reconciliation with the provider; the migration."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine, text

from robosystems import migrations
from robosystems.db import sync_url
from robosystems.payments.base import ProviderObjectMissing, ProviderSubscription
from robosystems.webhooks import reconcile, service
from robosystems.worker.context import WorkerContext
from tests.helpers import count
from tests.webhooks_support import (
    T0,
    Billing,
    event,
    event_row,
    post_event,
    run_worker,
    subscription_obj,
    wh,
    worker_ctx,
)

__all__ = ["wh", "worker_ctx"]  # fixtures


async def test_prune_deletes_only_old_finished_events(wh: Any, worker_ctx: WorkerContext, sync_engine: Engine) -> None:
    _, client = wh
    ids = [f"evt_prune_{i}" for i in range(4)]
    for event_id in ids:
        await post_event(client, event("plan.created", {"id": "plan_x"}, event_id=event_id))
    run_worker(worker_ctx)
    old = datetime.now(UTC) - timedelta(days=worker_ctx.settings.webhook_event_retention_days + 1)
    with sync_engine.begin() as conn:
        conn.execute(
            text("UPDATE webhook_events SET processed_at = :old WHERE id IN ('evt_prune_0', 'evt_prune_1')"),
            {"old": old},
        )
        conn.execute(
            text("UPDATE webhook_events SET status = 'failed', received_at = :old WHERE id = 'evt_prune_1'"),
            {"old": old},
        )
        conn.execute(text("UPDATE task_outbox SET created_at = :old"), {"old": old})
    assert service.prune(worker_ctx) == 1
    with sync_engine.connect() as conn:
        remaining = set(conn.execute(text("SELECT id FROM webhook_events")).scalars())
    assert remaining == {"evt_prune_1", "evt_prune_2", "evt_prune_3"}  # failed ones are kept for replay
    assert count(sync_engine, "SELECT count(*) FROM task_outbox") == 0


async def test_sweep_requeues_events_whose_message_was_lost(
    wh: Any, worker_ctx: WorkerContext, sync_engine: Engine
) -> None:
    _, client = wh
    evt = event("plan.created", {"id": "plan_lost"})
    await post_event(client, evt)
    fresh = event("plan.created", {"id": "plan_fresh"})
    await post_event(client, fresh)
    old = datetime.now(UTC) - timedelta(seconds=worker_ctx.settings.webhook_stale_seconds + 5)
    with sync_engine.begin() as conn:  # the broker lost the message: the outbox says sent, nothing ran
        conn.execute(text("UPDATE task_outbox SET status = 'sent'"))
        conn.execute(text("UPDATE webhook_events SET updated_at = :old WHERE id = :id"), {"old": old, "id": evt["id"]})
    assert service.sweep_stale(worker_ctx) == 1
    assert service.sweep_stale(worker_ctx) == 0  # a pending outbox row exists now: not twice
    run_worker(worker_ctx)
    assert event_row(sync_engine, evt["id"])["status"] == "ignored"
    assert event_row(sync_engine, fresh["id"])["status"] == "received"  # not stale yet: left alone


async def test_a_crashed_processing_claim_is_taken_over_after_the_stale_window(
    wh: Any, worker_ctx: WorkerContext, sync_engine: Engine
) -> None:
    _, client = wh
    evt = event("plan.created", {"id": "plan_crash"})
    await post_event(client, evt)
    with sync_engine.begin() as conn:
        conn.execute(text("UPDATE webhook_events SET status = 'processing', attempts = 1"))
    assert service.process_event(worker_ctx, evt["id"]) == "skipped"  # someone is on it
    old = datetime.now(UTC) - timedelta(seconds=worker_ctx.settings.webhook_stale_seconds + 5)
    with sync_engine.begin() as conn:
        conn.execute(text("UPDATE webhook_events SET updated_at = :old"), {"old": old})
    assert service.process_event(worker_ctx, evt["id"]) == "ignored"
    assert event_row(sync_engine, evt["id"])["attempts"] == 2


class FakeProvider:
    """Stands in for the payment provider's HTTP API (our database is real)."""

    name = "stripe"

    def __init__(self, answers: dict[str, ProviderSubscription | Exception]) -> None:
        self.answers = answers
        self.calls: list[str] = []

    def retrieve_subscription(self, subscription_id: str) -> ProviderSubscription:
        self.calls.append(subscription_id)
        answer = self.answers[subscription_id]
        if isinstance(answer, Exception):
            raise answer
        return answer


def _remote(sub_id: str, status: str, *, end: int = T0 + 2_592_000, cancel: bool = False) -> ProviderSubscription:
    return ProviderSubscription(
        id=sub_id,
        status=status,
        customer_id=None,
        cancel_at_period_end=cancel,
        current_period_start=datetime.fromtimestamp(T0, UTC),
        current_period_end=datetime.fromtimestamp(end, UTC),
    )


async def test_reconciliation_heals_or_reports_drift(wh: Any, worker_ctx: WorkerContext, sync_engine: Engine) -> None:
    _, client = wh
    in_sync = Billing(worker_ctx, status="active")
    lost_cancel = Billing(worker_ctx, status="active")
    refused = Billing(worker_ctx, status="active")
    missing = Billing(worker_ctx, status="past_due")
    with sync_engine.begin() as conn:
        conn.execute(
            text("UPDATE billing_subscriptions SET current_period_start = :s, current_period_end = :e"),
            {"s": datetime.fromtimestamp(T0, UTC), "e": datetime.fromtimestamp(T0 + 2_592_000, UTC)},
        )
    provider = FakeProvider(
        {
            in_sync.provider_sub: _remote(in_sync.provider_sub, "active"),
            lost_cancel.provider_sub: _remote(lost_cancel.provider_sub, "canceled"),
            refused.provider_sub: _remote(refused.provider_sub, "incomplete"),  # active -> pending_payment: illegal
            missing.provider_sub: ProviderObjectMissing(),
        }
    )
    counts = reconcile.reconcile(worker_ctx, provider)
    assert counts == {"checked": 4, "in_sync": 1, "healed": 1, "reported": 2, "errors": 0}
    assert in_sync.status() == "active"
    assert lost_cancel.status() == "canceled"
    assert lost_cancel.sub()["last_event_at"] is not None
    assert refused.status() == "active"
    assert count(sync_engine, "SELECT count(*) FROM billing_audit_logs WHERE event_type = 'subscription_drift'") == 2
    # a webhook older than the reconciliation can't undo it
    stale = event(
        "customer.subscription.updated",
        subscription_obj(lost_cancel.provider_sub, lost_cancel.customer, "active"),
        created=T0,
    )
    await post_event(client, stale)
    run_worker(worker_ctx)
    assert event_row(sync_engine, stale["id"])["note"] == "stale"
    assert lost_cancel.status() == "canceled"


def test_migration_downgrade_refuses_to_drop_events_unless_allowed(make_database: Callable[[], str]) -> None:
    url = make_database()
    migrations.upgrade("head", url)
    engine = create_engine(sync_url(url))
    try:
        with engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO webhook_events (id, type, created, payload) "
                    "VALUES ('evt_keep', 'invoice.paid', now(), '{}'::jsonb)"
                )
            )
            with pytest.raises(Exception, match="ck_webhook_events_status"):
                with conn.begin_nested():
                    conn.execute(text("UPDATE webhook_events SET status = 'bogus'"))
        with pytest.raises(RuntimeError, match="allow_data_loss"):
            migrations.downgrade("e6f7a8b9c0d1", url)
        migrations.downgrade("e6f7a8b9c0d1", url, allow_data_loss=True)
        with engine.connect() as conn:
            assert conn.execute(text("SELECT to_regclass('webhook_events')")).scalar() is None
        migrations.upgrade("head", url)
        with engine.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM task_outbox")).scalar() == 0
    finally:
        engine.dispose()
