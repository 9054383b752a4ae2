"""Switching a subscription's plan / seats: the ONE code path for a change confirmed by the API (the provider said
the proration invoice is paid), by a webhook (``invoice.paid`` of the change, ``customer.subscription.updated``
showing new items — also a change made in the Stripe dashboard) and by a renewal that starts a scheduled change.

:func:`switch_plan` runs under the caller's subscription row lock and does, in that one transaction: the
subscription's plan, quantity and price; for a graph its tier (``graphs.graph_tier``; its limits follow the plan
through :mod:`robosystems.billing.entitlements`) and its credit allocation (``monthly_allocation``; an upgrade adds
the difference of the two allocations for the rest of the period, prorated like the price, once per change); the
change row ``applied``; a billing audit row.  Calling it again for the state already reached changes nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal
from fractions import Fraction
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from robosystems.billing import credits
from robosystems.billing.audit import Actor, record_for_actor
from robosystems.billing.entitlements import graph_entitlements, org_overrides_sync
from robosystems.billing.plans import Catalog
from robosystems.ids import new_id
from robosystems.models import BillingSubscription, Graph, GraphCredits
from robosystems.models.billing_depth import OPEN_CHANGE_STATUSES, BillingPlanChange
from robosystems.payments.proration import remaining_fraction

log = logging.getLogger("robosystems.billing.plan_switch")

SEATS = "org_seats"


def _now() -> datetime:
    return datetime.now(UTC)


def unit_price(catalog: Catalog, resource_type: str, plan_name: str) -> int:
    """The catalog price of one unit of ``plan_name`` (a graph, or one seat); 422 for an unknown plan."""
    if resource_type == SEATS:
        return catalog.seat_plan(plan_name).price_cents_per_seat
    return catalog.plan(plan_name).price_cents


def plan_of_price(catalog: Catalog, price: Mapping[str, Any] | str | None, product: str | None = None) -> str | None:
    """Which catalog plan a provider price bills: a configured price id, our product id
    (``robosystems_plan_<plan>`` at Stripe, ``prod_local_<plan>`` locally), or the price's ``metadata.plan_name``."""
    price_id = price if isinstance(price, str) else (price or {}).get("id")
    if isinstance(price, Mapping):
        product = product or (price.get("product") if isinstance(price.get("product"), str) else None)
        named = (price.get("metadata") or {}).get("plan_name")
        if isinstance(named, str):
            found = catalog.find_plan(named)
            if found is not None:
                return found.name
            if named in catalog.seats.plans:
                return named
    names = list(catalog.graph.plans) + list(catalog.seats.plans)
    for name in names:
        plan = catalog.graph.plans.get(name) or catalog.seats.plans[name]
        if price_id and plan.provider_price_ids.get("stripe") == price_id:
            return name
        if product in (f"robosystems_plan_{name}".replace("-", "_"), f"prod_local_{name}"):
            return name
    return None


def open_change(session: Session, subscription_id: str) -> BillingPlanChange | None:
    return session.execute(
        select(BillingPlanChange)
        .where(BillingPlanChange.subscription_id == subscription_id, BillingPlanChange.status.in_(OPEN_CHANGE_STATUSES))
        .with_for_update()
        .execution_options(populate_existing=True)
    ).scalar_one_or_none()


def _credit_top_up(
    session: Session, sub: BillingSubscription, change_id: str, old_monthly: int, new_monthly: int, at: datetime
) -> None:
    """An upgrade's larger allocation for the rest of the period: the difference, prorated like the price."""
    if sub.resource_id is None or new_monthly <= old_monthly or credits.balance(session, sub.resource_id) is None:
        return
    fraction = Fraction(1)
    if sub.current_period_start and sub.current_period_end:
        fraction = remaining_fraction(
            int(sub.current_period_start.timestamp()), int(sub.current_period_end.timestamp()), int(at.timestamp())
        )
    amount = (Decimal(new_monthly - old_monthly) * fraction.numerator / fraction.denominator).quantize(
        Decimal("1"), rounding=ROUND_HALF_UP
    )
    if amount > 0:
        credits.grant_for_invoice(
            session,
            sub.resource_id,
            f"change:{change_id}",
            amount,
            description=f"Credits of the {sub.plan_name} plan for the rest of the period",
        )


def switch_plan(
    session: Session,
    catalog: Catalog,
    sub: BillingSubscription,
    plan_name: str,
    quantity: int,
    *,
    actor: Actor,
    reason: str,
    change: BillingPlanChange | None = None,
    at: datetime | None = None,
) -> bool:
    """Put ``sub`` (locked by the caller) on ``plan_name`` x ``quantity`` (module doc).  False when it already is."""
    at = at or _now()
    old_plan, old_quantity = sub.plan_name, sub.quantity
    if change is None:
        change = open_change(session, sub.id)
        if change is not None and (change.to_plan, change.to_quantity) != (plan_name, quantity):
            change = None
    if (old_plan, old_quantity) == (plan_name, quantity):
        if change is not None and change.status in OPEN_CHANGE_STATUSES:
            _mark_applied(change, at)
        return False
    unit = unit_price(catalog, sub.resource_type, plan_name)
    sub.plan_name, sub.quantity, sub.base_price_cents = plan_name, quantity, unit * quantity
    sub.updated_at = _now()
    if change is None:  # made at the provider (dashboard, portal): recorded as applied
        change = BillingPlanChange(
            id=new_id("bchg"),
            org_id=sub.org_id,
            subscription_id=sub.id,
            from_plan=old_plan,
            to_plan=plan_name,
            from_quantity=old_quantity,
            to_quantity=quantity,
            direction="upgrade" if unit * quantity >= _old_total(catalog, sub, old_plan, old_quantity) else "downgrade",
            timing="immediate",
            status="applied",
            source="provider",
            currency=catalog.currency,
            applied_at=at,
        )
        session.add(change)
    _mark_applied(change, at)
    if sub.resource_type == "graph" and sub.resource_id:
        _switch_graph(session, catalog, sub, old_plan, plan_name, change.id, at)
    session.flush()
    record_for_actor(
        session,
        "subscription_plan_changed",
        actor,
        org_id=sub.org_id,
        subscription_id=sub.id,
        reason=reason,
        description=f"Plan {old_plan} x{old_quantity} -> {plan_name} x{quantity}",
        data={
            "from_plan": old_plan,
            "to_plan": plan_name,
            "from_quantity": old_quantity,
            "to_quantity": quantity,
            "change_id": change.id,
            "source": change.source,
        },
    )
    log.info("subscription %s: %s x%s -> %s x%s (%s)", sub.id, old_plan, old_quantity, plan_name, quantity, reason)
    return True


def _old_total(catalog: Catalog, sub: BillingSubscription, plan_name: str, quantity: int) -> int:
    try:
        return unit_price(catalog, sub.resource_type, plan_name) * quantity
    except Exception:  # noqa: BLE001 - a plan no longer in the catalog: compare with nothing
        return 0


def _mark_applied(change: BillingPlanChange, at: datetime) -> None:
    change.status = "applied"
    change.applied_at = change.applied_at or at
    change.failure_reason = None
    change.updated_at = _now()


def _switch_graph(
    session: Session,
    catalog: Catalog,
    sub: BillingSubscription,
    old_plan: str,
    new_plan: str,
    change_id: str,
    at: datetime,
) -> None:
    """The graph's tier switch: its tier column, its pool's allocation and storage limit, and the extra credits."""
    assert sub.resource_id is not None
    overrides = org_overrides_sync(session, sub.org_id)
    session.execute(update(Graph).where(Graph.graph_id == sub.resource_id).values(graph_tier=new_plan))
    before = graph_entitlements(sub.resource_id, catalog.plan(old_plan), overrides)
    after = graph_entitlements(sub.resource_id, catalog.plan(new_plan), overrides)
    session.execute(
        update(GraphCredits)
        .where(GraphCredits.graph_id == sub.resource_id)
        .values(monthly_allocation=after.value("monthly_credits"), storage_limit_gb=catalog.plan(new_plan).storage_gb)
    )
    _credit_top_up(session, sub, change_id, before.value("monthly_credits"), after.value("monthly_credits"), at)
