"""Login sessions and the tokens that name them.  Sessions live in the database so revocation is
immediate and survives a Redis restart."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import and_, bindparam, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from robosystems.ids import new_id
from robosystems.models import AuthSession, Org, OrgUser
from robosystems.observability import current_client_ip
from robosystems.services import AppServices


@dataclass(frozen=True)
class IssuedToken:
    token: str
    session_id: str
    org_id: str | None
    expires_in: int
    refresh_threshold: int


async def personal_org_id(session: AsyncSession, user_id: str) -> str | None:
    return (
        await session.execute(select(Org.id).where(Org.personal_user_id == user_id, Org.deleted_at.is_(None)))
    ).scalar_one_or_none()


_ACTIVE_MEMBERSHIP = (
    select(Org.id, Org.name, Org.org_type, OrgUser.role)
    .join(
        OrgUser,
        and_(OrgUser.org_id == Org.id, OrgUser.user_id == bindparam("user_id"), OrgUser.is_active.is_(True)),
    )
    .where(Org.id == bindparam("org_id"), Org.deleted_at.is_(None))
)


async def active_membership(session: AsyncSession, user_id: str, org_id: str) -> OrgMembershipRow | None:
    conn = await session.connection()
    row = (await conn.execute(_ACTIVE_MEMBERSHIP, {"user_id": user_id, "org_id": org_id})).one_or_none()
    return OrgMembershipRow(row.id, row.name, row.org_type, row.role) if row else None


@dataclass(frozen=True)
class OrgMembershipRow:
    org_id: str
    name: str
    org_type: str
    role: str

    def as_auth_org(self) -> dict[str, str]:
        return {"id": self.org_id, "name": self.name, "type": self.org_type, "role": self.role}


async def open_session(
    session: AsyncSession, services: AppServices, user_id: str, org_id: str | None, user_agent: str | None
) -> IssuedToken:
    """Create a session row and the access token naming it."""
    settings = services.settings
    session_id = new_id("ses")
    token, claims = services.tokens.issue(user_id, org_id, session_id)
    grace = timedelta(minutes=settings.token_grace_period_minutes)
    await session.execute(
        insert(AuthSession).values(
            id=session_id,
            user_id=user_id,
            org_id=org_id,
            expires_at=claims.expires_at + grace,
            ip_address=current_client_ip() or None,
            user_agent=(user_agent or "")[:512] or None,
        )
    )
    return IssuedToken(
        token=token,
        session_id=session_id,
        org_id=org_id,
        expires_in=int(services.tokens.ttl.total_seconds()),
        refresh_threshold=settings.token_refresh_threshold_minutes * 60,
    )


async def revoke_session(session: AsyncSession, session_id: str, reason: str, replaced_by: str | None = None) -> bool:
    """Revoke one live session; False if it was already revoked (atomic: exactly one caller wins)."""
    result = await session.execute(
        update(AuthSession)
        .where(AuthSession.id == session_id, AuthSession.revoked_at.is_(None))
        .values(revoked_at=datetime.now(UTC), revoke_reason=reason, replaced_by=replaced_by)
        .returning(AuthSession.id)
    )
    return result.first() is not None


async def revoke_user_sessions(
    session: AsyncSession, user_id: str, reason: str, keep_session_id: str | None = None
) -> int:
    stmt = update(AuthSession).where(AuthSession.user_id == user_id, AuthSession.revoked_at.is_(None))
    if keep_session_id:
        stmt = stmt.where(AuthSession.id != keep_session_id)
    result = await session.execute(
        stmt.values(revoked_at=datetime.now(UTC), revoke_reason=reason).returning(AuthSession.id)
    )
    return len(result.all())
