"""Test harness: a real PostgreSQL database migrated with Alembic, the app over ASGI.

* ``DATABASE_URL`` set (CI: the machine's server) -> a fresh database is created on that server
  for the run and dropped afterwards.  Unset (fresh machine) -> the embedded ``pgserver``.
* ``REDIS_URL`` set -> rate limits use Redis.
* Each test starts from empty tables (TRUNCATE), so tests are independent.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from fastapi import FastAPI
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url

from robosystems import migrations
from robosystems.app import create_app
from robosystems.config import Settings
from robosystems.db import sync_url

ROOT = Path(__file__).resolve().parent.parent
TEST_DATA_DIR = ROOT / ".robosystems" / "test"
RUN_KEY_PREFIX = f"rs-test-{secrets.token_hex(4)}"  # isolates this run's rate-limit counters in a shared Redis


def _server_url() -> str:
    """URL of a server where the tests may create databases."""
    url = os.environ.get("DATABASE_URL", "")
    if url:
        return url
    import pgserver

    TEST_DATA_DIR.mkdir(parents=True, exist_ok=True)
    server = pgserver.get_server(str(TEST_DATA_DIR / "pgdata"), cleanup_mode="stop")
    return str(server.get_uri())


def _admin_conninfo(url: str, dbname: str) -> str:
    parsed = make_url(sync_url(url)).set(drivername="postgresql", database=dbname)
    return parsed.render_as_string(hide_password=False)


@pytest.fixture(scope="session")
def pg_server_url() -> str:
    return _server_url()


@pytest.fixture(scope="session")
def make_database(pg_server_url: str) -> Iterator[Callable[[], str]]:
    """Factory for throwaway databases on the test server (dropped at the end of the run)."""
    created: list[str] = []
    admin = _admin_conninfo(pg_server_url, "postgres")

    def make() -> str:
        name = f"rs_test_{secrets.token_hex(6)}"
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        created.append(name)
        return _admin_conninfo(pg_server_url, name)

    yield make
    with psycopg.connect(admin, autocommit=True) as conn:
        for name in created:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def database_url(make_database: Callable[[], str]) -> str:
    url = make_database()
    migrations.upgrade("head", url)
    return url


@pytest.fixture(scope="session")
def sync_engine(database_url: str) -> Iterator[Engine]:
    engine = create_engine(sync_url(database_url), pool_size=5)
    yield engine
    engine.dispose()


def _tables(engine: Engine) -> list[str]:
    with engine.connect() as conn:
        rows = conn.execute(
            text("SELECT tablename FROM pg_tables WHERE schemaname = 'public' AND tablename <> 'alembic_version'")
        ).scalars()
        return sorted(rows)


@pytest.fixture(autouse=True)
def clean_tables(request: pytest.FixtureRequest) -> None:
    if "database_url" not in request.fixturenames:
        return
    engine: Engine = request.getfixturevalue("sync_engine")
    tables = ", ".join(f'"{t}"' for t in _tables(engine))
    with engine.begin() as conn:
        conn.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))


def base_settings(database_url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "environment": "test",
        "database_url": database_url,
        "redis_url": os.environ.get("REDIS_URL", ""),
        "rate_limit_key_prefix": RUN_KEY_PREFIX,
        "robosystems_data_dir": TEST_DATA_DIR / "data",
        "jwt_secret_key": "test-secret-" + "x" * 40,
        "embedded_worker": False,
        "log_json": False,
        "rate_limit_login_per_ip_email": "1000/minute",
        "rate_limit_register_per_ip": "10000/hour",
        "rate_limit_forgot_password_per_email": "1000/hour",
        "db_pool_size": 5,
        # concurrency tests open ~20 connections at once; overflow ones close when idle
        "db_max_overflow": 25,
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


@pytest.fixture(scope="session")
def app_factory(database_url: str) -> Callable[..., AbstractAsyncContextManager[tuple[FastAPI, httpx.AsyncClient]]]:
    """``async with app_factory(**settings_overrides) as (app, client)`` -> a fresh app and client."""

    @asynccontextmanager
    async def factory(**overrides: Any) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
        app = create_app(base_settings(**{"database_url": database_url, **overrides}))
        async with app.router.lifespan_context(app):
            await app.state.services.limiter.reset()
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
                yield app, client

    return factory


@pytest.fixture(scope="session")
async def _shared_app(app_factory: Callable[..., Any]) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    async with app_factory() as pair:
        yield pair


@pytest.fixture
async def app(_shared_app: tuple[FastAPI, httpx.AsyncClient]) -> FastAPI:
    await _shared_app[0].state.services.limiter.reset()
    return _shared_app[0]


@pytest.fixture
async def client(app: FastAPI, _shared_app: tuple[FastAPI, httpx.AsyncClient]) -> httpx.AsyncClient:
    return _shared_app[1]
