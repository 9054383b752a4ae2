"""The provisioning saga: exactly-once under concurrency, retries, final failure with compensation, the paid
plan over requested metadata, org limits, admin retry, takeover of a crashed run.

Real PostgreSQL, real LadybugDB files; the backend is only wrapped to fail or to hold a run mid-flight.  The
compensation goes to the real local payment provider (its own store of Stripe-shaped objects).
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import Engine, create_engine, text

from robosystems.db import sync_url
from robosystems.graphs import backend as backend_module
from robosystems.graphs import provisioning, tasks
from robosystems.graphs.provisioning import graph_id_for
from robosystems.payments.factory import get_provider
from robosystems.payments.local import LocalPaymentProvider
from robosystems.worker import context, outbox
from robosystems.worker.celery_app import celery_app
from robosystems.worker.context import WorkerContext
from tests.graphs_support import (
    ADMIN_KEY,
    GRAPH_ROOT,
    FailingBackend,
    GateBackend,
    _real_backend,
    free_app,
    paid_app,
    pay_for_graph,
    provision_until_settled,
    query,
    row,
    seed_org,
    seed_subscription,
    sub_row,
    worker,
    worker_settings,
)
from tests.helpers import count
from tests.org_helpers import person
from tests.outbound_support import event_data

__all__ = ["_real_backend", "free_app", "paid_app", "worker"]  # fixtures

App = tuple[FastAPI, httpx.AsyncClient]


def graph_dirs(graph_id: str) -> list[Path]:
    return [p for p in GRAPH_ROOT.iterdir() if p.name == graph_id] if GRAPH_ROOT.exists() else []


def audit_count(engine: Engine, sub_id: str, event_type: str) -> int:
    return count(
        engine,
        "SELECT count(*) FROM billing_audit_logs WHERE subscription_id = :s AND event_type = :t",
        s=sub_id,
        t=event_type,
    )


def test_graph_id_is_derived_from_the_subscription() -> None:
    assert graph_id_for("bsub_1") == graph_id_for("bsub_1") != graph_id_for("bsub_2")
    assert len(graph_id_for("bsub_1")) == 18 and graph_id_for("bsub_1").startswith("kg")


@pytest.fixture
def small_pool_worker(database_url: str) -> Any:
    """A worker context on its own engine of at most 4 connections: ten copies compete for them (and for the
    run lock) without needing ten server connections on a shared PostgreSQL."""
    engine = create_engine(sync_url(database_url), pool_size=4, max_overflow=0, pool_timeout=60)
    ctx = context.configure(worker_settings(database_url), engine=engine)
    yield ctx
    context.reset()
    engine.dispose()


def test_ten_concurrent_copies_make_one_database_and_one_row(
    small_pool_worker: WorkerContext, sync_engine: Engine
) -> None:
    worker = small_pool_worker
    gate: dict[str, GateBackend] = {}

    def factory(root: Path) -> GateBackend:
        gate["backend"] = GateBackend(root)
        return gate["backend"]

    backend_module.set_backend_factory(factory)
    user_id, org_id = seed_org(sync_engine)
    sub_id = seed_subscription(worker, org_id, actor=user_id)
    outcomes: list[str] = []
    done = threading.Condition()
    task = celery_app.tasks[provisioning.PROVISION_GRAPH_TASK]  # the registered task, as the runners look it up

    def copy() -> None:
        try:
            outcome = task(sub_id)  # what the in-process runner (or a Celery worker) executes
        except Exception as exc:  # noqa: BLE001 - recorded for the assertion
            outcome = f"error: {type(exc).__name__}"
        with done:
            outcomes.append(outcome)
            done.notify_all()

    threads = [threading.Thread(target=copy) for _ in range(10)]
    for t in threads:
        t.start()
    with done:  # one copy holds the run inside create(); the nine others must give up without waiting for it
        assert done.wait_for(lambda: len(outcomes) == 9, timeout=60), outcomes
    assert gate["backend"].entered.wait(60)
    assert outcomes == ["in_progress"] * 9
    gate["backend"].release.set()
    for t in threads:
        t.join(60)
    assert sorted(outcomes) == ["active"] + ["in_progress"] * 9
    assert gate["backend"].creates == 1

    graph_id = graph_id_for(sub_id)
    assert count(sync_engine, "SELECT count(*) FROM graphs WHERE org_id = :o", o=org_id) == 1
    assert len(graph_dirs(graph_id)) == 1
    sub = sub_row(sync_engine, sub_id)
    assert (sub["status"], sub["resource_id"], sub["provisioning_attempt"]) == ("active", graph_id, 1)
    assert sub["provisioning_claim_token"] is None
    assert (
        count(
            sync_engine,
            "SELECT count(*) FROM graph_credit_transactions WHERE graph_id = :g AND transaction_type = 'allocation'",
            g=graph_id,
        )
        == 1
    )
    assert audit_count(sync_engine, sub_id, "graph_provisioned") == 1
    assert audit_count(sync_engine, sub_id, "subscription_activated") == 1

    # a late redelivery finds it done and changes nothing
    assert tasks.provision_graph(sub_id) == "already_active"
    assert audit_count(sync_engine, sub_id, "graph_provisioned") == 1 and gate["backend"].creates == 1


def test_transient_failures_are_retried_with_the_same_graph(worker: WorkerContext, sync_engine: Engine) -> None:
    backend_module.set_backend_factory(lambda root: FailingBackend(root, failures=2))
    _, org_id = seed_org(sync_engine)
    sub_id = seed_subscription(worker, org_id)
    with worker.maker.begin() as s:
        outbox.enqueue(s, provisioning.PROVISION_GRAPH_TASK, [sub_id])
    assert provision_until_settled(worker, sub_id) == "active"
    sub = sub_row(sync_engine, sub_id)
    assert sub["provisioning_attempt"] == 3 and sub["resource_id"] == graph_id_for(sub_id)
    assert count(sync_engine, "SELECT count(*) FROM graphs WHERE org_id = :o", o=org_id) == 1
    outbox_row = row(
        sync_engine,
        "SELECT status, attempts FROM task_outbox WHERE args = jsonb_build_array(CAST(:s AS text))",
        s=sub_id,
    )
    assert outbox_row == {"status": "sent", "attempts": 3}


async def test_backend_failing_every_attempt_fails_cleans_up_and_refunds_once(
    paid_app: App, worker: WorkerContext, sync_engine: Engine
) -> None:
    _, client = paid_app
    owner = await person(client)
    paid = await pay_for_graph(client, worker, owner)
    sub_id = paid["subscription_id"]
    graph_id = graph_id_for(sub_id)
    backend_module.set_backend_factory(lambda root: FailingBackend(root))

    assert provision_until_settled(worker, sub_id) == "refunded"
    sub = sub_row(sync_engine, sub_id)
    assert sub["provisioning_attempt"] == provisioning.max_attempts(worker) == 4
    assert sub["failure_reason"] == "the graph database could not be created"
    assert sub["compensation_status"] == "refunded" and sub["compensation_ref"].startswith("re_")
    assert graph_dirs(graph_id) == []  # partial files removed
    assert count(sync_engine, "SELECT count(*) FROM graphs WHERE graph_id = :g", g=graph_id) == 0
    assert audit_count(sync_engine, sub_id, "provisioning_failed") == 1
    assert audit_count(sync_engine, sub_id, "refund_processed") == 1
    [failed] = event_data(sync_engine, sub["org_id"], "graph.provisioning_failed")  # outbound webhook, same transaction
    assert failed == {
        "subscription_id": sub_id,
        "org_id": sub["org_id"],
        "plan_name": sub["plan_name"],
        "reason": "the graph database could not be created",
        "compensation": "pending",
    }

    local = get_provider(worker.settings)
    assert isinstance(local, LocalPaymentProvider)
    invoice = row(sync_engine, "SELECT stripe_invoice_id FROM billing_invoices WHERE subscription_id = :s", s=sub_id)
    stored = local.store.get("invoices", invoice["stripe_invoice_id"])
    assert stored["local"]["refunded"] == sub["compensation_ref"]
    assert local.store.get("subscriptions", sub["provider_subscription_id"])["object"]["cancel_at_period_end"]

    # a redelivered task, a direct second compensation, the resume job: nothing is given back twice
    assert tasks.provision_graph(sub_id) == "not_provisioning"
    assert provisioning.compensate(worker, sub_id).outcome == "compensated"
    assert audit_count(sync_engine, sub_id, "refund_processed") == 1
    assert sub_row(sync_engine, sub_id)["compensation_ref"] == sub["compensation_ref"]

    status = (await client.get(f"/v1/operations/{sub_id}/status", headers=owner.auth)).json()
    assert status["status"] == "failed" and status["error"] == "the graph database could not be created"
    assert "refunded" in status["message"]
    retry = await client.post(
        f"/admin/v1/subscriptions/{sub_id}/retry-provisioning",
        json={"reason": "disk replaced"},
        headers={"Authorization": f"Bearer {ADMIN_KEY}"},
    )
    assert retry.status_code == 409  # refunded is final: no graph without a new payment


async def test_paid_plan_wins_over_requested_metadata(
    free_app: App, worker: WorkerContext, sync_engine: Engine
) -> None:
    _, client = free_app
    user_id, org_id = seed_org(sync_engine)
    sub_id = seed_subscription(
        worker,
        org_id,
        plan="kuzu-standard",
        actor=user_id,
        config={
            "graph_name": "Cheap",
            "instance_tier": "kuzu-xlarge",
            "graph_tier": "kuzu-xlarge",
            "tier": "kuzu-xlarge",
            "monthly_credits": 999999,
            "storage_gb": 5000,
        },
    )
    assert tasks.provision_graph(sub_id) == "active"
    graph = row(sync_engine, "SELECT * FROM graphs WHERE graph_id = :g", g=graph_id_for(sub_id))
    assert graph["graph_tier"] == "kuzu-standard" and graph["graph_name"] == "Cheap"
    pool = row(
        sync_engine,
        "SELECT current_balance, monthly_allocation, storage_limit_gb, user_id FROM graph_credits WHERE graph_id = :g",
        g=graph["graph_id"],
    )
    assert (pool["current_balance"], pool["monthly_allocation"], pool["storage_limit_gb"]) == (10000, 10000, 500)
    assert pool["user_id"] == user_id


def test_org_limit_is_rechecked_at_provisioning(worker: WorkerContext, sync_engine: Engine) -> None:
    _, org_id = seed_org(sync_engine, max_graphs=1)
    first = seed_subscription(worker, org_id)
    assert tasks.provision_graph(first) == "active"
    second = seed_subscription(worker, org_id)  # e.g. the limit was lowered after checkout
    assert tasks.provision_graph(second) == "failed"
    sub = sub_row(sync_engine, second)
    assert sub["status"] == "failed" and sub["failure_reason"] == "the organization has reached its graph limit"
    assert sub["compensation_status"] == "none"  # billing disabled: nothing was paid
    assert sub["provisioning_attempt"] == 1  # a refusal is not retried
    assert count(sync_engine, "SELECT count(*) FROM graphs WHERE org_id = :o", o=org_id) == 1
    assert graph_dirs(graph_id_for(second)) == []


def test_deleted_org_is_refused(worker: WorkerContext, sync_engine: Engine) -> None:
    _, org_id = seed_org(sync_engine)
    sub_id = seed_subscription(worker, org_id)
    with sync_engine.begin() as conn:
        conn.execute(text("UPDATE orgs SET deleted_at = now() WHERE id = :o"), {"o": org_id})
    assert tasks.provision_graph(sub_id) == "failed"
    assert sub_row(sync_engine, sub_id)["failure_reason"] == "the organization no longer exists"


def test_only_provisioning_subscriptions_are_worked_on(worker: WorkerContext, sync_engine: Engine) -> None:
    _, org_id = seed_org(sync_engine)
    pending = seed_subscription(worker, org_id, status="pending_payment", billing_disabled=False)
    assert tasks.provision_graph(pending) == "not_provisioning"  # not paid: nothing is created
    assert tasks.provision_graph("bsub_unknown") == "not_found"
    assert count(sync_engine, "SELECT count(*) FROM graphs") == 0
    assert graph_dirs(graph_id_for(pending)) == []


async def test_admin_retries_a_failed_provisioning(
    app_factory: Any, worker: WorkerContext, sync_engine: Engine
) -> None:
    from tests.graphs_support import SETTINGS

    async with app_factory(billing_enabled=False, **SETTINGS) as (_, client):
        owner = await person(client)
        backend_module.set_backend_factory(lambda root: FailingBackend(root))
        created = await client.post("/v1/graphs", json={"metadata": {"graph_name": "Retry me"}}, headers=owner.auth)
        sub_id = created.json()["subscription_id"]
        assert provision_until_settled(worker, sub_id) == "failed"
        assert sub_row(sync_engine, sub_id)["compensation_status"] == "none"

        path = f"/admin/v1/subscriptions/{sub_id}/retry-provisioning"
        assert (await client.post(path, json={"reason": "x" * 10})).status_code == 401
        assert (
            await client.post(path, json={"reason": "disk replaced"}, headers={"Authorization": "Bearer wrong"})
        ).status_code == 401
        admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
        assert (await client.post(path, json={}, headers=admin)).status_code == 422
        backend_module.set_backend_factory(None)
        retried = await client.post(path, json={"reason": "disk replaced"}, headers=admin)
        assert retried.status_code == 202, retried.text
        assert retried.json()["status"] == "provisioning"
        assert (await client.post(path, json={"reason": "again"}, headers=admin)).status_code == 409
        assert provision_until_settled(worker, sub_id) == "active"
        sub = sub_row(sync_engine, sub_id)
        assert sub["provisioning_attempt"] == 1
        assert audit_count(sync_engine, sub_id, "provisioning_retried") == 1
        graph_id = sub["resource_id"]
        assert (await query(client, owner, graph_id, "RETURN 1 AS one")).status_code == 200
        missing = await client.post(
            "/admin/v1/subscriptions/bsub_nope/retry-provisioning", json={"reason": "typo"}, headers=admin
        )
        assert missing.status_code == 404


def test_a_crashed_run_is_taken_over(worker: WorkerContext, sync_engine: Engine) -> None:
    """A run that died mid-flight left its claim and partial files; its lock died with its connection, so
    the redelivered task takes over at once, on the same graph directory."""
    _, org_id = seed_org(sync_engine)
    sub_id = seed_subscription(worker, org_id)
    graph_id = graph_id_for(sub_id)
    (GRAPH_ROOT / graph_id).mkdir(parents=True, exist_ok=True)
    with sync_engine.begin() as conn:
        conn.execute(
            text(
                "UPDATE billing_subscriptions SET provisioning_attempt = 1, provisioning_claimed_at = "
                "now(), provisioning_claim_token = 'dead' WHERE id = :s"
            ),
            {"s": sub_id},
        )
    assert tasks.provision_graph(sub_id) == "active"
    sub = sub_row(sync_engine, sub_id)
    assert sub["provisioning_attempt"] == 2 and sub["resource_id"] == graph_id
    assert len(graph_dirs(graph_id)) == 1


def test_a_held_lock_makes_other_copies_step_aside(worker: WorkerContext, sync_engine: Engine) -> None:
    _, org_id = seed_org(sync_engine)
    sub_id = seed_subscription(worker, org_id)
    held = provisioning.RunLock(sync_engine, sub_id)
    assert held.acquire()
    try:
        assert tasks.provision_graph(sub_id) == "in_progress"
        assert sub_row(sync_engine, sub_id)["provisioning_attempt"] == 0
    finally:
        held.release()
    assert tasks.provision_graph(sub_id) == "active"


@pytest.fixture
def strict_worker(database_url: str, sync_engine: Engine) -> Any:
    ctx = context.configure(worker_settings(database_url, provisioning_max_attempts=2), engine=sync_engine)
    yield ctx
    context.reset()


def test_attempt_budget_comes_from_settings(strict_worker: WorkerContext, sync_engine: Engine) -> None:
    backend_module.set_backend_factory(lambda root: FailingBackend(root))
    _, org_id = seed_org(sync_engine)
    sub_id = seed_subscription(strict_worker, org_id)
    with strict_worker.maker.begin() as s:
        outbox.enqueue(s, provisioning.PROVISION_GRAPH_TASK, [sub_id])
    assert provision_until_settled(strict_worker, sub_id) == "failed"
    assert sub_row(sync_engine, sub_id)["provisioning_attempt"] == 2
