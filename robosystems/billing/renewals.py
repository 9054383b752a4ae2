"""The local provider's clock (periodic task ``robosystems.billing.local_renewals``, only with the local provider):
subscriptions whose period ended are renewed at the provider — a scheduled change starts, the next period is invoiced
and charged, one canceled at period end ends — and the provider's events are sent to our webhook endpoint, where the
same handlers as Stripe's apply them (plan switch, credit reset once per invoice, ``canceled``).  Stripe runs its own
clock: with Stripe this task does nothing."""

from __future__ import annotations

import logging

from robosystems.payments.factory import local_provider
from robosystems.payments.local_delivery import deliver_now
from robosystems.worker.context import WorkerContext

log = logging.getLogger("robosystems.billing.renewals")

LOCAL_RENEWALS_TASK = "robosystems.billing.local_renewals"


def run_local_renewals(ctx: WorkerContext, *, now: int | None = None) -> dict[str, int]:
    provider = local_provider(ctx.settings)
    counts = {"renewed": 0, "undelivered": 0}
    if provider is None:
        return counts
    for subscription_id in provider.due_renewals(now):
        try:
            counts["renewed"] += provider.renew(subscription_id, now)
            if not deliver_now(ctx.settings, provider, "subscriptions", subscription_id):
                counts["undelivered"] += 1
        except Exception:  # noqa: BLE001 - one subscription must not stop the others
            log.exception("local renewal of %s failed", subscription_id)
    if counts["renewed"]:
        log.info("local provider renewals: %s", counts)
    return counts
