"""/v1/orgs/{org_id}/webhook-endpoints: thin handlers; access is ``OrgFor(Action.MANAGE_WEBHOOKS)`` (org admins
and owners; non-members 404, members 403), then one call of :mod:`robosystems.outbound.endpoints`."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path, Query
from fastapi.responses import Response

from robosystems.auth.deps import DbSession, Services
from robosystems.orgs.access import OrgAccess, require
from robosystems.orgs.policy import Action
from robosystems.outbound import endpoints
from robosystems.outbound.catalogue import EVENT_TYPES
from robosystems.outbound.schemas import (
    CreateEndpointRequest,
    DeliveryInfo,
    DeliveryListResponse,
    EndpointCreatedResponse,
    EndpointListResponse,
    EndpointResponse,
    ReplayRequest,
    ReplayResponse,
    SecretRotatedResponse,
    TestSentResponse,
    UpdateEndpointRequest,
)

router = APIRouter(prefix="/v1/orgs/{org_id}/webhook-endpoints", tags=["webhooks"])

Manage = Annotated[OrgAccess, Depends(require(Action.MANAGE_WEBHOOKS))]
EndpointId = Annotated[str, Path(min_length=1, max_length=64)]
DeliveryId = Annotated[str, Path(min_length=1, max_length=64)]
Limit = Annotated[int, Query(ge=1, le=100)]
Offset = Annotated[int, Query(ge=0)]
EventType = Annotated[str | None, Query(max_length=64, json_schema_extra={"enum": list(EVENT_TYPES)})]


@router.post("", status_code=201, response_model=EndpointCreatedResponse)
async def create_endpoint(body: CreateEndpointRequest, access: Manage, db: DbSession, svc: Services) -> dict[str, Any]:
    return await endpoints.create_endpoint(
        db, svc.settings, access, url=body.url, events=body.events, description=body.description
    )


@router.get("", response_model=EndpointListResponse)
async def list_endpoints(access: Manage, db: DbSession, limit: Limit = 50, offset: Offset = 0) -> dict[str, Any]:
    return await endpoints.list_endpoints(db, access.org_id, limit=limit, offset=offset)


@router.get("/{endpoint_id}", response_model=EndpointResponse)
async def get_endpoint(endpoint_id: EndpointId, access: Manage, db: DbSession) -> dict[str, Any]:
    return await endpoints.get_endpoint(db, access.org_id, endpoint_id)


@router.patch("/{endpoint_id}", response_model=EndpointResponse)
async def update_endpoint(
    endpoint_id: EndpointId, body: UpdateEndpointRequest, access: Manage, db: DbSession, svc: Services
) -> dict[str, Any]:
    changes = body.model_dump(exclude_unset=True)
    return await endpoints.update_endpoint(db, svc.settings, access, endpoint_id, changes)


@router.delete("/{endpoint_id}", status_code=204, response_class=Response)
async def delete_endpoint(endpoint_id: EndpointId, access: Manage, db: DbSession) -> Response:
    await endpoints.delete_endpoint(db, access, endpoint_id)
    return Response(status_code=204)


@router.post("/{endpoint_id}/rotate-secret", response_model=SecretRotatedResponse)
async def rotate_secret(endpoint_id: EndpointId, access: Manage, db: DbSession, svc: Services) -> dict[str, Any]:
    return await endpoints.rotate_secret(db, svc.settings, access, endpoint_id)


@router.post("/{endpoint_id}/test", status_code=202, response_model=TestSentResponse)
async def send_test(endpoint_id: EndpointId, access: Manage, db: DbSession) -> dict[str, Any]:
    return await endpoints.send_test(db, access.org_id, endpoint_id)


@router.get("/{endpoint_id}/deliveries", response_model=DeliveryListResponse)
async def list_deliveries(
    endpoint_id: EndpointId,
    access: Manage,
    db: DbSession,
    status: Literal["pending", "delivered", "failed"] | None = None,
    event_type: EventType = None,
    limit: Limit = 50,
    offset: Offset = 0,
) -> dict[str, Any]:
    return await endpoints.list_deliveries(
        db, access.org_id, endpoint_id, status=status, event_type=event_type, limit=limit, offset=offset
    )


@router.post("/{endpoint_id}/deliveries/{delivery_id}/retry", status_code=202, response_model=DeliveryInfo)
async def retry_delivery(
    endpoint_id: EndpointId, delivery_id: DeliveryId, access: Manage, db: DbSession
) -> dict[str, Any]:
    return await endpoints.retry_delivery(db, access.org_id, endpoint_id, delivery_id)


@router.post("/{endpoint_id}/replay", status_code=202, response_model=ReplayResponse)
async def replay(
    endpoint_id: EndpointId, body: ReplayRequest, access: Manage, db: DbSession, svc: Services
) -> dict[str, Any]:
    return await endpoints.replay(db, svc.settings, access.org_id, endpoint_id, since=body.since, until=body.until)
