"""API keys: ``rfs`` + 64 hex characters (256 bits), shown once, stored as SHA-256.

A key with 256 bits of entropy needs no slow hash: SHA-256 lets the lookup be one indexed
equality.  Legacy keys (bcrypt, from the user-centric schema) keep working: they are found by
their 8-character prefix, checked with bcrypt and converted to SHA-256 on first successful use.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import bcrypt
from sqlalchemy import ColumnElement, func, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.concurrency import run_in_threadpool

from robosystems.audit.service import record_security_event
from robosystems.errors import Conflict, NotFound, Unprocessable
from robosystems.ids import new_id, sha256_hex
from robosystems.models import ApiKey, User
from robosystems.services import AppServices

KEY_PREFIX = "rfs"
LAST_USED_RESOLUTION = timedelta(minutes=1)


@dataclass(frozen=True)
class KeyOwner:
    key_id: str
    user_id: str
    email: str
    name: str
    email_verified: bool


def generate_key() -> str:
    return KEY_PREFIX + secrets.token_hex(32)


def _usable(now: datetime) -> list[ColumnElement[bool]]:
    return [
        ApiKey.is_active.is_(True),
        or_(ApiKey.expires_at.is_(None), ApiKey.expires_at > now),
        User.is_active.is_(True),
    ]


async def authenticate(session: AsyncSession, services: AppServices, key: str) -> KeyOwner | None:
    if not key.startswith(KEY_PREFIX) or len(key) > 128:
        return None
    now = datetime.now(UTC)
    cols = (ApiKey.id, ApiKey.last_used_at, User.id.label("user_id"), User.email, User.name, User.email_verified)
    row: Any = (
        await session.execute(
            select(*cols)
            .join(User, User.id == ApiKey.user_id)
            .where(ApiKey.key_hash == sha256_hex(key), ApiKey.hash_algo == "sha256", *_usable(now))
        )
    ).one_or_none()
    if row is None:
        row = await _legacy_bcrypt_match(session, key, now, cols)
        if row is None:
            return None
    if row.last_used_at is None or now - row.last_used_at > LAST_USED_RESOLUTION:
        await session.execute(update(ApiKey).where(ApiKey.id == row.id).values(last_used_at=now))
    return KeyOwner(row.id, row.user_id, row.email, row.name, row.email_verified)


async def _legacy_bcrypt_match(session: AsyncSession, key: str, now: datetime, cols: tuple[Any, ...]) -> Any:
    candidates = (
        await session.execute(
            select(*cols, ApiKey.key_hash)
            .join(User, User.id == ApiKey.user_id)
            .where(ApiKey.prefix == key[:8], ApiKey.hash_algo == "bcrypt", *_usable(now))
        )
    ).all()
    for cand in candidates:
        matched = await run_in_threadpool(bcrypt.checkpw, key.encode(), cand.key_hash.encode())
        if matched:
            await session.execute(
                update(ApiKey).where(ApiKey.id == cand.id).values(key_hash=sha256_hex(key), hash_algo="sha256")
            )
            return cand
    return None


def key_info(key: ApiKey) -> dict[str, object]:
    return {
        "id": key.id,
        "name": key.name,
        "prefix": key.prefix,
        "is_active": key.is_active,
        "created_at": key.created_at.isoformat(),
        "description": key.description,
        "last_used_at": key.last_used_at.isoformat() if key.last_used_at else None,
        "expires_at": key.expires_at.isoformat() if key.expires_at else None,
    }


async def list_keys(session: AsyncSession, user_id: str) -> list[ApiKey]:
    result = await session.scalars(
        select(ApiKey).where(ApiKey.user_id == user_id, ApiKey.is_active.is_(True)).order_by(ApiKey.created_at)
    )
    return list(result)


async def create_key(
    session: AsyncSession,
    services: AppServices,
    user_id: str,
    name: str,
    description: str | None,
    expires_at: datetime | None,
) -> tuple[ApiKey, str]:
    now = datetime.now(UTC)
    if expires_at is not None:
        if expires_at.tzinfo is None:
            expires_at = expires_at.replace(tzinfo=UTC)
        if expires_at <= now:
            raise Unprocessable("expires_at must be in the future", code="invalid_expiry")
    count = await session.scalar(
        select(func.count()).select_from(ApiKey).where(ApiKey.user_id == user_id, ApiKey.is_active.is_(True))
    )
    if (count or 0) >= services.settings.api_key_max_per_user:
        raise Conflict("Too many active API keys; revoke one first", code="api_key_limit")
    plain = generate_key()
    key_id = new_id("uak")
    key = (
        await session.execute(
            insert(ApiKey)
            .values(
                id=key_id,
                user_id=user_id,
                name=name,
                description=description,
                key_hash=sha256_hex(plain),
                hash_algo="sha256",
                prefix=plain[:8],
                expires_at=expires_at,
            )
            .returning(ApiKey)
        )
    ).scalar_one()
    await record_security_event(session, "api_key_created", user_id=user_id, details={"api_key_id": key_id})
    return key, plain


async def _own_key(session: AsyncSession, user_id: str, key_id: str) -> ApiKey:
    key = await session.scalar(
        select(ApiKey).where(ApiKey.id == key_id, ApiKey.user_id == user_id, ApiKey.is_active.is_(True))
    )
    if key is None:
        raise NotFound("API key not found", code="api_key_not_found")
    return key


async def update_key(
    session: AsyncSession, user_id: str, key_id: str, name: str | None, description: str | None
) -> ApiKey:
    key = await _own_key(session, user_id, key_id)
    if name is not None:
        key.name = name
    if description is not None:
        key.description = description
    await session.flush()
    await session.refresh(key)
    return key


async def revoke_key(session: AsyncSession, user_id: str, key_id: str) -> None:
    key = await _own_key(session, user_id, key_id)
    key.is_active = False
    key.revoked_at = datetime.now(UTC)
    await session.flush()
    await record_security_event(session, "api_key_revoked", user_id=user_id, details={"api_key_id": key_id})
