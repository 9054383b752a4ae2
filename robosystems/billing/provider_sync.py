"""What the provider's subscription and invoice events mean for plans, seats and credits (called by the webhook
handlers, in the event's transaction, under the subscription row lock).

* ``customer.subscription.created|updated``: the items say which plan and how many seats the provider bills.  When
  that differs from ours (a change confirmed by payment, a scheduled change that started, a change made in the Stripe
  dashboard or portal) the subscription switches through :func:`robosystems.billing.plan_switch.switch_plan` — the
  same path as a change confirmed in the request.  A ``pending_update`` (a change whose payment has not succeeded)
  changes nothing.
* ``invoice.paid`` of a change (``billing_reason: subscription_update``): its pending change is applied.
  ``invoice.payment_failed`` of a change: the change is ``failed`` and the subscription stays as it was (not past
  due: the provider discards the update).
* ``invoice.paid`` of a period (``subscription_create`` / ``subscription_cycle``): the plan the invoice bills is
  applied first (a scheduled change starts with its first invoice, whatever the order the events arrive in), then
  the graph's monthly credits RESET to the plan's allocation (no rollover), once per invoice, in this transaction.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from robosystems.billing import credits, entitlements
from robosystems.billing.audit import SYSTEM
from robosystems.billing.plan_switch import SEATS, plan_of_price, switch_plan
from robosystems.billing.plans import Catalog
from robosystems.models import BillingInvoice, BillingSubscription
from robosystems.models.billing_depth import BillingPlanChange

log = logging.getLogger("robosystems.billing.provider_sync")

GRANTABLE_STATES = frozenset({"active", "past_due", "unpaid"})
UPDATE_REASON = "subscription_update"


def _mapping(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _billed_item(catalog: Catalog, items: list[Any]) -> tuple[str, int] | None:
    for raw in items:
        item = _mapping(raw)
        price = item.get("price")
        pricing = _mapping(_mapping(item.get("pricing")).get("price_details"))
        plan = plan_of_price(catalog, price if price is not None else pricing.get("price"), pricing.get("product"))
        if plan is not None:
            return plan, max(1, int(item.get("quantity") or 1))
    return None


def _fits(catalog: Catalog, sub: BillingSubscription, plan: str) -> bool:
    return plan in (catalog.seats.plans if sub.resource_type == SEATS else catalog.graph.plans)


def _after_last_switch(session: Session, sub: BillingSubscription, at: datetime) -> bool:
    """Provider state as of ``at`` may move the plan only if it is newer than the last switch (an older event — a
    redelivery, a replay, the creation's — must not undo a later change)."""
    last = session.execute(
        select(func.max(BillingPlanChange.applied_at)).where(
            BillingPlanChange.subscription_id == sub.id, BillingPlanChange.status == "applied"
        )
    ).scalar()
    return last is None or at > last


def _epoch(value: Any, default: datetime) -> datetime:
    return datetime.fromtimestamp(value, UTC) if isinstance(value, int) and not isinstance(value, bool) else default


def on_subscription(
    session: Session, catalog: Catalog, sub: BillingSubscription, obj: dict[str, Any], event_type: str, at: datetime
) -> str | None:
    """The provider subscription object's items -> our plan / seats (module doc)."""
    if sub.status not in ("active", "past_due") or sub.resource_type not in ("graph", SEATS):
        return None
    if event_type == "customer.subscription.created" or not _after_last_switch(session, sub, at):
        return None
    if obj.get("pending_update"):
        return "pending_update"
    billed = _billed_item(catalog, list(_mapping(obj.get("items")).get("data") or []))
    if billed is None:
        return "unknown_price"
    plan, quantity = billed
    if not _fits(catalog, sub, plan):
        return "price_of_another_plan_kind"
    changed = switch_plan(session, catalog, sub, plan, quantity, actor=SYSTEM, reason=f"stripe {event_type}", at=at)
    return "plan_switched" if changed else None


def _change_of_invoice(
    session: Session, sub: BillingSubscription, provider_invoice_id: str
) -> BillingPlanChange | None:
    return session.execute(
        select(BillingPlanChange)
        .where(
            BillingPlanChange.subscription_id == sub.id,
            BillingPlanChange.provider_invoice_id == provider_invoice_id,
        )
        .with_for_update()
    ).scalar_one_or_none()


def on_update_invoice(
    session: Session,
    catalog: Catalog,
    sub: BillingSubscription,
    provider_invoice: dict[str, Any],
    event_type: str,
    at: datetime,
) -> str:
    """The proration invoice of a change: paid -> the change applies; failed -> the change failed."""
    change = _change_of_invoice(session, sub, str(provider_invoice.get("id")))
    if event_type == "invoice.payment_failed":
        if change is not None and change.status == "pending_payment":
            change.status, change.failure_reason = "failed", "the payment of the change failed"
            change.updated_at = datetime.now(UTC)
            return "plan_change_failed"
        return "change_payment_failed"
    if change is None:  # a change made at the provider: its items are the truth
        billed = _billed_item(catalog, list(_mapping(provider_invoice.get("lines")).get("data") or []))
        if billed is None or not _fits(catalog, sub, billed[0]):
            return "update_invoice_paid"
        plan, quantity = billed
    else:
        plan, quantity = change.to_plan, change.to_quantity
    if sub.status not in ("active", "past_due"):
        return f"update_invoice_paid_while_{sub.status}"
    if change is None and not _after_last_switch(session, sub, _epoch(provider_invoice.get("created"), at)):
        return "update_invoice_older_than_the_plan"
    switch_plan(
        session, catalog, sub, plan, quantity, actor=SYSTEM, reason=f"stripe {event_type}", change=change, at=at
    )
    return "plan_change_applied"


def on_period_invoice_paid(
    session: Session,
    catalog: Catalog,
    sub: BillingSubscription,
    invoice: BillingInvoice,
    provider_invoice: dict[str, Any],
    event_type: str,
    at: datetime,
) -> str:
    """A paid period: its plan first (a scheduled change starts here), then the credit reset (once per invoice)."""
    lines = [li for li in _mapping(provider_invoice.get("lines")).get("data") or [] if not _is_proration(li)]
    billed = _billed_item(catalog, lines)
    newer = _after_last_switch(session, sub, _epoch(provider_invoice.get("created"), at))
    if billed is not None and _fits(catalog, sub, billed[0]) and sub.status in ("active", "past_due") and newer:
        switch_plan(session, catalog, sub, billed[0], billed[1], actor=SYSTEM, reason=f"stripe {event_type}", at=at)
    return reset_credits(session, catalog, sub, invoice)


def _is_proration(line: Any) -> bool:
    details = _mapping(_mapping(_mapping(line).get("parent")).get("subscription_item_details"))
    return bool(details.get("proration"))


def reset_credits(session: Session, catalog: Catalog, sub: BillingSubscription, invoice: BillingInvoice) -> str:
    """The graph's allocation for the period this invoice paid: reset to the plan's monthly credits."""
    if sub.resource_type != "graph" or not sub.resource_id or sub.status not in GRANTABLE_STATES:
        return "credits_at_provisioning"
    if credits.balance(session, sub.resource_id) is None:
        return "credits_at_provisioning"
    overrides = entitlements.org_overrides_sync(session, sub.org_id)
    plan = catalog.find_plan(sub.plan_name) or catalog.graph_plans[0]
    monthly = entitlements.graph_entitlements(sub.resource_id, plan, overrides).value("monthly_credits")
    done = credits.reset_allocation(
        session,
        sub.resource_id,
        credits.invoice_grant_key(invoice.id),
        monthly,
        description=f"Monthly credits ({plan.name}) for invoice {invoice.invoice_number}",
        metadata={"invoice_id": invoice.id},
    )
    return "credits_reset" if done else "credits_already_reset"
