"""Admin billing endpoints (``/admin/v1``, Bearer ``ADMIN_API_KEY``, hidden from the OpenAPI document).

* ``GET  /subscriptions?org_id=&status=&plan_name=&limit=&offset=``, ``GET /subscriptions/{id}``,
  ``PATCH /subscriptions/{id}`` ``{status?, cancel_at_period_end?, reason}``
* ``GET  /invoices?org_id=&status=&limit=&offset=``, ``GET /invoices/{id}``,
  ``POST /invoices/{id}/mark-paid`` ``{reason, amount_paid_cents?, payment_reference?, paid_at?}``
* ``PATCH /customers/{org_id}`` ``{invoice_billing_enabled?, payment_terms?, billing_email?,
  billing_contact_name?, reason}``
* ``POST /credits/{graph_id}/adjust`` ``{amount, reason, idempotency_key?}``
* ``GET  /orgs/deleted?limit=&offset=``, ``POST /orgs/{org_id}/restore`` ``{reason}``
* ``PUT  /orgs/{org_id}/entitlements/{key}`` ``{value, expires_at?, reason}`` (``value: null`` removes the override)
* ``GET  /audit?org_id=&event_type=&subscription_id=&invoice_id=&since=&until=&limit=&offset=``

Every change names a reason and writes an audit row (actor type ``admin``).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query

from robosystems.admin import billing_service as service
from robosystems.admin.deps import require_admin
from robosystems.auth.deps import DbSession, Services
from robosystems.billing import entitlement_admin

router = APIRouter(prefix="/admin/v1", tags=["admin"], include_in_schema=False, dependencies=[Depends(require_admin)])

Limit = Annotated[int, Query(ge=1, le=100)]
Offset = Annotated[int, Query(ge=0)]
Id = Annotated[str, Path(min_length=1, max_length=64)]
Filter = Annotated[str | None, Query(min_length=1, max_length=100)]


@router.get("/subscriptions")
async def list_subscriptions(
    db: DbSession,
    org_id: Filter = None,
    status: Filter = None,
    plan_name: Filter = None,
    limit: Limit = 50,
    offset: Offset = 0,
) -> dict[str, Any]:
    return await service.list_subscriptions(
        db, org_id=org_id, status=status, plan_name=plan_name, limit=limit, offset=offset
    )


@router.get("/subscriptions/{subscription_id}")
async def get_subscription(subscription_id: Id, db: DbSession) -> dict[str, Any]:
    return await service.get_subscription(db, subscription_id)


@router.patch("/subscriptions/{subscription_id}")
async def patch_subscription(subscription_id: Id, body: service.SubscriptionPatch, db: DbSession) -> dict[str, Any]:
    return await service.patch_subscription(db, subscription_id, body)


@router.get("/invoices")
async def list_invoices(
    db: DbSession, org_id: Filter = None, status: Filter = None, limit: Limit = 50, offset: Offset = 0
) -> dict[str, Any]:
    return await service.list_invoices(db, org_id=org_id, status=status, limit=limit, offset=offset)


@router.get("/invoices/{invoice_id}")
async def get_invoice(invoice_id: Id, db: DbSession) -> dict[str, Any]:
    return await service.get_invoice(db, invoice_id)


@router.post("/invoices/{invoice_id}/mark-paid")
async def mark_invoice_paid(invoice_id: Id, body: service.MarkPaid, db: DbSession) -> dict[str, Any]:
    return await service.mark_invoice_paid(db, invoice_id, body)


@router.patch("/customers/{org_id}")
async def patch_customer(org_id: Id, body: service.CustomerPatch, db: DbSession, services: Services) -> dict[str, Any]:
    return await service.patch_customer(db, services.settings, org_id, body)


@router.post("/credits/{graph_id}/adjust")
async def adjust_credits(graph_id: Id, body: service.CreditAdjust, db: DbSession) -> dict[str, Any]:
    return await service.adjust_credits(db, graph_id, body)


@router.get("/orgs/deleted")
async def list_deleted_orgs(db: DbSession, services: Services, limit: Limit = 50, offset: Offset = 0) -> dict[str, Any]:
    return await service.list_deleted_orgs(db, services.settings, limit=limit, offset=offset)


@router.post("/orgs/{org_id}/restore")
async def restore_org(org_id: Id, body: service.Restore, db: DbSession, services: Services) -> dict[str, Any]:
    return await service.restore_org(db, services.settings, org_id, body)


@router.put("/orgs/{org_id}/entitlements/{key}")
async def set_entitlement_override(
    org_id: Id,
    key: Annotated[str, Path(min_length=1, max_length=64)],
    body: entitlement_admin.OverrideRequest,
    db: DbSession,
    services: Services,
) -> dict[str, Any]:
    """Override one entitlement of an org (``value: null`` removes it); audited with the reason."""
    return await entitlement_admin.set_override(db, services.settings, org_id, key, body)


@router.get("/audit")
async def query_audit(
    db: DbSession,
    org_id: Filter = None,
    event_type: Filter = None,
    subscription_id: Filter = None,
    invoice_id: Filter = None,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: Limit = 50,
    offset: Offset = 0,
) -> dict[str, Any]:
    return await service.query_audit(
        db,
        org_id=org_id,
        event_type=event_type,
        subscription_id=subscription_id,
        invoice_id=invoice_id,
        since=since,
        until=until,
        limit=limit,
        offset=offset,
    )
