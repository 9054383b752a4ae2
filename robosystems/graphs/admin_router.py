"""Admin: retry a failed graph provisioning (``POST /admin/v1/subscriptions/{id}/retry-provisioning``)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path

from robosystems.admin.deps import require_admin
from robosystems.auth.deps import DbSession
from robosystems.billing.audit import Actor
from robosystems.graphs import provisioning
from robosystems.graphs.schemas import RetryProvisioningRequest, RetryProvisioningResponse

router = APIRouter(
    prefix="/admin/v1/subscriptions", tags=["admin"], include_in_schema=False, dependencies=[Depends(require_admin)]
)


@router.post("/{subscription_id}/retry-provisioning", status_code=202, response_model=RetryProvisioningResponse)
async def retry_provisioning(
    subscription_id: Annotated[str, Path(min_length=1, max_length=64)],
    body: RetryProvisioningRequest,
    db: DbSession,
) -> RetryProvisioningResponse:
    sub = await db.run_sync(
        lambda s: provisioning.retry_failed(s, subscription_id, actor=Actor.admin(), reason=body.reason)
    )
    return RetryProvisioningResponse(
        subscription_id=sub.id,
        status=sub.status,
        operation_id=sub.id,
        status_url=f"/v1/operations/{sub.id}/status",
    )
