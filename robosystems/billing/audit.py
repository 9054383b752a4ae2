"""Billing audit log writer (``billing_audit_logs``: append-only by trigger).

Every row names at least one of org, subscription, invoice, acting user or legacy payer
(``ck_billing_audit_logs_has_reference``); :func:`record_billing_event` refuses a call that names none before the
database would.  ``actor_user_id`` is who acted; ``org_id`` is whose billing it is.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from robosystems.ids import new_id
from robosystems.models.billing import BillingAuditLog
from robosystems.observability import current_client_ip, current_request_id

ActorType = Literal["system", "user", "admin"]


@dataclass(frozen=True)
class Actor:
    """Who causes a billing change: ``Actor.system()``, ``Actor.user(user_id)``, ``Actor.admin(user_id=None)``."""

    type: ActorType = "system"
    user_id: str | None = None

    @classmethod
    def system(cls) -> Actor:
        return cls("system", None)

    @classmethod
    def user(cls, user_id: str) -> Actor:
        return cls("user", user_id)

    @classmethod
    def admin(cls, user_id: str | None = None) -> Actor:
        return cls("admin", user_id)

    @classmethod
    def coerce(cls, value: Actor | str | None) -> Actor:
        """``None``/``"system"`` -> system, ``"admin"`` -> admin, any other string -> that user."""
        if isinstance(value, Actor):
            return value
        if value is None or value == "system":
            return cls.system()
        if value == "admin":
            return cls.admin()
        return cls.user(value)


SYSTEM = Actor.system()


def record_billing_event(
    session: Session,
    event_type: str,
    *,
    org_id: str | None = None,
    subscription_id: str | None = None,
    invoice_id: str | None = None,
    actor_user_id: str | None = None,
    actor_type: ActorType = "system",
    reason: str | None = None,
    data: dict[str, Any] | None = None,
    description: str | None = None,
    billing_customer_user_id: str | None = None,
) -> str:
    """Add one audit row to the current unit of work; returns its id."""
    if not (org_id or subscription_id or invoice_id or actor_user_id or billing_customer_user_id):
        raise ValueError(f"billing audit event {event_type!r} names no org, subscription, invoice or user")
    if actor_type not in ("system", "user", "admin"):
        raise ValueError(f"unknown actor_type {actor_type!r}")
    payload = dict(data or {})
    request_id = current_request_id()
    if request_id and "request_id" not in payload:
        payload["request_id"] = request_id
    audit_id = new_id("baud")
    session.execute(
        insert(BillingAuditLog).values(
            id=audit_id,
            event_type=event_type[:100],
            org_id=org_id,
            subscription_id=subscription_id,
            invoice_id=invoice_id,
            billing_customer_user_id=billing_customer_user_id,
            actor_user_id=actor_user_id,
            actor_type=actor_type,
            actor_ip=current_client_ip() or None,
            reason=None if reason is None else reason[:500],
            description=(description or event_type.replace("_", " ").replace(".", " "))[:500],
            event_data=payload or None,
        )
    )
    return audit_id


def record_for_actor(session: Session, event_type: str, actor: Actor | str | None, **kwargs: Any) -> str:
    """:func:`record_billing_event` with the actor given as an :class:`Actor`."""
    who = Actor.coerce(actor)
    return record_billing_event(session, event_type, actor_user_id=who.user_id, actor_type=who.type, **kwargs)


async def record_billing_event_async(session: AsyncSession, event_type: str, **kwargs: Any) -> str:
    return await session.run_sync(lambda s: record_billing_event(s, event_type, **kwargs))
