"""Password policy/check, forgot/reset, email verification, password change."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import httpx
from sqlalchemy import Engine, text

from tests.helpers import PASSWORD, bearer, count, last_mail, register, snapshot, token_from_mail, unique_email

NEW_PASSWORD = "another quite long passphrase 7"


async def test_policy_and_strength_check(client: httpx.AsyncClient) -> None:
    policy = (await client.get("/v1/auth/password/policy")).json()["policy"]
    assert policy["min_length"] == 12 and policy["max_length"] == 128 and policy["require_uppercase"] is False
    weak = (await client.post("/v1/auth/password/check", json={"password": "password"})).json()
    assert weak["is_valid"] is False and weak["score"] <= 1 and any("12" in e for e in weak["errors"])
    strong = (await client.post("/v1/auth/password/check", json={"password": "mauve-otter-quietly-95-sings"})).json()
    assert strong["is_valid"] is True and strong["score"] >= 3 and strong["errors"] == []
    assert set(strong["character_types"]) == {"lowercase", "uppercase", "digits", "special"}
    same_as_email = (
        await client.post(
            "/v1/auth/password/check",
            json={"password": "someone.long@example.com", "email": "someone.long@example.com"},
        )
    ).json()
    assert same_as_email["is_valid"] is False


async def test_forgot_password_same_answer_and_reset_flow(client: httpx.AsyncClient, sync_engine: Engine) -> None:
    reg = await register(client, "forgetful@example.com")
    other_session = (
        await client.post("/v1/auth/login", json={"email": "forgetful@example.com", "password": PASSWORD})
    ).json()["token"]
    known = await client.post("/v1/auth/password/forgot", json={"email": "Forgetful@example.com"})
    unknown = await client.post("/v1/auth/password/forgot", json={"email": "nobody-here@example.com"})
    assert known.status_code == unknown.status_code == 200
    assert known.json() == unknown.json()
    assert count(sync_engine, "SELECT count(*) FROM mail_outbox WHERE kind = 'password_reset'") == 1
    token = token_from_mail(last_mail(sync_engine, "forgetful@example.com", "password_reset"), "Reset token")
    assert count(sync_engine, "SELECT count(*) FROM user_tokens WHERE token_hash = :t", t=token) == 0  # hashed at rest

    valid = (await client.get("/v1/auth/password/reset/validate", params={"token": token})).json()
    assert valid == {"valid": True, "email": "fo" + "*" * 7 + "@example.com"}
    assert (await client.get("/v1/auth/password/reset/validate", params={"token": "nope"})).json()["valid"] is False

    weak = await client.post("/v1/auth/password/reset", json={"token": token, "new_password": "short"})
    assert weak.status_code == 422
    reset = await client.post("/v1/auth/password/reset", json={"token": token, "new_password": NEW_PASSWORD})
    assert reset.status_code == 200, reset.text
    assert reset.json()["user"]["id"] == reg["user"]["id"] and reset.json()["token"]
    # every earlier session is revoked, the new one works
    for old in (reg["token"], other_session):
        assert (await client.get("/v1/auth/me", headers=bearer(old))).status_code == 401
    assert (await client.get("/v1/auth/me", headers=bearer(reset.json()["token"]))).status_code == 200
    # single use
    again = await client.post("/v1/auth/password/reset", json={"token": token, "new_password": NEW_PASSWORD + "x"})
    assert again.status_code == 400 and again.json()["code"] == "invalid_token"
    assert (
        await client.post("/v1/auth/login", json={"email": "forgetful@example.com", "password": NEW_PASSWORD})
    ).status_code == 200
    assert (
        await client.post("/v1/auth/login", json={"email": "forgetful@example.com", "password": PASSWORD})
    ).status_code == 401


async def test_expired_reset_token_is_refused(client: httpx.AsyncClient, sync_engine: Engine) -> None:
    await register(client, "late@example.com")
    await client.post("/v1/auth/password/forgot", json={"email": "late@example.com"})
    token = token_from_mail(last_mail(sync_engine, "late@example.com", "password_reset"), "Reset token")
    with sync_engine.begin() as conn:
        conn.execute(text("UPDATE user_tokens SET expires_at = now() - interval '1 second'"))
    before = snapshot(sync_engine)
    response = await client.post("/v1/auth/password/reset", json={"token": token, "new_password": NEW_PASSWORD})
    assert response.status_code == 400
    assert snapshot(sync_engine) == before
    assert (await client.get("/v1/auth/password/reset/validate", params={"token": token})).json()["valid"] is False


async def test_email_verification_flow(app_factory, sync_engine: Engine) -> None:  # type: ignore[no-untyped-def]
    async with app_factory(email_verification_enabled=True) as (_, client):
        email = unique_email("verify")
        reg = await register(client, email)
        me = await client.get("/v1/user", headers=bearer(reg["token"]))
        assert me.json()["email_verified"] is False
        token = token_from_mail(last_mail(sync_engine, email, "email_verification"), "Verification token")
        resend = await client.post("/v1/auth/email/resend", headers=bearer(reg["token"]))
        assert resend.status_code == 200
        assert count(sync_engine, "SELECT count(*) FROM mail_outbox WHERE kind = 'email_verification'") == 2
        verified = await client.post("/v1/auth/email/verify", json={"token": token})
        assert verified.status_code == 200, verified.text
        assert count(sync_engine, "SELECT count(*) FROM users WHERE email = :e AND email_verified", e=email) == 1
        reused = await client.post("/v1/auth/email/verify", json={"token": token})
        assert reused.status_code == 400
        token2 = verified.json()["token"]
        done = await client.post("/v1/auth/email/resend", headers=bearer(token2))
        assert done.status_code == 400 and done.json()["code"] == "already_verified"


async def test_resend_when_verification_disabled_is_503(client: httpx.AsyncClient) -> None:
    reg = await register(client)
    response = await client.post("/v1/auth/email/resend", headers=bearer(reg["token"]))
    assert response.status_code == 503


async def test_password_change(client: httpx.AsyncClient, sync_engine: Engine) -> None:
    reg = await register(client, "changer@example.com")
    second = (await client.post("/v1/auth/login", json={"email": "changer@example.com", "password": PASSWORD})).json()[
        "token"
    ]
    headers = bearer(reg["token"])
    wrong = await client.put(
        "/v1/user/password",
        headers=headers,
        json={"current_password": "not my password!", "new_password": NEW_PASSWORD, "confirm_password": NEW_PASSWORD},
    )
    assert wrong.status_code == 400 and wrong.json()["code"] == "invalid_current_password"
    mismatch = await client.put(
        "/v1/user/password",
        headers=headers,
        json={"current_password": PASSWORD, "new_password": NEW_PASSWORD, "confirm_password": NEW_PASSWORD + "!"},
    )
    assert mismatch.status_code == 400 and mismatch.json()["code"] == "password_mismatch"
    ok = await client.put(
        "/v1/user/password",
        headers=headers,
        json={"current_password": PASSWORD, "new_password": NEW_PASSWORD, "confirm_password": NEW_PASSWORD},
    )
    assert ok.status_code == 200 and ok.json()["success"] is True
    assert (await client.get("/v1/user", headers=headers)).status_code == 200  # current session kept
    assert (await client.get("/v1/user", headers=bearer(second))).status_code == 401  # others revoked


async def test_profile_update(client: httpx.AsyncClient, sync_engine: Engine) -> None:
    reg = await register(client, "first@example.com")
    await register(client, "taken@example.com")
    headers = bearer(reg["token"])
    renamed = await client.put("/v1/user", headers=headers, json={"name": "Zoë Ünïcode 名前"})
    assert renamed.status_code == 200 and renamed.json()["name"] == "Zoë Ünïcode 名前"
    before = snapshot(sync_engine)
    taken = await client.put("/v1/user", headers=headers, json={"email": "TAKEN@example.com"})
    assert taken.status_code == 409
    assert snapshot(sync_engine) == before
    moved = await client.put("/v1/user", headers=headers, json={"email": "Second@Example.com"})
    assert moved.status_code == 200 and moved.json()["email"] == "second@example.com"
    assert (
        await client.post("/v1/auth/login", json={"email": "second@example.com", "password": PASSWORD})
    ).status_code == 200


async def test_rehash_of_legacy_bcrypt_password_on_login(client: httpx.AsyncClient, sync_engine: Engine) -> None:
    import bcrypt

    reg = await register(client, "legacy@example.com")
    legacy_hash = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=4)).decode()
    with sync_engine.begin() as conn:
        conn.execute(
            text("UPDATE users SET password_hash = :h WHERE id = :u"), {"h": legacy_hash, "u": reg["user"]["id"]}
        )
    assert (
        await client.post("/v1/auth/login", json={"email": "legacy@example.com", "password": PASSWORD})
    ).status_code == 200
    with sync_engine.connect() as conn:
        stored = conn.execute(
            text("SELECT password_hash FROM users WHERE id = :u"), {"u": reg["user"]["id"]}
        ).scalar_one()
    assert stored.startswith("$argon2id$")


def _future(days: int) -> str:
    return (datetime.now(UTC) + timedelta(days=days)).isoformat()
