"""Request and response models of /v1/orgs/{org_id}/webhook-endpoints."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import AwareDatetime, BaseModel, Field, StringConstraints, field_validator

from robosystems.outbound.catalogue import SUBSCRIBABLE

Url = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=2048)]
Description = Annotated[str, StringConstraints(strip_whitespace=True, max_length=500)]
EventList = Annotated[
    list[Annotated[str, Field(json_schema_extra={"enum": list(SUBSCRIBABLE)})]],
    Field(min_length=1, max_length=len(SUBSCRIBABLE)),
]


def _known_events(events: list[str] | None) -> list[str] | None:
    if events is None:
        return None
    unknown = [e for e in events if e not in SUBSCRIBABLE]
    if unknown:
        raise ValueError(f"unknown event type(s): {', '.join(sorted(set(unknown)))}")
    return list(dict.fromkeys(events))  # without repeats, in the caller's order


# --- requests -------------------------------------------------------------------------------------


class CreateEndpointRequest(BaseModel):
    url: Url
    events: EventList
    description: Description | None = None

    _events = field_validator("events")(_known_events)


class UpdateEndpointRequest(BaseModel):
    """Only the fields given change; ``enabled: true`` re-enables an endpoint the worker disabled."""

    url: Url | None = None
    events: EventList | None = None
    description: Description | None = None
    enabled: bool | None = None

    _events = field_validator("events")(_known_events)


class ReplayRequest(BaseModel):
    since: AwareDatetime
    until: AwareDatetime | None = None


# --- responses ------------------------------------------------------------------------------------


class EndpointResponse(BaseModel):
    id: str
    org_id: str
    url: str
    events: list[str]
    description: str | None
    enabled: bool
    disabled_reason: str | None
    disabled_at: datetime | None
    previous_secret_expires_at: datetime | None  # the previous secret still signs until then (rotation)
    created_at: datetime
    updated_at: datetime


class EndpointCreatedResponse(EndpointResponse):
    secret: str  # shown here and at rotation only


class EndpointListResponse(BaseModel):
    endpoints: list[EndpointResponse]
    total: int


class SecretRotatedResponse(BaseModel):
    id: str
    secret: str
    previous_secret_expires_at: datetime | None


class TestSentResponse(BaseModel):
    event_id: str
    delivery_id: str


class AttemptInfo(BaseModel):
    attempted_at: datetime
    status_code: int | None
    duration_ms: int
    response_body: str | None  # at most OUTBOUND_WEBHOOKS_RESPONSE_MAX_BYTES
    error: str | None  # timeout, connection refused, address not allowed …


class DeliveryInfo(BaseModel):
    id: str
    endpoint_id: str
    event_id: str
    event_type: str
    status: str  # pending | delivered | failed
    attempt_count: int
    last_status_code: int | None
    next_attempt_at: datetime | None  # the next retry (pending only)
    created_at: datetime
    last_attempt_at: datetime | None
    delivered_at: datetime | None
    attempts: list[AttemptInfo]  # newest first, the latest 10


class DeliveryListResponse(BaseModel):
    deliveries: list[DeliveryInfo]
    total: int


class ReplayResponse(BaseModel):
    replayed: int
