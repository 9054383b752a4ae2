"""Response models of the webhook endpoint and the admin webhook inbox."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel

EventStatus = Literal["received", "processing", "processed", "failed", "ignored"]


class WebhookAck(BaseModel):
    received: bool = True
    id: str
    duplicate: bool


class WebhookEventSummary(BaseModel):
    id: str
    type: str
    status: str
    attempts: int
    last_error: str | None
    received_at: datetime
    processed_at: datetime | None


class WebhookEventList(BaseModel):
    events: list[WebhookEventSummary]
    total: int


class WebhookEventDetail(WebhookEventSummary):
    created: datetime
    object_id: str | None
    subject_id: str | None
    livemode: bool | None
    api_version: str | None
    note: str | None
    updated_at: datetime
    payload: dict[str, Any]


class ReplayResult(BaseModel):
    id: str
    status: str
    replayed: bool


class ReplayFailedResult(BaseModel):
    replayed: int
    ids: list[str]
