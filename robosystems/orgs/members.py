"""Members: list, change role, remove, leave, transfer ownership.

Role rules on top of the policy table (all decided under the org row lock):
* nobody grants a role above their own; only owners grant or revoke ``owner`` and only owners
  remove owners;
* the last active owner can never be demoted, removed or leave (409 ``last_owner``);
* ownership transfer: the target must be an active member; target becomes owner and the caller
  admin in one transaction.
A pending invitation is listed as a member with ``is_active=false`` and ``user_id`` = its
invitation id (``inv_…``); PUT/DELETE on that id change or revoke the invitation.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import delete, func, literal, select, union_all, update
from sqlalchemy.ext.asyncio import AsyncSession

from robosystems.auth.deps import Principal
from robosystems.errors import Conflict, Forbidden, NotFound, Unprocessable
from robosystems.models import OrgInvitation, OrgUser, User
from robosystems.orgs import invitations
from robosystems.orgs.audit import OrgEvent, record_org_event
from robosystems.orgs.policy import Action, Role
from robosystems.orgs.service import (
    check_can_grant,
    count_active_owners,
    lock_and_authorize,
    org_detail,
    personal_org_conflict,
    reload_access,
)
from robosystems.orgs.usage import revoke_member_graph_access
from robosystems.outbound import events as outbound

INVITATION_PREFIX = "inv_"


def member_not_found() -> NotFound:
    return NotFound("Member not found", code="member_not_found")


def last_owner() -> Conflict:
    return Conflict("The organization must keep at least one owner", code="last_owner")


async def list_members(session: AsyncSession, org_id: str, *, limit: int, offset: int) -> dict[str, Any]:
    """Members (active and inactive rows) first, then live pending invitations."""
    now = datetime.now(UTC)
    members = (
        select(
            OrgUser.user_id.label("user_id"),
            User.name.label("name"),
            User.email.label("email"),
            OrgUser.role.label("role"),
            OrgUser.joined_at.label("joined_at"),
            OrgUser.is_active.label("is_active"),
            literal(0).label("kind"),
        )
        .join(User, User.id == OrgUser.user_id)
        .where(OrgUser.org_id == org_id)
    )
    pending = select(
        OrgInvitation.id,
        OrgInvitation.email,
        OrgInvitation.email,
        OrgInvitation.role,
        OrgInvitation.created_at,
        literal(False),
        literal(1),
    ).where(OrgInvitation.org_id == org_id, OrgInvitation.status == "pending", OrgInvitation.expires_at > now)
    combined = union_all(members, pending).subquery()
    rows = (
        await session.execute(
            select(combined, func.count().over().label("total"))
            .order_by(combined.c.kind, combined.c.joined_at, combined.c.user_id)
            .limit(limit)
            .offset(offset)
        )
    ).all()
    if rows:
        total = int(rows[0].total)
    else:
        total = int((await session.execute(select(func.count()).select_from(combined))).scalar_one())
    return {
        "org_id": org_id,
        "total": total,
        "members": [
            {
                "user_id": r.user_id,
                "name": r.name,
                "email": r.email,
                "role": r.role,
                "joined_at": r.joined_at,
                "is_active": bool(r.is_active),
            }
            for r in rows
        ],
    }


async def _member_row(session: AsyncSession, org_id: str, user_id: str) -> Any:
    return (
        await session.execute(
            select(
                OrgUser.id, OrgUser.user_id, OrgUser.role, OrgUser.is_active, OrgUser.joined_at, User.name, User.email
            )
            .join(User, User.id == OrgUser.user_id)
            .where(OrgUser.org_id == org_id, OrgUser.user_id == user_id)
        )
    ).one_or_none()


def _member_out(row: Any, role: str | None = None) -> dict[str, Any]:
    return {
        "user_id": row.user_id,
        "name": row.name,
        "email": row.email,
        "role": role or row.role,
        "joined_at": row.joined_at,
        "is_active": bool(row.is_active),
    }


async def update_member_role(
    session: AsyncSession, principal: Principal, org_id: str, user_id: str, role: str
) -> dict[str, Any]:
    access = await lock_and_authorize(session, principal, org_id, Action.CHANGE_MEMBER_ROLE)
    if user_id.startswith(INVITATION_PREFIX):
        return await invitations.change_invitation_role(session, access, user_id, role)
    target = await _member_row(session, org_id, user_id)
    if target is None:
        raise member_not_found()
    check_can_grant(access, role, current=target.role)
    if target.role == role:
        return _member_out(target)
    if target.role == Role.OWNER and target.is_active and await count_active_owners(session, org_id) <= 1:
        raise last_owner()
    await session.execute(
        update(OrgUser).where(OrgUser.id == target.id).values(role=role, updated_at=func.now())
    )
    await record_org_event(
        session, org_id, OrgEvent.MEMBER_ROLE_CHANGED, actor_user_id=principal.user_id, target_user_id=user_id,
        details={"from": target.role, "to": role},
    )
    await outbound.member_role_changed(session, org_id, user_id, previous_role=target.role)
    return _member_out(target, role)


async def _drop_membership(session: AsyncSession, org_id: str, membership_id: str, user_id: str) -> None:
    await session.execute(delete(OrgUser).where(OrgUser.id == membership_id))
    await revoke_member_graph_access(session, org_id, user_id)


async def remove_member(session: AsyncSession, principal: Principal, org_id: str, user_id: str) -> None:
    """Admin+ removes someone; anyone removes themselves (= leave)."""
    if user_id == principal.user_id:
        await leave_org(session, principal, org_id)
        return
    access = await lock_and_authorize(session, principal, org_id, Action.REMOVE_MEMBER)
    if user_id.startswith(INVITATION_PREFIX):
        await invitations.revoke_invitation_locked(session, access, user_id)
        return
    target = await _member_row(session, org_id, user_id)
    if target is None:
        raise member_not_found()
    if target.role == Role.OWNER:
        if access.role != Role.OWNER:
            raise Forbidden("Only an owner can remove an owner", code="owner_required")
        if target.is_active and await count_active_owners(session, org_id) <= 1:
            raise last_owner()
    await _drop_membership(session, org_id, target.id, user_id)
    await record_org_event(
        session, org_id, OrgEvent.MEMBER_REMOVED, actor_user_id=principal.user_id, target_user_id=user_id,
        details={"role": target.role},
    )
    await outbound.member_removed(session, org_id, user_id, role=target.role, reason="removed")


async def leave_org(session: AsyncSession, principal: Principal, org_id: str) -> None:
    access = await lock_and_authorize(session, principal, org_id, Action.LEAVE_ORG)
    if access.org_type == "personal":
        raise personal_org_conflict("be left")
    if access.role == Role.OWNER and await count_active_owners(session, org_id) <= 1:
        raise last_owner()
    target = await _member_row(session, org_id, principal.user_id)
    if target is None:  # pragma: no cover - authorize() just found the active membership under the lock
        raise member_not_found()
    await _drop_membership(session, org_id, target.id, principal.user_id)
    await record_org_event(
        session, org_id, OrgEvent.MEMBER_LEFT, actor_user_id=principal.user_id, target_user_id=principal.user_id,
        details={"role": access.role},
    )
    await outbound.member_removed(session, org_id, principal.user_id, role=access.role, reason="left")


async def transfer_ownership(
    session: AsyncSession, principal: Principal, org_id: str, target_user_id: str
) -> str:
    access = await lock_and_authorize(session, principal, org_id, Action.TRANSFER_OWNERSHIP)
    if access.org_type == "personal":
        raise personal_org_conflict("change owners")
    if target_user_id == principal.user_id:
        raise Unprocessable("Choose another member as the new owner", code="invalid_transfer_target")
    target = await _member_row(session, org_id, target_user_id)
    if target is None or not target.is_active:
        raise member_not_found()
    await session.execute(
        update(OrgUser).where(OrgUser.id == target.id).values(role=Role.OWNER.value, updated_at=func.now())
    )
    await session.execute(
        update(OrgUser)
        .where(OrgUser.org_id == org_id, OrgUser.user_id == principal.user_id)
        .values(role=Role.ADMIN.value, updated_at=func.now())
    )
    await record_org_event(
        session, org_id, OrgEvent.OWNERSHIP_TRANSFERRED, actor_user_id=principal.user_id,
        target_user_id=target_user_id, details={"target_previous_role": target.role, "caller_new_role": "admin"},
    )
    await outbound.member_role_changed(session, org_id, target_user_id, previous_role=target.role)
    await outbound.member_role_changed(session, org_id, principal.user_id, previous_role=Role.OWNER.value)
    return await org_detail(session, await reload_access(session, principal, org_id))
