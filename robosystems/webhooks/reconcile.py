"""Reconciliation: compare live local subscriptions with the provider and heal (or report) drift.

Webhooks can be lost for good (an endpoint misconfigured for longer than Stripe retries, a secret rotated
wrongly).  Periodically (``WEBHOOK_RECONCILE_INTERVAL_SECONDS``) every live subscription with a provider id is
fetched through :meth:`PaymentProvider.retrieve_subscription` (outside any transaction), then, under the same
advisory lock the webhook handlers take, status / period / cancel-at-period-end differences are applied through
the same rules as a ``customer.subscription.updated`` event created "now" (so an older webhook arriving later is
ignored as stale).  A difference that the state machine refuses is reported (billing audit row
``subscription_drift``) and left for an operator.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select, text

from robosystems.billing import subscriptions as subs
from robosystems.billing.audit import record_billing_event
from robosystems.models.billing import LIVE_SUBSCRIPTION_STATUSES, BillingSubscription
from robosystems.payments.base import PaymentProvider, ProviderError, ProviderObjectMissing
from robosystems.webhooks.handlers import apply_status
from robosystems.worker.context import WorkerContext
from robosystems.worker.retry import RetryLater

log = logging.getLogger("robosystems.webhooks.reconcile")


@dataclass(frozen=True)
class _Observation:
    id: str
    type: str
    created: datetime
    attempts: int = 1


def _provider(ctx: WorkerContext) -> PaymentProvider:
    from robosystems.payments.factory import get_provider

    return get_provider(ctx.settings)


def reconcile(ctx: WorkerContext, provider: PaymentProvider | None = None, *, limit: int = 500) -> dict[str, int]:
    """Check up to ``limit`` live subscriptions (least recently updated first).  Returns counters."""
    provider = provider or _provider(ctx)
    with ctx.maker.begin() as session:
        rows = session.execute(
            select(BillingSubscription.id, BillingSubscription.provider_subscription_id)
            .where(
                BillingSubscription.provider_subscription_id.is_not(None),
                BillingSubscription.status.in_(LIVE_SUBSCRIPTION_STATUSES),
                BillingSubscription.payment_provider == provider.name,
            )
            .order_by(BillingSubscription.updated_at)
            .limit(limit)
        ).all()
    counts = {"checked": 0, "in_sync": 0, "healed": 0, "reported": 0, "errors": 0}
    for sub_id, provider_id in rows:
        assert provider_id is not None  # filtered above
        counts["checked"] += 1
        try:
            remote = provider.retrieve_subscription(provider_id)
        except ProviderObjectMissing:
            _report(ctx, sub_id, {"provider": "subscription missing at the provider"})
            counts["reported"] += 1
            continue
        except ProviderError as exc:
            log.warning("reconcile %s: provider error %s", sub_id, exc.code)
            counts["errors"] += 1
            continue
        outcome = _apply(ctx, sub_id, provider_id, remote)
        counts[outcome] += 1
    if counts["healed"] or counts["reported"]:
        log.warning("subscription reconciliation: %s", counts)
    return counts


def _apply(ctx: WorkerContext, sub_id: str, provider_id: str, remote: Any) -> str:
    now = datetime.now(UTC)
    with ctx.maker.begin() as session:
        session.execute(text("SELECT pg_advisory_xact_lock(hashtextextended(:k, 0))"), {"k": f"stripe:{provider_id}"})
        sub = session.execute(
            select(BillingSubscription)
            .where(BillingSubscription.id == sub_id)
            .with_for_update()
            .execution_options(populate_existing=True)
        ).scalar_one_or_none()
        if sub is None or sub.status not in LIVE_SUBSCRIPTION_STATUSES:
            return "in_sync"
        target = subs.from_provider_status(remote.status)
        drift: dict[str, Any] = {}
        if target and target != sub.status and not (sub.status == "provisioning" and target == "active"):
            drift["status"] = {"local": sub.status, "provider": target}
        if remote.current_period_end and remote.current_period_end != sub.current_period_end:
            drift["current_period_end"] = {
                "local": _iso(sub.current_period_end),
                "provider": _iso(remote.current_period_end),
            }
        if remote.cancel_at_period_end != sub.cancel_at_period_end:
            drift["cancel_at_period_end"] = {"local": sub.cancel_at_period_end, "provider": remote.cancel_at_period_end}
        if not drift:
            return "in_sync"
        if remote.current_period_start:
            sub.current_period_start = remote.current_period_start
        if remote.current_period_end:
            sub.current_period_end = remote.current_period_end
        sub.cancel_at_period_end = bool(remote.cancel_at_period_end)
        if remote.canceled_at and sub.canceled_at is None:
            sub.canceled_at = remote.canceled_at
        healed = True
        note = None
        if "status" in drift:
            try:
                with session.begin_nested():
                    note = apply_status(
                        session, sub, target, _Observation("reconciliation", "reconciliation", now), settings_backoff=0
                    )
            except RetryLater:
                note = "deferred_while_provisioning"
            if note is not None:
                healed = False
        record_billing_event(
            session,
            "subscription_reconciled" if healed else "subscription_drift",
            org_id=sub.org_id,
            subscription_id=sub.id,
            reason="reconciliation with the payment provider",
            data={"drift": drift, "note": note},
            description="Subscription healed from the provider" if healed else "Subscription drift needs an operator",
        )
        return "healed" if healed else "reported"


def _report(ctx: WorkerContext, sub_id: str, drift: dict[str, Any]) -> None:
    with ctx.maker.begin() as session:
        org_id = session.execute(
            select(BillingSubscription.org_id).where(BillingSubscription.id == sub_id)
        ).scalar_one_or_none()
        record_billing_event(
            session,
            "subscription_drift",
            org_id=org_id,
            subscription_id=sub_id,
            reason="reconciliation with the payment provider",
            data={"drift": drift},
            description="Subscription drift needs an operator",
        )


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None
