"""Credit packs: a one-time checkout (``POST /v1/billing/checkout {"kind": "credit_pack", "pack", "graph_id"}``)
whose credits are added to the graph's balance when the payment is confirmed by the provider
(``checkout.session.completed`` in ``mode: payment``; ``async_payment_succeeded`` for delayed methods).

The purchase row (``billing_credit_purchases``) is created before the provider session; the grant is keyed by the
purchase (``credit_pack:<id>``) and the credits go to the pool's ``purchased_balance``: they are never reset at a
renewal and are spent after the monthly allocation.  ``Idempotency-Key`` is honoured per org."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from robosystems.auth.deps import Principal
from robosystems.billing import checkout, credits
from robosystems.billing.audit import SYSTEM, Actor, record_for_actor
from robosystems.billing.plans import get_catalog
from robosystems.billing.schemas import CheckoutResponse, CheckoutStatusResponse, CreateCheckoutRequest
from robosystems.config import Settings
from robosystems.errors import Conflict, Forbidden, NotFound
from robosystems.ids import new_id
from robosystems.models import BillingCreditPurchase, Graph
from robosystems.orgs.access import authorize
from robosystems.orgs.policy import Action
from robosystems.payments.base import PaymentCheckoutRequest, PaymentProvider

log = logging.getLogger("robosystems.billing.credit_packs")


def _iso(value: datetime | None) -> str | None:
    return value.astimezone(UTC).isoformat() if value else None


def _response(p: BillingCreditPurchase) -> CheckoutResponse:
    return CheckoutResponse(
        checkout_url=p.checkout_url if p.status == "pending_payment" else None,
        session_id=p.provider_checkout_session_id,
        subscription_id=None,
        requires_checkout=True,
        billing_disabled=False,
        status=p.status,
        expires_at=_iso(p.checkout_expires_at),
        purchase_id=p.id,
    )


async def create_pack_checkout(
    session: AsyncSession,
    settings: Settings,
    provider: PaymentProvider,
    principal: Principal,
    body: CreateCheckoutRequest,
    key: str | None,
) -> CheckoutResponse:
    assert body.graph_id is not None  # validated by the request model
    assert body.pack is not None
    graph = (
        await session.execute(select(Graph.graph_id, Graph.org_id).where(Graph.graph_id == body.graph_id))
    ).one_or_none()
    if graph is None or graph.org_id is None:
        raise NotFound("Graph not found", code="graph_not_found")
    try:
        access = await authorize(session, principal, graph.org_id, Action.MANAGE_BILLING, lock=True)
    except NotFound:
        raise NotFound("Graph not found", code="graph_not_found") from None
    if not settings.billing_enabled:
        raise Conflict("Billing is disabled: there is nothing to buy", code="billing_disabled")
    catalog = get_catalog(settings.billing_plans_file)
    pack = catalog.credit_pack(body.pack)
    if key is not None:
        existing = (
            await session.execute(
                select(BillingCreditPurchase).where(
                    BillingCreditPurchase.org_id == access.org_id, BillingCreditPurchase.idempotency_key == key
                )
            )
        ).scalar_one_or_none()
        if existing is not None:
            if (existing.pack_name, existing.graph_id) != (pack.name, body.graph_id):
                raise Conflict(
                    "This Idempotency-Key was already used with a different request", code="idempotency_key_reused"
                )
            return _response(existing)
    if await credits.balance_async(session, body.graph_id) is None:
        raise Conflict("This graph has no credit pool yet", code="credit_pool_not_found")
    purchase = BillingCreditPurchase(
        id=new_id("bcp"),
        org_id=access.org_id,
        graph_id=body.graph_id,
        pack_name=pack.name,
        credits=Decimal(pack.credits),
        price_cents=pack.price_cents,
        currency=catalog.currency,
        status="pending_payment",
        payment_provider=provider.name,
        idempotency_key=key,
        requested_by=principal.user_id,
    )
    session.add(purchase)
    await session.flush()
    actor = Actor.user(principal.user_id)
    customer = await checkout.checkout_customer(session, provider, access.org_id, access.org_name, principal, actor)
    success_url, cancel_url, expires_at = checkout.checkout_window(settings)
    created = await run_in_threadpool(
        provider.create_payment_checkout,
        PaymentCheckoutRequest(
            idempotency_key=checkout.provider_key("credit_pack", access.org_id, key, purchase.id),
            reference_id=purchase.id,
            org_id=access.org_id,
            customer_id=customer.stripe_customer_id,
            customer_email=principal.email,
            description=f"{pack.display_name} for graph {body.graph_id}",
            amount_cents=pack.price_cents,
            currency=catalog.currency,
            expires_at=expires_at,
            success_url=success_url,
            cancel_url=cancel_url,
            metadata={"graph_id": body.graph_id, "pack": pack.name},
        ),
    )
    purchase.provider_checkout_session_id = created.id
    purchase.checkout_url = created.url
    purchase.checkout_expires_at = created.expires_at
    await session.flush()
    await session.run_sync(
        lambda s: record_for_actor(
            s,
            "credit_pack_checkout_created",
            actor,
            org_id=access.org_id,
            description=f"Credit pack {pack.name} for {body.graph_id}",
            data={"purchase_id": purchase.id, "graph_id": body.graph_id, "credits": pack.credits},
        )
    )
    return _response(purchase)


# --- webhook side (sync, in the event's transaction) ------------------------------------------------------------


def find_purchase(session: Session, checkout_session: dict[str, Any]) -> BillingCreditPurchase | None:
    """The purchase a ``mode: payment`` checkout session pays (locked): by session id, else our reference."""
    meta = checkout_session.get("metadata") if isinstance(checkout_session.get("metadata"), dict) else {}
    candidates = [checkout_session.get("client_reference_id"), (meta or {}).get("credit_purchase_id")]
    conditions = [BillingCreditPurchase.provider_checkout_session_id == checkout_session.get("id")]
    conditions += [BillingCreditPurchase.id == c for c in candidates if isinstance(c, str) and c.startswith("bcp_")]
    for condition in conditions:
        found = session.execute(
            select(BillingCreditPurchase).where(condition).with_for_update().execution_options(populate_existing=True)
        ).scalar_one_or_none()
        if found is not None:
            return found
    return None


def checkout_paid(session: Session, checkout_session: dict[str, Any], event_id: str) -> str:
    """A paid pack: purchase ``paid`` and its credits granted once.  Returns a note for the event row."""
    purchase = find_purchase(session, checkout_session)
    if purchase is None:
        return "unknown_credit_purchase"
    if checkout_session.get("payment_status") not in ("paid", "no_payment_required"):
        return f"awaiting_payment_{checkout_session.get('payment_status') or 'unknown'}"
    if purchase.status == "paid":
        return "credit_pack_already_paid"
    purchase.status, purchase.paid_at, purchase.updated_at = "paid", datetime.now(UTC), datetime.now(UTC)
    granted = credits.grant_purchased(
        session,
        purchase.graph_id,
        purchase.id,
        purchase.credits,
        description=f"Credit pack {purchase.pack_name} ({purchase.id})",
    )
    record_for_actor(
        session,
        "credit_pack_purchased",
        SYSTEM,
        org_id=purchase.org_id,
        description=f"Credit pack {purchase.pack_name}: {purchase.credits} credits for {purchase.graph_id}",
        data={"purchase_id": purchase.id, "graph_id": purchase.graph_id, "granted": granted, "event_id": event_id},
    )
    return "credit_pack_granted" if granted else "credit_pack_already_granted"


def checkout_closed(session: Session, checkout_session: dict[str, Any], status: str) -> str:
    purchase = find_purchase(session, checkout_session)
    if purchase is None:
        return "unknown_credit_purchase"
    if purchase.status == "pending_payment":
        purchase.status, purchase.updated_at = status, datetime.now(UTC)
        return f"credit_pack_{status}"
    return f"credit_pack_already_{purchase.status}"


async def purchase_status(
    session: AsyncSession, principal: Principal, session_id: str
) -> CheckoutStatusResponse | None:
    """``GET /v1/billing/checkout/{session_id}/status`` of a credit pack (None: not a pack session)."""
    purchase = (
        await session.execute(
            select(BillingCreditPurchase).where(BillingCreditPurchase.provider_checkout_session_id == session_id)
        )
    ).scalar_one_or_none()
    if purchase is None:
        return None
    try:
        await authorize(session, principal, purchase.org_id, Action.VIEW_BILLING)
    except (NotFound, Forbidden):
        raise NotFound("Checkout session not found", code="checkout_not_found") from None
    errors = {"expired": "The checkout session expired before payment.", "canceled": "The checkout was canceled."}
    return CheckoutStatusResponse(
        status=purchase.status,
        subscription_id=purchase.id,
        resource_id=purchase.graph_id,
        operation_id=None,
        error=errors.get(purchase.status),
    )
