"""The org audit log: one append-only row per membership or org lifecycle event.

Rows are written in the business transaction (a refused or failed request leaves none) and carry
the request id of the request that caused them.  Event types are dotted (``member.invited``);
the table's CHECK constraint holds the format.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import func, insert, select
from sqlalchemy.ext.asyncio import AsyncSession

from robosystems.ids import new_id
from robosystems.models import OrgAuditEvent
from robosystems.observability import current_request_id


class OrgEvent(StrEnum):
    ORG_CREATED = "org.created"
    ORG_UPDATED = "org.updated"
    ORG_DELETED = "org.deleted"
    ORG_RESTORED = "org.restored"
    ORG_PURGED = "org.purged"
    OWNERSHIP_TRANSFERRED = "org.ownership_transferred"
    MEMBER_INVITED = "member.invited"
    MEMBER_JOINED = "member.joined"
    MEMBER_ROLE_CHANGED = "member.role_changed"
    MEMBER_REMOVED = "member.removed"
    MEMBER_LEFT = "member.left"
    INVITATION_RESENT = "invitation.resent"
    INVITATION_REVOKED = "invitation.revoked"
    INVITATION_ROLE_CHANGED = "invitation.role_changed"
    INVITATION_EXPIRED = "invitation.expired"
    WEBHOOK_ENDPOINT_CREATED = "webhook.endpoint_created"
    WEBHOOK_ENDPOINT_UPDATED = "webhook.endpoint_updated"
    WEBHOOK_ENDPOINT_DELETED = "webhook.endpoint_deleted"
    WEBHOOK_SECRET_ROTATED = "webhook.secret_rotated"  # noqa: S105 - an event name


async def record_org_event(
    session: AsyncSession,
    org_id: str,
    event_type: OrgEvent,
    *,
    actor_user_id: str | None,
    target_user_id: str | None = None,
    details: dict[str, Any] | None = None,
) -> None:
    rid = current_request_id()
    await session.execute(
        insert(OrgAuditEvent).values(
            id=new_id("oev"),
            org_id=org_id,
            actor_user_id=actor_user_id,
            target_user_id=target_user_id,
            event_type=event_type.value,
            details=details or {},
            request_id=None if rid == "-" else rid,
        )
    )


def _utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


async def query_org_audit(
    session: AsyncSession,
    org_id: str,
    *,
    event_type: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: int = 50,
    offset: int = 0,
) -> dict[str, Any]:
    """Newest first.  ``since`` inclusive, ``until`` exclusive; naive datetimes are read as UTC.
    Also used by the operator API (deleted and purged orgs keep their trail)."""
    conditions = [OrgAuditEvent.org_id == org_id]
    if event_type:
        conditions.append(OrgAuditEvent.event_type == event_type)
    if (start := _utc(since)) is not None:
        conditions.append(OrgAuditEvent.created_at >= start)
    if (end := _utc(until)) is not None:
        conditions.append(OrgAuditEvent.created_at < end)
    total = (await session.execute(select(func.count()).select_from(OrgAuditEvent).where(*conditions))).scalar_one()
    rows = (
        await session.execute(
            select(
                OrgAuditEvent.id,
                OrgAuditEvent.org_id,
                OrgAuditEvent.event_type,
                OrgAuditEvent.actor_user_id,
                OrgAuditEvent.target_user_id,
                OrgAuditEvent.details,
                OrgAuditEvent.request_id,
                OrgAuditEvent.created_at,
            )
            .where(*conditions)
            .order_by(OrgAuditEvent.created_at.desc(), OrgAuditEvent.id.desc())
            .limit(limit)
            .offset(offset)
        )
    ).all()
    return {"events": [dict(r._mapping) for r in rows], "total": int(total)}
