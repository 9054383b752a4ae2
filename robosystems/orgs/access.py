"""One access path for every org-scoped route: (principal, org, role) from the LIVE membership.

A token's org claim is only a default (used when a route takes no explicit org); it never grants
anything.  Non-member, inactive (pending) member, unknown or deleted org -> 404 (existence is not
revealed); member without the role for the action -> 403.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated

from fastapi import Path
from sqlalchemy import and_, select
from sqlalchemy.ext.asyncio import AsyncSession

from robosystems.auth.deps import CurrentPrincipal, DbSession, Principal
from robosystems.auth.sessions import personal_org_id
from robosystems.errors import Forbidden, NotFound
from robosystems.models import Org, OrgUser
from robosystems.orgs.policy import Action, allowed


@dataclass(frozen=True)
class OrgAccess:
    principal: Principal
    org_id: str
    org_name: str
    org_type: str
    role: str

    @property
    def user_id(self) -> str:
        return self.principal.user_id

    def can(self, action: Action) -> bool:
        return allowed(self.role, action)


async def resolve_org_access(
    session: AsyncSession, principal: Principal, org_id: str, *, lock: bool = False, fresh: bool = False
) -> OrgAccess:
    """Live membership lookup (one query).  ``lock=True`` takes a row lock on the org, which
    serializes concurrent membership changes of that org (last-owner rules); ``fresh=True`` reads
    it in the caller's transaction (after a change the request made itself)."""
    known, m = principal.known_membership(org_id)
    if known and not lock and not fresh:
        # The principal query read the live membership in this org moments ago (one statement,
        # committed data): reuse it instead of a second round trip.  Locking callers re-read.
        if m is None:
            raise NotFound("Organization not found", code="org_not_found")
        return OrgAccess(principal, m.org_id, m.name, m.org_type, m.role)
    stmt = (
        select(Org.id, Org.name, Org.org_type, OrgUser.role)
        .join(
            OrgUser,
            and_(OrgUser.org_id == Org.id, OrgUser.user_id == principal.user_id, OrgUser.is_active.is_(True)),
        )
        .where(Org.id == org_id, Org.deleted_at.is_(None))
    )
    if lock:
        stmt = stmt.with_for_update(of=Org)
    row = (await session.execute(stmt)).one_or_none()
    if row is None:
        raise NotFound("Organization not found", code="org_not_found")
    return OrgAccess(principal, row.id, row.name, row.org_type, row.role)


async def authorize(
    session: AsyncSession,
    principal: Principal,
    org_id: str | None,
    action: Action,
    *,
    lock: bool = False,
    fresh: bool = False,
) -> OrgAccess:
    """Resolve the org (explicit id, else the token's org, else the personal org) and check ``action``."""
    target = org_id or principal.token_org_id or await personal_org_id(session, principal.user_id)
    if not target:
        raise NotFound("Organization not found", code="org_not_found")
    access = await resolve_org_access(session, principal, target, lock=lock, fresh=fresh)
    if not access.can(action):
        raise Forbidden(f"Your role ({access.role}) does not allow this action", code="insufficient_role")
    return access


def require(action: Action) -> Callable[..., Awaitable[OrgAccess]]:
    """Dependency for routes with an ``{org_id}`` path parameter."""

    async def dependency(
        principal: CurrentPrincipal,
        session: DbSession,
        org_id: Annotated[str, Path(min_length=1, max_length=64)],
    ) -> OrgAccess:
        return await authorize(session, principal, org_id, action)

    return dependency
