"""Org graphs, limits and usage: ``GET /v1/orgs/{org_id}/graphs|limits|usage`` (members; via ``access.require``)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel

from robosystems.auth.deps import DbSession
from robosystems.orgs import usage
from robosystems.orgs.access import OrgAccess, require
from robosystems.orgs.policy import Action

router = APIRouter(prefix="/v1/orgs", tags=["org_usage"])

# ``Annotated[OrgAccess, Depends(require(action))]`` as module-level aliases (mypy needs literal aliases).
ViewGraphsAccess = Annotated[OrgAccess, Depends(require(Action.VIEW_GRAPHS))]
ViewLimitsAccess = Annotated[OrgAccess, Depends(require(Action.VIEW_LIMITS))]
ViewUsageAccess = Annotated[OrgAccess, Depends(require(Action.VIEW_USAGE))]


class OrgGraphItem(BaseModel):
    graph_id: str
    graph_name: str
    graph_type: str
    graph_tier: str
    credits_available: float
    credits_used: float
    created_at: datetime
    updated_at: datetime


class GraphSlots(BaseModel):
    current: int
    limit: int
    remaining: int
    owned: int
    pending: int


class OrgCurrentUsage(BaseModel):
    graphs: GraphSlots


class OrgLimitsResponse(BaseModel):
    org_id: str
    max_graphs: int
    current_usage: OrgCurrentUsage
    warnings: list[str]
    can_create_graph: bool


class OrgUsageSummary(BaseModel):
    total_credits_used: float
    total_ai_operations: int
    total_storage_gb: float
    total_api_calls: int
    daily_avg_credits: float
    daily_avg_api_calls: float
    projected_monthly_credits: float
    projected_monthly_api_calls: int
    credits_limit: int | None
    api_calls_limit: int | None
    storage_limit_gb: int | None


class OrgGraphUsage(BaseModel):
    graph_id: str
    graph_name: str
    graph_tier: str
    parent_graph_id: str | None
    credits_used: float
    ai_operations: int
    api_calls: int
    storage_gb: float
    credits_available: float
    credits_allocated: float


class OrgUsageDay(BaseModel):
    date: str
    credits_used: float
    ai_operations: int
    api_calls: int
    storage_gb: float


class OrgUsageResponse(BaseModel):
    org_id: str
    period_days: int
    start_date: datetime
    end_date: datetime
    summary: OrgUsageSummary
    graph_details: list[OrgGraphUsage]
    daily_trend: list[OrgUsageDay]


@router.get("/{org_id}/graphs", response_model=list[OrgGraphItem])
async def list_org_graphs(access: ViewGraphsAccess, session: DbSession) -> list[dict[str, Any]]:
    return await usage.org_graphs(session, access.org_id)


@router.get("/{org_id}/limits", response_model=OrgLimitsResponse)
async def get_org_limits(access: ViewLimitsAccess, session: DbSession) -> dict[str, Any]:
    return await usage.org_limits(session, access.org_id, role=access.role)


@router.get("/{org_id}/usage", response_model=OrgUsageResponse)
async def get_org_usage(
    access: ViewUsageAccess,
    session: DbSession,
    days: Annotated[int, Query(ge=1, le=365)] = 30,
) -> dict[str, Any]:
    return await usage.org_usage(session, access.org_id, days)
