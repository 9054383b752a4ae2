"""The customer portal: ``POST /v1/billing/portal/{org_id}`` -> ``{"url"}`` (owner/admin).

With Stripe it is Stripe's customer portal session (payment method, invoices, cancel — configured in the Stripe
dashboard); with the local provider a hosted page like the local checkout page
(:mod:`robosystems.payments.local_router`): the default card can be replaced, every invoice has its PDF link and a
subscription can be canceled at period end.  What the customer does there reaches us as the provider's events
(``customer.updated``, ``payment_method.attached``, ``customer.subscription.updated``) through the webhook inbox.
"""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession
from starlette.concurrency import run_in_threadpool

from robosystems.billing.audit import Actor, record_for_actor
from robosystems.billing.checkout import checkout_customer
from robosystems.config import Settings
from robosystems.orgs.access import OrgAccess
from robosystems.payments.base import PaymentProvider


async def portal_url(session: AsyncSession, settings: Settings, provider: PaymentProvider, access: OrgAccess) -> str:
    """A portal session for the org's billing customer (created once, if the org has none yet); audited."""
    actor = Actor.user(access.user_id)
    customer = await checkout_customer(session, provider, access.org_id, access.org_name, access.principal, actor)
    assert customer.stripe_customer_id is not None  # set when the customer was created
    customer_id = customer.stripe_customer_id
    return_url = settings.billing_portal_return_url or f"{settings.base_url}/"
    url = await run_in_threadpool(
        lambda: provider.create_portal_session(customer_id=customer_id, return_url=return_url)
    )
    await session.run_sync(
        lambda s: record_for_actor(
            s, "portal_session_created", actor, org_id=access.org_id, description="Billing portal opened"
        )
    )
    return url
