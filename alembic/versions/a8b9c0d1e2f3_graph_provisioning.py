"""Graph provisioning saga markers, failure compensation, graph selection.

* ``billing_subscriptions``:

  - ``provisioning_attempt`` (int, default 0) and ``provisioning_claimed_at`` / ``provisioning_claim_token``: the
    claim of the provisioning task, taken under ``SELECT … FOR UPDATE`` (robosystems.graphs.provisioning).  The
    attempt counter is the task's own retry budget (``PROVISIONING_MAX_ATTEMPTS``), kept in the database so a
    redelivered or in-process re-run counts the same way as a Celery retry.
  - ``compensation_status`` (pending | refunded | credited | none | failed, CHECK), ``compensation_ref`` (the
    provider's refund / credit id), ``compensated_at``: what was given back after a failed provisioning; the
    ``pending`` marker is written in the transaction that marks the subscription ``failed``, so the provider call
    happens at most once in effect (it also carries an idempotency key).

* ``graph_selections``: the caller's selected graph (``POST /v1/graphs/{id}/select``).  Org members reach org graphs
  through their membership and have no ``graph_users`` row to hold the legacy ``is_selected`` flag; writing one
  would be an explicit grant that outlives the membership.  Legacy ``graph_users.is_selected`` is still read as a
  fallback for users with no row here.

Downgrade drops the columns and the table (operational markers only; the billing audit log keeps the history).

Revision ID: a8b9c0d1e2f3
Revises: f7a8b9c0d1e2
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import context, op

revision: str = "a8b9c0d1e2f3"
down_revision: str | None = "f7a8b9c0d1e2"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

COMPENSATION_STATUSES = "('pending', 'refunded', 'credited', 'none', 'failed')"


def upgrade() -> None:
    op.add_column(
        "billing_subscriptions",
        sa.Column("provisioning_attempt", sa.Integer(), server_default="0", nullable=False),
    )
    op.add_column("billing_subscriptions", sa.Column("provisioning_claimed_at", sa.DateTime(timezone=True)))
    op.add_column("billing_subscriptions", sa.Column("provisioning_claim_token", sa.String(40)))
    op.add_column("billing_subscriptions", sa.Column("compensation_status", sa.String(16)))
    op.add_column("billing_subscriptions", sa.Column("compensation_ref", sa.String(255)))
    op.add_column("billing_subscriptions", sa.Column("compensated_at", sa.DateTime(timezone=True)))
    op.create_check_constraint(
        "ck_billing_subscriptions_provisioning_attempt", "billing_subscriptions", "provisioning_attempt >= 0"
    )
    op.create_check_constraint(
        "ck_billing_subscriptions_compensation_status",
        "billing_subscriptions",
        f"compensation_status IS NULL OR compensation_status IN {COMPENSATION_STATUSES}",
    )
    op.create_index(
        "ix_billing_subscriptions_compensation_pending",
        "billing_subscriptions",
        ["id"],
        postgresql_where=sa.text("compensation_status = 'pending'"),
    )
    op.create_table(
        "graph_selections",
        sa.Column("user_id", sa.String(), nullable=False),
        sa.Column("graph_id", sa.String(), nullable=False),
        sa.Column("selected_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.PrimaryKeyConstraint("user_id", name="pk_graph_selections"),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name="fk_graph_selections_user_id_users", ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["graph_id"], ["graphs.graph_id"], name="fk_graph_selections_graph_id_graphs", ondelete="CASCADE"
        ),
    )
    op.create_index("ix_graph_selections_graph_id", "graph_selections", ["graph_id"])


def _refuse_lossy_downgrade() -> None:
    """Graph selections and compensation records have no place in the older shape."""
    conn = op.get_bind()
    checks = {
        "graph selections": "SELECT count(*) FROM graph_selections",
        "compensation records (refunds/credits after failed provisioning)": (
            "SELECT count(*) FROM billing_subscriptions WHERE compensation_status IS NOT NULL"
        ),
    }
    lost = {what: conn.execute(sa.text(sql)).scalar_one() for what, sql in checks.items()}
    lost = {what: n for what, n in lost.items() if n}
    allow = str(context.get_x_argument(as_dictionary=True).get("allow_data_loss", "")).lower() in ("1", "true", "yes")
    if lost and not allow:
        listing = ", ".join(f"{n} {what}" for what, n in lost.items())
        raise RuntimeError(
            f"refusing to downgrade below a8b9c0d1e2f3: it would lose {listing}. Back up first, then rerun with "
            "`-x allow_data_loss=true` (CLI: --allow-data-loss) to accept the loss."
        )


def downgrade() -> None:
    _refuse_lossy_downgrade()
    op.drop_index("ix_graph_selections_graph_id", table_name="graph_selections")
    op.drop_table("graph_selections")
    op.drop_index("ix_billing_subscriptions_compensation_pending", table_name="billing_subscriptions")
    op.drop_constraint("ck_billing_subscriptions_compensation_status", "billing_subscriptions", type_="check")
    op.drop_constraint("ck_billing_subscriptions_provisioning_attempt", "billing_subscriptions", type_="check")
    for column in (
        "compensated_at",
        "compensation_ref",
        "compensation_status",
        "provisioning_claim_token",
        "provisioning_claimed_at",
        "provisioning_attempt",
    ):
        op.drop_column("billing_subscriptions", column)
