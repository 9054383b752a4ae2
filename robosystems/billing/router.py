"""Billing endpoints (``/v1/billing``), the public offering (``/v1/offering``, ``/v1/graphs/tiers``) and
the page checkout returns to (``/billing/checkout/return``).  Thin handlers: one service call each."""

from __future__ import annotations

from html import escape
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Path, Query, Response
from fastapi.responses import HTMLResponse
from pydantic import BaseModel

from robosystems.auth.deps import CurrentPrincipal, DbSession, Services
from robosystems.billing import (
    checkout,
    entitlement_admin,
    entitlements,
    offering,
    plan_changes,
    portal,
    purchase,
    service,
)
from robosystems.billing.schemas import (
    AvailableGraphTiersResponse,
    BillingCustomer,
    ChangePreviewResponse,
    CheckoutResponse,
    CheckoutStatusResponse,
    CreateCheckoutRequest,
    GraphSubscriptionResponse,
    InvoicesResponse,
    PlanChangeRequest,
    PlanChangeResponse,
    PortalSessionResponse,
    ServiceOfferingsResponse,
    UpcomingInvoice,
    UpdatePaymentMethodRequest,
    UpdatePaymentMethodResponse,
)
from robosystems.orgs.access import OrgAccess, require
from robosystems.orgs.policy import Action
from robosystems.payments import pages
from robosystems.payments.base import PaymentProvider
from robosystems.payments.factory import get_provider
from robosystems.services import AppServices, get_services

router = APIRouter(prefix="/v1/billing", tags=["billing"])
org_router = APIRouter(prefix="/v1/orgs", tags=["billing"])
offering_router = APIRouter(tags=["service-offerings"])
pages_router = APIRouter(include_in_schema=False)


def payment_provider(services: Annotated[AppServices, Depends(get_services)]) -> PaymentProvider:
    return get_provider(services.settings)


Provider = Annotated[PaymentProvider, Depends(payment_provider)]
ViewBilling = Annotated[OrgAccess, Depends(require(Action.VIEW_BILLING))]
ManageBilling = Annotated[OrgAccess, Depends(require(Action.MANAGE_BILLING))]
ManagePaymentMethod = Annotated[OrgAccess, Depends(require(Action.MANAGE_PAYMENT_METHOD))]
ViewInvoices = Annotated[OrgAccess, Depends(require(Action.VIEW_INVOICES))]
ViewLimits = Annotated[OrgAccess, Depends(require(Action.VIEW_LIMITS))]
SubscriptionId = Annotated[str, Path(min_length=1, max_length=64)]
SessionId = Annotated[str, Path(min_length=1, max_length=255)]
Limit = Annotated[int, Query(ge=1, le=100)]
Offset = Annotated[int, Query(ge=0)]
IdempotencyKey = Annotated[str | None, Header(alias="Idempotency-Key")]


@router.post("/checkout", status_code=201, response_model=CheckoutResponse, operation_id="create_checkout_session")
async def create_checkout_session(
    body: CreateCheckoutRequest,
    principal: CurrentPrincipal,
    db: DbSession,
    services: Services,
    provider: Provider,
    idempotency_key: IdempotencyKey = None,
) -> CheckoutResponse:
    return await purchase.create(db, services.settings, provider, principal, body, idempotency_key)


@router.get("/checkout/{session_id}/status", response_model=CheckoutStatusResponse)
async def get_checkout_status(
    session_id: SessionId, principal: CurrentPrincipal, db: DbSession
) -> CheckoutStatusResponse:
    return await purchase.status(db, principal, session_id)


@router.get("/customer/{org_id}", response_model=BillingCustomer)
async def get_org_billing_customer(access: ViewBilling, db: DbSession) -> BillingCustomer:
    return await service.get_billing_customer(db, access)


@router.post("/customer/{org_id}/payment-method", response_model=UpdatePaymentMethodResponse)
async def update_org_payment_method(
    body: UpdatePaymentMethodRequest, access: ManagePaymentMethod, db: DbSession, provider: Provider
) -> UpdatePaymentMethodResponse:
    return await service.update_payment_method(db, provider, access, body.payment_method_id)


@router.post("/customer/{org_id}/portal", response_model=PortalSessionResponse)
async def create_portal_session(
    access: ManageBilling, db: DbSession, services: Services, provider: Provider
) -> PortalSessionResponse:
    return PortalSessionResponse(portal_url=await portal.portal_url(db, services.settings, provider, access))


class PortalUrlResponse(BaseModel):
    url: str


@router.post("/portal/{org_id}", response_model=PortalUrlResponse)
async def create_billing_portal(
    access: ManageBilling, db: DbSession, services: Services, provider: Provider
) -> PortalUrlResponse:
    """The provider's customer portal for the org (payment method, invoices with PDFs, cancel)."""
    return PortalUrlResponse(url=await portal.portal_url(db, services.settings, provider, access))


@router.get("/subscriptions/{org_id}", response_model=list[GraphSubscriptionResponse])
async def list_org_subscriptions(
    access: ViewBilling, db: DbSession, limit: Limit = 50, offset: Offset = 0
) -> list[GraphSubscriptionResponse]:
    return await service.list_subscriptions(db, access.org_id, limit=limit, offset=offset)


@router.get("/subscriptions/{org_id}/subscription/{subscription_id}", response_model=GraphSubscriptionResponse)
async def get_org_subscription(
    subscription_id: SubscriptionId, access: ViewBilling, db: DbSession
) -> GraphSubscriptionResponse:
    return await service.get_subscription(db, access.org_id, subscription_id)


@router.post("/subscriptions/{org_id}/subscription/{subscription_id}/cancel", response_model=GraphSubscriptionResponse)
async def cancel_org_subscription(
    subscription_id: SubscriptionId, access: ManageBilling, db: DbSession, provider: Provider
) -> GraphSubscriptionResponse:
    return await service.cancel_subscription(db, provider, access, subscription_id)


@router.post(
    "/subscriptions/{org_id}/subscription/{subscription_id}/change/preview", response_model=ChangePreviewResponse
)
async def preview_subscription_change(
    subscription_id: SubscriptionId,
    body: PlanChangeRequest,
    access: ManageBilling,
    db: DbSession,
    services: Services,
    provider: Provider,
) -> ChangePreviewResponse:
    return await plan_changes.preview(db, services.settings, provider, access, subscription_id, body)


@router.post(
    "/subscriptions/{org_id}/subscription/{subscription_id}/change",
    response_model=PlanChangeResponse,
    responses={202: {"model": PlanChangeResponse, "description": "the change waits for its invoice to be paid"}},
)
async def change_subscription(
    subscription_id: SubscriptionId,
    body: PlanChangeRequest,
    access: ManageBilling,
    db: DbSession,
    services: Services,
    provider: Provider,
    response: Response,
) -> PlanChangeResponse:
    status, result = await plan_changes.change(db, services, provider, access, subscription_id, body)
    response.status_code = status
    return result


@router.delete(
    "/subscriptions/{org_id}/subscription/{subscription_id}/scheduled-change", response_model=GraphSubscriptionResponse
)
async def cancel_scheduled_change(
    subscription_id: SubscriptionId, access: ManageBilling, db: DbSession, services: Services, provider: Provider
) -> GraphSubscriptionResponse:
    return await plan_changes.cancel_scheduled(db, services.settings, provider, access, subscription_id)


@router.get("/invoices/{org_id}", response_model=InvoicesResponse)
async def list_org_invoices(
    access: ViewInvoices, db: DbSession, limit: Limit = 50, offset: Offset = 0
) -> InvoicesResponse:
    return await service.list_invoices(db, access.org_id, limit=limit, offset=offset)


@router.get("/invoices/{org_id}/upcoming", response_model=UpcomingInvoice | None)
async def get_org_upcoming_invoice(access: ViewInvoices, db: DbSession, services: Services) -> UpcomingInvoice | None:
    return await service.upcoming_invoice(db, services.settings, access.org_id)


# --- entitlements (/v1/orgs) ---------------------------------------------------------------------------------


@org_router.get("/{org_id}/entitlements")
async def get_org_entitlements(access: ViewLimits, db: DbSession, services: Services) -> dict[str, Any]:
    """Features and limits of the org: its plans + operator overrides (robosystems.billing.entitlements)."""
    return (await entitlements.entitlements(db, access.org_id, settings=services.settings)).payload()


@org_router.put("/{org_id}/credits/threshold")
async def set_credits_low_threshold(
    body: entitlement_admin.ThresholdRequest, access: ManageBilling, db: DbSession
) -> dict[str, Any]:
    """The balance below which a graph of the org emits ``credits.low`` (null: CREDITS_LOW_THRESHOLD_PERCENT)."""
    return await entitlement_admin.set_low_threshold(db, access, body)


# --- public ------------------------------------------------------------------------------------------------------


@offering_router.get("/v1/offering", response_model=ServiceOfferingsResponse)
async def get_service_offerings(services: Services) -> ServiceOfferingsResponse:
    return offering.service_offerings(services.settings)


@offering_router.get("/v1/graphs/tiers", response_model=AvailableGraphTiersResponse, tags=["graphs"])
async def get_available_graph_tiers(services: Services, include_disabled: bool = False) -> AvailableGraphTiersResponse:
    return offering.graph_tiers(services.settings, include_disabled=include_disabled)


@pages_router.get("/billing/checkout/return")
async def checkout_return_page(
    db: DbSession,
    session_id: Annotated[str, Query(max_length=255)] = "",
    result: Annotated[str, Query(max_length=20)] = "success",
) -> HTMLResponse:
    """Where the provider's checkout sends the browser back (the default success and cancel URLs)."""
    status = await checkout.public_status(db, session_id) if session_id else None
    if result == "success":
        title, message, ok = (
            "Payment received",
            "Thank you! Your payment was received; your graph is being set up.",
            True,
        )
    else:
        title, message, ok = "Checkout canceled", "The checkout was canceled; nothing was charged.", False
    details = (
        f'<p class="muted">Subscription status: <span id="subscription-status">{escape(status)}</span></p>'
        if status
        else ""
    )
    body = pages.message_page(
        title, message, status=result if result in ("success", "canceled") else "unknown", ok=ok, details=details
    )
    return HTMLResponse(body, headers=pages.SECURITY_HEADERS)
