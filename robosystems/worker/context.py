"""The process-wide unit-of-work factory for background tasks.

Tasks take ids and open their own transaction through :func:`get_context` ``.maker`` (a sync
SQLAlchemy sessionmaker on the configured database).  ``serve`` and the tests configure it with
their own :class:`Settings`; a Celery worker builds it lazily from the environment.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from robosystems.config import Settings, get_settings
from robosystems.db import make_sync_engine

_lock = threading.Lock()
_context: WorkerContext | None = None


@dataclass(frozen=True)
class WorkerContext:
    settings: Settings
    engine: Engine
    maker: sessionmaker[Session]


def configure(settings: Settings, engine: Engine | None = None) -> WorkerContext:
    """Make ``settings`` (and ``engine``, or a new sync engine on its database) the process context."""
    global _context
    with _lock:
        engine = engine or make_sync_engine(
            settings, pool_size=settings.embedded_worker_concurrency + 2, max_overflow=4
        )
        _context = WorkerContext(settings, engine, sessionmaker(engine, expire_on_commit=False))
        return _context


def get_context() -> WorkerContext:
    ctx = _context
    if ctx is None:
        return configure(get_settings())
    return ctx


def reset(expected: WorkerContext | None = None) -> None:
    """Forget the context (only if it still is ``expected`` when given); the engine is disposed by its creator."""
    global _context
    with _lock:
        if expected is None or _context is expected:
            _context = None
