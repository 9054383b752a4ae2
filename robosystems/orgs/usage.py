"""An org's graphs, its graph limit and its usage.

* Graphs belong to an org through ``graphs.org_id`` (revision c4d5e6f7a8b9).  "The org's graphs" are its
  top-level graphs; subgraphs share their parent's org, are not listed and do not count against
  ``max_graphs`` (legacy counted grants, which subgraphs never had), but their usage is reported.
* The limit counts owned graphs plus graph subscriptions still awaiting payment or provisioning
  (:func:`pending_graph_subscriptions`).  ``max_graphs = -1`` means unlimited.
* Usage comes from recorded usage events (``graph_usage``) and the credit ledger
  (``graph_credit_transactions``).  Credits and AI operations are read from the ledger only (the usage
  events repeat them).  Storage snapshots were written once per grant per hour (E7), so storage is
  aggregated per graph and hour (max) before anything is summed: a graph shared with N people is
  counted once.
* All reads are a handful of Core queries, no per-graph round trips.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from robosystems.billing import entitlements
from robosystems.orgs.policy import Action, allowed

#: usage event types that are a caller's API operation (storage snapshots and credit events are not).
API_EVENT_TYPES = (
    "api_call",
    "query_execution",
    "mcp_call",
    "agent_call",
    "import_operation",
    "backup_operation",
    "sync_operation",
    "analytics_query",
)
#: subscription states that hold a graph slot before the graph exists.
PENDING_SUBSCRIPTION_STATUSES = ("pending_payment", "provisioning")
#: share of max_graphs from which /limits warns.
LIMIT_WARNING_RATIO = 0.8
PROJECTION_DAYS = 30

_GIB = 1024**3


def _money(value: Decimal | float | int | None) -> float:
    return round(float(value or 0), 2)


# --- graphs ----------------------------------------------------------------------------------------


async def org_graph_count(session: AsyncSession, org_id: str) -> int:
    """Top-level graphs the org owns (subgraphs excluded)."""
    result = await session.execute(
        text("SELECT count(*) FROM graphs WHERE org_id = :org AND NOT is_subgraph"), {"org": org_id}
    )
    return int(result.scalar_one())


async def org_graphs(session: AsyncSession, org_id: str) -> list[dict[str, Any]]:
    """The org's top-level graphs with their credit pool: ``credits_available`` is the pool's balance,
    ``credits_used`` the ledger's consumption in the current calendar month (UTC)."""
    now = datetime.now(UTC)
    month_start = datetime(now.year, now.month, 1, tzinfo=UTC)
    rows = (
        await session.execute(
            text(
                """
                SELECT g.graph_id, g.graph_name, g.graph_type, g.graph_tier, g.created_at, g.updated_at,
                       gc.current_balance, COALESCE(used.amount, 0) AS used
                FROM graphs g
                LEFT JOIN graph_credits gc ON gc.graph_id = g.graph_id
                LEFT JOIN LATERAL (
                    SELECT sum(abs(t.amount)) AS amount FROM graph_credit_transactions t
                    WHERE t.graph_id = g.graph_id AND t.transaction_type = 'consumption'
                      AND t.created_at >= :month_start
                ) used ON true
                WHERE g.org_id = :org AND NOT g.is_subgraph
                ORDER BY g.created_at, g.graph_id
                """
            ),
            {"org": org_id, "month_start": month_start},
        )
    ).all()
    return [
        {
            "graph_id": r.graph_id,
            "graph_name": r.graph_name,
            "graph_type": r.graph_type,
            "graph_tier": r.graph_tier,
            "created_at": r.created_at,
            "updated_at": r.updated_at,
            "credits_available": _money(r.current_balance),
            "credits_used": _money(r.used),
        }
        for r in rows
    ]


async def revoke_member_graph_access(session: AsyncSession, org_id: str, user_id: str) -> None:
    """Delete the user's explicit grants on the org's graphs (subgraphs included).  Org-derived access
    needs no cleanup: it ends with the membership row."""
    await session.execute(
        text(
            "DELETE FROM graph_users gu USING graphs g "
            "WHERE gu.graph_id = g.graph_id AND g.org_id = :org AND gu.user_id = :user"
        ),
        {"org": org_id, "user": user_id},
    )


# --- limits ----------------------------------------------------------------------------------------


async def pending_graph_subscriptions(session: AsyncSession, org_id: str) -> int:
    """HOOK: graph subscriptions of the org awaiting payment/provisioning whose graph does not exist yet.

    billing_subscriptions is still keyed by user (legacy ``billing_customer_user_id``) until the billing
    migration gives it ``org_id``; until then nothing can be attributed to an org and this returns 0.  It
    checks the catalog, so it starts counting by itself once the column exists.
    """
    has_org_column = (
        await session.execute(
            text(
                "SELECT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = to_regclass('billing_subscriptions') "
                "AND attname = 'org_id' AND NOT attisdropped)"
            )
        )
    ).scalar_one()
    if not has_org_column:
        return 0
    result = await session.execute(
        text(
            "SELECT count(*) FROM billing_subscriptions s "
            "WHERE s.org_id = :org AND s.resource_type = 'graph' AND s.status = ANY(:statuses) "
            "AND (s.resource_id IS NULL OR NOT EXISTS (SELECT 1 FROM graphs g WHERE g.graph_id = s.resource_id))"
        ),
        {"org": org_id, "statuses": list(PENDING_SUBSCRIPTION_STATUSES)},
    )
    return int(result.scalar_one())


async def org_limits(session: AsyncSession, org_id: str, *, role: str | None = None) -> dict[str, Any]:
    """``OrgLimitsResponse``.  With ``role`` (the caller's org role), ``can_create_graph`` is also false when
    that role may not create graphs, so the flag never promises what the create endpoint refuses."""
    max_graphs = int((await entitlements.entitlements(session, org_id)).value("max_graphs"))
    owned = await org_graph_count(session, org_id)
    pending = await pending_graph_subscriptions(session, org_id)
    current = owned + pending
    unlimited = max_graphs == -1
    remaining = -1 if unlimited else max(max_graphs - current, 0)
    warnings: list[str] = []
    if not unlimited:
        if current >= max_graphs:
            warnings.append(f"Graph limit reached: {current} of {max_graphs} graphs used")
        elif current >= max_graphs * LIMIT_WARNING_RATIO:
            warnings.append(f"Approaching graph limit: {current} of {max_graphs} graphs used")
    can_create = unlimited or current < max_graphs
    if role is not None:
        can_create = can_create and allowed(role, Action.CREATE_GRAPH)
    return {
        "org_id": org_id,
        "max_graphs": max_graphs,
        "current_usage": {
            "graphs": {
                "current": current,
                "limit": max_graphs,
                "remaining": remaining,
                "owned": owned,
                "pending": pending,
            }
        },
        "warnings": warnings,
        "can_create_graph": can_create,
    }


# --- usage -----------------------------------------------------------------------------------------


@dataclass
class _GraphTotals:
    credits: Decimal = Decimal(0)
    ai_operations: int = 0
    api_calls: int = 0
    storage_gb: float = 0.0
    storage_day: date | None = None


@dataclass
class _DayTotals:
    credits: Decimal = Decimal(0)
    ai_operations: int = 0
    api_calls: int = 0
    storage_gb: float = 0.0


def usage_window(days: int, now: datetime | None = None) -> tuple[datetime, datetime, list[date]]:
    """``days`` UTC calendar days ending today: (start at 00:00 UTC of the first day, now, the days)."""
    end = (now or datetime.now(UTC)).astimezone(UTC)
    first = end.date() - timedelta(days=days - 1)
    start = datetime.combine(first, time.min, tzinfo=UTC)
    return start, end, [first + timedelta(days=i) for i in range(days)]


async def org_usage(session: AsyncSession, org_id: str, days: int, *, now: datetime | None = None) -> dict[str, Any]:
    """``OrgUsageResponse`` over the last ``days`` UTC calendar days (today included)."""
    start, end, day_list = usage_window(days, now)
    params = {"org": org_id, "start": start, "end": end}
    # graph_usage.recorded_at is `timestamp` holding UTC: compare with naive UTC bounds.
    naive = {"org": org_id, "start": start.replace(tzinfo=None), "end": end.replace(tzinfo=None)}

    graphs = (
        await session.execute(
            text(
                """
                SELECT g.graph_id, g.graph_name, g.graph_tier, g.parent_graph_id, gc.current_balance,
                       gc.monthly_allocation, COALESCE(gc.storage_override_gb, gc.storage_limit_gb) AS storage_limit,
                       gc.id IS NOT NULL AS has_pool
                FROM graphs g LEFT JOIN graph_credits gc ON gc.graph_id = g.graph_id
                WHERE g.org_id = :org ORDER BY g.is_subgraph, g.created_at, g.graph_id
                """
            ),
            {"org": org_id},
        )
    ).all()
    ledger = (
        await session.execute(
            text(
                """
                SELECT t.graph_id, (t.created_at AT TIME ZONE 'UTC')::date AS day,
                       sum(abs(t.amount)) AS credits, count(*) AS operations
                FROM graph_credit_transactions t JOIN graphs g ON g.graph_id = t.graph_id
                WHERE g.org_id = :org AND t.transaction_type = 'consumption'
                  AND t.created_at >= :start AND t.created_at <= :end
                GROUP BY 1, 2
                """
            ),
            params,
        )
    ).all()
    calls = (
        await session.execute(
            text(
                """
                SELECT u.graph_id, u.recorded_at::date AS day, count(*) AS calls
                FROM graph_usage u JOIN graphs g ON g.graph_id = u.graph_id
                WHERE g.org_id = :org AND u.event_type = ANY(:types)
                  AND u.recorded_at >= :start AND u.recorded_at <= :end
                GROUP BY 1, 2
                """
            ),
            {**naive, "types": list(API_EVENT_TYPES)},
        )
    ).all()
    storage = (
        await session.execute(
            text(
                """
                WITH hourly AS (  -- one value per graph and hour, however many grants wrote a snapshot
                    SELECT u.graph_id, date_trunc('hour', u.recorded_at) AS hour,
                           max(COALESCE(u.storage_gb, u.storage_bytes / :gib)) AS gb
                    FROM graph_usage u JOIN graphs g ON g.graph_id = u.graph_id
                    WHERE g.org_id = :org AND u.event_type = 'storage_snapshot'
                      AND u.recorded_at >= :start AND u.recorded_at <= :end
                      AND COALESCE(u.storage_gb, u.storage_bytes) IS NOT NULL
                    GROUP BY 1, 2
                )
                SELECT graph_id, hour::date AS day, avg(gb) AS avg_gb, (array_agg(gb ORDER BY hour DESC))[1] AS last_gb
                FROM hourly GROUP BY 1, 2
                """
            ),
            {**naive, "gib": float(_GIB)},
        )
    ).all()

    per_graph = {g.graph_id: _GraphTotals() for g in graphs}
    per_day = {d: _DayTotals() for d in day_list}
    for r in ledger:
        per_graph[r.graph_id].credits += Decimal(r.credits)
        per_graph[r.graph_id].ai_operations += int(r.operations)
        if r.day in per_day:
            per_day[r.day].credits += Decimal(r.credits)
            per_day[r.day].ai_operations += int(r.operations)
    for r in calls:
        per_graph[r.graph_id].api_calls += int(r.calls)
        if r.day in per_day:
            per_day[r.day].api_calls += int(r.calls)
    for r in storage:
        totals = per_graph[r.graph_id]
        if totals.storage_day is None or r.day > totals.storage_day:  # latest snapshot of the window
            totals.storage_day, totals.storage_gb = r.day, float(r.last_gb)
        if r.day in per_day:
            per_day[r.day].storage_gb += float(r.avg_gb)

    graph_details = [
        {
            "graph_id": g.graph_id,
            "graph_name": g.graph_name,
            "graph_tier": g.graph_tier,
            "parent_graph_id": g.parent_graph_id,
            "credits_used": _money(per_graph[g.graph_id].credits),
            "ai_operations": per_graph[g.graph_id].ai_operations,
            "api_calls": per_graph[g.graph_id].api_calls,
            "storage_gb": round(per_graph[g.graph_id].storage_gb, 6),
            "credits_available": _money(g.current_balance),
            "credits_allocated": _money(g.monthly_allocation),
        }
        for g in graphs
    ]
    total_credits = sum((t.credits for t in per_graph.values()), Decimal(0))
    total_calls = sum(t.api_calls for t in per_graph.values())
    pools = [g for g in graphs if g.has_pool]
    daily_avg_credits = float(total_credits) / days
    daily_avg_calls = total_calls / days
    summary = {
        "total_credits_used": _money(total_credits),
        "total_ai_operations": sum(t.ai_operations for t in per_graph.values()),
        "total_storage_gb": round(sum(t.storage_gb for t in per_graph.values()), 6),
        "total_api_calls": total_calls,
        "daily_avg_credits": round(daily_avg_credits, 2),
        "daily_avg_api_calls": round(daily_avg_calls, 2),
        "projected_monthly_credits": round(daily_avg_credits * PROJECTION_DAYS, 2),
        "projected_monthly_api_calls": int(daily_avg_calls * PROJECTION_DAYS),
        "credits_limit": int(sum(Decimal(g.monthly_allocation) for g in pools)) if pools else None,
        "api_calls_limit": None,  # no API-call quota exists
        "storage_limit_gb": int(sum(Decimal(g.storage_limit) for g in pools)) if pools else None,
    }
    daily_trend = [
        {
            "date": d.isoformat(),
            "credits_used": _money(t.credits),
            "ai_operations": t.ai_operations,
            "api_calls": t.api_calls,
            "storage_gb": round(t.storage_gb, 6),
        }
        for d, t in per_day.items()
    ]
    return {
        "org_id": org_id,
        "period_days": days,
        "start_date": start,
        "end_date": end,
        "summary": summary,
        "graph_details": graph_details,
        "daily_trend": daily_trend,
    }
