"""Invitations: invite, list, resend, revoke, preview, accept, expire/clean up.

Design: the invitation row *is* the pending membership.  An invitee may have no account (and
``org_users.user_id`` must name a user), so no placeholder membership or user row is written;
the member list shows a live invitation as ``is_active=false`` with ``user_id`` = the invitation
id.  Registering with an invited email therefore changes nothing: the invitation stays pending.

Tokens: 256 random bits, only the SHA-256 is stored, bound to the lower-cased email, expiring
after ``INVITATION_TTL_HOURS``, single use (claimed by one ``UPDATE … WHERE status='pending'
RETURNING``; the org row lock is taken first, so concurrent accepts of one token serialize and
exactly one creates the membership).  Resend rotates the token (the old one dies); revoke kills it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import and_, delete, func, insert, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from robosystems.auth.deps import Principal
from robosystems.auth.service import AuthResult, create_account, mask_email, normalize_email
from robosystems.auth.sessions import active_membership, open_session
from robosystems.billing import entitlements
from robosystems.errors import (
    Conflict,
    Forbidden,
    Gone,
    NotFound,
    ServiceUnavailable,
    Unauthorized,
    Unprocessable,
)
from robosystems.ids import new_id, random_token, sha256_hex
from robosystems.mail.service import queue_mail
from robosystems.models import Org, OrgInvitation, OrgUser, User
from robosystems.observability import current_client_ip
from robosystems.orgs.access import OrgAccess
from robosystems.orgs.audit import OrgEvent, record_org_event
from robosystems.orgs.policy import Action
from robosystems.orgs.service import check_can_grant, lock_and_authorize, lock_org_row, personal_org_conflict
from robosystems.outbound import events as outbound
from robosystems.services import AppServices

MAIL_KIND = "org_invitation"


MemberLimitReached = entitlements.MemberLimitReached


def invitation_not_found() -> NotFound:
    # One answer for unknown, revoked, used and deleted-org tokens: nothing tells them apart.
    return NotFound("Invitation not found", code="invitation_not_found")


def invitation_expired() -> Gone:
    return Gone("This invitation has expired; ask for a new one", code="invitation_expired")


def _now() -> datetime:
    return datetime.now(UTC)


def effective_status(status: str, expires_at: datetime, now: datetime | None = None) -> str:
    return "expired" if status == "pending" and expires_at <= (now or _now()) else status


def ensure_enabled(services: AppServices) -> None:
    if not services.settings.org_member_invitations_enabled:
        raise ServiceUnavailable("Member invitations are disabled", code="invitations_disabled")


def _pending_member(inv: Any) -> dict[str, Any]:
    """A live invitation in the shape of ``OrgMemberResponse``."""
    return {
        "user_id": inv.id,
        "name": inv.email,
        "email": inv.email,
        "role": inv.role,
        "joined_at": inv.created_at,
        "is_active": False,
    }


def _invitation_info(inv: Any, now: datetime | None = None) -> dict[str, Any]:
    return {
        "id": inv.id,
        "email": inv.email,
        "role": inv.role,
        "status": effective_status(inv.status, inv.expires_at, now),
        "invited_by": inv.invited_by,
        "created_at": inv.created_at,
        "expires_at": inv.expires_at,
    }


async def _send_invitation_mail(
    session: AsyncSession, services: AppServices, *, email: str, org_name: str, role: str, inviter: str,
    token: str, expires_at: datetime,
) -> None:
    link = f"{services.settings.base_url}/invitations/{token}"
    await queue_mail(
        session,
        to=email,
        subject=f"You are invited to join {org_name} on RoboSystems",
        body=(
            f"Hello,\n\n{inviter} invited you to join the organization \"{org_name}\" on RoboSystems as {role}.\n\n"
            f"Accept the invitation with this link (single use, valid until {expires_at:%Y-%m-%d %H:%M} UTC):\n"
            f"{link}\n\nInvitation token: {token}\n\n"
            "If you don't know the sender, ignore this mail.\n"
        ),
        kind=MAIL_KIND,
    )


async def _is_member(session: AsyncSession, org_id: str, email: str) -> bool:
    found = (
        await session.execute(
            select(OrgUser.id)
            .join(User, User.id == OrgUser.user_id)
            .where(OrgUser.org_id == org_id, OrgUser.is_active.is_(True), User.email == email)
        )
    ).first()
    return found is not None


# --- org-scoped (admin+) ----------------------------------------------------------------------


async def invite_member(
    session: AsyncSession, services: AppServices, principal: Principal, org_id: str, *, email: str, role: str
) -> dict[str, Any]:
    ensure_enabled(services)
    await services.limiter.hit(services.settings.rate_limit_org_invitations_per_org, "org-invite", org_id)
    access = await lock_and_authorize(session, principal, org_id, Action.INVITE_MEMBER)
    if access.org_type == "personal":
        raise personal_org_conflict("have other members")
    check_can_grant(access, role)
    email = normalize_email(email)
    if await _is_member(session, org_id, email):
        raise Conflict("This person is already a member", code="already_member")
    now = _now()
    await session.execute(
        update(OrgInvitation)
        .where(
            OrgInvitation.org_id == org_id, OrgInvitation.email == email,
            OrgInvitation.status == "pending", OrgInvitation.expires_at <= now,
        )
        .values(status="expired", updated_at=func.now())
    )
    live = (
        await session.execute(
            select(OrgInvitation.id).where(
                OrgInvitation.org_id == org_id, OrgInvitation.email == email, OrgInvitation.status == "pending"
            )
        )
    ).first()
    if live is not None:
        raise Conflict(
            "An invitation for this email is already pending; resend or revoke it", code="already_invited",
            extra={"invitation_id": live.id},
        )
    await entitlements.require_member_slot(session, org_id, with_pending=True, settings=services.settings)
    token = random_token()
    expires_at = now + timedelta(hours=services.settings.invitation_ttl_hours)
    invitation_id = new_id("inv")
    try:
        async with session.begin_nested():
            inv = (
                await session.execute(
                    insert(OrgInvitation)
                    .values(
                        id=invitation_id, org_id=org_id, email=email, role=role, token_hash=sha256_hex(token),
                        invited_by=principal.user_id, expires_at=expires_at,
                    )
                    .returning(OrgInvitation)
                )
            ).scalar_one()
    except IntegrityError as exc:  # pragma: no cover - the org lock serializes invites; index is the backstop
        raise Conflict("An invitation for this email is already pending", code="already_invited") from exc
    await _send_invitation_mail(
        session, services, email=email, org_name=access.org_name, role=role, inviter=principal.name,
        token=token, expires_at=expires_at,
    )
    await record_org_event(
        session, org_id, OrgEvent.MEMBER_INVITED, actor_user_id=principal.user_id,
        details={"invitation_id": invitation_id, "email": email, "role": role},
    )
    await outbound.invitation_created(session, inv)
    return _pending_member(inv)


async def list_invitations(
    session: AsyncSession, org_id: str, *, status: str | None, limit: int, offset: int
) -> dict[str, Any]:
    now = _now()
    conditions: list[Any] = [OrgInvitation.org_id == org_id]
    if status == "pending":
        conditions += [OrgInvitation.status == "pending", OrgInvitation.expires_at > now]
    elif status == "expired":
        conditions.append(
            (OrgInvitation.status == "expired")
            | and_(OrgInvitation.status == "pending", OrgInvitation.expires_at <= now)
        )
    elif status is not None:
        conditions.append(OrgInvitation.status == status)
    total = (await session.execute(select(func.count()).select_from(OrgInvitation).where(*conditions))).scalar_one()
    rows = (
        await session.execute(
            select(OrgInvitation)
            .where(*conditions)
            .order_by(OrgInvitation.created_at.desc(), OrgInvitation.id.desc())
            .limit(limit)
            .offset(offset)
        )
    ).scalars().all()
    return {"invitations": [_invitation_info(r, now) for r in rows], "total": int(total)}


async def _org_invitation(session: AsyncSession, org_id: str, invitation_id: str) -> OrgInvitation:
    inv = (
        await session.execute(
            select(OrgInvitation).where(OrgInvitation.id == invitation_id, OrgInvitation.org_id == org_id)
        )
    ).scalar_one_or_none()
    if inv is None:
        raise invitation_not_found()
    return inv


async def resend_invitation(
    session: AsyncSession, services: AppServices, principal: Principal, org_id: str, invitation_id: str
) -> dict[str, Any]:
    ensure_enabled(services)
    await services.limiter.hit(services.settings.rate_limit_invitation_resend_per_org, "org-invite-resend", org_id)
    access = await lock_and_authorize(session, principal, org_id, Action.MANAGE_INVITATIONS)
    inv = await _org_invitation(session, org_id, invitation_id)
    if inv.status not in ("pending", "expired"):
        raise Conflict(f"This invitation is {inv.status}", code="invitation_not_pending")
    check_can_grant(access, inv.role)
    if await _is_member(session, org_id, inv.email):
        raise Conflict("This person is already a member", code="already_member")
    if inv.status == "expired":
        other = (
            await session.execute(
                select(OrgInvitation.id).where(
                    OrgInvitation.org_id == org_id, OrgInvitation.email == inv.email,
                    OrgInvitation.status == "pending", OrgInvitation.id != inv.id,
                )
            )
        ).first()
        if other is not None:
            raise Conflict("Another invitation for this email is pending", code="already_invited")
    token = random_token()
    now = _now()
    expires_at = now + timedelta(hours=services.settings.invitation_ttl_hours)
    row = (
        await session.execute(
            update(OrgInvitation)
            .where(OrgInvitation.id == inv.id)
            .values(
                token_hash=sha256_hex(token), status="pending", expires_at=expires_at, last_sent_at=func.now(),
                send_count=OrgInvitation.send_count + 1, updated_at=func.now(),
            )
            .returning(OrgInvitation)
            .execution_options(populate_existing=True)
        )
    ).scalar_one()
    await _send_invitation_mail(
        session, services, email=row.email, org_name=access.org_name, role=row.role, inviter=principal.name,
        token=token, expires_at=expires_at,
    )
    await record_org_event(
        session, org_id, OrgEvent.INVITATION_RESENT, actor_user_id=principal.user_id,
        details={"invitation_id": row.id, "email": row.email, "send_count": row.send_count},
    )
    return _invitation_info(row, now)


async def revoke_invitation_locked(session: AsyncSession, access: OrgAccess, invitation_id: str) -> None:
    """Revoke (caller already holds the org lock and the role)."""
    inv = await _org_invitation(session, access.org_id, invitation_id)
    if inv.status not in ("pending", "expired"):
        raise Conflict(f"This invitation is {inv.status}", code="invitation_not_pending")
    await session.execute(
        update(OrgInvitation)
        .where(OrgInvitation.id == inv.id)
        .values(status="revoked", revoked_at=func.now(), updated_at=func.now())
    )
    await record_org_event(
        session, access.org_id, OrgEvent.INVITATION_REVOKED, actor_user_id=access.user_id,
        details={"invitation_id": inv.id, "email": inv.email, "role": inv.role},
    )


async def revoke_invitation(session: AsyncSession, principal: Principal, org_id: str, invitation_id: str) -> None:
    access = await lock_and_authorize(session, principal, org_id, Action.MANAGE_INVITATIONS)
    await revoke_invitation_locked(session, access, invitation_id)


async def change_invitation_role(
    session: AsyncSession, access: OrgAccess, invitation_id: str, role: str
) -> dict[str, Any]:
    """PUT /members/{inv_…}: change the role a pending invitation will grant."""
    inv = await _org_invitation(session, access.org_id, invitation_id)
    if effective_status(inv.status, inv.expires_at) != "pending":
        raise NotFound("Member not found", code="member_not_found")
    check_can_grant(access, role, current=inv.role)
    if inv.role != role:
        await session.execute(
            update(OrgInvitation).where(OrgInvitation.id == inv.id).values(role=role, updated_at=func.now())
        )
        await record_org_event(
            session, access.org_id, OrgEvent.INVITATION_ROLE_CHANGED, actor_user_id=access.user_id,
            details={"invitation_id": inv.id, "from": inv.role, "to": role},
        )
    return {**_pending_member(inv), "role": role}


# --- public: preview and accept ---------------------------------------------------------------


@dataclass(frozen=True)
class LiveInvitation:
    id: str
    org_id: str
    org_name: str
    email: str
    role: str
    inviter_name: str | None
    expires_at: datetime


async def _rate_limit_public(services: AppServices) -> None:
    await services.limiter.hit(services.settings.rate_limit_invitation_public_per_ip, "invitation", current_client_ip())


async def find_live_invitation(session: AsyncSession, token: str) -> LiveInvitation:
    """The pending invitation of ``token`` in a live org; 404 otherwise, 410 when expired."""
    inviter = User.__table__.alias("inviter")
    row = (
        await session.execute(
            select(
                OrgInvitation.id, OrgInvitation.org_id, OrgInvitation.email, OrgInvitation.role,
                OrgInvitation.status, OrgInvitation.expires_at, Org.name.label("org_name"),
                inviter.c.name.label("inviter_name"),
            )
            .join(Org, and_(Org.id == OrgInvitation.org_id, Org.deleted_at.is_(None)))
            .outerjoin(inviter, inviter.c.id == OrgInvitation.invited_by)
            .where(OrgInvitation.token_hash == sha256_hex(token))
        )
    ).one_or_none()
    if row is None or row.status not in ("pending", "expired"):
        raise invitation_not_found()
    if effective_status(row.status, row.expires_at) == "expired":
        raise invitation_expired()
    return LiveInvitation(row.id, row.org_id, row.org_name, row.email, row.role, row.inviter_name, row.expires_at)


async def preview_invitation(session: AsyncSession, services: AppServices, token: str) -> dict[str, Any]:
    ensure_enabled(services)
    await _rate_limit_public(services)
    inv = await find_live_invitation(session, token)
    return {
        "org_name": inv.org_name,
        "role": inv.role,
        "inviter_name": inv.inviter_name,
        "email": mask_email(inv.email),
        "expires_at": inv.expires_at,
    }


async def account_exists(session: AsyncSession, email: str) -> bool:
    return (await session.execute(select(User.id).where(User.email == email))).first() is not None


async def _join(session: AsyncSession, services: AppServices, inv: LiveInvitation, user_id: str) -> None:
    """Under the org lock: re-check the org and the member cap, claim the token, add the member."""
    await lock_org_row(session, inv.org_id)
    alive = (
        await session.execute(select(Org.id).where(Org.id == inv.org_id, Org.deleted_at.is_(None)))
    ).first()
    if alive is None:
        raise invitation_not_found()
    already = (
        await session.execute(
            select(OrgUser.role).where(
                OrgUser.org_id == inv.org_id, OrgUser.user_id == user_id, OrgUser.is_active.is_(True)
            )
        )
    ).first()
    if already is None:  # seat and member limits checked again at accept (the invitation itself held a slot)
        await entitlements.require_member_slot(session, inv.org_id, with_pending=False, settings=services.settings)
    claimed = (
        await session.execute(
            update(OrgInvitation)
            .where(OrgInvitation.id == inv.id, OrgInvitation.status == "pending", OrgInvitation.expires_at > func.now())
            .values(status="accepted", accepted_at=func.now(), accepted_by=user_id, updated_at=func.now())
            .returning(OrgInvitation.role, OrgInvitation.invited_by)
        )
    ).one_or_none()
    if claimed is None:
        # Someone else used, revoked or rotated it meanwhile (or it just expired).
        current = (
            await session.execute(
                select(OrgInvitation.status, OrgInvitation.expires_at).where(OrgInvitation.id == inv.id)
            )
        ).one_or_none()
        if current is not None and effective_status(current.status, current.expires_at) == "expired":
            raise invitation_expired()
        raise invitation_not_found()
    if already is None:
        stmt = pg_insert(OrgUser).values(
            id=new_id("ou"), org_id=inv.org_id, user_id=user_id, role=claimed.role, is_active=True
        )
        await session.execute(
            stmt.on_conflict_do_update(
                index_elements=[OrgUser.org_id, OrgUser.user_id],
                set_={"role": stmt.excluded.role, "is_active": True, "joined_at": func.now(), "updated_at": func.now()},
                where=OrgUser.is_active.is_(False),
            )
        )
    await record_org_event(
        session, inv.org_id, OrgEvent.MEMBER_JOINED, actor_user_id=user_id, target_user_id=user_id,
        details={
            "invitation_id": inv.id, "role": claimed.role if already is None else already.role,
            "invited_by": claimed.invited_by, "already_member": already is not None,
        },
    )
    await outbound.invitation_accepted(session, inv.org_id, inv.id, user_id, joined=already is None)


async def _accept(
    session: AsyncSession,
    services: AppServices,
    token: str,
    principal: Principal | None,
    *,
    name: str | None,
    password: str | None,
    user_agent: str | None,
) -> tuple[User, LiveInvitation]:
    ensure_enabled(services)
    await _rate_limit_public(services)
    inv = await find_live_invitation(session, token)
    if principal is not None:
        if normalize_email(principal.email) != inv.email:
            raise Forbidden("This invitation was sent to another email address", code="invitation_email_mismatch")
        user = await session.get_one(User, principal.user_id)
    else:
        if await account_exists(session, inv.email):
            raise Unauthorized("Sign in as the invited email address to accept", code="login_required")
        if not name or not password:
            raise Unprocessable(
                "name and password are required to create your account", code="account_details_required"
            )
        user, _personal_org = await create_account(
            session, services, name=name, email=inv.email, password=password, user_agent=user_agent,
            email_verified=True,
        )
    await _join(session, services, inv, user.id)
    return user, inv


async def accept_invitation(
    session: AsyncSession,
    services: AppServices,
    token: str,
    principal: Principal | None,
    *,
    name: str | None,
    password: str | None,
    user_agent: str | None,
) -> AuthResult:
    """Accept as the logged-in owner of the invited email, or as a new person (name + password:
    the account and its personal org are created, the email counts as verified since the token
    came through it).  Returns a new session scoped to the org."""
    user, inv = await _accept(session, services, token, principal, name=name, password=password, user_agent=user_agent)
    issued = await open_session(session, services, user.id, inv.org_id, user_agent)
    membership = await active_membership(session, user.id, inv.org_id)
    return AuthResult(user, membership, issued, "Invitation accepted")


async def accept_without_session(
    session: AsyncSession,
    services: AppServices,
    token: str,
    principal: Principal | None,
    *,
    name: str | None,
    password: str | None,
    user_agent: str | None,
) -> None:
    """The HTML accept page: same rules, no token handed out."""
    await _accept(session, services, token, principal, name=name, password=password, user_agent=user_agent)


async def user_invitations(session: AsyncSession, principal: Principal) -> dict[str, Any]:
    """Live invitations addressed to the caller's email (accepting needs the mailed token)."""
    inviter = User.__table__.alias("inviter")
    rows = (
        await session.execute(
            select(
                OrgInvitation.id, OrgInvitation.org_id, Org.name.label("org_name"), OrgInvitation.role,
                inviter.c.name.label("inviter_name"), OrgInvitation.created_at, OrgInvitation.expires_at,
            )
            .join(Org, and_(Org.id == OrgInvitation.org_id, Org.deleted_at.is_(None)))
            .outerjoin(inviter, inviter.c.id == OrgInvitation.invited_by)
            .where(
                OrgInvitation.email == normalize_email(principal.email),
                OrgInvitation.status == "pending",
                OrgInvitation.expires_at > _now(),
            )
            .order_by(OrgInvitation.created_at.desc(), OrgInvitation.id)
        )
    ).all()
    return {"invitations": [dict(r._mapping) for r in rows], "total": len(rows)}


# --- maintenance -------------------------------------------------------------------------------


async def cleanup_invitations(
    session: AsyncSession, *, retention_days: int, now: datetime | None = None
) -> dict[str, int]:
    """Mark pending invitations past their expiry ``expired`` (one audit row each), then delete
    finished invitations (expired, revoked, accepted) last changed more than ``retention_days``
    ago.  The org audit log keeps the history.  Idempotent."""
    now = now or _now()
    expired = (
        await session.execute(
            update(OrgInvitation)
            .where(OrgInvitation.status == "pending", OrgInvitation.expires_at <= now)
            .values(status="expired", updated_at=func.now())
            .returning(OrgInvitation.id, OrgInvitation.org_id, OrgInvitation.email)
        )
    ).all()
    for row in expired:
        await record_org_event(
            session, row.org_id, OrgEvent.INVITATION_EXPIRED, actor_user_id=None,
            details={"invitation_id": row.id, "email": row.email},
        )
    cutoff = now - timedelta(days=retention_days)
    deleted = (
        await session.execute(
            delete(OrgInvitation)
            .where(OrgInvitation.status != "pending", OrgInvitation.updated_at < cutoff)
            .returning(OrgInvitation.id)
        )
    ).all()
    return {"expired": len(expired), "deleted": len(deleted)}
