"""Snapshot of the legacy data before the org revisions move it (read by ``robosystems migrate verify``).

Runs right after the legacy baseline and changes no legacy row.  It creates

* ``migration_snapshots`` (name PK, row_count, checksum, description, revision, details, taken_at): per legacy table
  the row count and an order-independent md5 checksum of its business columns (robosystems.migrate_tools.checksums);
* ``migration_snapshot_credits`` (graph_credits_id PK, graph_id, current_balance, ledger_sum, ledger_rows): every
  credit pool's balance and ledger total;
* ``migration_snapshot_memberships`` (id PK, user_id, graph_id, role, is_selected): every ``user_graphs`` row,

and fills them from the data as it stands.  On an empty (fresh) database it records zero counts.

After a clean ``migrate verify`` the rows may be discarded (``robosystems migrate verify --discard-snapshot``).
Downgrade drops the three tables: they only hold derived data that the next upgrade records again, so nothing is
lost.

Revision ID: a1b2c3d4e5f6
Revises: 7a89a1bfab0c
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op
from robosystems.migrate_tools import runtime, snapshot

revision: str = "a1b2c3d4e5f6"
down_revision: str | None = "7a89a1bfab0c"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    conn = op.get_bind()
    progress = runtime.begin(conn, revision)
    op.execute(
        f"""
        CREATE TABLE {snapshot.TABLE} (
            name varchar(64) NOT NULL,
            row_count bigint NOT NULL,
            checksum numeric NOT NULL,
            description varchar(200) NOT NULL,
            revision varchar(32) NOT NULL,
            details jsonb NOT NULL DEFAULT '{{}}'::jsonb,
            taken_at timestamptz NOT NULL DEFAULT now(),
            CONSTRAINT pk_migration_snapshots PRIMARY KEY (name)
        )
        """
    )
    op.execute(
        f"""
        CREATE TABLE {snapshot.CREDITS_TABLE} (
            graph_credits_id varchar NOT NULL,
            graph_id varchar NOT NULL,
            current_balance numeric NOT NULL,
            ledger_sum numeric NOT NULL,
            ledger_rows integer NOT NULL,
            CONSTRAINT pk_migration_snapshot_credits PRIMARY KEY (graph_credits_id)
        )
        """
    )
    op.execute(
        f"""
        CREATE TABLE {snapshot.MEMBERSHIPS_TABLE} (
            id varchar NOT NULL,
            user_id varchar NOT NULL,
            graph_id varchar NOT NULL,
            role varchar NOT NULL,
            is_selected boolean NOT NULL,
            CONSTRAINT pk_migration_snapshot_memberships PRIMARY KEY (id)
        )
        """
    )
    taken = snapshot.record(conn, revision)
    progress.info(
        "snapshot recorded: %s; %d credit pool(s), %d membership(s)",
        ", ".join(f"{name}={count}" for name, (count, _) in sorted(taken.tables.items())),
        taken.pools,
        taken.memberships,
    )


def downgrade() -> None:
    op.execute(f"DROP TABLE {snapshot.MEMBERSHIPS_TABLE}")
    op.execute(f"DROP TABLE {snapshot.CREDITS_TABLE}")
    op.execute(f"DROP TABLE {snapshot.TABLE}")
