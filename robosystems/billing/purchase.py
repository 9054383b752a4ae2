"""``POST /v1/billing/checkout``: one entry, three things to buy — a graph plan (:mod:`robosystems.billing.checkout`),
seats of a per-seat org plan (:mod:`robosystems.billing.seats`) or a credit pack
(:mod:`robosystems.billing.credit_packs`)."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from robosystems.auth.deps import Principal
from robosystems.billing import checkout, credit_packs, seats
from robosystems.billing.schemas import CheckoutResponse, CheckoutStatusResponse, CreateCheckoutRequest
from robosystems.config import Settings
from robosystems.payments.base import PaymentProvider


async def create(
    session: AsyncSession,
    settings: Settings,
    provider: PaymentProvider,
    principal: Principal,
    body: CreateCheckoutRequest,
    idempotency_key: str | None,
) -> CheckoutResponse:
    key = checkout.validate_idempotency_key(idempotency_key)
    if body.kind == "credit_pack":
        return await credit_packs.create_pack_checkout(session, settings, provider, principal, body, key)
    if body.resource_type == "org":
        return await seats.create_seat_checkout(session, settings, provider, principal, body, key)
    return await checkout.create_checkout(session, settings, provider, principal, body, key)


async def status(session: AsyncSession, principal: Principal, session_id: str) -> CheckoutStatusResponse:
    pack = await credit_packs.purchase_status(session, principal, session_id)
    return pack if pack is not None else await checkout.checkout_status(session, principal, session_id)
