"""A graph's lifecycle state, derived from its subscription: writable, read-only (frozen) or due for removal.

One rule set, used by the query endpoint (per request), the info endpoints and the retention job:

* ``active`` (also with ``cancel_at_period_end``: still paid for) -> writable;
* ``past_due`` -> writable for ``PAST_DUE_GRACE_DAYS`` after the subscription became past due (the time of the
  ``subscription_past_due`` billing audit row), then read-only until it is paid (back to ``active``: writable at
  once, nothing to undo);
* ``unpaid`` / ``paused`` -> read-only;
* ``canceled`` / ``expired`` / ``refunded`` -> read-only, and the database is removed ``GRAPH_RETENTION_DAYS``
  after the end (``ends_at``, else ``canceled_at``, else the last update);
* no subscription at all (legacy graphs created before billing, shared repositories) -> writable, never removed.

Read-only is enforced by the engine: the query endpoint opens a frozen graph's database ``read_only``.  Nothing is
stored: the state follows the subscription the moment a webhook changes it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import text

from robosystems.billing.plans import Catalog, GraphPlan
from robosystems.config import Settings

WRITABLE_STATES = frozenset({"active"})
FROZEN_STATES = frozenset({"unpaid", "paused"})
ENDED_STATES = frozenset({"canceled", "expired", "refunded"})

#: The subscription that governs a graph: a live one if any, else the newest.  ``past_due_since`` only when
#: past due (one indexed lookup in the billing audit log).
GRAPH_STATE_SQL = text(
    """
    SELECT g.graph_id, g.org_id, g.graph_name, g.graph_tier, g.is_repository, g.is_subgraph, g.repository_type,
           g.created_at, g.updated_at,
           s.id AS subscription_id, s.status AS subscription_status, s.plan_name, s.ends_at, s.canceled_at,
           s.updated_at AS subscription_updated_at, s.current_period_start, s.current_period_end,
           CASE WHEN s.status = 'past_due' THEN (
               SELECT max(a.event_timestamp) FROM billing_audit_logs a
                WHERE a.subscription_id = s.id AND a.event_type = 'subscription_past_due'
           ) END AS past_due_since
    FROM graphs g
    LEFT JOIN LATERAL (
        SELECT bs.* FROM billing_subscriptions bs
         WHERE bs.resource_type = 'graph' AND bs.resource_id = g.graph_id
         ORDER BY (bs.status IN ('provisioning', 'active', 'past_due', 'unpaid', 'paused')) DESC, bs.created_at DESC
         LIMIT 1
    ) s ON true
    WHERE g.graph_id = :graph_id
    """
)


@dataclass(frozen=True)
class Lifecycle:
    writable: bool
    reason: str | None  # why read-only (safe to show)
    removal_due_at: datetime | None  # when the retention job may remove the database


def _aware(value: datetime | None) -> datetime | None:
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


def evaluate(
    status: str | None,
    *,
    settings: Settings,
    past_due_since: datetime | None = None,
    ends_at: datetime | None = None,
    canceled_at: datetime | None = None,
    updated_at: datetime | None = None,
    now: datetime | None = None,
) -> Lifecycle:
    """The rule set of this module for one subscription state."""
    now = now or datetime.now(UTC)
    if status is None or status in WRITABLE_STATES or status == "provisioning":
        return Lifecycle(True, None, None)
    if status == "past_due":
        since = _aware(past_due_since) or _aware(updated_at) or now
        if now < since + timedelta(days=settings.past_due_grace_days):
            return Lifecycle(True, None, None)
        return Lifecycle(False, "The subscription is past due: the graph is read-only until it is paid", None)
    if status in FROZEN_STATES:
        return Lifecycle(False, f"The subscription is {status}: the graph is read-only", None)
    ended = _aware(ends_at) or _aware(canceled_at) or _aware(updated_at) or now
    return Lifecycle(
        False,
        "The subscription has ended: the graph is read-only until it is removed",
        ended + timedelta(days=settings.graph_retention_days),
    )


@dataclass(frozen=True)
class GraphState:
    graph_id: str
    org_id: str | None
    graph_name: str
    graph_tier: str
    is_repository: bool
    is_subgraph: bool
    repository_type: str | None
    created_at: datetime
    updated_at: datetime
    subscription_id: str | None
    subscription_status: str | None
    plan_name: str | None
    plan: GraphPlan
    lifecycle: Lifecycle
    current_period_start: datetime | None
    current_period_end: datetime | None

    @property
    def writable(self) -> bool:
        return self.lifecycle.writable

    @property
    def tier(self) -> str:
        return self.plan.name


def plan_for(catalog: Catalog, plan_name: str | None, graph_tier: str | None) -> GraphPlan:
    """The plan that governs a graph: its subscription's plan, else its tier (legacy aliases), else the first
    plan of the catalog (shared repositories and unknown legacy tiers get its limits)."""
    for name in (plan_name, graph_tier):
        found = catalog.find_plan(name)
        if found is not None:
            return found
    return catalog.graph_plans[0]


def state_from_row(row: Any, *, catalog: Catalog, settings: Settings, now: datetime | None = None) -> GraphState:
    lifecycle = evaluate(
        row.subscription_status,
        settings=settings,
        past_due_since=row.past_due_since,
        ends_at=row.ends_at,
        canceled_at=row.canceled_at,
        updated_at=row.subscription_updated_at,
        now=now,
    )
    return GraphState(
        graph_id=row.graph_id,
        org_id=row.org_id,
        graph_name=row.graph_name,
        graph_tier=row.graph_tier,
        is_repository=bool(row.is_repository),
        is_subgraph=bool(row.is_subgraph),
        repository_type=row.repository_type,
        created_at=row.created_at,
        updated_at=row.updated_at,
        subscription_id=row.subscription_id,
        subscription_status=row.subscription_status,
        plan_name=row.plan_name,
        plan=plan_for(catalog, row.plan_name, row.graph_tier),
        lifecycle=lifecycle,
        current_period_start=row.current_period_start,
        current_period_end=row.current_period_end,
    )
