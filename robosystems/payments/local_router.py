"""Routes of the local provider's hosted pages (public, not in the OpenAPI document).

* ``GET  /billing/local/checkout/{session_id}``         the checkout page (Pay / Cancel forms, no JS)
* ``POST /billing/local/checkout/{session_id}/pay``     pay -> events delivered -> 303 to the success URL
* ``POST /billing/local/checkout/{session_id}/cancel``  expire -> event delivered -> 303 to the cancel URL
* ``GET  /billing/local/portal/{portal_id}``            the customer portal (card, subscriptions, invoices)
* ``POST /billing/local/portal/{portal_id}/payment-method``               replace the default card
* ``POST /billing/local/portal/{portal_id}/subscriptions/{sub_id}/cancel`` cancel at period end
* ``GET  /billing/local/invoices/{invoice_id}.pdf``     an invoice as PDF

The session id is the capability (unguessable, like Stripe's checkout URLs).  Events go to
``LOCAL_PAYMENTS_WEBHOOK_URL`` when set, else straight into this app's own
``POST /admin/v1/webhooks/stripe`` (in process, through the same middleware, signature check and
inbox as a delivery from Stripe).  Undelivered events are retried on the next view of the page.
"""

from __future__ import annotations

from typing import Annotated

import httpx
from fastapi import APIRouter, Form, Path, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from robosystems.auth.deps import Services
from robosystems.payments import pages
from robosystems.payments.base import ProviderObjectMissing
from robosystems.payments.factory import local_provider
from robosystems.payments.local import LocalPaymentProvider, WebhookSender

WEBHOOK_PATH = "/admin/v1/webhooks/stripe"
DELIVERY_TIMEOUT_SECONDS = 30.0

router = APIRouter(prefix="/billing/local", include_in_schema=False)
SessionId = Annotated[str, Path(min_length=8, max_length=80, pattern=r"^cs_[A-Za-z0-9_]+$")]


def _html(body: str, status_code: int = 200) -> HTMLResponse:
    return HTMLResponse(body, status_code=status_code, headers=pages.SECURITY_HEADERS)


def _not_found() -> HTMLResponse:
    return _html(pages.message_page("Checkout", "This checkout link is not valid.", status="not_found", ok=False), 404)


def _provider(services: Services) -> LocalPaymentProvider | None:
    return local_provider(services.settings)


def sender_for(request: Request, services: Services) -> WebhookSender:
    url = services.settings.local_payments_webhook_url

    async def send(body: bytes, headers: dict[str, str]) -> int:
        if url:
            async with httpx.AsyncClient(timeout=DELIVERY_TIMEOUT_SECONDS) as client:
                return (await client.post(url, content=body, headers=headers)).status_code
        transport = httpx.ASGITransport(app=request.app, client=("127.0.0.1", 0))
        async with httpx.AsyncClient(
            transport=transport, base_url="http://local-payments", timeout=DELIVERY_TIMEOUT_SECONDS
        ) as client:
            return (await client.post(WEBHOOK_PATH, content=body, headers=headers)).status_code

    return send


@router.get("/checkout/{session_id}")
async def checkout_page(session_id: SessionId, request: Request, services: Services) -> Response:
    provider = _provider(services)
    if provider is None:
        return _not_found()
    try:
        view = await run_in_threadpool(provider.view, session_id)
    except ProviderObjectMissing:
        return _not_found()
    if view.status == "open":
        return _html(pages.checkout_page(view))
    delivered = await provider.deliver(session_id, sender_for(request, services))
    return _html(pages.session_page(view, delivered=delivered), 200 if view.status == "complete" else 410)


@router.post("/checkout/{session_id}/pay")
async def pay(
    session_id: SessionId,
    request: Request,
    services: Services,
    card_number: Annotated[str, Form(max_length=40)] = "",
) -> Response:
    provider = _provider(services)
    if provider is None:
        return _not_found()
    try:
        view = await run_in_threadpool(provider.pay, session_id, card_number)
    except ProviderObjectMissing:
        return _not_found()
    if view.status == "open":  # declined or bad input: the form again, with the reason
        return _html(pages.checkout_page(view), 402)
    delivered = await provider.deliver(session_id, sender_for(request, services))
    if view.status == "complete" and delivered:
        return RedirectResponse(view.success_url, status_code=303, headers={"Cache-Control": "no-store"})
    return _html(pages.session_page(view, delivered=delivered), 200 if view.status == "complete" else 410)


@router.post("/checkout/{session_id}/cancel")
async def cancel(session_id: SessionId, request: Request, services: Services) -> Response:
    provider = _provider(services)
    if provider is None:
        return _not_found()
    try:
        view = await run_in_threadpool(provider.expire, session_id)
    except ProviderObjectMissing:
        return _not_found()
    delivered = await provider.deliver(session_id, sender_for(request, services))
    if view.status == "expired" and delivered:
        return RedirectResponse(view.cancel_url, status_code=303, headers={"Cache-Control": "no-store"})
    return _html(pages.session_page(view, delivered=delivered), 200 if view.status == "complete" else 410)


PortalId = Annotated[str, Path(min_length=8, max_length=80, pattern=r"^bps_[A-Za-z0-9_]+$")]


def _portal_gone() -> HTMLResponse:
    return _html(pages.message_page("Billing portal", "This portal link has expired.", status="expired", ok=False), 410)


async def _portal(provider: LocalPaymentProvider, portal_id: str, error: str | None = None) -> Response:
    try:
        view = await run_in_threadpool(provider.portal, portal_id)
    except ProviderObjectMissing:
        return _not_found()
    if view.expired:
        return _portal_gone()
    return _html(pages.portal_page(view, error=error), 200 if error is None else 402)


@router.get("/portal/{portal_id}")
async def portal_page(portal_id: PortalId, services: Services) -> Response:
    """The customer portal: payment method (update), subscriptions (cancel), invoices (PDF links)."""
    provider = _provider(services)
    return _not_found() if provider is None else await _portal(provider, portal_id)


async def _portal_action(provider: LocalPaymentProvider, portal_id: str) -> Response | None:
    """None when the portal session may act (exists, not expired)."""
    try:
        view = await run_in_threadpool(provider.portal, portal_id)
    except ProviderObjectMissing:
        return _not_found()
    return _portal_gone() if view.expired else None


def _back(portal_id: str) -> RedirectResponse:
    return RedirectResponse(
        f"/billing/local/portal/{portal_id}", status_code=303, headers={"Cache-Control": "no-store"}
    )


@router.post("/portal/{portal_id}/payment-method")
async def portal_payment_method(
    portal_id: PortalId,
    request: Request,
    services: Services,
    card_number: Annotated[str, Form(max_length=40)] = "",
) -> Response:
    provider = _provider(services)
    if provider is None:
        return _not_found()
    if (refused := await _portal_action(provider, portal_id)) is not None:
        return refused
    error = await run_in_threadpool(provider.portal_update_card, portal_id, card_number)
    if error is not None:
        return await _portal(provider, portal_id, error)
    customer_id = (await run_in_threadpool(provider.portal, portal_id)).customer_id
    await provider.deliver_object("customers", customer_id, sender_for(request, services))
    return _back(portal_id)


@router.post("/portal/{portal_id}/subscriptions/{subscription_id}/cancel")
async def portal_cancel(
    portal_id: PortalId,
    subscription_id: Annotated[str, Path(min_length=8, max_length=80, pattern=r"^sub_[A-Za-z0-9_]+$")],
    request: Request,
    services: Services,
) -> Response:
    provider = _provider(services)
    if provider is None:
        return _not_found()
    if (refused := await _portal_action(provider, portal_id)) is not None:
        return refused
    try:
        canceled = await run_in_threadpool(provider.portal_cancel, portal_id, subscription_id)
    except ProviderObjectMissing:
        return _not_found()
    if canceled:
        await provider.deliver_object("subscriptions", subscription_id, sender_for(request, services))
    return _back(portal_id)


@router.get("/invoices/{invoice_id}.pdf")
async def invoice_pdf(
    invoice_id: Annotated[str, Path(min_length=8, max_length=80, pattern=r"^in_[A-Za-z0-9_]+$")], services: Services
) -> Response:
    """An invoice as PDF (the unguessable invoice id is the capability, like Stripe's ``invoice_pdf`` links)."""
    provider = _provider(services)
    if provider is None:
        return _not_found()
    try:
        pdf = await run_in_threadpool(provider.invoice_pdf, invoice_id)
    except ProviderObjectMissing:
        return _not_found()
    headers = {**pages.SECURITY_HEADERS, "Content-Disposition": f'inline; filename="{invoice_id}.pdf"'}
    return Response(pdf, media_type="application/pdf", headers=headers)
