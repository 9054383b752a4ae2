"""The current principal: a Bearer access token (live session) or an ``X-API-Key``.

One Core query per request on the hot path: session + user, checked against revocation, expiry
and ``is_active``.  A token's org claim is carried as a default only; org access is always
re-checked against the live membership by the org access dependency.
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
from robosystems.db import get_session
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
    #: live membership in ``token_org_id``, read with the principal (None: not a member any more)
    token_membership: OrgMembershipRow | None = None


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
    # One read needs no transaction: an autocommit connection saves the BEGIN and COMMIT round
    # trips, and it goes back to the pool before the handler runs.  The request's own session
    # (if the handler uses one) starts its transaction after this, on its own checkout.
    async with services.engine.connect() as raw:
        conn = await raw.execution_options(isolation_level="AUTOCOMMIT")
        row = (
            await conn.execute(
                _PRINCIPAL_BY_SESSION,
                {
                    "session_id": claims.session_id,
                    "user_id": claims.user_id,
                    "org_id": claims.org_id,
                    "now": datetime.now(UTC),
                },
            )
        ).one_or_none()
    if row is None or row.revoked_at is not None:
        await record_security_event_now(
            services.sessionmaker,
            "revoked_token_used",
            user_id=claims.user_id,
            user_agent=request.headers.get("user-agent"),
            details={"session_id": claims.session_id, "path": request.url.path},
        )
        raise Unauthorized("Session is no longer valid", code="session_revoked")
    return Principal(
        user_id=row.id,
        email=row.email,
        name=row.name,
        email_verified=row.email_verified,
        token_org_id=claims.org_id,
        session_id=claims.session_id,
        claims=claims,
        token_membership=OrgMembershipRow(row.org_id, row.org_name, row.org_type, row.role) if row.org_id else None,
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
