"""Identity use cases: register, login, refresh, logout, switch org, password reset, email
verification.  Functions take the request's unit of work and never commit."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.concurrency import run_in_threadpool

from robosystems.audit.service import record_security_event, record_security_event_now
from robosystems.auth.deps import Principal
from robosystems.auth.passwords import check_password
from robosystems.auth.sessions import (
    IssuedToken,
    OrgMembershipRow,
    active_membership,
    open_session,
    personal_org_id,
    revoke_session,
    revoke_user_sessions,
)
from robosystems.auth.tokens import ExpiredToken, InvalidToken
from robosystems.errors import AppError, BadRequest, Conflict, NotFound, ServiceUnavailable, Unauthorized
from robosystems.ids import new_id, random_token, sha256_hex
from robosystems.mail.service import queue_mail
from robosystems.models import Org, OrgLimits, OrgUser, User, UserToken
from robosystems.services import AppServices

INVALID_CREDENTIALS = "Invalid email or password"
RESET = "password_reset"
VERIFY = "email_verification"


class WeakPassword(AppError):
    status_code, code, detail = 422, "weak_password", "Password does not meet the policy"


@dataclass(frozen=True)
class AuthResult:
    user: User
    org: OrgMembershipRow | None
    issued: IssuedToken
    message: str

    def body(self) -> dict[str, Any]:
        return {
            "user": {"id": self.user.id, "name": self.user.name, "email": self.user.email},
            "org": self.org.as_auth_org() if self.org else None,
            "message": self.message,
            "token": self.issued.token,
            "expires_in": self.issued.expires_in,
            "refresh_threshold": self.issued.refresh_threshold,
        }


def normalize_email(email: str) -> str:
    return email.strip().lower()


def mask_email(email: str) -> str:
    local, _, domain = email.partition("@")
    shown = local[:1] if len(local) <= 2 else local[:2]
    return f"{shown}{'*' * max(1, len(local) - len(shown))}@{domain}"


def enforce_policy(services: AppServices, password: str, email: str | None) -> None:
    result = check_password(services.settings, password, email)
    if not result.is_valid:
        raise WeakPassword("; ".join(result.errors), extra={"errors": result.errors})


async def _hash(services: AppServices, password: str) -> str:
    return await run_in_threadpool(services.hasher.hash, password)


async def _verify(services: AppServices, stored: str, password: str) -> bool:
    return await run_in_threadpool(services.hasher.verify, stored, password)


async def _issue_token(
    session: AsyncSession, services: AppServices, user_id: str, org_id: str, user_agent: str | None
) -> tuple[IssuedToken, OrgMembershipRow | None]:
    membership = await active_membership(session, user_id, org_id)
    issued = await open_session(session, services, user_id, membership.org_id if membership else None, user_agent)
    return issued, membership


async def _send_verification(session: AsyncSession, services: AppServices, user: User) -> None:
    token = random_token()
    await session.execute(
        insert(UserToken).values(
            id=new_id("tok"),
            user_id=user.id,
            token_hash=sha256_hex(token),
            token_type=VERIFY,
            expires_at=datetime.now(UTC) + timedelta(hours=services.settings.email_verification_ttl_hours),
        )
    )
    link = f"{services.settings.base_url}/verify-email?token={token}"
    await queue_mail(
        session,
        to=user.email,
        subject="Verify your email address",
        body=f"Hello {user.name},\n\nconfirm your email address with this link:\n{link}\n\n"
        f"Verification token: {token}\n",
        kind=VERIFY,
    )


# --- registration and login -------------------------------------------------------------------


async def create_account(
    session: AsyncSession,
    services: AppServices,
    *,
    name: str,
    email: str,
    password: str,
    user_agent: str | None,
    email_verified: bool | None = None,
) -> tuple[User, str]:
    """Create a user with its personal org (owner membership + limits) in the caller's unit of
    work; returns ``(user, personal_org_id)``.  Duplicate email (any case) -> 409.  Used by
    registration and by accepting an invitation as a new person (``email_verified=True``: the
    invitation token proved the mailbox)."""
    settings = services.settings
    email = normalize_email(email)
    enforce_policy(services, password, email)
    password_hash = await _hash(services, password)
    user_id = new_id("user")
    verified = (not settings.email_verification_enabled) if email_verified is None else email_verified
    inserted = (
        await session.execute(
            pg_insert(User)
            .values(
                id=user_id,
                email=email,
                name=name,
                password_hash=password_hash,
                is_active=True,
                email_verified=verified,
            )
            .on_conflict_do_nothing(index_elements=["email"])
            .returning(User)
        )
    ).scalar_one_or_none()
    if inserted is None:
        raise Conflict("An account with this email already exists", code="email_taken")
    org_id = new_id("org")
    await session.execute(
        insert(Org).values(id=org_id, name=f"{name[:190]}'s org", org_type="personal", personal_user_id=user_id)
    )
    await session.execute(insert(OrgUser).values(id=new_id("ou"), org_id=org_id, user_id=user_id, role="owner"))
    await session.execute(
        insert(OrgLimits).values(id=new_id("olim"), org_id=org_id, max_graphs=settings.org_graphs_default_limit)
    )
    if settings.email_verification_enabled and not verified:
        await _send_verification(session, services, inserted)
    await record_security_event(session, "user_registered", user_id=user_id, email=email, user_agent=user_agent)
    return inserted, org_id


async def register(
    session: AsyncSession, services: AppServices, *, name: str, email: str, password: str, user_agent: str | None
) -> AuthResult:
    if not services.settings.user_registration_enabled:
        raise ServiceUnavailable("Registration is disabled", code="registration_disabled")
    inserted, org_id = await create_account(
        session, services, name=name, email=email, password=password, user_agent=user_agent
    )
    issued, membership = await _issue_token(session, services, inserted.id, org_id, user_agent)
    return AuthResult(inserted, membership, issued, "User registered successfully")


async def login(
    session: AsyncSession,
    services: AppServices,
    *,
    email: str,
    password: str,
    org_id: str | None,
    ip: str,
    user_agent: str | None,
) -> AuthResult:
    settings, limiter = services.settings, services.limiter
    email = normalize_email(email)
    await limiter.hit(settings.rate_limit_login_per_ip_email, "login", ip, email)
    try:
        await limiter.check(settings.rate_limit_login_failures_per_account, "login-fail", email)
    except AppError:
        await record_security_event_now(services.sessionmaker, "account_locked", email=email, user_agent=user_agent)
        raise
    user = await session.scalar(select(User).where(User.email == email))
    ok = False
    if user is None:
        await run_in_threadpool(services.hasher.burn, password)
    else:
        ok = await _verify(services, user.password_hash, password) and user.is_active
    if not ok or user is None:
        await limiter.consume(settings.rate_limit_login_failures_per_account, "login-fail", email)
        await record_security_event_now(
            services.sessionmaker,
            "login_failed",
            user_id=user.id if user else None,
            email=email,
            user_agent=user_agent,
            details={"reason": "inactive" if user is not None and not user.is_active else "credentials"},
        )
        raise Unauthorized(INVALID_CREDENTIALS, code="invalid_credentials")
    if services.hasher.needs_rehash(user.password_hash):
        user.password_hash = await _hash(services, password)
    target_org = org_id or await personal_org_id(session, user.id)
    if target_org is None:
        raise NotFound("Organization not found", code="org_not_found")
    if org_id and await active_membership(session, user.id, org_id) is None:
        raise NotFound("Organization not found", code="org_not_found")
    issued, membership = await _issue_token(session, services, user.id, target_org, user_agent)
    await record_security_event(session, "login_succeeded", user_id=user.id, email=email, user_agent=user_agent)
    return AuthResult(user, membership, issued, "Login successful")


async def refresh(
    session: AsyncSession, services: AppServices, token: str | None, user_agent: str | None
) -> AuthResult:
    if not token:
        raise Unauthorized("Not authenticated", code="not_authenticated")
    try:
        claims = services.tokens.decode(token)
    except ExpiredToken as exc:
        claims = exc.claims
        grace = timedelta(minutes=services.settings.token_grace_period_minutes)
        if datetime.now(UTC) > claims.expires_at + grace:
            raise Unauthorized("Token expired beyond the refresh grace period", code="token_expired") from exc
    except InvalidToken as exc:
        raise Unauthorized("Invalid token", code="invalid_token") from exc
    user = await session.scalar(select(User).where(User.id == claims.user_id, User.is_active.is_(True)))
    new_session_id = new_id("ses")
    if user is None or not await revoke_session(session, claims.session_id, "refreshed", new_session_id):
        await record_security_event_now(
            services.sessionmaker,
            "revoked_token_refresh",
            user_id=claims.user_id,
            details={"session_id": claims.session_id},
        )
        raise Unauthorized("Session is no longer valid", code="session_revoked")
    org_id = claims.org_id
    if org_id is None or await active_membership(session, user.id, org_id) is None:
        org_id = await personal_org_id(session, user.id)
    issued, membership = await _issue_token(session, services, user.id, org_id or "", user_agent)
    return AuthResult(user, membership, issued, "Token refreshed")


async def logout(session: AsyncSession, principal: Principal) -> None:
    if principal.session_id:
        await revoke_session(session, principal.session_id, "logout")


async def switch_org(
    session: AsyncSession, services: AppServices, principal: Principal, org_id: str, user_agent: str | None
) -> AuthResult:
    membership = await active_membership(session, principal.user_id, org_id)
    if membership is None:
        raise NotFound("Organization not found", code="org_not_found")
    user = await session.get_one(User, principal.user_id)
    issued = await open_session(session, services, principal.user_id, org_id, user_agent)
    if principal.session_id:
        await revoke_session(session, principal.session_id, "switched_org", issued.session_id)
    return AuthResult(user, membership, issued, "Organization switched")


async def me(session: AsyncSession, principal: Principal) -> dict[str, Any]:
    if principal.token_org_id:
        known, membership = principal.known_membership(principal.token_org_id)  # read with the principal
        if not known:
            membership = await active_membership(session, principal.user_id, principal.token_org_id)
    else:
        org_id = await personal_org_id(session, principal.user_id)
        membership = await active_membership(session, principal.user_id, org_id) if org_id else None
    return {
        "id": principal.user_id,
        "name": principal.name,
        "email": principal.email,
        "email_verified": principal.email_verified,
        "org": membership.as_auth_org() if membership else None,
    }


# --- password reset -----------------------------------------------------------------------------


async def forgot_password(session: AsyncSession, services: AppServices, email: str) -> None:
    email = normalize_email(email)
    await services.limiter.hit(services.settings.rate_limit_forgot_password_per_email, "forgot", email)
    user = await session.scalar(select(User).where(User.email == email, User.is_active.is_(True)))
    if user is None:
        return
    token = random_token()
    await session.execute(
        insert(UserToken).values(
            id=new_id("tok"),
            user_id=user.id,
            token_hash=sha256_hex(token),
            token_type=RESET,
            expires_at=datetime.now(UTC) + timedelta(minutes=services.settings.password_reset_ttl_minutes),
        )
    )
    link = f"{services.settings.base_url}/reset-password?token={token}"
    await queue_mail(
        session,
        to=user.email,
        subject="Reset your password",
        body=f"Hello {user.name},\n\nreset your password with this link (valid for "
        f"{services.settings.password_reset_ttl_minutes} minutes, single use):\n{link}\n\nReset token: {token}\n"
        "If you did not ask for this, ignore this mail.\n",
        kind=RESET,
    )
    await record_security_event(session, "password_reset_requested", user_id=user.id, email=email)


async def _live_token(session: AsyncSession, token: str, token_type: str) -> UserToken | None:
    return await session.scalar(
        select(UserToken).where(
            UserToken.token_hash == sha256_hex(token),
            UserToken.token_type == token_type,
            UserToken.used_at.is_(None),
            UserToken.expires_at > datetime.now(UTC),
        )
    )


async def _consume_token(session: AsyncSession, token: str, token_type: str) -> str | None:
    """Mark a live token used (atomic, single use) and return its user id."""
    return (
        await session.execute(
            update(UserToken)
            .where(
                UserToken.token_hash == sha256_hex(token),
                UserToken.token_type == token_type,
                UserToken.used_at.is_(None),
                UserToken.expires_at > datetime.now(UTC),
            )
            .values(used_at=datetime.now(UTC))
            .returning(UserToken.user_id)
        )
    ).scalar_one_or_none()


async def validate_reset_token(session: AsyncSession, token: str) -> dict[str, Any]:
    row = await _live_token(session, token, RESET)
    if row is None:
        return {"valid": False, "email": None}
    user = await session.scalar(select(User).where(User.id == row.user_id, User.is_active.is_(True)))
    if user is None:
        return {"valid": False, "email": None}
    return {"valid": True, "email": mask_email(user.email)}


async def reset_password(
    session: AsyncSession, services: AppServices, token: str, new_password: str, user_agent: str | None
) -> AuthResult:
    live = await _live_token(session, token, RESET)
    if live is None:
        raise BadRequest("Invalid or expired reset token", code="invalid_token")
    user = await session.scalar(select(User).where(User.id == live.user_id, User.is_active.is_(True)))
    if user is None:
        raise BadRequest("Invalid or expired reset token", code="invalid_token")
    enforce_policy(services, new_password, user.email)
    if await _consume_token(session, token, RESET) is None:
        raise BadRequest("Invalid or expired reset token", code="invalid_token")
    user.password_hash = await _hash(services, new_password)
    await revoke_user_sessions(session, user.id, "password_reset")
    await record_security_event(session, "password_reset", user_id=user.id, email=user.email)
    org_id = await personal_org_id(session, user.id)
    issued, membership = await _issue_token(session, services, user.id, org_id or "", user_agent)
    return AuthResult(user, membership, issued, "Password reset successfully")


# --- email verification -------------------------------------------------------------------------


async def verify_email(session: AsyncSession, services: AppServices, token: str, user_agent: str | None) -> AuthResult:
    user_id = await _consume_token(session, token, VERIFY)
    if user_id is None:
        raise BadRequest("Invalid or expired verification token", code="invalid_token")
    user = await session.scalar(select(User).where(User.id == user_id, User.is_active.is_(True)))
    if user is None:
        raise BadRequest("Invalid or expired verification token", code="invalid_token")
    user.email_verified = True
    org_id = await personal_org_id(session, user.id)
    issued, membership = await _issue_token(session, services, user.id, org_id or "", user_agent)
    return AuthResult(user, membership, issued, "Email verified")


async def resend_verification(session: AsyncSession, services: AppServices, principal: Principal) -> None:
    if not services.settings.email_verification_enabled:
        raise ServiceUnavailable("Email verification is not enabled", code="email_verification_disabled")
    if principal.email_verified:
        raise BadRequest("Email is already verified", code="already_verified")
    await services.limiter.hit(services.settings.rate_limit_email_resend_per_user, "resend", principal.user_id)
    user = await session.get_one(User, principal.user_id)
    await _send_verification(session, services, user)


async def send_verification_if_enabled(session: AsyncSession, services: AppServices, user: User) -> None:
    if services.settings.email_verification_enabled:
        await _send_verification(session, services, user)


async def change_password(
    session: AsyncSession, services: AppServices, principal: Principal, current: str, new: str, confirm: str
) -> None:
    user = await session.get_one(User, principal.user_id)
    if not await _verify(services, user.password_hash, current):
        await record_security_event(session, "password_change_failed", user_id=user.id)
        raise BadRequest("Current password is incorrect", code="invalid_current_password")
    if new != confirm:
        raise BadRequest("New password and confirmation do not match", code="password_mismatch")
    enforce_policy(services, new, user.email)
    user.password_hash = await _hash(services, new)
    await revoke_user_sessions(session, user.id, "password_changed", keep_session_id=principal.session_id)
    await record_security_event(session, "password_changed", user_id=user.id)


async def update_profile(
    session: AsyncSession, services: AppServices, principal: Principal, name: str | None, email: str | None
) -> User:
    user = await session.get_one(User, principal.user_id)
    if name is not None:
        user.name = name
    if email is not None:
        new_email = normalize_email(email)
        if new_email != user.email:
            taken = await session.scalar(select(User.id).where(User.email == new_email))
            if taken:
                raise Conflict("An account with this email already exists", code="email_taken")
            user.email = new_email
            user.email_verified = not services.settings.email_verification_enabled
            try:
                await session.flush()
            except IntegrityError as exc:
                raise Conflict("An account with this email already exists", code="email_taken") from exc
            await send_verification_if_enabled(session, services, user)
            await record_security_event(session, "email_changed", user_id=user.id, email=new_email)
    await session.flush()
    return user
