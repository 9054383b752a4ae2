"""Registration, login, sessions, refresh, logout, switch-org over HTTP against the migrated DB."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import Engine, text

from tests.helpers import PASSWORD, bearer, count, register, snapshot, unique_email


async def test_register_creates_user_personal_org_and_limits(client: httpx.AsyncClient, sync_engine: Engine) -> None:
    response = await client.post(
        "/v1/auth/register", json={"name": "Ada Lovelace", "email": "  Ada@Example.COM ", "password": PASSWORD}
    )
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["user"]["email"] == "ada@example.com"
    assert body["user"]["id"].startswith("user_")
    assert body["org"]["type"] == "personal"
    assert body["org"]["id"].startswith("org_")
    assert body["expires_in"] == 3600
    assert body["refresh_threshold"] == 600
    assert body["token"]
    assert response.headers["x-request-id"]
    user_id, org_id = body["user"]["id"], body["org"]["id"]
    assert (
        count(sync_engine, "SELECT count(*) FROM orgs WHERE id = :o AND personal_user_id = :u", o=org_id, u=user_id)
        == 1
    )
    assert (
        count(
            sync_engine,
            "SELECT count(*) FROM org_users WHERE org_id = :o AND user_id = :u AND role = 'owner'",
            o=org_id,
            u=user_id,
        )
        == 1
    )
    assert count(sync_engine, "SELECT max_graphs FROM org_limits WHERE org_id = :o", o=org_id) == 100
    with sync_engine.connect() as conn:
        stored = conn.execute(text("SELECT password_hash FROM users WHERE id = :u"), {"u": user_id}).scalar_one()
    assert stored.startswith("$argon2id$v=19$m=19456,t=2,p=1$")


async def test_duplicate_email_any_case_is_409_and_changes_nothing(
    client: httpx.AsyncClient, sync_engine: Engine
) -> None:
    await register(client, "dup@example.com")
    before = snapshot(sync_engine)
    response = await client.post(
        "/v1/auth/register", json={"name": "X", "email": "DUP@example.com", "password": PASSWORD}
    )
    assert response.status_code == 409
    assert response.json()["code"] == "email_taken"
    assert snapshot(sync_engine) == before


@pytest.mark.parametrize(
    ("password", "fragment"),
    [("short pw 1", "at least 12"), ("password1234", "too common"), ("x" * 129, "at most 128")],
)
async def test_weak_passwords_are_422(
    client: httpx.AsyncClient, sync_engine: Engine, password: str, fragment: str
) -> None:
    response = await client.post("/v1/auth/register", json={"name": "W", "email": unique_email(), "password": password})
    assert response.status_code == 422
    assert response.json()["code"] == "weak_password"
    assert any(fragment in e["msg"] for e in response.json()["detail"])
    assert count(sync_engine, "SELECT count(*) FROM users") == 0


async def test_twenty_concurrent_registrations_of_one_email(client: httpx.AsyncClient, sync_engine: Engine) -> None:
    email = unique_email("race")

    async def attempt(i: int) -> int:
        r = await client.post(
            "/v1/auth/register",
            json={"name": f"R{i}", "email": email.upper() if i % 2 else email, "password": PASSWORD},
        )
        return r.status_code

    statuses = await asyncio.gather(*(attempt(i) for i in range(20)))
    assert sorted(statuses) == [201] + [409] * 19
    assert count(sync_engine, "SELECT count(*) FROM users WHERE email = :e", e=email) == 1
    assert count(sync_engine, "SELECT count(*) FROM orgs") == 1
    assert count(sync_engine, "SELECT count(*) FROM org_users") == 1


async def test_registration_disabled_is_503(app_factory, sync_engine: Engine) -> None:  # type: ignore[no-untyped-def]
    async with app_factory(user_registration_enabled=False) as (_, client):
        response = await client.post(
            "/v1/auth/register", json={"name": "N", "email": unique_email(), "password": PASSWORD}
        )
    assert response.status_code == 503
    assert response.json()["code"] == "registration_disabled"
    assert count(sync_engine, "SELECT count(*) FROM users") == 0


async def test_login_success_and_me(client: httpx.AsyncClient) -> None:
    reg = await register(client, "me@example.com", name="Me Myself")
    response = await client.post("/v1/auth/login", json={"email": "ME@example.com", "password": PASSWORD})
    assert response.status_code == 200, response.text
    token = response.json()["token"]
    me = await client.get("/v1/auth/me", headers=bearer(token))
    assert me.status_code == 200
    assert me.json()["id"] == reg["user"]["id"]
    assert me.json()["org"] == {"id": reg["org"]["id"], "name": "Me Myself's org", "type": "personal", "role": "owner"}


async def test_login_failures_look_the_same(client: httpx.AsyncClient, sync_engine: Engine) -> None:
    reg = await register(client, "known@example.com")
    wrong = await client.post("/v1/auth/login", json={"email": "known@example.com", "password": "not the password!"})
    unknown = await client.post("/v1/auth/login", json={"email": "nobody@example.com", "password": "not the password!"})
    with sync_engine.begin() as conn:
        conn.execute(text("UPDATE users SET is_active = false WHERE id = :u"), {"u": reg["user"]["id"]})
    inactive = await client.post("/v1/auth/login", json={"email": "known@example.com", "password": PASSWORD})
    for response in (wrong, unknown, inactive):
        assert response.status_code == 401
        body = response.json()
        assert (body["detail"], body["code"]) == ("Invalid email or password", "invalid_credentials")
    assert count(sync_engine, "SELECT count(*) FROM security_audit_events WHERE event_type = 'login_failed'") == 3


async def test_login_with_org_id_requires_live_membership(client: httpx.AsyncClient, sync_engine: Engine) -> None:
    alice = await register(client, unique_email("alice"))
    bob = await register(client, unique_email("bob"))
    with sync_engine.begin() as conn:
        conn.execute(text("INSERT INTO orgs (id, name, org_type) VALUES ('org_team1', 'Team', 'team')"))
        conn.execute(
            text("INSERT INTO org_users (id, org_id, user_id, role) VALUES ('ou_t1', 'org_team1', :u, 'member')"),
            {"u": alice["user"]["id"]},
        )
    ok = await client.post(
        "/v1/auth/login", json={"email": alice["user"]["email"], "password": PASSWORD, "org_id": "org_team1"}
    )
    assert ok.status_code == 200
    assert ok.json()["org"]["id"] == "org_team1"
    assert ok.json()["org"]["role"] == "member"
    denied = await client.post(
        "/v1/auth/login", json={"email": bob["user"]["email"], "password": PASSWORD, "org_id": "org_team1"}
    )
    assert denied.status_code == 404
    # The token's org is a default, never a grant: remove the membership and /me stops showing it.
    token = ok.json()["token"]
    with sync_engine.begin() as conn:
        conn.execute(text("DELETE FROM org_users WHERE id = 'ou_t1'"))
    me = await client.get("/v1/auth/me", headers=bearer(token))
    assert me.status_code == 200
    assert me.json()["org"] is None


async def test_logout_revokes_at_once(client: httpx.AsyncClient, sync_engine: Engine) -> None:
    reg = await register(client)
    token = reg["token"]
    assert (await client.get("/v1/user", headers=bearer(token))).status_code == 200
    assert (await client.post("/v1/auth/logout", headers=bearer(token))).json() == {"message": "Logged out"}
    for path in ("/v1/user", "/v1/auth/me", "/v1/user/api-keys"):
        response = await client.get(path, headers=bearer(token))
        assert response.status_code == 401
        assert response.json()["code"] == "session_revoked"
    refresh = await client.post("/v1/auth/refresh", headers=bearer(token))
    assert refresh.status_code == 401
    assert count(sync_engine, "SELECT count(*) FROM security_audit_events WHERE event_type = 'revoked_token_used'") == 3


async def test_unauthenticated_and_garbage_tokens_are_401(client: httpx.AsyncClient) -> None:
    assert (await client.get("/v1/auth/me")).status_code == 401
    for header in ("Bearer not-a-jwt", "Bearer " + "a.b.c", "Basic Zm9vOmJhcg=="):
        response = await client.get("/v1/auth/me", headers={"Authorization": header})
        assert response.status_code == 401
        assert set(response.json()) == {"detail", "code", "request_id"}


async def test_refresh_rotates_and_old_token_dies(client: httpx.AsyncClient) -> None:
    reg = await register(client)
    first = reg["token"]
    refreshed = await client.post("/v1/auth/refresh", headers=bearer(first))
    assert refreshed.status_code == 200
    second = refreshed.json()["token"]
    assert second != first
    assert (await client.get("/v1/auth/me", headers=bearer(second))).status_code == 200
    assert (await client.get("/v1/auth/me", headers=bearer(first))).status_code == 401
    assert (await client.post("/v1/auth/refresh", headers=bearer(first))).status_code == 401


async def test_concurrent_refresh_of_one_token_succeeds_once(client: httpx.AsyncClient) -> None:
    reg = await register(client)
    results = await asyncio.gather(*(client.post("/v1/auth/refresh", headers=bearer(reg["token"])) for _ in range(8)))
    assert sorted(r.status_code for r in results) == [200] + [401] * 7


async def _expired_token(app: FastAPI, sync_engine: Engine, user_id: str, org_id: str, minutes_ago: int) -> str:
    services = app.state.services
    issued_at = datetime.now(UTC) - services.tokens.ttl - timedelta(minutes=minutes_ago)
    session_id = f"ses_expired{minutes_ago}"
    token, claims = services.tokens.issue(user_id, org_id, session_id, now=issued_at)
    with sync_engine.begin() as conn:
        conn.execute(
            text("INSERT INTO auth_sessions (id, user_id, org_id, expires_at) VALUES (:s, :u, :o, :e)"),
            {"s": session_id, "u": user_id, "o": org_id, "e": claims.expires_at + timedelta(minutes=5)},
        )
    return str(token)


async def test_refresh_within_grace_but_not_after(app: FastAPI, client: httpx.AsyncClient, sync_engine: Engine) -> None:
    reg = await register(client)
    user_id, org_id = reg["user"]["id"], reg["org"]["id"]
    recent = await _expired_token(app, sync_engine, user_id, org_id, minutes_ago=2)
    stale = await _expired_token(app, sync_engine, user_id, org_id, minutes_ago=10)
    me = await client.get("/v1/auth/me", headers=bearer(recent))
    assert me.status_code == 401
    assert me.json()["code"] == "token_expired"
    assert (await client.post("/v1/auth/refresh", headers=bearer(recent))).status_code == 200
    late = await client.post("/v1/auth/refresh", headers=bearer(stale))
    assert late.status_code == 401
    assert late.json()["code"] == "token_expired"


async def test_switch_org(client: httpx.AsyncClient, sync_engine: Engine) -> None:
    reg = await register(client)
    with sync_engine.begin() as conn:
        conn.execute(text("INSERT INTO orgs (id, name, org_type) VALUES ('org_team2', 'Team Two', 'team')"))
        conn.execute(
            text("INSERT INTO org_users (id, org_id, user_id, role) VALUES ('ou_t2', 'org_team2', :u, 'admin')"),
            {"u": reg["user"]["id"]},
        )
        conn.execute(text("INSERT INTO orgs (id, name, org_type) VALUES ('org_other', 'Other', 'team')"))
    switched = await client.post("/v1/auth/switch-org", json={"org_id": "org_team2"}, headers=bearer(reg["token"]))
    assert switched.status_code == 200
    assert switched.json()["org"] == {"id": "org_team2", "name": "Team Two", "type": "team", "role": "admin"}
    new_token = switched.json()["token"]
    assert (await client.get("/v1/auth/me", headers=bearer(new_token))).json()["org"]["id"] == "org_team2"
    denied = await client.post("/v1/auth/switch-org", json={"org_id": "org_other"}, headers=bearer(new_token))
    assert denied.status_code == 404
    missing = await client.post("/v1/auth/switch-org", json={"org_id": "org_nope"}, headers=bearer(new_token))
    assert missing.status_code == 404
    with sync_engine.begin() as conn:
        conn.execute(text("UPDATE orgs SET deleted_at = now() WHERE id = 'org_team2'"))
    assert (
        await client.post("/v1/auth/switch-org", json={"org_id": "org_team2"}, headers=bearer(new_token))
    ).status_code == 404


async def test_security_audit_is_append_only(client: httpx.AsyncClient, sync_engine: Engine) -> None:
    await client.post("/v1/auth/login", json={"email": "ghost@example.com", "password": "whatever whatever"})
    assert count(sync_engine, "SELECT count(*) FROM security_audit_events") == 1
    with pytest.raises(Exception, match="append-only"), sync_engine.begin() as conn:
        conn.execute(text("UPDATE security_audit_events SET event_type = 'x'"))
    with pytest.raises(Exception, match="append-only"), sync_engine.begin() as conn:
        conn.execute(text("DELETE FROM security_audit_events"))
    assert count(sync_engine, "SELECT count(*) FROM security_audit_events WHERE event_type = 'login_failed'") == 1
