"""Writers for the append-only security audit table."""

from __future__ import annotations

from typing import Any

from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncSession

from robosystems.ids import new_id
from robosystems.models import SecurityEvent
from robosystems.observability import current_client_ip, current_request_id


async def record_security_event(
    session: AsyncSession,
    event_type: str,
    *,
    user_id: str | None = None,
    email: str | None = None,
    user_agent: str | None = None,
    details: dict[str, Any] | None = None,
) -> None:
    """Add a security event to the current unit of work."""
    await session.execute(
        insert(SecurityEvent).values(
            id=new_id("sev"),
            event_type=event_type,
            user_id=user_id,
            email=email,
            ip_address=current_client_ip() or None,
            user_agent=(user_agent or None) and user_agent[:512],
            request_id=current_request_id(),
            details=details or {},
        )
    )


async def record_security_event_now(maker: Any, event_type: str, **kwargs: Any) -> None:
    """Write a security event in its own transaction (for requests that are about to fail,
    whose own transaction will be rolled back)."""
    async with maker() as session, session.begin():
        await record_security_event(session, event_type, **kwargs)
