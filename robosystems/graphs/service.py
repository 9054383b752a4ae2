"""The graph endpoints' business rules (``/v1/graphs``, ``/v1/operations``).

* Access to one graph is :func:`robosystems.graphs.access.graph_access` (live org membership or explicit grant,
  ONE query); no access or no such graph -> 404 ``graph_not_found`` (existence is not revealed).  Its lifecycle
  (writable / read-only) comes from the subscription (:mod:`robosystems.graphs.lifecycle`), its tier and limits
  from the plan catalog.
* Backend calls are blocking (LadybugDB): they run in the thread pool.
* **Queries and credits.**  ``QUERY_CREDIT_COST`` credits are consumed BEFORE the query runs (one conditional
  UPDATE: never negative; 402 ``insufficient_credits`` when short) and the request's transaction is committed
  there, so a long query holds neither a pooled connection nor the credit pool's row lock (the one deliberate
  commit in a service: see :func:`execute_query`).  They are refunded (``refund`` ledger row, keyed by the
  query id) when the engine refuses the query without running it (syntax or binder error, a write on a read-only
  graph) or the graph is unavailable; NOT on a timeout (the engine did the work until interrupted) nor for
  truncated results.  Statements refused by the statement guard (COPY, LOAD, ATTACH, schema changes …) are
  refused before anything is charged.  Each query writes one ``query_execution`` usage event (``graph_usage``).
* Frozen graphs (subscription past due beyond the grace period, unpaid, paused, ended) are opened read-only: the
  engine refuses writes (403 ``graph_read_only``).  Callers with read access only (``viewer`` grants) run their
  queries in a READ ONLY transaction.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import Any, TypeVar

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.concurrency import run_in_threadpool

from robosystems.auth.deps import Principal
from robosystems.billing import checkout, credits, entitlements
from robosystems.billing.plans import GraphPlan, get_catalog
from robosystems.billing.schemas import CreateCheckoutRequest
from robosystems.billing.storage import StorageGuard, storage_guard
from robosystems.config import Settings
from robosystems.errors import AppError, BadRequest, Forbidden, NotFound, ServiceUnavailable, Unprocessable
from robosystems.graphs import lifecycle
from robosystems.graphs.access import GraphAccess, graph_access
from robosystems.graphs.backend import (
    GraphBackend,
    GraphBackendError,
    QueryOutput,
    QueryRefused,
    QueryTimeout,
    check_parameters,
    check_statement,
)
from robosystems.graphs.provisioning import backend_for
from robosystems.graphs.schemas import (
    BackupLimits,
    CopyOperationLimits,
    CreateGraphAccepted,
    CreateGraphRequest,
    CreditLimits,
    CreditSummary,
    CreditSummaryResponse,
    CypherQueryRequest,
    CypherQueryResponse,
    DatabaseHealthResponse,
    DatabaseInfoResponse,
    DetailedTransactionsResponse,
    EnhancedCreditTransactionResponse,
    GraphInfo,
    GraphLimitsResponse,
    GraphMetricsResponse,
    GraphUsageResponse,
    OperationStatusResponse,
    PaymentRequired,
    PerformanceInsights,
    QueryLimits,
    RateLimits,
    StorageLimitResponse,
    StorageLimits,
    StorageSummary,
    SuccessResponse,
    UserGraphsResponse,
)
from robosystems.ids import new_id
from robosystems.observability import current_request_id
from robosystems.orgs.access import authorize
from robosystems.orgs.policy import Action
from robosystems.payments.base import PaymentProvider
from robosystems.payments.local import LocalPaymentProvider
from robosystems.payments.local_delivery import deliver_after_commit
from robosystems.services import AppServices

log = logging.getLogger("robosystems.graphs")

_GIB = 1024**3
_MIB = 1024**2
SLOW_QUERY_MS = 1000
STORAGE_WARNING_RATIO = 0.8
TIME_RANGES = {"24h": 1, "7d": 7, "30d": 30, "current_month": None, "last_month": None}
T = TypeVar("T")


def _iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).isoformat()


def _now() -> datetime:
    return datetime.now(UTC)


def graph_not_found() -> NotFound:
    return NotFound("Graph not found", code="graph_not_found")


async def _blocking(fn: Callable[[], T]) -> T:
    return await run_in_threadpool(fn)


def _backend(settings: Settings) -> GraphBackend:
    return backend_for(settings)


# --- context ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GraphContext:
    access: GraphAccess
    state: lifecycle.GraphState

    @property
    def graph_id(self) -> str:
        return self.state.graph_id

    @property
    def plan(self) -> GraphPlan:
        return self.state.plan

    @property
    def read_only(self) -> bool:
        return not self.state.writable


async def load_graph(session: AsyncSession, settings: Settings, principal: Principal, graph_id: str) -> GraphContext:
    access = await graph_access(session, principal.user_id, graph_id)
    if access is None:
        raise graph_not_found()
    row = (await session.execute(lifecycle.GRAPH_STATE_SQL, {"graph_id": graph_id})).one_or_none()
    if row is None:
        raise graph_not_found()
    state = lifecycle.state_from_row(row, catalog=get_catalog(settings.billing_plans_file), settings=settings)
    return GraphContext(access, state)


# --- create ----------------------------------------------------------------------------------------------------


def _default_plan(settings: Settings) -> str:
    plans = [p for p in get_catalog(settings.billing_plans_file).graph_plans if p.enabled]
    return plans[0].name


async def create_graph(
    session: AsyncSession,
    settings: Settings,
    provider: PaymentProvider,
    principal: Principal,
    body: CreateGraphRequest,
    idempotency_key: str | None,
) -> tuple[int, CreateGraphAccepted | PaymentRequired]:
    """A graph for the org (admin+): a subscription on the requested plan, then

    * billing disabled -> provisioning starts at once (202);
    * a payment method on file or invoice billing -> the subscription is created at the provider (charged to
      the method, or invoiced); provisioning starts when ``invoice.paid`` confirms the payment (202);
    * otherwise payment comes first: 402 ``payment_required`` with the hosted checkout URL (the pending
      subscription and the checkout session are kept, so paying there provisions this graph)."""
    request = CreateCheckoutRequest(
        plan_name=body.instance_tier or _default_plan(settings),
        resource_type="graph",
        resource_config=body.resource_config(),
        org_id=body.org_id,
    )
    result = await checkout.create_checkout(
        session, settings, provider, principal, request, idempotency_key, allow_off_session=True
    )
    assert result.subscription_id is not None
    status_url = f"/v1/operations/{result.subscription_id}/status"
    if not result.requires_checkout and not result.billing_disabled:
        await _deliver_local_events(session, settings, provider, result.subscription_id)
    # billing disabled, billed without checkout, or an idempotent repeat of a paid request
    if result.billing_disabled or not result.requires_checkout or result.status not in (None, "pending_payment"):
        graph_id = None
        if result.status not in (None, "pending_payment", "provisioning"):
            graph_id = await _provisioned_graph(session, result.subscription_id)
        return 202, CreateGraphAccepted(
            operation_id=result.subscription_id,
            subscription_id=result.subscription_id,
            status_url=status_url,
            status=result.status or "provisioning",
            graph_id=graph_id,
        )
    detail = "Payment is required before the graph is created: complete the checkout at checkout_url"
    return 402, PaymentRequired(
        detail=detail,
        checkout_url=result.checkout_url,
        session_id=result.session_id,
        subscription_id=result.subscription_id,
        request_id=current_request_id(),
    )


async def _deliver_local_events(
    session: AsyncSession, settings: Settings, provider: PaymentProvider, subscription_id: str
) -> None:
    """The local provider sends the webhooks Stripe would send about a subscription created without checkout, once
    our transaction has committed (before that, the events could not be matched to the subscription).  Delivered
    over HTTP to ``LOCAL_PAYMENTS_WEBHOOK_URL`` (default: this server's own webhook endpoint); undelivered events
    are sent again by the next delivery (a replay of the request) -- the inbox keeps one copy of each."""
    if not isinstance(provider, LocalPaymentProvider):
        return
    provider_sub = (
        await session.execute(
            text("SELECT provider_subscription_id FROM billing_subscriptions WHERE id = :id"), {"id": subscription_id}
        )
    ).scalar_one_or_none()
    if not provider_sub:
        return
    deliver_after_commit(session, settings, provider, "subscriptions", str(provider_sub))


async def _provisioned_graph(session: AsyncSession, subscription_id: str) -> str | None:
    row = (
        await session.execute(
            text(
                "SELECT g.graph_id FROM billing_subscriptions s JOIN graphs g ON g.graph_id = s.resource_id "
                "WHERE s.id = :s"
            ),
            {"s": subscription_id},
        )
    ).first()
    return None if row is None else str(row[0])


# --- list / select ---------------------------------------------------------------------------------------------

_LIST_SQL = text(
    """
    WITH reach AS (
        SELECT g.graph_id, CASE ou.role WHEN 'member' THEN 2 ELSE 3 END AS rank
          FROM org_users ou
          JOIN orgs o ON o.id = ou.org_id AND o.deleted_at IS NULL
          JOIN graphs g ON g.org_id = o.id AND NOT g.is_subgraph
         WHERE ou.user_id = :user AND ou.is_active AND ou.role IN ('owner', 'admin', 'member')
        UNION ALL
        SELECT gu.graph_id, CASE lower(btrim(gu.role)) WHEN 'admin' THEN 3 WHEN 'member' THEN 2 ELSE 1 END
          FROM graph_users gu WHERE gu.user_id = :user
    ), best AS (
        SELECT graph_id, max(rank) AS rank FROM reach GROUP BY graph_id
    )
    SELECT g.graph_id, g.graph_name, g.created_at, g.is_repository, g.repository_type, g.org_id, g.graph_tier,
           b.rank, s.status AS subscription_status, s.plan_name, s.ends_at, s.canceled_at,
           s.updated_at AS subscription_updated_at,
           CASE WHEN s.status = 'past_due' THEN (
               SELECT max(a.event_timestamp) FROM billing_audit_logs a
                WHERE a.subscription_id = s.id AND a.event_type = 'subscription_past_due') END AS past_due_since,
           COALESCE(sel.graph_id = g.graph_id, gu.is_selected AND sel.graph_id IS NULL, false) AS is_selected
    FROM best b
    JOIN graphs g ON g.graph_id = b.graph_id
    LEFT JOIN graph_selections sel ON sel.user_id = :user
    LEFT JOIN graph_users gu ON gu.user_id = :user AND gu.graph_id = g.graph_id
    LEFT JOIN LATERAL (
        SELECT bs.* FROM billing_subscriptions bs
         WHERE bs.resource_type = 'graph' AND bs.resource_id = g.graph_id
         ORDER BY (bs.status IN ('provisioning', 'active', 'past_due', 'unpaid', 'paused')) DESC, bs.created_at DESC
         LIMIT 1
    ) s ON true
    ORDER BY g.created_at, g.graph_id
    """
)
_RANK_ROLE = {3: "admin", 2: "member", 1: "viewer"}


async def list_graphs(session: AsyncSession, settings: Settings, principal: Principal) -> UserGraphsResponse:
    rows = (await session.execute(_LIST_SQL, {"user": principal.user_id})).all()
    graphs: list[GraphInfo] = []
    selected: str | None = None
    for r in rows:
        life = lifecycle.evaluate(
            r.subscription_status,
            settings=settings,
            past_due_since=r.past_due_since,
            ends_at=r.ends_at,
            canceled_at=r.canceled_at,
            updated_at=r.subscription_updated_at,
        )
        is_selected = bool(r.is_selected) and selected is None
        if is_selected:
            selected = r.graph_id
        graphs.append(
            GraphInfo(
                graph_id=r.graph_id,
                graph_name=r.graph_name,
                role=_RANK_ROLE[int(r.rank)],
                is_selected=is_selected,
                created_at=_iso(r.created_at) or "",
                is_repository=bool(r.is_repository),
                repository_type=r.repository_type,
                org_id=r.org_id,
                graph_tier=r.plan_name or r.graph_tier,
                read_only=not life.writable,
            )
        )
    return UserGraphsResponse(graphs=graphs, selected_graph_id=selected)


async def select_graph(session: AsyncSession, principal: Principal, graph_id: str) -> SuccessResponse:
    if await graph_access(session, principal.user_id, graph_id) is None:
        raise graph_not_found()
    await session.execute(
        text(
            "INSERT INTO graph_selections (user_id, graph_id, selected_at) VALUES (:u, :g, now()) "
            "ON CONFLICT (user_id) DO UPDATE SET graph_id = EXCLUDED.graph_id, selected_at = EXCLUDED.selected_at"
        ),
        {"u": principal.user_id, "g": graph_id},
    )
    return SuccessResponse(message="Graph selected", data={"selected_graph_id": graph_id})


# --- query -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Charge:
    amount: Decimal
    balance: Decimal | None


def _refused_error(exc: QueryRefused, graph: GraphContext) -> AppError:
    if exc.kind == "read_only":
        if graph.read_only:
            return Forbidden(graph.state.lifecycle.reason or "This graph is read-only", code="graph_read_only")
        return Forbidden("Your access to this graph is read-only", code="graph_read_only")
    if exc.kind == "forbidden_statement":
        return BadRequest(f"Statement not allowed: {exc}", code="query_not_allowed")
    if exc.kind == "syntax":
        return BadRequest("The query could not be parsed (Cypher syntax error)", code="query_syntax_error")
    if exc.kind == "binder":
        return BadRequest("The query refers to an unknown label, property, function or parameter", code="query_invalid")
    return BadRequest("The graph database refused the query", code="query_failed")


async def _charge(
    session: AsyncSession, settings: Settings, graph: GraphContext, principal: Principal, query_id: str
) -> _Charge:
    """Debit the query's credits in the request's transaction (one conditional UPDATE + the ledger row)."""
    cost = settings.query_credit_cost
    if cost <= 0 or graph.state.is_repository:
        return _Charge(Decimal(0), None)
    try:
        balance = await credits.consume_async(
            session,
            graph.graph_id,
            cost,
            description="Cypher query",
            user_id=principal.user_id,
            operation_id=query_id,
            metadata={"operation_type": "cypher_query", "request_id": current_request_id()},
        )
    except NotFound:
        raise credits.InsufficientCredits("This graph has no credits", code="insufficient_credits") from None
    return _Charge(Decimal(cost), balance)


def _usage_row(
    graph: GraphContext,
    principal: Principal,
    query_id: str,
    *,
    charge: _Charge,
    status_code: int,
    duration_ms: float,
    rows: int = 0,
    truncated: bool = False,
    error_type: str | None = None,
    query_length: int = 0,
) -> dict[str, Any]:
    now = _now()
    return {
        "id": new_id("usg"),
        "user_id": principal.user_id,
        "graph_id": graph.graph_id,
        "event_type": "query_execution",
        "operation_type": "cypher_query",
        "graph_tier": graph.plan.name,
        "credits_consumed": charge.amount,
        "base_credit_cost": charge.amount,
        "duration_ms": int(duration_ms),
        "status_code": status_code,
        "cached_operation": False,
        "error_type": error_type,
        "request_size_kb": query_length / 1024,
        "metadata": json.dumps(
            {
                "query_id": query_id,
                "rows": rows,
                "truncated": truncated,
                "read_only": graph.read_only,
                "request_id": current_request_id(),
            }
        ),
        "recorded_at": now.replace(tzinfo=None),
        "billing_year": now.year,
        "billing_month": now.month,
        "billing_day": now.day,
        "billing_hour": now.hour,
    }


_USAGE_INSERT = text(
    "INSERT INTO graph_usage (id, user_id, graph_id, event_type, operation_type, graph_tier, credits_consumed, "
    "base_credit_cost, duration_ms, status_code, cached_operation, error_type, request_size_kb, metadata, "
    "recorded_at, billing_year, billing_month, billing_day, billing_hour) VALUES (:id, :user_id, :graph_id, "
    ":event_type, :operation_type, :graph_tier, :credits_consumed, :base_credit_cost, :duration_ms, :status_code, "
    ":cached_operation, :error_type, :request_size_kb, :metadata, :recorded_at, :billing_year, :billing_month, "
    ":billing_day, :billing_hour)"
)


async def _record_failure(
    session: AsyncSession,
    graph: GraphContext,
    principal: Principal,
    query_id: str,
    charge: _Charge,
    *,
    refund: bool,
    usage: dict[str, Any],
) -> None:
    """Bookkeeping of a failed query, committed here: the error response that follows rolls the request's
    transaction back, and the refund and the usage event must stay."""
    if refund and charge.amount > 0:
        await credits.refund_async(
            session,
            graph.graph_id,
            charge.amount,
            description="Refund: query refused",
            idempotency_key=f"query-refund:{query_id}",
            user_id=principal.user_id,
            operation_id=query_id,
            metadata={"operation_type": "cypher_query"},
        )
        usage["credits_consumed"] = Decimal(0)
    await session.execute(_USAGE_INSERT, usage)
    await session.commit()


async def execute_query(
    session: AsyncSession,
    services: AppServices,
    principal: Principal,
    graph_id: str,
    body: CypherQueryRequest,
) -> CypherQueryResponse:
    """Run a Cypher query on the graph (module doc: credits, refunds, read-only graphs).

    The request's transaction is committed right after the credits are debited and BEFORE the query runs: a
    query may run up to the plan's timeout, and it must hold neither a pooled database connection nor the
    credit pool's row lock meanwhile (holding one per in-flight query starves the pool under load, and the debit
    must stand even if the process dies mid-query).  The usage event is written in a second, short transaction.
    """
    settings = services.settings
    graph = await load_graph(session, settings, principal, graph_id)
    if len(body.query) > settings.query_max_length:
        raise Unprocessable(f"The query is longer than {settings.query_max_length} characters", code="query_too_long")
    try:
        check_statement(body.query)
        check_parameters(body.parameters)
    except QueryRefused as exc:
        raise _refused_error(exc, graph) from None
    limits = await entitlements.graph_limits(session, graph.state.org_id, graph.graph_id, graph.plan)
    timeout_s = min(body.timeout or settings.query_default_timeout_seconds, limits.value("query_timeout_seconds"))
    max_rows = min(limits.value("max_rows_per_query"), settings.query_max_rows)
    storage = storage_guard(limits, await _size(settings, graph.graph_id))
    storage_full = not storage.allows_write(len(body.query) + len(json.dumps(body.parameters or {}, default=str)))
    query_id = new_id("qry")
    charge = await _charge(session, settings, graph, principal, query_id)
    await session.commit()  # the debit stands, the connection goes back to the pool before the query runs
    backend = _backend(settings)
    # callers with read access only, or a graph whose next write would exceed its storage: the engine refuses writes
    read_only_txn = (not graph.access.can_write or storage_full) and not graph.read_only

    def run() -> QueryOutput:
        return backend.query(
            graph.graph_id,
            body.query,
            body.parameters,
            timeout_ms=timeout_s * 1000,
            max_rows=max_rows,
            read_only=graph.read_only,
            read_only_transaction=read_only_txn,
        )

    started = datetime.now(UTC)

    def usage(status_code: int, error_type: str) -> dict[str, Any]:
        elapsed = (datetime.now(UTC) - started).total_seconds() * 1000
        return _usage_row(
            graph,
            principal,
            query_id,
            charge=charge,
            status_code=status_code,
            duration_ms=elapsed,
            error_type=error_type,
            query_length=len(body.query),
        )

    try:
        out = await _blocking(run)
    except QueryTimeout:
        await _record_failure(session, graph, principal, query_id, charge, refund=False, usage=usage(408, "timeout"))
        raise AppError(
            f"The query ran longer than {timeout_s} s and was stopped", code="query_timeout", status_code=408
        ) from None
    except QueryRefused as exc:
        full = storage_full and graph.access.can_write and exc.kind == "read_only"
        error = storage.refusal() if full else _refused_error(exc, graph)
        await _record_failure(
            session, graph, principal, query_id, charge, refund=True, usage=usage(error.status_code, exc.kind)
        )
        raise error from None
    except GraphBackendError:
        log.exception("graph %s: backend unavailable for a query", graph.graph_id)
        await _record_failure(session, graph, principal, query_id, charge, refund=True, usage=usage(503, "unavailable"))
        raise ServiceUnavailable("The graph database is not available right now", code="graph_unavailable") from None
    # The usage event is telemetry: its transaction doesn't wait for the WAL flush (a database crash may lose the
    # last few hundred ms of events, never a debit: those were committed synchronously above).
    await session.execute(text("SET LOCAL synchronous_commit TO off"))
    await session.execute(
        _USAGE_INSERT,
        _usage_row(
            graph,
            principal,
            query_id,
            charge=charge,
            status_code=200,
            duration_ms=out.execution_ms,
            rows=len(out.rows),
            truncated=out.truncated,
            query_length=len(body.query),
        ),
    )
    return CypherQueryResponse(
        graph_id=graph.graph_id,
        query_id=query_id,
        data=out.rows,
        columns=out.columns,
        row_count=len(out.rows),
        truncated=out.truncated,
        execution_time_ms=round(out.execution_ms, 3),
        timeout_seconds=timeout_s,
        max_rows=max_rows,
        read_only=graph.read_only or read_only_txn,
        credits_consumed=float(charge.amount),
        credits_remaining=float(charge.balance) if charge.balance is not None else None,
        timestamp=_iso(_now()) or "",
    )


# --- info / health / limits ------------------------------------------------------------------------------------


async def _size(settings: Settings, graph_id: str) -> int:
    return await _blocking(lambda: _backend(settings).size_bytes(graph_id))


async def database_info(
    session: AsyncSession, settings: Settings, principal: Principal, graph_id: str
) -> DatabaseInfoResponse:
    graph = await load_graph(session, settings, principal, graph_id)
    backend = _backend(settings)
    try:
        info = await _blocking(lambda: backend.info(graph.graph_id, read_only=graph.read_only))
    except GraphBackendError:
        log.exception("graph %s: info unavailable", graph.graph_id)
        raise ServiceUnavailable("The graph database is not available right now", code="graph_unavailable") from None
    modified = await _blocking(lambda: backend.last_modified(graph.graph_id))
    last_modified = datetime.fromtimestamp(modified, UTC) if modified else graph.state.updated_at
    return DatabaseInfoResponse(
        graph_id=graph.graph_id,
        database_name=graph.graph_id,
        database_size_bytes=info.size_bytes,
        database_size_mb=round(info.size_bytes / _MIB, 3),
        node_count=info.node_count,
        relationship_count=info.relationship_count,
        node_labels=info.node_labels,
        relationship_types=info.relationship_types,
        created_at=_iso(graph.state.created_at) or "",
        last_modified=_iso(last_modified) or "",
        read_only=graph.read_only,
        backup_count=0,
        schema_version=info.schema_version,
    )


async def _query_stats(session: AsyncSession, graph_id: str, since: datetime) -> Any:
    return (
        await session.execute(
            text(
                "SELECT count(*) AS n, avg(duration_ms) AS avg_ms, "
                "count(*) FILTER (WHERE status_code >= 400) AS errors, max(recorded_at) AS last_at "
                "FROM graph_usage WHERE graph_id = :g AND event_type = 'query_execution' AND recorded_at >= :since"
            ),
            {"g": graph_id, "since": since.astimezone(UTC).replace(tzinfo=None)},
        )
    ).one()


async def database_health(
    session: AsyncSession, settings: Settings, principal: Principal, graph_id: str
) -> DatabaseHealthResponse:
    graph = await load_graph(session, settings, principal, graph_id)
    backend = _backend(settings)
    healthy = await _blocking(lambda: backend.health(graph.graph_id, read_only=graph.read_only))
    size = await _size(settings, graph.graph_id)
    stats = await _query_stats(session, graph.graph_id, _now() - timedelta(hours=24))
    count = int(stats.n or 0)
    alerts: list[str] = []
    if graph.read_only and graph.state.lifecycle.reason:
        alerts.append(graph.state.lifecycle.reason)
    limit_gb = (await _storage(session, settings, graph)).limit_bytes / _GIB
    if limit_gb and size / _GIB >= limit_gb * STORAGE_WARNING_RATIO:
        alerts.append("Storage is approaching the plan's limit")
    if not healthy:
        alerts.append("The graph database did not answer its health check")
    return DatabaseHealthResponse(
        graph_id=graph.graph_id,
        status="healthy" if healthy else "unhealthy",
        connection_status="connected" if healthy else "disconnected",
        uptime_seconds=max(0.0, (_now() - graph.state.created_at).total_seconds()),
        query_count_24h=count,
        avg_query_time_ms=round(float(stats.avg_ms or 0), 3),
        error_rate_24h=round(int(stats.errors or 0) / count, 4) if count else 0.0,
        last_query_time=_iso(stats.last_at),
        storage_usage_mb=round(size / _MIB, 3),
        alerts=alerts,
    )


async def _pool(session: AsyncSession, graph_id: str) -> Any:
    return (
        await session.execute(
            text(
                "SELECT id, current_balance, monthly_allocation, storage_limit_gb, storage_override_gb, "
                "storage_warning_threshold, last_allocation_date FROM graph_credits WHERE graph_id = :g"
            ),
            {"g": graph_id},
        )
    ).one_or_none()


async def _storage(session: AsyncSession, settings: Settings, graph: GraphContext) -> StorageGuard:
    """The graph's storage use against its ``max_storage_bytes`` entitlement."""
    limits = await entitlements.graph_limits(session, graph.state.org_id, graph.graph_id, graph.plan)
    return storage_guard(limits, await _size(settings, graph.graph_id))


async def graph_limits(
    session: AsyncSession, settings: Settings, principal: Principal, graph_id: str
) -> GraphLimitsResponse:
    graph = await load_graph(session, settings, principal, graph_id)
    plan = graph.plan
    pool = await _pool(session, graph.graph_id)
    size_gb = await _size(settings, graph.graph_id) / _GIB
    limits = await entitlements.graph_limits(session, graph.state.org_id, graph.graph_id, plan)
    limit_gb = limits.max_storage_bytes / _GIB
    q, cp, bk, rl = plan.limits.queries, plan.limits.copy_operations, plan.limits.backups, plan.limits.rate_limits
    return GraphLimitsResponse(
        graph_id=graph.graph_id,
        subscription_tier=plan.name,
        graph_tier=plan.name,
        is_shared_repository=graph.state.is_repository,
        storage=StorageLimits(
            max_storage_gb=limit_gb,
            approaching_limit=size_gb >= limit_gb * STORAGE_WARNING_RATIO,
            current_usage_gb=round(size_gb, 6),
        ),
        queries=QueryLimits(
            max_timeout_seconds=limits.value("query_timeout_seconds"),
            chunk_size=q.chunk_size,
            max_rows_per_query=min(limits.value("max_rows_per_query"), settings.query_max_rows),
            concurrent_queries=q.concurrent_queries,
        ),
        copy_operations=CopyOperationLimits(**cp.model_dump()),
        backups=BackupLimits(**bk.model_dump()),
        rate_limits=RateLimits(**rl.model_dump()),
        credits=CreditLimits(
            monthly_ai_credits=limits.value("monthly_credits"),
            current_balance=int(pool.current_balance) if pool is not None else 0,
            storage_billing_enabled=plan.limits.credits.storage_billing_enabled,
            storage_rate_per_gb_per_day=plan.limits.credits.storage_rate_per_gb_per_day,
        ),
        read_only=graph.read_only,
        subscription_status=graph.state.subscription_status,
    )


# --- credits ---------------------------------------------------------------------------------------------------


def _month_start(now: datetime) -> datetime:
    return datetime(now.year, now.month, 1, tzinfo=UTC)


async def _require_pool(session: AsyncSession, graph_id: str) -> Any:
    pool = await _pool(session, graph_id)
    if pool is None:
        raise NotFound("This graph has no credit pool", code="credit_pool_not_found")
    return pool


async def credit_summary(
    session: AsyncSession, settings: Settings, principal: Principal, graph_id: str
) -> CreditSummaryResponse:
    graph = await load_graph(session, settings, principal, graph_id)
    pool = await _require_pool(session, graph.graph_id)
    stats = (
        await session.execute(
            text(
                "SELECT count(*) AS n, COALESCE(sum(-amount) FILTER (WHERE transaction_type = 'consumption' "
                "AND created_at >= :month), 0) - COALESCE(sum(amount) FILTER (WHERE transaction_type = 'refund' "
                "AND created_at >= :month), 0) AS consumed FROM graph_credit_transactions WHERE graph_credits_id = :p"
            ),
            {"p": pool.id, "month": _month_start(_now())},
        )
    ).one()
    consumed = max(float(stats.consumed or 0), 0.0)
    allocation = float(pool.monthly_allocation or 0)
    return CreditSummaryResponse(
        graph_id=graph.graph_id,
        graph_tier=graph.plan.name,
        current_balance=float(pool.current_balance),
        monthly_allocation=allocation,
        consumed_this_month=consumed,
        transaction_count=int(stats.n),
        usage_percentage=round(consumed / allocation * 100, 2) if allocation else 0.0,
        last_allocation_date=_iso(pool.last_allocation_date),
    )


def _parse_when(value: str | None, what: str, *, end: bool = False) -> datetime | None:
    if value is None or not value.strip():
        return None
    raw = value.strip()
    try:
        if len(raw) == 10:
            day = date.fromisoformat(raw)
            return datetime.combine(day + timedelta(days=1) if end else day, time.min, tzinfo=UTC)
        parsed = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        raise BadRequest(f"{what} must be an ISO-8601 date or date-time", code="invalid_date") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _metadata(raw: str | None) -> dict[str, Any]:
    if not raw:
        return {}
    try:
        value = json.loads(raw)
    except ValueError:
        return {"raw": raw[:500]}
    return value if isinstance(value, dict) else {"value": value}


async def credit_transactions(
    session: AsyncSession,
    settings: Settings,
    principal: Principal,
    graph_id: str,
    *,
    transaction_type: str | None,
    operation_type: str | None,
    start_date: str | None,
    end_date: str | None,
    limit: int,
    offset: int,
) -> DetailedTransactionsResponse:
    graph = await load_graph(session, settings, principal, graph_id)
    start = _parse_when(start_date, "start_date")
    end = _parse_when(end_date, "end_date", end=True)
    if start and end and start > end:
        raise BadRequest("start_date is after end_date", code="invalid_date_range")
    conditions = ["graph_id = :g"]
    params: dict[str, Any] = {"g": graph.graph_id}
    if transaction_type:
        conditions.append("transaction_type = :tt")
        params["tt"] = transaction_type
    if operation_type:
        conditions.append("metadata IS NOT NULL AND metadata LIKE '{%' AND metadata::jsonb->>'operation_type' = :ot")
        params["ot"] = operation_type
    if start:
        conditions.append("created_at >= :start")
        params["start"] = start
    if end:
        conditions.append("created_at < :end")
        params["end"] = end
    where = " AND ".join(conditions)
    total = (
        await session.execute(
            text("SELECT count(*) FROM graph_credit_transactions WHERE graph_id = :g"), {"g": graph.graph_id}
        )
    ).scalar_one()
    op = "COALESCE(CASE WHEN metadata LIKE '{%' THEN metadata::jsonb->>'operation_type' END, transaction_type)"
    by_operation = (
        await session.execute(
            text(
                f"SELECT {op} AS op, count(*) AS n, sum(amount) AS total, avg(amount) AS average, "  # noqa: S608
                f"min(created_at) AS first_at, max(created_at) AS last_at FROM graph_credit_transactions "
                f"WHERE {where} GROUP BY 1 ORDER BY 1"
            ),
            params,
        )
    ).all()
    rows = (
        await session.execute(
            text(
                f"SELECT id, transaction_type, amount, description, metadata, created_at, operation_id, "  # noqa: S608
                f"idempotency_key, request_id, user_id FROM graph_credit_transactions WHERE {where} "
                f"ORDER BY created_at DESC, id DESC LIMIT :limit OFFSET :offset"
            ),
            {**params, "limit": limit, "offset": offset},
        )
    ).all()
    filtered = sum(int(r.n) for r in by_operation)
    return DetailedTransactionsResponse(
        transactions=[
            EnhancedCreditTransactionResponse(
                id=r.id,
                type=r.transaction_type,
                amount=float(r.amount),
                description=r.description,
                metadata=_metadata(r.metadata),
                created_at=_iso(r.created_at) or "",
                operation_id=r.operation_id,
                idempotency_key=r.idempotency_key,
                request_id=r.request_id,
                user_id=r.user_id,
            )
            for r in rows
        ],
        summary={  # the client's TransactionSummaryResponse per operation type
            r.op: {
                "operation_type": r.op,
                "total_amount": float(r.total or 0),
                "transaction_count": int(r.n),
                "average_amount": round(float(r.average or 0), 4),
                "first_transaction": _iso(r.first_at),
                "last_transaction": _iso(r.last_at),
            }
            for r in by_operation
        },
        total_count=int(total),
        filtered_count=filtered,
        date_range={"start": _iso(start), "end": _iso(end)},
    )


async def check_balance(
    session: AsyncSession, settings: Settings, principal: Principal, graph_id: str, base_cost: Decimal
) -> dict[str, Any]:
    graph = await load_graph(session, settings, principal, graph_id)
    pool = await _require_pool(session, graph.graph_id)
    balance = Decimal(pool.current_balance)
    return {
        "graph_id": graph.graph_id,
        "base_cost": float(base_cost),
        "required_credits": float(base_cost),
        "current_balance": float(balance),
        "available_credits": float(balance),
        "has_sufficient_credits": balance >= base_cost,
        "sufficient": balance >= base_cost,
        "graph_tier": graph.plan.name,
    }


async def storage_usage(
    session: AsyncSession, settings: Settings, principal: Principal, graph_id: str, days: int
) -> dict[str, Any]:
    graph = await load_graph(session, settings, principal, graph_id)
    storage = await _storage(session, settings, graph)
    size, limit_gb = storage.used_bytes, storage.limit_bytes / _GIB
    since = (_now() - timedelta(days=days)).replace(tzinfo=None)
    snapshots = (
        await session.execute(
            text(
                "SELECT date_trunc('hour', recorded_at) AS hour, max(storage_gb) AS gb FROM graph_usage "
                "WHERE graph_id = :g AND event_type = 'storage_snapshot' AND recorded_at >= :since "
                "GROUP BY 1 ORDER BY 1"
            ),
            {"g": graph.graph_id, "since": since},
        )
    ).all()
    values = [float(s.gb or 0) for s in snapshots]
    current_gb = size / _GIB
    return {
        "graph_id": graph.graph_id,
        "graph_tier": graph.plan.name,
        "days": days,
        "current_storage_bytes": size,
        "current_storage_gb": round(current_gb, 6),
        "storage_limit_gb": limit_gb,
        "usage_percentage": round(current_gb / limit_gb * 100, 4) if limit_gb else 0.0,
        "storage_limit_bytes": storage.limit_bytes,
        "limit_source": storage.source,
        "within_limit": storage.within_limit,
        "writes_allowed": storage.allows_write(0),
        "measurement_count": len(values),
        "avg_storage_gb": round(sum(values) / len(values), 6) if values else 0.0,
        "max_storage_gb": round(max(values), 6) if values else 0.0,
        "snapshots": [{"recorded_at": _iso(s.hour), "storage_gb": float(s.gb or 0)} for s in snapshots],
    }


async def storage_limits(
    session: AsyncSession, settings: Settings, principal: Principal, graph_id: str
) -> StorageLimitResponse:
    graph = await load_graph(session, settings, principal, graph_id)
    pool = await _pool(session, graph.graph_id)
    storage = await _storage(session, settings, graph)
    limit_gb, override = storage.limit_bytes / _GIB, storage.source != f"plan:{graph.plan.name}"
    current_gb = storage.used_bytes / _GIB
    threshold = float(pool.storage_warning_threshold) if pool is not None else STORAGE_WARNING_RATIO
    usage = current_gb / limit_gb * 100 if limit_gb else 0.0
    approaching = limit_gb > 0 and current_gb >= limit_gb * threshold
    within = current_gb <= limit_gb
    recommendations: list[str] = []
    if not within:
        recommendations.append("Storage is over the plan's limit: remove data or move to a larger plan")
    elif approaching:
        recommendations.append("Storage is approaching the plan's limit: consider a larger plan")
    return StorageLimitResponse(
        graph_id=graph.graph_id,
        current_storage_gb=round(current_gb, 6),
        effective_limit_gb=limit_gb,
        usage_percentage=round(usage, 4),
        within_limit=within,
        approaching_limit=approaching,
        needs_warning=approaching or not within,
        has_override=override,
        recommendations=recommendations or None,
    )


# --- analytics -------------------------------------------------------------------------------------------------


async def graph_metrics(
    session: AsyncSession, settings: Settings, principal: Principal, graph_id: str
) -> GraphMetricsResponse:
    graph = await load_graph(session, settings, principal, graph_id)
    backend = _backend(settings)
    try:
        nodes, rels = await _blocking(lambda: backend.counts(graph.graph_id, read_only=graph.read_only))
    except GraphBackendError:
        log.exception("graph %s: metrics unavailable", graph.graph_id)
        raise ServiceUnavailable("The graph database is not available right now", code="graph_unavailable") from None
    size = await _size(settings, graph.graph_id)
    return GraphMetricsResponse(
        graph_id=graph.graph_id,
        timestamp=_iso(_now()) or "",
        total_nodes=sum(nodes.values()),
        total_relationships=sum(rels.values()),
        node_counts=nodes,
        relationship_counts=rels,
        estimated_size={"bytes": size, "mb": round(size / _MIB, 3), "gb": round(size / _GIB, 6)},
        health_status={
            "status": "healthy",
            "read_only": graph.read_only,
            "subscription_status": graph.state.subscription_status,
        },
        graph_name=graph.state.graph_name,
        user_role=graph.access.role,
    )


def _window(time_range: str, now: datetime) -> tuple[datetime, datetime]:
    if time_range not in TIME_RANGES:
        raise Unprocessable(f"time_range must be one of {', '.join(TIME_RANGES)}", code="invalid_time_range")
    if time_range == "current_month":
        return _month_start(now), now
    if time_range == "last_month":
        this_month = _month_start(now)
        previous = (this_month - timedelta(days=1)).replace(day=1)
        return previous, this_month
    days = TIME_RANGES[time_range] or 30
    return now - timedelta(days=days), now


async def usage_analytics(
    session: AsyncSession,
    settings: Settings,
    principal: Principal,
    graph_id: str,
    *,
    time_range: str,
    include_storage: bool,
    include_credits: bool,
    include_performance: bool,
    include_events: bool,
) -> GraphUsageResponse:
    graph = await load_graph(session, settings, principal, graph_id)
    now = _now()
    start, end = _window(time_range, now)
    naive = {"g": graph.graph_id, "start": start.replace(tzinfo=None), "end": end.replace(tzinfo=None)}
    tier = graph.plan.name
    result = GraphUsageResponse(graph_id=graph.graph_id, time_range=time_range, timestamp=_iso(now) or "")
    if include_storage:
        s = (
            await session.execute(
                text(
                    "SELECT avg(gb) AS avg_gb, max(gb) AS max_gb, min(gb) AS min_gb, sum(gb) AS gb_hours, "
                    "count(*) AS n FROM (SELECT date_trunc('hour', recorded_at) AS h, max(storage_gb) AS gb "
                    "FROM graph_usage WHERE graph_id = :g AND event_type = 'storage_snapshot' "
                    "AND recorded_at >= :start AND recorded_at < :end GROUP BY 1) hourly"
                ),
                naive,
            )
        ).one()
        result.storage_summary = StorageSummary(
            graph_tier=tier,
            avg_storage_gb=float(s.avg_gb or 0),
            max_storage_gb=float(s.max_gb or 0),
            min_storage_gb=float(s.min_gb or 0),
            total_gb_hours=float(s.gb_hours or 0),
            measurement_count=int(s.n),
        )
    if include_credits:
        rows = (
            await session.execute(
                text(
                    "SELECT COALESCE(metadata::jsonb->>'operation_type', transaction_type) AS op, count(*) AS n, "
                    "sum(-amount) AS consumed FROM graph_credit_transactions WHERE graph_id = :g "
                    "AND transaction_type = 'consumption' AND created_at >= :start AND created_at < :end "
                    "AND (metadata IS NULL OR metadata LIKE '{%') GROUP BY 1"
                ),
                {"g": graph.graph_id, "start": start, "end": end},
            )
        ).all()
        consumed = sum(float(r.consumed or 0) for r in rows)
        count = sum(int(r.n) for r in rows)
        result.credit_summary = CreditSummary(
            graph_tier=tier,
            total_credits_consumed=consumed,
            total_base_cost=consumed,
            operation_breakdown={r.op: {"count": int(r.n), "credits": float(r.consumed or 0)} for r in rows},
            cached_operations=0,
            billable_operations=count,
            transaction_count=count,
        )
    if include_performance:
        ops = (
            await session.execute(
                text(
                    "SELECT COALESCE(operation_type, event_type) AS op, count(*) AS n, avg(duration_ms) AS avg_ms, "
                    "max(duration_ms) AS max_ms, count(*) FILTER (WHERE status_code >= 400) AS errors "
                    "FROM graph_usage WHERE graph_id = :g AND event_type <> 'storage_snapshot' "
                    "AND recorded_at >= :start AND recorded_at < :end GROUP BY 1"
                ),
                naive,
            )
        ).all()
        slow = (
            await session.execute(
                text(
                    "SELECT recorded_at, duration_ms, status_code, user_id FROM graph_usage WHERE graph_id = :g "
                    "AND event_type = 'query_execution' AND duration_ms >= :slow "
                    "AND recorded_at >= :start AND recorded_at < :end ORDER BY duration_ms DESC LIMIT 10"
                ),
                {**naive, "slow": SLOW_QUERY_MS},
            )
        ).all()
        total = sum(int(o.n) for o in ops)
        errors = sum(int(o.errors or 0) for o in ops)
        score = 100 - min(50, len(slow) * 5) - (min(50, round(errors / total * 100)) if total else 0)
        result.performance_insights = PerformanceInsights(
            analysis_period_days=max(1, (end - start).days),
            total_operations=total,
            operation_stats={
                o.op: {
                    "count": int(o.n),
                    "avg_duration_ms": float(o.avg_ms or 0),
                    "max_duration_ms": int(o.max_ms or 0),
                    "errors": int(o.errors or 0),
                }
                for o in ops
            },
            slow_queries=[
                {
                    "recorded_at": _iso(q.recorded_at),
                    "duration_ms": q.duration_ms,
                    "status_code": q.status_code,
                    "user_id": q.user_id,
                }
                for q in slow
            ],
            performance_score=max(0, score),
        )
    if include_events:
        events = (
            await session.execute(
                text(
                    "SELECT id, event_type, operation_type, recorded_at, duration_ms, status_code, credits_consumed, "
                    "storage_gb, user_id FROM graph_usage WHERE graph_id = :g AND recorded_at >= :start "
                    "AND recorded_at < :end ORDER BY recorded_at DESC, id DESC LIMIT 50"
                ),
                naive,
            )
        ).all()
        result.recent_events = [
            {
                "id": e.id,
                "event_type": e.event_type,
                "operation_type": e.operation_type,
                "recorded_at": _iso(e.recorded_at),
                "duration_ms": e.duration_ms,
                "status_code": e.status_code,
                "credits_consumed": float(e.credits_consumed) if e.credits_consumed is not None else None,
                "storage_gb": e.storage_gb,
                "user_id": e.user_id,
            }
            for e in events
        ]
    return result


# --- operations ------------------------------------------------------------------------------------------------

_OPERATION_STATUS = {
    "pending_payment": ("pending", 0, "Waiting for the payment to be confirmed"),
    "provisioning": ("running", 50, "Creating the graph database"),
    "active": ("completed", 100, "The graph is ready"),
    "past_due": ("completed", 100, "The graph is ready (payment past due)"),
    "unpaid": ("completed", 100, "The graph is ready (unpaid: read-only)"),
    "paused": ("completed", 100, "The graph is ready (paused: read-only)"),
    "failed": ("failed", 100, "Provisioning failed"),
    "refunded": ("failed", 100, "Provisioning failed; the payment was refunded"),
    "canceled": ("cancelled", 100, "The subscription was canceled"),
    "expired": ("cancelled", 100, "The checkout expired before payment"),
}


async def operation_status(session: AsyncSession, principal: Principal, operation_id: str) -> OperationStatusResponse:
    """The provisioning of a subscription (the operation id is the subscription id); members of its org only."""
    row = (
        await session.execute(
            text(
                "SELECT s.id, s.org_id, s.status, s.resource_id, s.failure_reason, s.created_at, s.updated_at, "
                "s.started_at, s.provisioning_attempt, s.compensation_status, "
                "EXISTS (SELECT 1 FROM graphs g WHERE g.graph_id = s.resource_id) AS graph_exists "
                "FROM billing_subscriptions s WHERE s.id = :id AND s.resource_type = 'graph'"
            ),
            {"id": operation_id},
        )
    ).one_or_none()
    if row is None:
        raise NotFound("Operation not found", code="operation_not_found")
    try:
        await authorize(session, principal, row.org_id, Action.VIEW_GRAPHS)
    except (NotFound, Forbidden):
        raise NotFound("Operation not found", code="operation_not_found") from None
    status, progress, message = _OPERATION_STATUS.get(row.status, ("running", 50, row.status))
    graph_id = row.resource_id if row.graph_exists else None
    error = None
    if status == "failed":
        error = (row.failure_reason or "provisioning failed")[:200]
        if row.compensation_status in ("refunded", "credited"):
            message = f"Provisioning failed; the payment was {row.compensation_status}"
    done = status in ("completed", "failed", "cancelled")
    return OperationStatusResponse(
        operation_id=row.id,
        operation_type="graph_provisioning",
        status=status,
        subscription_id=row.id,
        subscription_status=row.status,
        progress_percent=progress,
        message=message,
        graph_id=graph_id,
        result={"graph_id": graph_id} if graph_id else None,
        error=error,
        attempt=int(row.provisioning_attempt or 0),
        created_at=_iso(row.created_at) or "",
        updated_at=_iso(row.updated_at) or "",
        completed_at=_iso(row.started_at if status == "completed" else row.updated_at) if done else None,
    )
