"""Graph endpoints (``/v1/graphs``) and provisioning status (``/v1/operations``).  Thin handlers: one service
call each.  ``GET /v1/graphs/tiers`` is served by the billing offering router (registered before this one)."""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated

from fastapi import APIRouter, Depends, Header, Path, Query
from fastapi.responses import JSONResponse

from robosystems.auth.deps import CurrentPrincipal, DbSession, Services
from robosystems.graphs import service
from robosystems.graphs.schemas import (
    CreateGraphAccepted,
    CreateGraphRequest,
    CreditSummaryResponse,
    CypherQueryRequest,
    CypherQueryResponse,
    DatabaseHealthResponse,
    DatabaseInfoResponse,
    DetailedTransactionsResponse,
    GraphLimitsResponse,
    GraphMetricsResponse,
    GraphUsageResponse,
    OperationStatusResponse,
    PaymentRequired,
    StorageLimitResponse,
    SuccessResponse,
    UserGraphsResponse,
)
from robosystems.payments.base import PaymentProvider
from robosystems.payments.factory import get_provider
from robosystems.services import AppServices, get_services

router = APIRouter(prefix="/v1/graphs", tags=["graphs"])
operations_router = APIRouter(prefix="/v1/operations", tags=["operations"])

GraphId = Annotated[str, Path(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")]
OperationId = Annotated[str, Path(min_length=1, max_length=64)]
IdempotencyKey = Annotated[str | None, Header(alias="Idempotency-Key")]


def payment_provider(services: Annotated[AppServices, Depends(get_services)]) -> PaymentProvider:
    return get_provider(services.settings)


Provider = Annotated[PaymentProvider, Depends(payment_provider)]


@router.post(
    "",
    status_code=202,
    response_model=CreateGraphAccepted,
    responses={402: {"model": PaymentRequired}},
    operation_id="create_graph",
)
async def create_graph(
    body: CreateGraphRequest,
    principal: CurrentPrincipal,
    db: DbSession,
    services: Services,
    provider: Provider,
    idempotency_key: IdempotencyKey = None,
) -> JSONResponse:
    # 402 is an answer, not an error: the pending subscription and its checkout session are committed.
    status, payload = await service.create_graph(db, services.settings, provider, principal, body, idempotency_key)
    return JSONResponse(payload.model_dump(mode="json"), status_code=status)


@router.get("", response_model=UserGraphsResponse, operation_id="get_graphs")
async def get_graphs(principal: CurrentPrincipal, db: DbSession, services: Services) -> UserGraphsResponse:
    return await service.list_graphs(db, services.settings, principal)


@router.post("/{graph_id}/select", response_model=SuccessResponse, operation_id="select_graph")
async def select_graph(graph_id: GraphId, principal: CurrentPrincipal, db: DbSession) -> SuccessResponse:
    return await service.select_graph(db, principal, graph_id)


@router.post("/{graph_id}/query", response_model=CypherQueryResponse, operation_id="execute_cypher_query")
async def execute_cypher_query(
    graph_id: GraphId,
    body: CypherQueryRequest,
    principal: CurrentPrincipal,
    db: DbSession,
    services: Services,
    mode: Annotated[str | None, Query(max_length=20)] = None,  # accepted: results are always returned as JSON
    chunk_size: Annotated[int | None, Query(ge=1, le=100000)] = None,  # accepted, unused
) -> CypherQueryResponse:
    return await service.execute_query(db, services, principal, graph_id, body)


@router.get("/{graph_id}/info", response_model=DatabaseInfoResponse, operation_id="get_database_info")
async def get_database_info(
    graph_id: GraphId, principal: CurrentPrincipal, db: DbSession, services: Services
) -> DatabaseInfoResponse:
    return await service.database_info(db, services.settings, principal, graph_id)


@router.get("/{graph_id}/health", response_model=DatabaseHealthResponse, operation_id="get_database_health")
async def get_database_health(
    graph_id: GraphId, principal: CurrentPrincipal, db: DbSession, services: Services
) -> DatabaseHealthResponse:
    return await service.database_health(db, services.settings, principal, graph_id)


@router.get("/{graph_id}/limits", response_model=GraphLimitsResponse, operation_id="get_graph_limits")
async def get_graph_limits(
    graph_id: GraphId, principal: CurrentPrincipal, db: DbSession, services: Services
) -> GraphLimitsResponse:
    return await service.graph_limits(db, services.settings, principal, graph_id)


@router.get("/{graph_id}/credits/summary", response_model=CreditSummaryResponse, operation_id="get_credit_summary")
async def get_credit_summary(
    graph_id: GraphId, principal: CurrentPrincipal, db: DbSession, services: Services
) -> CreditSummaryResponse:
    return await service.credit_summary(db, services.settings, principal, graph_id)


@router.get(
    "/{graph_id}/credits/transactions",
    response_model=DetailedTransactionsResponse,
    operation_id="list_credit_transactions",
)
async def list_credit_transactions(
    graph_id: GraphId,
    principal: CurrentPrincipal,
    db: DbSession,
    services: Services,
    transaction_type: Annotated[str | None, Query(max_length=40)] = None,
    operation_type: Annotated[str | None, Query(max_length=60)] = None,
    start_date: Annotated[str | None, Query(max_length=40)] = None,
    end_date: Annotated[str | None, Query(max_length=40)] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 50,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> DetailedTransactionsResponse:
    return await service.credit_transactions(
        db,
        services.settings,
        principal,
        graph_id,
        transaction_type=transaction_type,
        operation_type=operation_type,
        start_date=start_date,
        end_date=end_date,
        limit=limit,
        offset=offset,
    )


@router.get("/{graph_id}/credits/balance/check", operation_id="check_credit_balance")
async def check_credit_balance(
    graph_id: GraphId,
    principal: CurrentPrincipal,
    db: DbSession,
    services: Services,
    base_cost: Annotated[Decimal, Query(ge=0, le=Decimal("99999999.99"), max_digits=12, decimal_places=2)],
) -> dict[str, object]:
    return await service.check_balance(db, services.settings, principal, graph_id, base_cost)


@router.get("/{graph_id}/credits/storage/usage", operation_id="get_storage_usage")
async def get_storage_usage(
    graph_id: GraphId,
    principal: CurrentPrincipal,
    db: DbSession,
    services: Services,
    days: Annotated[int, Query(ge=1, le=365)] = 30,
) -> dict[str, object]:
    return await service.storage_usage(db, services.settings, principal, graph_id, days)


@router.get(
    "/{graph_id}/credits/storage/limits", response_model=StorageLimitResponse, operation_id="check_storage_limits"
)
async def check_storage_limits(
    graph_id: GraphId, principal: CurrentPrincipal, db: DbSession, services: Services
) -> StorageLimitResponse:
    return await service.storage_limits(db, services.settings, principal, graph_id)


@router.get("/{graph_id}/analytics", response_model=GraphMetricsResponse, operation_id="get_graph_metrics")
async def get_graph_metrics(
    graph_id: GraphId, principal: CurrentPrincipal, db: DbSession, services: Services
) -> GraphMetricsResponse:
    return await service.graph_metrics(db, services.settings, principal, graph_id)


@router.get("/{graph_id}/analytics/usage", response_model=GraphUsageResponse, operation_id="get_graph_usage_analytics")
async def get_graph_usage_analytics(
    graph_id: GraphId,
    principal: CurrentPrincipal,
    db: DbSession,
    services: Services,
    time_range: Annotated[str, Query(max_length=20)] = "30d",
    include_storage: bool = True,
    include_credits: bool = True,
    include_performance: bool = False,
    include_events: bool = False,
) -> GraphUsageResponse:
    return await service.usage_analytics(
        db,
        services.settings,
        principal,
        graph_id,
        time_range=time_range,
        include_storage=include_storage,
        include_credits=include_credits,
        include_performance=include_performance,
        include_events=include_events,
    )


@operations_router.get(
    "/{operation_id}/status", response_model=OperationStatusResponse, operation_id="get_operation_status"
)
async def get_operation_status(
    operation_id: OperationId, principal: CurrentPrincipal, db: DbSession
) -> OperationStatusResponse:
    return await service.operation_status(db, principal, operation_id)
