"""The current principal: a Bearer access token (live session) or an ``X-API-Key``.

One Core query per request on the hot path: session + user, checked against revocation, expiry
and ``is_active``, plus the caller's LIVE membership in the org the request is about (the route's
``{org_id}`` path parameter, else the token's org) so the org access dependency needs no second
round trip.  A token's org claim is carried as a default only; it never grants anything.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated

from fastapi import Depends
from sqlalchemy import and_, bindparam, select
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.requests import Request

from robosystems.audit.service import record_security_event_now
from robosystems.auth import api_keys
from robosystems.auth.sessions import OrgMembershipRow
from robosystems.auth.tokens import ExpiredToken, InvalidToken, TokenClaims
from robosystems.db import compile_for_psycopg, get_session
from robosystems.errors import Unauthorized
from robosystems.models import AuthSession, Org, OrgUser, User
from robosystems.services import AppServices, get_services


@dataclass(frozen=True)
class Principal:
    user_id: str
    email: str
    name: str
    email_verified: bool
    token_org_id: str | None
    session_id: str | None = None
    api_key_id: str | None = None
    claims: TokenClaims | None = None
    #: the org whose live membership was read with the principal (path ``{org_id}``, else token org)
    membership_org_id: str | None = None
    #: that live membership (None: not an active member of a live org)
    membership: OrgMembershipRow | None = None

    def known_membership(self, org_id: str) -> tuple[bool, OrgMembershipRow | None]:
        """``(True, membership-or-None)`` when the principal query already read the live membership
        in ``org_id`` (this request, this statement); ``(False, None)`` when it must be looked up."""
        if self.session_id is not None and org_id == self.membership_org_id:
            return True, self.membership
        return False, None


# Built once: the hot path only binds parameters.  Session + user + the live membership in the
# token's org in ONE round trip; revocation, expiry and is_active are checked in SQL.
_PRINCIPAL_BY_SESSION = (
    select(
        User.id,
        User.email,
        User.name,
        User.email_verified,
        AuthSession.revoked_at,
        Org.id.label("org_id"),
        Org.name.label("org_name"),
        Org.org_type,
        OrgUser.role,
    )
    .join(AuthSession, AuthSession.user_id == User.id)
    .outerjoin(
        OrgUser,
        and_(OrgUser.user_id == User.id, OrgUser.org_id == bindparam("org_id"), OrgUser.is_active.is_(True)),
    )
    .outerjoin(Org, and_(Org.id == OrgUser.org_id, Org.deleted_at.is_(None)))
    .where(
        AuthSession.id == bindparam("session_id"),
        User.id == bindparam("user_id"),
        User.is_active.is_(True),
        AuthSession.expires_at > bindparam("now"),
    )
)
_PRINCIPAL_SQL = compile_for_psycopg(_PRINCIPAL_BY_SESSION)


def bearer_token(request: Request) -> str | None:
    header = request.headers.get("authorization")
    if not header:
        return None
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip()


async def _principal_from_token(token: str, services: AppServices, request: Request) -> Principal:
    try:
        claims = services.tokens.decode(token)
    except ExpiredToken as exc:
        raise Unauthorized("Token expired", code="token_expired") from exc
    except InvalidToken as exc:
        await record_security_event_now(
            services.sessionmaker,
            "token_invalid",
            user_agent=request.headers.get("user-agent"),
            details={"path": request.url.path},
        )
        raise Unauthorized("Invalid token", code="invalid_token") from exc
    # the org the request is about: the route's {org_id}, else the token's org (a default, never a grant)
    membership_org_id = request.path_params.get("org_id") or claims.org_id
    # One read, no transaction, on the statement pool (see StatementPool); the request's own session, if
    # the handler uses one, starts its transaction after this.
    row = await services.statements_pool.fetch_one(
        _PRINCIPAL_SQL,
        {
            "session_id": claims.session_id,
            "user_id": claims.user_id,
            "org_id": membership_org_id,
            "now": datetime.now(UTC),
        },
    )
    if row is None or row[4] is not None:  # no live session for this user, or revoked
        await record_security_event_now(
            services.sessionmaker,
            "revoked_token_used",
            user_id=claims.user_id,
            user_agent=request.headers.get("user-agent"),
            details={"session_id": claims.session_id, "path": request.url.path},
        )
        raise Unauthorized("Session is no longer valid", code="session_revoked")
    user_id, email, name, email_verified, _revoked_at, org_id, org_name, org_type, role = row
    return Principal(
        user_id=user_id,
        email=email,
        name=name,
        email_verified=email_verified,
        token_org_id=claims.org_id,
        session_id=claims.session_id,
        claims=claims,
        membership_org_id=membership_org_id,
        membership=OrgMembershipRow(org_id, org_name, org_type, role) if org_id else None,
    )


# scope="function": the request's transaction commits when the handler returns, BEFORE the response
# is sent (FastAPI's default "request" scope would commit after the client already has the answer,
# so a client could act on a 2xx whose writes are not visible yet, or never committed).  Every use
# of the session must go through this one alias so all dependencies share one cached session.
DbSession = Annotated[AsyncSession, Depends(get_session, scope="function")]


async def optional_principal(
    request: Request,
    session: DbSession,
    services: Annotated[AppServices, Depends(get_services)],
) -> Principal | None:
    token = bearer_token(request)
    if token:
        return await _principal_from_token(token, services, request)
    key = request.headers.get("x-api-key")
    if key:
        found = await api_keys.authenticate(session, services, key.strip())
        if found is None:
            await record_security_event_now(
                services.sessionmaker,
                "api_key_invalid",
                user_agent=request.headers.get("user-agent"),
                details={"prefix": key.strip()[:8], "path": request.url.path},
            )
            raise Unauthorized("Invalid API key", code="invalid_api_key")
        return Principal(
            user_id=found.user_id,
            email=found.email,
            name=found.name,
            email_verified=found.email_verified,
            token_org_id=None,
            api_key_id=found.key_id,
        )
    return None


async def current_principal(
    principal: Annotated[Principal | None, Depends(optional_principal)],
) -> Principal:
    if principal is None:
        raise Unauthorized("Not authenticated", code="not_authenticated")
    return principal


CurrentPrincipal = Annotated[Principal, Depends(current_principal)]
Services = Annotated[AppServices, Depends(get_services)]
