"""Alembic environment: runs migrations with the sync engine of robosystems.db.

The URL is taken from ``config.attributes["connection"]`` (when the CLI/tests pass a live
connection), else from ``sqlalchemy.url`` set by the caller, else from Settings.
"""

from __future__ import annotations

from sqlalchemy import Connection

from alembic import context
from robosystems.db import sync_url
from robosystems.models import Base

config = context.config
target_metadata = Base.metadata


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        compare_type=True,
        transaction_per_migration=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    existing = config.attributes.get("connection")
    if existing is not None:
        _run(existing)
        return
    from sqlalchemy import create_engine, pool

    url = config.get_main_option("sqlalchemy.url") or sync_url()
    engine = create_engine(url, poolclass=pool.NullPool)
    with engine.connect() as connection:
        _run(connection)
    engine.dispose()


if context.is_offline_mode():
    context.configure(url=config.get_main_option("sqlalchemy.url") or sync_url(), literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()
else:
    run_migrations_online()
