"""Admin: the webhook inbox (``/admin/v1/webhooks/events``)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query

from robosystems.admin.deps import require_admin
from robosystems.auth.deps import DbSession
from robosystems.webhooks import service
from robosystems.webhooks.schemas import (
    EventStatus,
    ReplayFailedResult,
    ReplayResult,
    WebhookEventDetail,
    WebhookEventList,
)

router = APIRouter(
    prefix="/admin/v1/webhooks", tags=["admin"], include_in_schema=False, dependencies=[Depends(require_admin)]
)


@router.get("/events", response_model=WebhookEventList)
async def list_webhook_events(
    session: DbSession,
    status: EventStatus | None = None,
    type: Annotated[str | None, Query(max_length=120)] = None,  # noqa: A002 - the wire name
    limit: Annotated[int, Query(ge=1, le=100)] = 50,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> dict[str, object]:
    return await service.list_events(session, status=status, event_type=type, limit=limit, offset=offset)


@router.post("/events/replay-failed", response_model=ReplayFailedResult)
async def replay_failed_webhook_events(session: DbSession) -> dict[str, object]:
    return await service.replay_failed(session)


@router.get("/events/{event_id}", response_model=WebhookEventDetail)
async def get_webhook_event(event_id: str, session: DbSession) -> dict[str, object]:
    return await service.get_event(session, event_id)


@router.post("/events/{event_id}/replay", response_model=ReplayResult)
async def replay_webhook_event(event_id: str, session: DbSession) -> dict[str, object]:
    return await service.replay_one(session, event_id)
