"""Rate limits, bad input, error model, health endpoints, settings and secrets."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import httpx
import pytest
from sqlalchemy import Engine

from robosystems.config import ConfigError, Settings
from tests.helpers import PASSWORD, bearer, count, register, snapshot, unique_email


async def test_login_rate_limit_per_ip_and_email(app_factory) -> None:  # type: ignore[no-untyped-def]
    async with app_factory(rate_limit_login_per_ip_email="3/minute") as (_, client):
        await register(client, "rl@example.com")
        statuses = [
            (await client.post("/v1/auth/login", json={"email": "rl@example.com", "password": PASSWORD})).status_code
            for _ in range(4)
        ]
        assert statuses == [200, 200, 200, 429]
        limited = await client.post("/v1/auth/login", json={"email": "rl@example.com", "password": PASSWORD})
        assert limited.json()["code"] == "rate_limited"
        assert int(limited.headers["Retry-After"]) >= 1
        # another email from the same IP is not affected
        await register(client, "other-rl@example.com")
        assert (
            await client.post("/v1/auth/login", json={"email": "other-rl@example.com", "password": PASSWORD})
        ).status_code == 200


async def test_account_failure_cap_locks_even_the_right_password(app_factory, sync_engine: Engine) -> None:  # type: ignore[no-untyped-def]
    async with app_factory(rate_limit_login_failures_per_account="3/hour") as (_, client):
        await register(client, "locked@example.com")
        for _ in range(3):
            r = await client.post(
                "/v1/auth/login", json={"email": "locked@example.com", "password": "wrong password!!"}
            )
            assert r.status_code == 401
        locked = await client.post("/v1/auth/login", json={"email": "locked@example.com", "password": PASSWORD})
        assert locked.status_code == 429 and "Retry-After" in locked.headers
    assert count(sync_engine, "SELECT count(*) FROM security_audit_events WHERE event_type = 'account_locked'") == 1


async def test_register_and_forgot_rate_limits(app_factory) -> None:  # type: ignore[no-untyped-def]
    async with app_factory(rate_limit_register_per_ip="2/hour", rate_limit_forgot_password_per_email="2/hour") as (
        _,
        c,
    ):
        codes = [
            (
                await c.post("/v1/auth/register", json={"name": "n", "email": unique_email(), "password": PASSWORD})
            ).status_code
            for _ in range(3)
        ]
        assert codes == [201, 201, 429]
        forgot = [
            (await c.post("/v1/auth/password/forgot", json={"email": "x@example.com"})).status_code for _ in range(3)
        ]
        assert forgot == [200, 200, 429]


@pytest.mark.parametrize(
    ("path", "content", "headers"),
    [
        ("/v1/auth/register", b"{not json", {"content-type": "application/json"}),
        ("/v1/auth/register", b'{"name": 5, "email": ["a"], "password": null}', {"content-type": "application/json"}),
        (
            "/v1/auth/register",
            b'{"name": "x", "email": "not-an-email", "password": "long enough password"}',
            {"content-type": "application/json"},
        ),
        (
            "/v1/auth/register",
            b'{"name": "' + b"n" * 300 + b'", "email": "a@example.com", "password": "long enough pw!"}',
            {"content-type": "application/json"},
        ),
        ("/v1/auth/login", b"[]", {"content-type": "application/json"}),
        ("/v1/auth/login", b"", {"content-type": "application/json"}),
        (
            "/v1/auth/register",
            '{"name": "\udcff"}'.encode("utf-8", "surrogatepass"),
            {"content-type": "application/json"},
        ),
    ],
)
async def test_bad_input_is_4xx_and_changes_nothing(
    client: httpx.AsyncClient, sync_engine: Engine, path: str, content: bytes, headers: dict[str, str]
) -> None:
    before = snapshot(sync_engine)
    response = await client.post(path, content=content, headers=headers)
    assert 400 <= response.status_code < 500, response.text
    assert "Traceback" not in response.text and "sqlalchemy" not in response.text.lower()
    assert response.headers["x-request-id"]
    assert snapshot(sync_engine) == before


async def test_one_megabyte_name_is_refused(client: httpx.AsyncClient, sync_engine: Engine) -> None:
    before = snapshot(sync_engine)
    big = {"name": "n" * 1_048_576, "email": unique_email(), "password": PASSWORD}
    response = await client.post("/v1/auth/register", json=big)
    assert response.status_code == 413
    assert response.json()["code"] == "payload_too_large"
    assert snapshot(sync_engine) == before


async def test_unicode_everywhere(client: httpx.AsyncClient) -> None:
    reg = await register(client, name="Ð̸ȁṙḱ 🦄 名前")
    assert reg["user"]["name"] == "Ð̸ȁṙḱ 🦄 名前"
    me = await client.get("/v1/auth/me", headers=bearer(reg["token"]))
    assert me.json()["org"]["name"] == "Ð̸ȁṙḱ 🦄 名前's org"


async def test_request_id_and_error_model(client: httpx.AsyncClient) -> None:
    response = await client.get("/v1/does-not-exist", headers={"X-Request-ID": "my-trace-123"})
    assert response.status_code == 404
    assert response.headers["x-request-id"] == "my-trace-123"
    assert response.json() == {"detail": "Not Found", "code": "not_found", "request_id": "my-trace-123"}
    evil = await client.get("/healthz", headers={"X-Request-ID": "bad id\twith spaces"})
    assert evil.headers["x-request-id"].startswith("req_")
    wrong_method = await client.delete("/v1/auth/login")
    assert wrong_method.status_code == 405 and wrong_method.json()["code"] == "method_not_allowed"


async def test_health_endpoints(client: httpx.AsyncClient) -> None:
    assert (await client.get("/healthz")).json() == {"status": "ok"}
    ready = await client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["checks"]["database"] == "ok"
    status = (await client.get("/v1/status")).json()
    assert status["status"] == "healthy" and "timestamp" in status
    await client.get("/healthz")
    metrics = await client.get("/metrics")
    assert metrics.status_code == 200
    assert 'robosystems_http_requests_total{method="GET",route="/healthz",status="200"}' in metrics.text


async def test_readyz_reports_database_down(app_factory) -> None:  # type: ignore[no-untyped-def]
    async with app_factory(database_url="postgresql://postgres@127.0.0.1:1/nothing") as (_, client):
        ready = await client.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["checks"]["database"].startswith("unavailable")
        login = await client.post("/v1/auth/login", json={"email": "a@example.com", "password": "whatever whatever"})
        assert login.status_code == 503
        assert login.json()["code"] == "database_unavailable" and "psycopg" not in login.text
        assert login.headers["Retry-After"] == "5"


async def test_authenticated_reads_answer_503_while_the_database_is_down(app_factory) -> None:  # type: ignore[no-untyped-def]
    """The principal lookup and the org reads run on the psycopg read pool: a server that can't be
    reached there is 503 database_unavailable too (after DB_POOL_TIMEOUT_SECONDS), never a 500."""
    async with app_factory() as (_, up):
        body = await register(up, unique_email("down"))
    token, org_id = body["token"], body["org"]["id"]
    async with app_factory(database_url="postgresql://postgres@127.0.0.1:1/nothing", db_pool_timeout_seconds=0.5) as (
        _,
        client,
    ):
        for path in ("/v1/auth/me", f"/v1/orgs/{org_id}", "/v1/orgs"):
            response = await client.get(path, headers=bearer(token))
            assert response.status_code == 503, (path, response.text)
            assert response.json()["code"] == "database_unavailable"
            assert "psycopg" not in response.text.lower() and response.headers["Retry-After"] == "5"


def test_production_refuses_placeholder_or_missing_secret(tmp_path: Path) -> None:
    for secret in ("", "changeme", "short"):
        settings = Settings(
            _env_file=None,
            environment="production",
            jwt_secret_key=secret,  # type: ignore[call-arg]
            robosystems_data_dir=tmp_path,
        )
        with pytest.raises(ConfigError, match="JWT_SECRET_KEY"):
            settings.ensure_secrets()
    ok = Settings(
        _env_file=None,
        environment="production",
        jwt_secret_key="s" * 48,  # type: ignore[call-arg]
        robosystems_data_dir=tmp_path,
    )
    ok.ensure_secrets()


def test_development_secret_generated_once_with_mode_0600(tmp_path: Path) -> None:
    first = Settings(_env_file=None, robosystems_data_dir=tmp_path)  # type: ignore[call-arg]
    first.ensure_secrets()
    path = tmp_path / "jwt_secret"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    second = Settings(_env_file=None, robosystems_data_dir=tmp_path)  # type: ignore[call-arg]
    second.ensure_secrets()
    assert first.jwt_secret_key == second.jwt_secret_key and len(first.jwt_secret_key) >= 48
