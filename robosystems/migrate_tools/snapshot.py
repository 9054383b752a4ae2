"""The pre-upgrade snapshot: what the legacy data looked like before any revision moved it.

Recorded by revision ``a1b2c3d4e5f6`` (right after the legacy baseline, before the identity revision) into

* ``migration_snapshots``: per legacy table (see :mod:`.checksums`) the row count and the checksum of its business
  columns, the revision whose schema was read and when;
* ``migration_snapshot_credits``: per credit pool its balance, the sum and the number of its ledger rows;
* ``migration_snapshot_memberships``: every ``user_graphs`` row (id, user, graph, role, selected).

``robosystems migrate verify`` compares the upgraded database with it.  If the upgrade stopped at a blocker and an
operator then changed legacy data to clear it, ``robosystems migrate snapshot`` records it again (from the schema as
it stands at the current revision), so verify compares against the data the upgrade actually started from.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

import sqlalchemy as sa

from robosystems.migrate_tools import checksums

TABLE = "migration_snapshots"
CREDITS_TABLE = "migration_snapshot_credits"
MEMBERSHIPS_TABLE = "migration_snapshot_memberships"


@dataclass(frozen=True)
class Snapshot:
    revision: str
    taken_at: datetime
    tables: dict[str, tuple[int, str]]
    details: dict[str, Any]
    pools: int
    memberships: int


def exists(conn: sa.Connection) -> bool:
    return conn.execute(sa.text(f"SELECT to_regclass('public.{TABLE}') IS NOT NULL")).scalar_one() is True


def record(conn: sa.Connection, revision: str) -> Snapshot:
    """(Re)record the snapshot from the data as it stands, reading the schema of ``revision``."""
    order = checksums.revision_order()
    conn.execute(sa.text(f"DELETE FROM {TABLE}"))
    conn.execute(sa.text(f"DELETE FROM {CREDITS_TABLE}"))
    conn.execute(sa.text(f"DELETE FROM {MEMBERSHIPS_TABLE}"))
    details: dict[str, Any] = {"graph_limits": {"default_limit": checksums.default_graph_limit()}}
    for spec in checksums.specs():
        variant = spec.variant(revision)
        count, checksum = conn.execute(sa.text(checksums.checksum_sql(variant))).one()
        conn.execute(
            sa.text(
                f"INSERT INTO {TABLE} (name, row_count, checksum, description, revision, details, taken_at) "
                "VALUES (:name, :count, :checksum, :description, :revision, CAST(:details AS jsonb), now())"
            ),
            {
                "name": spec.name,
                "count": int(count),
                "checksum": checksum,
                "description": spec.description,
                "revision": revision,
                "details": _json(details.get(spec.name, {})),
            },
        )
    ledger_filter = ""
    if order[revision] >= order[checksums.ORG_BILLING]:
        ledger_filter = f"WHERE idempotency_key IS NULL OR NOT {checksums.MIGRATION_LEDGER_KEYS}"
    conn.execute(
        sa.text(
            f"INSERT INTO {CREDITS_TABLE} (graph_credits_id, graph_id, current_balance, ledger_sum, ledger_rows) "
            "SELECT gc.id, gc.graph_id, gc.current_balance, COALESCE(t.total, 0), COALESCE(t.n, 0) "
            "FROM graph_credits gc LEFT JOIN (SELECT graph_credits_id, sum(amount) AS total, count(*) AS n "
            f"FROM graph_credit_transactions {ledger_filter} GROUP BY graph_credits_id) t "
            "ON t.graph_credits_id = gc.id"
        )
    )
    memberships = "graph_users" if order[revision] >= order[checksums.GRAPH_OWNERSHIP] else "user_graphs"
    conn.execute(
        sa.text(
            f"INSERT INTO {MEMBERSHIPS_TABLE} (id, user_id, graph_id, role, is_selected) "
            f"SELECT id, user_id, graph_id, role, is_selected FROM {memberships}"
        )
    )
    loaded = load(conn)
    assert loaded is not None
    return loaded


def load(conn: sa.Connection) -> Snapshot | None:
    if not exists(conn):
        return None
    rows = conn.execute(
        sa.text(f"SELECT name, row_count, checksum, revision, details, taken_at FROM {TABLE} ORDER BY name")
    ).all()
    if not rows:
        return None
    pools = conn.execute(sa.text(f"SELECT count(*) FROM {CREDITS_TABLE}")).scalar_one()
    memberships = conn.execute(sa.text(f"SELECT count(*) FROM {MEMBERSHIPS_TABLE}")).scalar_one()
    return Snapshot(
        revision=str(rows[0].revision),
        taken_at=rows[0].taken_at,
        tables={r.name: (int(r.row_count), _checksum_text(r.checksum)) for r in rows},
        details={r.name: r.details for r in rows if r.details},
        pools=int(pools),
        memberships=int(memberships),
    )


def discard(conn: sa.Connection) -> None:
    """Empty the snapshot tables (after a clean verify; the tables stay, owned by revision a1b2c3d4e5f6)."""
    for table in (TABLE, CREDITS_TABLE, MEMBERSHIPS_TABLE):
        conn.execute(sa.text(f"DELETE FROM {table}"))


def _checksum_text(value: Any) -> str:
    return str(Decimal(value)) if value is not None else "0"


def _json(value: Any) -> str:
    import json

    return json.dumps(value)


def record_url(url: str) -> Snapshot:
    """Re-record the snapshot (CLI ``migrate snapshot``): allowed from ``a1b2c3d4e5f6`` up to, not including, head."""
    from sqlalchemy.pool import NullPool

    from robosystems.db import sync_url

    engine = sa.create_engine(sync_url(url), poolclass=NullPool)
    try:
        with engine.begin() as conn:
            if not exists(conn):
                raise RuntimeError(
                    "no snapshot tables: the database is before revision a1b2c3d4e5f6; `migrate upgrade` records "
                    "the snapshot itself"
                )
            revision = str(conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar_one())
            if revision == checksums.head():
                raise RuntimeError(
                    "the database is at head: the upgrade has finished, a snapshot now would compare the upgraded "
                    "data with itself. Use `migrate verify`"
                )
            return record(conn, revision)
    finally:
        engine.dispose()
