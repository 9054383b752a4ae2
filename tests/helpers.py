"""Small helpers shared by the tests (plain functions, no fixtures)."""

from __future__ import annotations

import secrets
from typing import Any

import httpx
from sqlalchemy import Engine, text

PASSWORD = "correct horse battery staple 42"


def unique_email(prefix: str = "user") -> str:
    return f"{prefix}-{secrets.token_hex(4)}@example.com"


async def register(
    client: httpx.AsyncClient, email: str | None = None, password: str = PASSWORD, name: str = "Test User"
) -> dict[str, Any]:
    email = email or unique_email()
    response = await client.post("/v1/auth/register", json={"name": name, "email": email, "password": password})
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    body["password"] = password
    return body


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def count(engine: Engine, sql: str, **params: Any) -> int:
    with engine.connect() as conn:
        return int(conn.execute(text(sql), params).scalar_one())


def snapshot(
    engine: Engine,
    tables: tuple[str, ...] = (
        "users",
        "orgs",
        "org_users",
        "auth_sessions",
        "user_api_keys",
        "user_tokens",
        "mail_outbox",
    ),
) -> dict[str, Any]:
    """Row counts and a checksum of every row of the given tables (to assert 'nothing changed')."""
    out: dict[str, Any] = {}
    with engine.connect() as conn:
        for table in tables:
            out[table] = conn.execute(
                text(f"SELECT count(*), coalesce(md5(string_agg(t::text, '|' ORDER BY t::text)), '') FROM {table} t")
            ).one()
    return out


def last_mail(engine: Engine, to: str, kind: str) -> str:
    with engine.connect() as conn:
        body = conn.execute(
            text(
                "SELECT body_text FROM mail_outbox WHERE to_email = :to AND kind = :kind "
                "ORDER BY created_at DESC, id DESC LIMIT 1"
            ),
            {"to": to, "kind": kind},
        ).scalar_one()
    return str(body)


def token_from_mail(body: str, label: str) -> str:
    for line in body.splitlines():
        if line.startswith(label + ":"):
            return line.split(":", 1)[1].strip()
    raise AssertionError(f"no {label!r} in mail: {body!r}")
