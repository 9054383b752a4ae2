"""Celery tasks of the graphs feature (found by autodiscovery).  Each is a thin wrapper around one function of
:mod:`robosystems.graphs.provisioning` / :mod:`robosystems.graphs.jobs`, which is also what the in-process runner
executes: one code path.  Periodic ones are named in :mod:`robosystems.worker.schedule`."""

from __future__ import annotations

import logging
from typing import Any

from robosystems.graphs import jobs, provisioning
from robosystems.worker.celery_app import task
from robosystems.worker.context import get_context
from robosystems.worker.retry import RetryLater, backoff_seconds, safe_error

log = logging.getLogger("robosystems.graphs.tasks")

ALLOCATE_CREDITS_TASK = "robosystems.graphs.allocate_monthly_credits"
SNAPSHOT_STORAGE_TASK = "robosystems.graphs.snapshot_storage"
REMOVE_EXPIRED_TASK = "robosystems.graphs.remove_expired_graphs"
RESUME_PROVISIONING_TASK = "robosystems.graphs.resume_provisioning"
EXPIRE_INVITATIONS_TASK = "robosystems.graphs.expire_invitations"
PURGE_ORGS_TASK = "robosystems.graphs.purge_deleted_orgs"


@task(provisioning.PROVISION_GRAPH_TASK, ignore_result=True)
def provision_graph(subscription_id: str) -> str:
    """Provision a paid subscription's graph (idempotent; several copies at once do the work once)."""
    ctx = get_context()
    try:
        return provisioning.provision_graph(ctx, subscription_id).outcome
    except RetryLater:
        raise
    except Exception as exc:  # noqa: BLE001 - e.g. the database is unreachable: retry, never drop the message
        log.exception("provisioning %s: unexpected error", subscription_id)
        raise RetryLater(backoff_seconds(ctx.settings, 1), reason=safe_error(exc)) from exc


@task(ALLOCATE_CREDITS_TASK, ignore_result=True, acks_late=False)
def allocate_monthly_credits() -> dict[str, int]:
    return jobs.allocate_monthly_credits(get_context())


@task(SNAPSHOT_STORAGE_TASK, ignore_result=True, acks_late=False)
def snapshot_storage() -> int:
    return jobs.snapshot_storage(get_context())


@task(REMOVE_EXPIRED_TASK, ignore_result=True, acks_late=False)
def remove_expired_graphs() -> dict[str, int]:
    return jobs.remove_expired_graphs(get_context())


@task(RESUME_PROVISIONING_TASK, ignore_result=True, acks_late=False)
def resume_provisioning() -> dict[str, int]:
    return jobs.resume_provisioning(get_context())


@task(EXPIRE_INVITATIONS_TASK, ignore_result=True, acks_late=False)
def expire_invitations() -> dict[str, Any]:
    return jobs.expire_invitations(get_context())


@task(PURGE_ORGS_TASK, ignore_result=True, acks_late=False)
def purge_deleted_orgs() -> dict[str, Any]:
    return jobs.purge_deleted_orgs(get_context())
