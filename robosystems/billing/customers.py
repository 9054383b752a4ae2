"""Billing customers: one per org, created race-free, with the provider customer created exactly once.

:func:`get_or_create_customer` does ``INSERT … ON CONFLICT (org_id) DO NOTHING`` and then locks the row
``FOR UPDATE``.  Only the transaction that holds the row while it has no provider customer id calls
``create_remote(org_id)``; a concurrent caller waits on the row lock and then sees the id.  The provider call is
injected (this module doesn't know the payment providers); it should pass the idempotency key
:func:`customer_idempotency_key` (``customer:<org_id>``) so a retry after a rolled-back transaction gets the same
provider customer back.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from sqlalchemy import Select, select
from sqlalchemy.dialects.postgresql import Insert
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from robosystems.billing.audit import Actor, record_for_actor
from robosystems.errors import NotFound
from robosystems.models.billing import PAYMENT_PROVIDERS, BillingCustomer

log = logging.getLogger("robosystems.billing.customers")

CreateRemote = Callable[[str], str]
CreateRemoteAsync = Callable[[str], "str | Awaitable[str]"]


def customer_idempotency_key(org_id: str) -> str:
    return f"customer:{org_id}"


def _insert_stmt(provider: str, org_id: str, billing_email: str | None, user_id: str | None) -> Insert:
    if provider not in PAYMENT_PROVIDERS:
        raise ValueError(f"unknown payment provider {provider!r}")
    return (
        pg_insert(BillingCustomer)
        .values(org_id=org_id, provider=provider, billing_email=billing_email, user_id=user_id)
        .on_conflict_do_nothing(index_elements=[BillingCustomer.org_id])
    )


def _lock_stmt(org_id: str) -> Select[BillingCustomer]:
    return (
        select(BillingCustomer)
        .where(BillingCustomer.org_id == org_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    )


def _needs_remote(customer: BillingCustomer, provider: str) -> bool:
    return customer.stripe_customer_id is None or customer.provider != provider


def _record_remote(
    session: Session, customer: BillingCustomer, provider: str, remote_id: str, actor: Actor | str | None
) -> None:
    if not isinstance(remote_id, str) or not remote_id:
        raise ValueError("create_remote returned no customer id")
    previous = (customer.provider, customer.stripe_customer_id)
    if previous[1] is not None:
        log.warning(
            "org %s: billing customer moves from %s %s to %s %s", customer.org_id, *previous, provider, remote_id
        )
    customer.provider = provider
    customer.stripe_customer_id = remote_id
    session.flush()
    record_for_actor(
        session,
        "customer_created",
        actor,
        org_id=customer.org_id,
        description=f"Billing customer created at {provider}",
        data={"provider": provider, "provider_customer_id": remote_id, "previous": list(previous)},
    )


def get_or_create_customer(
    session: Session,
    provider: str,
    org_id: str,
    create_remote: CreateRemote | None = None,
    *,
    billing_email: str | None = None,
    user_id: str | None = None,
    actor: Actor | str | None = None,
) -> BillingCustomer:
    """The org's billing customer (locked for the rest of the transaction); creates the provider customer once."""
    session.execute(_insert_stmt(provider, org_id, billing_email, user_id))
    customer = session.execute(_lock_stmt(org_id)).scalar_one()
    if create_remote is not None and _needs_remote(customer, provider):
        _record_remote(session, customer, provider, create_remote(org_id), actor)
    return customer


async def get_or_create_customer_async(
    session: AsyncSession,
    provider: str,
    org_id: str,
    create_remote: CreateRemoteAsync | None = None,
    *,
    billing_email: str | None = None,
    user_id: str | None = None,
    actor: Actor | str | None = None,
) -> BillingCustomer:
    """Same as :func:`get_or_create_customer`; ``create_remote`` may be sync or async."""
    await session.execute(_insert_stmt(provider, org_id, billing_email, user_id))
    customer = (await session.execute(_lock_stmt(org_id))).scalar_one()
    if create_remote is not None and _needs_remote(customer, provider):
        remote = create_remote(org_id)
        if inspect.isawaitable(remote):
            remote = await remote
        remote_id: Any = remote
        await session.run_sync(lambda s: _record_remote(s, customer, provider, remote_id, actor))
    return customer


def get_customer(session: Session, org_id: str) -> BillingCustomer | None:
    """Read only (a GET never writes)."""
    return session.execute(select(BillingCustomer).where(BillingCustomer.org_id == org_id)).scalar_one_or_none()


async def get_customer_async(session: AsyncSession, org_id: str) -> BillingCustomer | None:
    return (await session.execute(select(BillingCustomer).where(BillingCustomer.org_id == org_id))).scalar_one_or_none()


def record_payment_method(
    session: Session,
    org_id: str,
    *,
    payment_method_id: str,
    summary: dict[str, Any] | None = None,
    actor: Actor | str | None = None,
) -> BillingCustomer:
    """Store the default payment method locally (after it was attached at the provider) + audit row."""
    customer = session.execute(_lock_stmt(org_id)).scalar_one_or_none()
    if customer is None:
        raise NotFound("Billing customer not found", code="billing_customer_not_found")
    keep = ("brand", "last4", "exp_month", "exp_year")
    customer.has_payment_method = True
    customer.default_payment_method_id = payment_method_id
    customer.payment_method_summary = {k: summary[k] for k in keep if summary and k in summary} or None
    session.flush()
    record_for_actor(
        session,
        "payment_method_updated",
        actor,
        org_id=org_id,
        description="Default payment method updated",
        data={"payment_method_id": payment_method_id, **(customer.payment_method_summary or {})},
    )
    return customer


async def record_payment_method_async(session: AsyncSession, org_id: str, **kwargs: Any) -> BillingCustomer:
    return await session.run_sync(lambda s: record_payment_method(s, org_id, **kwargs))
