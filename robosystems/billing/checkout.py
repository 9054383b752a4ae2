"""Checkout: from "I want a graph on plan X" to a pending subscription and a provider checkout page.

``POST /v1/billing/checkout`` (:func:`create_checkout`):

1. The org is the explicit ``org_id`` or the token's org (an API key: the caller's personal org) --
   never "the first org" -- and the caller must be owner/admin there (``Action.MANAGE_BILLING``).
   The org row is locked for the rest of the transaction: checkouts of one org are serialized, so
   the limit check and the insert can't interleave, and identical concurrent requests queue up.
2. The plan comes from the catalog (422 ``unknown_plan``); the price, the tier and the credits of
   the graph will be the plan's, never the client's.
3. ``Idempotency-Key``: the (org, key) pair is unique on ``billing_subscriptions``.  A repeat returns
   the stored answer (same subscription, same provider session, no second provider call); the same
   key with a different body -> 409 ``idempotency_key_reused``.  The provider call carries a key
   derived from it as well, so a retry after a rolled-back transaction gets the same session back.
4. Abandoned checkouts of the org are expired, then the org's graph limit (owned graphs + graph
   subscriptions awaiting payment or provisioning) is checked: 403 ``graph_limit_reached``.
5. A ``pending_payment`` subscription holding the requested graph config is inserted, the org's
   billing customer is fetched or created (provider customer created once), and the provider's
   checkout session is created with ``expires_at = now + CHECKOUT_TTL_MINUTES``.

With ``BILLING_ENABLED=false`` there is no checkout: the subscription starts in ``provisioning`` and
the provisioning task is enqueued through the transactional outbox (sent after commit).

Abandoned checkouts end by ``checkout.session.expired`` (webhook) or by :func:`expire_abandoned_checkouts`
(periodic, and for one org before its limit check); an expired subscription no longer counts against
the limit.  The provider's session is created with the same ``expires_at``, so it ends there at the
same time and no late payment can arrive after our grace period.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from datetime import UTC, datetime, timedelta

from sqlalchemy import and_, or_, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from robosystems.auth.deps import Principal
from robosystems.auth.sessions import personal_org_id
from robosystems.billing import entitlements
from robosystems.billing import subscriptions as subs
from robosystems.billing.audit import SYSTEM, Actor
from robosystems.billing.customers import customer_idempotency_key, get_or_create_customer_async
from robosystems.billing.plans import GraphPlan, get_catalog
from robosystems.billing.schemas import CheckoutResponse, CheckoutStatusResponse, CreateCheckoutRequest
from robosystems.config import Settings
from robosystems.errors import Conflict, Forbidden, NotFound, Unprocessable
from robosystems.models import Graph
from robosystems.models.billing import BillingCustomer, BillingSubscription
from robosystems.orgs.access import authorize
from robosystems.orgs.policy import Action
from robosystems.orgs.service import lock_and_authorize
from robosystems.orgs.usage import org_limits
from robosystems.payments.base import CheckoutRequest, CheckoutSession, CollectionMethod, PaymentProvider
from robosystems.worker.outbox import enqueue_async

log = logging.getLogger("robosystems.billing.checkout")

IDEMPOTENCY_KEY = re.compile(r"^[\x21-\x7e]{1,255}$")
#: an abandoned checkout is expired this long after its session's expiry (a payment made in the
#: last second at the provider still reaches us before the subscription is closed)
EXPIRY_GRACE = timedelta(minutes=5)
#: legacy pending rows carry no session expiry: Stripe sessions live 24 h at most
LEGACY_PENDING_MAX_AGE = timedelta(hours=24)
SWEEP_BATCH = 500
#: ``subscription_metadata`` key of a subscription created at the provider without checkout (its collection method)
COLLECTION_KEY = "collection_method"
PUBLIC_SUBSCRIPTION_ERRORS = {
    "failed": "Provisioning failed; the payment will be refunded or credited.",
    "expired": "The checkout session expired before payment.",
    "canceled": "The checkout was canceled.",
    "refunded": "Provisioning failed and the payment was refunded.",
}


def _now() -> datetime:
    return datetime.now(UTC)


def _iso(value: datetime | None) -> str | None:
    return value.astimezone(UTC).isoformat() if value else None


def validate_idempotency_key(value: str | None) -> str | None:
    if value is None:
        return None
    if not IDEMPOTENCY_KEY.match(value):
        raise Unprocessable("Idempotency-Key must be 1..255 printable ASCII characters", code="invalid_idempotency_key")
    return value


def request_fingerprint(org_id: str, plan_name: str, body: CreateCheckoutRequest) -> str:
    canonical = json.dumps(
        {
            "org_id": org_id,
            "plan_name": plan_name,
            "resource_type": body.resource_type,
            "resource_config": body.resource_config.model_dump(mode="json") if body.resource_config else None,
            "quantity": body.quantity,
        },
        sort_keys=True,
        separators=(",", ":"),
    )
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def checkout_window(settings: Settings) -> tuple[str, str, datetime]:
    """(success URL, cancel URL, expiry) of a new hosted checkout session."""
    success, cancel = return_urls(settings)
    return success, cancel, (_now() + timedelta(minutes=settings.checkout_ttl_minutes)).replace(microsecond=0)


def return_urls(settings: Settings) -> tuple[str, str]:
    base = settings.base_url
    success = settings.checkout_success_url or (
        f"{base}/billing/checkout/return?session_id={{CHECKOUT_SESSION_ID}}&result=success"
    )
    cancel = (
        settings.checkout_cancel_url
        or f"{base}/billing/checkout/return?session_id={{CHECKOUT_SESSION_ID}}&result=canceled"
    )
    return success, cancel


def response(sub: BillingSubscription) -> CheckoutResponse:
    meta = sub.subscription_metadata or {}
    billing_disabled = bool(meta.get("billing_disabled"))
    return CheckoutResponse(
        checkout_url=meta.get("checkout_url"),
        session_id=sub.provider_checkout_session_id,
        subscription_id=sub.id,
        # billed without a checkout page: the method on file, or an invoice (see :func:`_subscribe_off_session`)
        requires_checkout=not billing_disabled and COLLECTION_KEY not in meta,
        billing_disabled=billing_disabled,
        status=sub.status,
        expires_at=_iso(sub.checkout_expires_at),
    )


async def target_org(session: AsyncSession, principal: Principal, org_id: str | None) -> str:
    target = org_id or principal.token_org_id or await personal_org_id(session, principal.user_id)
    if not target:
        raise NotFound("Organization not found", code="org_not_found")
    return target


async def _existing(session: AsyncSession, org_id: str, key: str) -> BillingSubscription | None:
    result = await session.execute(
        select(BillingSubscription)
        .where(BillingSubscription.org_id == org_id, BillingSubscription.idempotency_key == key)
        .execution_options(populate_existing=True)
    )
    return result.scalar_one_or_none()


async def replay(session: AsyncSession, org_id: str, key: str, fingerprint: str) -> CheckoutResponse | None:
    existing = await _existing(session, org_id, key)
    if existing is None:
        return None
    if existing.request_fingerprint not in (None, fingerprint):
        raise Conflict("This Idempotency-Key was already used with a different request", code="idempotency_key_reused")
    return response(existing)


async def _check_limit(session: AsyncSession, settings: Settings, org_id: str) -> None:
    """The org's ``max_graphs`` entitlement against owned graphs + graphs awaiting payment/provisioning."""
    current = (await org_limits(session, org_id))["current_usage"]["graphs"]["current"]
    await entitlements.require(session, org_id, "max_graphs", current=current, settings=settings)


def _description(plan: GraphPlan, graph_name: str) -> str:
    return f"{plan.display_name} graph ({plan.name}): {graph_name}"[:200]


async def create_checkout(
    session: AsyncSession,
    settings: Settings,
    provider: PaymentProvider,
    principal: Principal,
    body: CreateCheckoutRequest,
    idempotency_key: str | None,
    *,
    allow_off_session: bool = False,
) -> CheckoutResponse:
    """``allow_off_session`` (``POST /v1/graphs``): an org whose billing customer has a payment method on file or
    invoice billing gets the subscription created at the provider without a checkout page
    (:func:`_subscribe_off_session`); ``requires_checkout`` is false in the answer."""
    key = validate_idempotency_key(idempotency_key)
    target = await target_org(session, principal, body.org_id)
    access = await authorize(session, principal, target, Action.MANAGE_BILLING)
    assert body.resource_config is not None  # validated by the request model
    plan = get_catalog(settings.billing_plans_file).plan(body.plan_name)
    if plan.name not in (await entitlements.entitlements(session, access.org_id, settings=settings)).value("tiers"):
        raise Forbidden(f"The {plan.name} plan is not available to this organization", code="plan_not_allowed")
    fingerprint = request_fingerprint(access.org_id, plan.name, body)

    # A replay is answered without the org lock.  A first request locks the org row and looks again:
    # an identical request may have committed while this one waited for the lock.
    if key is not None and (again := await replay(session, access.org_id, key, fingerprint)) is not None:
        return again
    access = await lock_and_authorize(session, principal, target, Action.MANAGE_BILLING)
    if key is not None and (again := await replay(session, access.org_id, key, fingerprint)) is not None:
        return again

    await session.run_sync(lambda s: expire_abandoned_checkouts(s, org_id=access.org_id))
    await _check_limit(session, settings, access.org_id)

    actor = Actor.user(principal.user_id)
    resource_config = body.resource_config.model_dump(mode="json")
    interval = "monthly" if plan.billing_interval == "monthly" else "annual"
    if not settings.billing_enabled:
        sub, _ = await subs.create_subscription_async(
            session,
            org_id=access.org_id,
            plan_name=plan.name,
            base_price_cents=plan.price_cents,
            resource_type="graph",
            resource_config=resource_config,
            status="provisioning",
            payment_provider=provider.name,
            billing_interval=interval,
            idempotency_key=key,
            request_fingerprint=fingerprint,
            actor=actor,
            metadata={"billing_disabled": True},
        )
        await enqueue_async(session, subs.PROVISION_GRAPH_TASK, [sub.id])
        return response(sub)

    sub, _ = await subs.create_subscription_async(
        session,
        org_id=access.org_id,
        plan_name=plan.name,
        base_price_cents=plan.price_cents,
        resource_type="graph",
        resource_config=resource_config,
        status="pending_payment",
        payment_provider=provider.name,
        billing_interval=interval,
        idempotency_key=key,
        request_fingerprint=fingerprint,
        actor=actor,
    )

    customer = await checkout_customer(session, provider, access.org_id, access.org_name, principal, actor)
    if allow_off_session and (customer.invoice_billing_enabled or customer.has_payment_method):
        await _subscribe_off_session(session, settings, provider, sub, customer, plan, key)
        return response(sub)
    success_url, cancel_url, expires_at = checkout_window(settings)
    checkout = await run_in_threadpool(
        provider.create_checkout_session,
        CheckoutRequest(
            idempotency_key=provider_key("checkout", access.org_id, key, sub.id),
            subscription_id=sub.id,
            org_id=access.org_id,
            customer_id=customer.stripe_customer_id,
            customer_email=principal.email,
            plan_name=plan.name,
            description=_description(plan, resource_config.get("graph_name") or plan.name),
            amount_cents=plan.price_cents,
            currency=get_catalog(settings.billing_plans_file).currency,
            interval="month" if interval == "monthly" else "year",
            price_id=plan.provider_price_ids.get("stripe") if provider.name == "stripe" else None,
            expires_at=expires_at,
            success_url=success_url,
            cancel_url=cancel_url,
        ),
    )
    await attach_session(session, sub, customer, checkout)
    return response(sub)


async def attach_session(
    session: AsyncSession, sub: BillingSubscription, customer: BillingCustomer, checkout: CheckoutSession
) -> None:
    """Record the provider's checkout session on the pending subscription."""
    sub.provider_checkout_session_id = checkout.id
    sub.provider_customer_id = customer.stripe_customer_id
    sub.checkout_expires_at = checkout.expires_at
    sub.subscription_metadata = {**(sub.subscription_metadata or {}), "checkout_url": checkout.url}
    await session.flush()


async def checkout_customer(
    session: AsyncSession, provider: PaymentProvider, org_id: str, org_name: str, principal: Principal, actor: Actor
) -> BillingCustomer:
    """The org's billing customer, created once (row lock + the provider call keyed by the org)."""

    async def create_remote(target: str) -> str:
        return await run_in_threadpool(
            lambda: provider.create_customer(
                org_id=target, name=org_name, email=principal.email, idempotency_key=customer_idempotency_key(target)
            )
        )

    return await get_or_create_customer_async(
        session, provider.name, org_id, create_remote, billing_email=principal.email, actor=actor
    )


def provider_key(kind: str, org_id: str, key: str | None, fallback: str) -> str:
    """The provider idempotency key of a checkout: derived from the caller's Idempotency-Key when there is one."""
    return f"{kind}:{org_id}:{hashlib.sha256(key.encode()).hexdigest()[:32]}" if key else f"{kind}:{fallback}"


def _days_until_due(payment_terms: str | None) -> int:
    if payment_terms == "due_on_receipt":
        return 0
    match = re.fullmatch(r"net_(\d{1,3})", payment_terms or "")
    return int(match.group(1)) if match else 30


async def _subscribe_off_session(
    session: AsyncSession,
    settings: Settings,
    provider: PaymentProvider,
    sub: BillingSubscription,
    customer: BillingCustomer,
    plan: GraphPlan,
    key: str | None,
) -> None:
    """The pending subscription is created at the provider, billed to the org's customer: an invoice when invoice
    billing is enabled (``send_invoice``, due after the payment terms), else the default payment method
    (``charge_automatically``).  It stays ``pending_payment`` until ``invoice.paid`` arrives (webhook), then
    provisions.  The provider call is keyed like the checkout's, so a retry gets the same provider subscription."""
    assert customer.stripe_customer_id is not None
    collection: CollectionMethod = "send_invoice" if customer.invoice_billing_enabled else "charge_automatically"
    remote_key = provider_key("subscription", sub.org_id, key, sub.id)
    catalog = get_catalog(settings.billing_plans_file)
    customer_id = customer.stripe_customer_id
    remote = await run_in_threadpool(
        lambda: provider.create_subscription(
            customer_id=customer_id,
            plan_name=plan.name,
            amount_cents=plan.price_cents,
            currency=catalog.currency,
            interval="month" if plan.billing_interval == "monthly" else "year",
            price_id=plan.provider_price_ids.get("stripe") if provider.name == "stripe" else None,
            metadata={"subscription_id": sub.id, "org_id": sub.org_id},
            collection_method=collection,
            days_until_due=_days_until_due(customer.payment_terms) if collection == "send_invoice" else None,
            idempotency_key=remote_key,
        )
    )
    sub.provider_subscription_id = remote.id
    sub.provider_customer_id = customer_id
    sub.subscription_metadata = {**(sub.subscription_metadata or {}), COLLECTION_KEY: collection}
    await session.flush()


# --- status ------------------------------------------------------------------------------------------------------


async def checkout_status(session: AsyncSession, principal: Principal, session_id: str) -> CheckoutStatusResponse:
    """Status of a checkout by provider session id (or by subscription id, for billing-disabled checkouts).
    Unknown, or an org the caller is not a member of -> 404."""
    condition = (
        BillingSubscription.id == session_id
        if session_id.startswith("bsub_")
        else BillingSubscription.provider_checkout_session_id == session_id
    )
    sub = (await session.execute(select(BillingSubscription).where(condition))).scalar_one_or_none()
    if sub is None:
        raise NotFound("Checkout session not found", code="checkout_not_found")
    try:
        await authorize(session, principal, sub.org_id, Action.VIEW_BILLING)
    except (NotFound, Forbidden):
        raise NotFound("Checkout session not found", code="checkout_not_found") from None
    resource_id = None
    if sub.resource_id:
        exists = (await session.execute(select(Graph.graph_id).where(Graph.graph_id == sub.resource_id))).first()
        resource_id = sub.resource_id if exists else None
    # provisioning is reported by GET /v1/operations/{operation_id}/status; its id is the subscription id
    operation_id = sub.id if sub.status not in ("pending_payment", "expired", "canceled") else None
    return CheckoutStatusResponse(
        status=sub.status,
        subscription_id=sub.id,
        resource_id=resource_id,
        operation_id=operation_id,
        error=PUBLIC_SUBSCRIPTION_ERRORS.get(sub.status),
    )


async def public_status(session: AsyncSession, session_id: str) -> str | None:
    """Only the status, for the return page (the session id is the capability)."""
    result = await session.execute(
        select(BillingSubscription.status).where(BillingSubscription.provider_checkout_session_id == session_id)
    )
    return result.scalar_one_or_none()


# --- abandoned checkouts -----------------------------------------------------------------------------------------


def expire_abandoned_checkouts(session: Session, *, org_id: str | None = None, now: datetime | None = None) -> int:
    """Expire ``pending_payment`` subscriptions whose checkout session ended (+ :data:`EXPIRY_GRACE`).

    Rows are claimed with ``FOR UPDATE SKIP LOCKED`` (a checkout being paid or handled right now is
    left alone), each moved through the state machine (audit row, ``last_event_at`` rules).  Legacy
    pending rows without a session expiry are expired 24 h after creation.  Returns how many changed.
    Runs periodically (all orgs) and inside a checkout for its org, before the limit check."""
    now = now or _now()
    cutoff = now - EXPIRY_GRACE
    stmt = (
        select(BillingSubscription.id)
        .where(
            BillingSubscription.status == "pending_payment",
            or_(
                BillingSubscription.checkout_expires_at < cutoff,
                and_(
                    BillingSubscription.checkout_expires_at.is_(None),
                    BillingSubscription.created_at < cutoff - LEGACY_PENDING_MAX_AGE,
                    # an invoice awaiting payment (net terms) is not an abandoned checkout; an unpaid charge of
                    # a method on file is (Stripe expires such an incomplete subscription within a day, too)
                    BillingSubscription.subscription_metadata[COLLECTION_KEY].astext.is_distinct_from("send_invoice"),
                ),
            ),
        )
        .order_by(BillingSubscription.created_at)
        .limit(SWEEP_BATCH)
        .with_for_update(skip_locked=True)
    )
    if org_id is not None:
        stmt = stmt.where(BillingSubscription.org_id == org_id)
    changed = 0
    for sub_id in session.execute(stmt).scalars().all():
        result = subs.apply_transition(session, sub_id, "expired", actor=SYSTEM, reason="checkout abandoned")
        changed += int(result.changed)
    if changed:
        log.info("expired %d abandoned checkout(s)%s", changed, f" of {org_id}" if org_id else "")
    return changed
