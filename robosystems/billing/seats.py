"""Per-seat org plans: buying seats (``POST /v1/billing/checkout {"plan_name": "team", "resource_type": "org",
"quantity": n}``).  The subscription (``resource_type = 'org_seats'``, ``resource_id`` = the org, ``quantity`` =
seats) is paid through the same hosted checkout and webhooks as a graph; it has nothing to build, so payment makes it
``active`` at once (:func:`robosystems.billing.subscriptions.confirm_payment`).  While it is live, the org's
``max_members`` entitlement is its seats: one more member than seats answers 402 ``seat_limit_reached`` with the
price of one more seat (:func:`robosystems.billing.entitlements.require_member_slot`).  Seats are added or removed
with the plan change flow (:mod:`robosystems.billing.plan_changes`, ``{"quantity": n}``)."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.concurrency import run_in_threadpool

from robosystems.auth.deps import Principal
from robosystems.billing import checkout, entitlements
from robosystems.billing import subscriptions as subs
from robosystems.billing.audit import Actor
from robosystems.billing.plans import get_catalog
from robosystems.billing.schemas import CheckoutResponse, CreateCheckoutRequest
from robosystems.config import Settings
from robosystems.errors import Conflict, Unprocessable
from robosystems.models import BillingSubscription
from robosystems.orgs.policy import Action
from robosystems.orgs.service import lock_and_authorize
from robosystems.payments.base import CheckoutRequest, PaymentProvider

SEATS = "org_seats"
#: a seat subscription in these states blocks buying another one
HELD = ("pending_payment", "provisioning", "active", "past_due", "unpaid", "paused")


async def create_seat_checkout(
    session: AsyncSession,
    settings: Settings,
    provider: PaymentProvider,
    principal: Principal,
    body: CreateCheckoutRequest,
    key: str | None,
) -> CheckoutResponse:
    target = await checkout.target_org(session, principal, body.org_id)
    access = await lock_and_authorize(session, principal, target, Action.MANAGE_BILLING)
    plan = get_catalog(settings.billing_plans_file).seat_plan(body.plan_name)
    fingerprint = checkout.request_fingerprint(access.org_id, plan.name, body)
    if key is not None and (replay := await checkout.replay(session, access.org_id, key, fingerprint)) is not None:
        return replay
    if access.org_type == "personal":
        raise Conflict("A personal organization has no other members to buy seats for", code="personal_org")
    held = (
        await session.execute(
            select(BillingSubscription.id).where(
                BillingSubscription.org_id == access.org_id,
                BillingSubscription.resource_type == SEATS,
                BillingSubscription.status.in_(HELD),
            )
        )
    ).first()
    if held is not None:
        raise Conflict(
            "This organization already has a seat subscription: change its seats instead",
            code="seat_subscription_exists",
            extra={"subscription_id": held.id},
        )
    used = await session.run_sync(lambda s: entitlements.seats_in_use_sync(s, access.org_id))
    quantity = body.quantity or max(plan.min_seats, used)
    if not plan.min_seats <= quantity <= plan.max_seats:
        raise Unprocessable(
            f"The {plan.name} plan sells {plan.min_seats}..{plan.max_seats} seats", code="invalid_quantity"
        )
    if quantity < used:
        raise Conflict(
            f"{used} seats are in use (members and pending invitations): buy at least {used}",
            code="below_current_usage",
            extra={"limit": "max_members", "current": used, "requested": quantity},
        )
    actor = Actor.user(principal.user_id)
    interval = "monthly" if plan.billing_interval == "monthly" else "annual"
    sub, _ = await subs.create_subscription_async(
        session,
        org_id=access.org_id,
        plan_name=plan.name,
        base_price_cents=plan.price_cents_per_seat * quantity,
        quantity=quantity,
        resource_type=SEATS,
        resource_id=access.org_id,
        status="pending_payment",
        payment_provider=provider.name,
        billing_interval=interval,
        idempotency_key=key,
        request_fingerprint=fingerprint,
        actor=actor,
    )
    customer = await checkout.checkout_customer(session, provider, access.org_id, access.org_name, principal, actor)
    success_url, cancel_url, expires_at = checkout.checkout_window(settings)
    session_obj = await run_in_threadpool(
        provider.create_checkout_session,
        CheckoutRequest(
            idempotency_key=checkout.provider_key("seats", access.org_id, key, sub.id),
            subscription_id=sub.id,
            org_id=access.org_id,
            customer_id=customer.stripe_customer_id,
            customer_email=principal.email,
            plan_name=plan.name,
            description=f"{plan.display_name} seats ({plan.name}): {access.org_name}"[:200],
            amount_cents=plan.price_cents_per_seat,
            quantity=quantity,
            currency=get_catalog(settings.billing_plans_file).currency,
            interval="month" if interval == "monthly" else "year",
            price_id=plan.provider_price_ids.get("stripe") if provider.name == "stripe" else None,
            expires_at=expires_at,
            success_url=success_url,
            cancel_url=cancel_url,
        ),
    )
    await checkout.attach_session(session, sub, customer, session_obj)
    return checkout.response(sub)
