"""Engines, sessions and the embedded PostgreSQL server.

* ``DATABASE_URL`` set: that server.  Unset: an embedded PostgreSQL (``pgserver``) in
  ``ROBOSYSTEMS_DATA_DIR/pgdata``, started on first use and stopped with the process.
* The API uses an async engine (SQLAlchemy 2 + psycopg 3); Alembic and background tasks use a
  sync engine on the same URL.
* One request = one transaction: :func:`get_session` commits when the handler returns and rolls
  back when it raises.  Services ``flush()``, never ``commit()``.  Callables registered with
  :func:`after_commit` run only once the transaction has committed.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from psycopg_pool import AsyncConnectionPool
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import Session, sessionmaker
from starlette.requests import Request

from robosystems.config import Settings, get_settings

if TYPE_CHECKING:
    from sqlalchemy.sql.elements import ClauseElement

log = logging.getLogger("robosystems.db")

_embedded_lock = threading.Lock()
_embedded_server: Any = None
AFTER_COMMIT_KEY = "robosystems_after_commit"


def start_embedded_postgres(settings: Settings) -> str:
    """Start (or join) the embedded PostgreSQL in the data directory and return its URL."""
    global _embedded_server
    with _embedded_lock:
        if _embedded_server is None:
            from pgserver import get_server  # type: ignore[attr-defined]  # lazily: only without DATABASE_URL

            pgdata = settings.robosystems_data_dir / "pgdata"
            pgdata.mkdir(parents=True, exist_ok=True)
            log.info("starting embedded PostgreSQL (pgserver) in %s", pgdata)
            _embedded_server = get_server(str(pgdata), cleanup_mode="stop")
            log.info("embedded PostgreSQL ready at %s", _embedded_server.get_uri())
        return str(_embedded_server.get_uri())


def resolve_database_url(settings: Settings | None = None) -> str:
    """The configured DATABASE_URL, or the embedded server's (started on demand).

    The embedded URL is exported to ``DATABASE_URL`` so uvicorn worker processes and Celery
    tasks started from this process use the same server.
    """
    settings = settings or get_settings()
    if not settings.database_url:
        settings.database_url = start_embedded_postgres(settings)
        os.environ["DATABASE_URL"] = settings.database_url
    return settings.database_url


def _with_driver(url: str) -> str:
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres", "postgresql+psycopg2", "postgresql+asyncpg"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed.render_as_string(hide_password=False)


def sync_url(url: str | None = None) -> str:
    return _with_driver(url or resolve_database_url())


def _connect_args(settings: Settings) -> dict[str, Any]:
    options = f"-c statement_timeout={settings.db_statement_timeout_ms} -c timezone=UTC"
    return {"options": options, "application_name": "robosystems"}


def make_async_engine(settings: Settings) -> AsyncEngine:
    return create_async_engine(
        sync_url(resolve_database_url(settings)),
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_max_overflow,
        pool_timeout=settings.db_pool_timeout_seconds,
        pool_recycle=1800,
        connect_args=_connect_args(settings),
    )


def libpq_url(url: str) -> str:
    """The URL without SQLAlchemy's ``+driver`` part, for psycopg/libpq themselves."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


_PSYCOPG_DIALECT = make_url("postgresql+psycopg://").get_dialect()()


def compile_for_psycopg(statement: ClauseElement) -> bytes:
    """Compile a SQLAlchemy statement once, at import, into the SQL psycopg runs (``%(name)s``
    placeholders), for :class:`StatementPool`."""
    return str(statement.compile(dialect=_PSYCOPG_DIALECT)).encode()


class StatementPool:
    """Autocommit psycopg connections (``psycopg_pool``) for the hottest single-statement work: the
    principal lookup on every authenticated request, the org reads and the webhook inbox insert
    (one statement is one atomic transaction: committed, and durable, when it returns).

    Why not the SQLAlchemy engine: measured in-process, one statement through the async engine
    (checkout, greenlet bridge, execution context, result objects) costs ~0.43 ms of CPU against
    ~0.14 ms through a psycopg pool; on a one-process API that CPU is the request rate.  The
    statements are still written with SQLAlchemy and compiled once (:func:`compile_for_psycopg`).
    Nothing here is part of a request's unit of work: a statement run here must be complete on its own
    (a read, or one self-contained write such as the inbox's ``INSERT … RETURNING``).  A connection that can't be
    had within ``DB_POOL_TIMEOUT_SECONDS`` (server down) surfaces as 503 database_unavailable.
    """

    def __init__(self, settings: Settings) -> None:
        size = settings.db_statement_pool_size
        self._pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
            libpq_url(resolve_database_url(settings)),
            min_size=min(2, size),
            max_size=size,
            timeout=settings.db_pool_timeout_seconds,
            kwargs={"autocommit": True, **_connect_args(settings)},
            open=False,
            name="robosystems-statements",
        )
        #: statements run so far (tests count round trips with it)
        self.statements = 0

    async def open(self) -> None:
        await self._pool.open(wait=False)  # a server that is down now must not stop the API starting

    async def close(self) -> None:
        await self._pool.close()

    async def fetch_one(self, query: bytes, params: Mapping[str, Any]) -> tuple[Any, ...] | None:
        self.statements += 1
        async with self._pool.connection() as conn:
            cursor = await conn.execute(query, params)
            row: tuple[Any, ...] | None = await cursor.fetchone()
            return row

    async def fetch_value(self, query: bytes, params: Mapping[str, Any]) -> Any:
        row = await self.fetch_one(query, params)
        return None if row is None else row[0]


def make_sync_engine(settings: Settings, **kwargs: Any) -> Engine:
    kwargs.setdefault("pool_size", 5)
    kwargs.setdefault("max_overflow", 5)
    return create_engine(
        sync_url(resolve_database_url(settings)), connect_args=_connect_args(settings), pool_recycle=1800, **kwargs
    )


def make_async_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False, autoflush=True)


# --- after-commit hooks --------------------------------------------------------------------


def after_commit(session: AsyncSession | Session, fn: Callable[[], Any]) -> None:
    """Run ``fn`` once the session's transaction commits (dropped on rollback)."""
    sync_session = session.sync_session if isinstance(session, AsyncSession) else session
    sync_session.info.setdefault(AFTER_COMMIT_KEY, []).append(fn)


def _run_after_commit(sync_session: Session) -> None:
    callbacks = sync_session.info.pop(AFTER_COMMIT_KEY, [])
    for fn in callbacks:
        try:
            fn()
        except Exception:  # a hook failing must not turn a committed request into an error
            log.exception("after-commit hook failed")


def _drop_after_commit(sync_session: Session) -> None:
    sync_session.info.pop(AFTER_COMMIT_KEY, None)


event.listen(Session, "after_commit", _run_after_commit)
event.listen(Session, "after_soft_rollback", lambda s, _tx: _drop_after_commit(s))


# --- units of work -------------------------------------------------------------------------


async def get_session(request: Request) -> AsyncIterator[AsyncSession]:
    """FastAPI dependency: one transaction per request, committed before the response is sent."""
    maker: async_sessionmaker[AsyncSession] = request.app.state.sessionmaker
    async with maker() as session:
        try:
            yield session
        except BaseException:
            await session.rollback()
            raise
        else:
            await session.commit()


@contextmanager
def sync_unit_of_work(maker: sessionmaker[Session]) -> Iterator[Session]:
    """One transaction for a task or CLI command: commit on success, roll back on error."""
    with maker() as session:
        try:
            yield session
        except BaseException:
            session.rollback()
            raise
        else:
            session.commit()
