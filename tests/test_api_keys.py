"""API keys: create/list/update/revoke, use with X-API-Key, expiry, legacy bcrypt keys."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import bcrypt
import httpx
from sqlalchemy import Engine, text

from robosystems.ids import sha256_hex
from tests.helpers import bearer, count, register, snapshot


async def test_api_key_lifecycle(client: httpx.AsyncClient, sync_engine: Engine) -> None:
    reg = await register(client)
    headers = bearer(reg["token"])
    created = await client.post(
        "/v1/user/api-keys", headers=headers, json={"name": "ci", "description": "for CI", "expires_at": None}
    )
    assert created.status_code == 201, created.text
    body = created.json()
    key, info = body["key"], body["api_key"]
    assert key.startswith("rfs") and len(key) == 67
    assert info["prefix"] == key[:8] and info["is_active"] is True and info["description"] == "for CI"
    # stored only as a hash
    assert (
        count(
            sync_engine,
            "SELECT count(*) FROM user_api_keys WHERE key_hash = :h AND hash_algo = 'sha256'",
            h=sha256_hex(key),
        )
        == 1
    )
    assert count(sync_engine, "SELECT count(*) FROM user_api_keys WHERE key_hash = :k", k=key) == 0

    me = await client.get("/v1/user", headers={"X-API-Key": key})
    assert me.status_code == 200 and me.json()["id"] == reg["user"]["id"]
    listed = (await client.get("/v1/user/api-keys", headers=headers)).json()["api_keys"]
    assert [k["id"] for k in listed] == [info["id"]]
    assert listed[0]["last_used_at"] is not None
    assert "key" not in listed[0]

    updated = await client.put(f"/v1/user/api-keys/{info['id']}", headers=headers, json={"name": "renamed"})
    assert updated.status_code == 200 and updated.json()["name"] == "renamed"

    revoked = await client.delete(f"/v1/user/api-keys/{info['id']}", headers=headers)
    assert revoked.status_code == 200 and revoked.json()["success"] is True
    after = await client.get("/v1/user", headers={"X-API-Key": key})
    assert after.status_code == 401 and after.json()["code"] == "invalid_api_key"
    assert (await client.get("/v1/user/api-keys", headers=headers)).json()["api_keys"] == []
    assert (
        count(
            sync_engine,
            "SELECT count(*) FROM security_audit_events WHERE event_type IN ('api_key_created', 'api_key_revoked')",
        )
        == 2
    )


async def test_other_users_key_is_404_and_unchanged(client: httpx.AsyncClient, sync_engine: Engine) -> None:
    alice = await register(client)
    bob = await register(client)
    key_id = (await client.post("/v1/user/api-keys", headers=bearer(alice["token"]), json={"name": "a"})).json()[
        "api_key"
    ]["id"]
    before = snapshot(sync_engine)
    assert (
        await client.put(f"/v1/user/api-keys/{key_id}", headers=bearer(bob["token"]), json={"name": "stolen"})
    ).status_code == 404
    assert (await client.delete(f"/v1/user/api-keys/{key_id}", headers=bearer(bob["token"]))).status_code == 404
    assert snapshot(sync_engine) == before


async def test_expiry(client: httpx.AsyncClient, sync_engine: Engine) -> None:
    reg = await register(client)
    headers = bearer(reg["token"])
    past = (datetime.now(UTC) - timedelta(minutes=1)).isoformat()
    refused = await client.post("/v1/user/api-keys", headers=headers, json={"name": "old", "expires_at": past})
    assert refused.status_code == 422
    soon = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    created = (
        await client.post("/v1/user/api-keys", headers=headers, json={"name": "soon", "expires_at": soon})
    ).json()
    assert (await client.get("/v1/user", headers={"X-API-Key": created["key"]})).status_code == 200
    with sync_engine.begin() as conn:
        conn.execute(text("UPDATE user_api_keys SET expires_at = now() - interval '1 second'"))
    assert (await client.get("/v1/user", headers={"X-API-Key": created["key"]})).status_code == 401


async def test_inactive_user_key_fails(client: httpx.AsyncClient, sync_engine: Engine) -> None:
    reg = await register(client)
    key = (await client.post("/v1/user/api-keys", headers=bearer(reg["token"]), json={"name": "k"})).json()["key"]
    with sync_engine.begin() as conn:
        conn.execute(text("UPDATE users SET is_active = false WHERE id = :u"), {"u": reg["user"]["id"]})
    assert (await client.get("/v1/user", headers={"X-API-Key": key})).status_code == 401


async def test_legacy_bcrypt_key_works_and_is_converted(client: httpx.AsyncClient, sync_engine: Engine) -> None:
    reg = await register(client)
    plain = "rfs" + "ab" * 32
    with sync_engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO user_api_keys (id, user_id, name, key_hash, hash_algo, prefix, is_active) "
                "VALUES ('uak_legacy', :u, 'legacy', :h, 'bcrypt', :p, true)"
            ),
            {
                "u": reg["user"]["id"],
                "h": bcrypt.hashpw(plain.encode(), bcrypt.gensalt(rounds=4)).decode(),
                "p": plain[:8],
            },
        )
    assert (await client.get("/v1/user", headers={"X-API-Key": plain})).status_code == 200
    assert (
        count(
            sync_engine,
            "SELECT count(*) FROM user_api_keys WHERE id = 'uak_legacy' AND hash_algo = 'sha256' AND key_hash = :h",
            h=sha256_hex(plain),
        )
        == 1
    )
    assert (await client.get("/v1/user", headers={"X-API-Key": plain})).status_code == 200
    wrong = "rfs" + "ab" * 31 + "cd"
    assert (await client.get("/v1/user", headers={"X-API-Key": wrong})).status_code == 401
