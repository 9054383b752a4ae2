"""The pre-upgrade snapshot: what the legacy data looked like before any revision moved it.

Recorded by revision ``a1b2c3d4e5f6`` (right after the legacy baseline, before the identity revision) into

* ``migration_snapshots``: per legacy table (see :mod:`.checksums`) the row count and the checksum of its business
  columns, the revision whose schema was read and when;
* ``migration_snapshot_credits``: per credit pool its balance, the sum and the number of its ledger rows;
* ``migration_snapshot_memberships``: every ``user_graphs`` row (id, user, graph, role, selected).

``robosystems migrate verify`` compares the upgraded database with it.

An upgrade that stopped at a blocker is usually resumed after an operator changed legacy data to clear it.  So each
data-moving revision first calls :func:`refresh_before`: the entries of the tables that revision is the first to
reshape are computed again and, when they differ from the record (the data changed between the two runs), replaced
-- the previous values are kept in ``details.refreshed`` and verify reports them as a warning.  Tables that an
earlier revision already reshaped are never refreshed, so damage done by a revision is not hidden.
``robosystems migrate snapshot`` records everything again by hand.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

import sqlalchemy as sa

from robosystems.migrate_tools import checksums

log = logging.getLogger("robosystems.migrate")

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
    conn.execute(sa.text(f"DELETE FROM {TABLE}"))
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
    _record_pools(conn, revision)
    _record_memberships(conn, revision)
    loaded = load(conn)
    assert loaded is not None
    return loaded


def _record_pools(conn: sa.Connection, revision: str) -> None:
    order = checksums.revision_order()
    conn.execute(sa.text(f"DELETE FROM {CREDITS_TABLE}"))
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


def _record_memberships(conn: sa.Connection, revision: str) -> None:
    order = checksums.revision_order()
    conn.execute(sa.text(f"DELETE FROM {MEMBERSHIPS_TABLE}"))
    memberships = "graph_users" if order[revision] >= order[checksums.GRAPH_OWNERSHIP] else "user_graphs"
    conn.execute(
        sa.text(
            f"INSERT INTO {MEMBERSHIPS_TABLE} (id, user_id, graph_id, role, is_selected) "
            f"SELECT id, user_id, graph_id, role, is_selected FROM {memberships}"
        )
    )


def refresh_before(conn: sa.Connection, revision: str) -> list[str]:
    """Called first thing by ``revision``: re-check the entries of the tables it is the first to reshape (their data
    is still as the previous revision left it); replace those that changed since they were recorded.  Returns the
    names replaced."""
    if not exists(conn):
        return []
    names = [name for name, first in checksums.TOUCHED_BY.items() if first == revision]
    recorded = {
        r.name: r
        for r in conn.execute(
            sa.text(f"SELECT name, row_count, checksum FROM {TABLE} WHERE name = ANY(:names)"), {"names": names}
        )
    }
    if not recorded:
        return []
    previous = checksums.chain()[checksums.revision_order()[revision] - 1]
    current = checksums.compute(conn, previous, list(recorded))
    changed = [n for n in recorded if (int(recorded[n].row_count), _checksum_text(recorded[n].checksum)) != current[n]]
    for name in changed:
        count, checksum = current[name]
        conn.execute(
            sa.text(
                f"UPDATE {TABLE} SET row_count = :count, checksum = :checksum, details = details || "
                "jsonb_build_object('refreshed', jsonb_build_object('before_revision', CAST(:revision AS text), "
                "'previous_row_count', CAST(:old_count AS bigint), 'previous_checksum', CAST(:old_checksum AS text), "
                "'at', now())) WHERE name = :name"
            ),
            {
                "count": count,
                "checksum": checksum,
                "revision": revision,
                "old_count": int(recorded[name].row_count),
                "old_checksum": _checksum_text(recorded[name].checksum),
                "name": name,
            },
        )
        log.warning(
            "snapshot: %s changed since it was recorded (%d -> %d rows; data edited between upgrade runs?): "
            "re-recorded before %s, verify will report it",
            name,
            recorded[name].row_count,
            count,
            revision,
        )
    if "graph_memberships" in changed:
        _record_memberships(conn, previous)
    if {"graph_credits", "graph_credit_transactions"} & set(changed):
        _record_pools(conn, previous)
    return changed


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
