"""Webhook inbox and task outbox.

* ``webhook_events``: provider events keyed by the provider's event id (Stripe ``evt_…``), so a
  redelivery (also a concurrent one) is an ``INSERT … ON CONFLICT DO NOTHING`` that changes nothing.
  Status vocabulary by CHECK: received, processing, processed, failed, ignored.
* ``task_outbox``: broker work written in the enqueuing transaction and relayed after commit
  (pending -> sent; failed only for in-process runs whose retries are exhausted).

Downgrade drops both tables; refused while either holds rows unless ``-x allow_data_loss=true``
(the inbox is the record of what the provider told us).

Revision ID: f7a8b9c0d1e2
Revises: e6f7a8b9c0d1
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from alembic import context, op

revision: str = "f7a8b9c0d1e2"
down_revision: str | None = "e6f7a8b9c0d1"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "webhook_events",
        sa.Column("id", sa.String(255), nullable=False),
        sa.Column("provider", sa.String(20), server_default="stripe", nullable=False),
        sa.Column("type", sa.String(120), nullable=False),
        sa.Column("created", sa.DateTime(timezone=True), nullable=False),
        sa.Column("object_id", sa.String(255), nullable=True),
        sa.Column("subject_id", sa.String(255), nullable=True),
        sa.Column("livemode", sa.Boolean(), nullable=True),
        sa.Column("api_version", sa.String(40), nullable=True),
        sa.Column("payload", postgresql.JSONB(), nullable=False),
        sa.Column("status", sa.String(16), server_default="received", nullable=False),
        sa.Column("attempts", sa.Integer(), server_default="0", nullable=False),
        sa.Column("last_error", sa.String(500), nullable=True),
        sa.Column("note", sa.String(200), nullable=True),
        sa.Column("received_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.Column("processed_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_webhook_events"),
        sa.CheckConstraint(
            "status IN ('received', 'processing', 'processed', 'failed', 'ignored')", name="ck_webhook_events_status"
        ),
        sa.CheckConstraint("attempts >= 0", name="ck_webhook_events_attempts_non_negative"),
    )
    op.create_index("ix_webhook_events_status_received_at", "webhook_events", ["status", "received_at"])
    op.create_index("ix_webhook_events_type_received_at", "webhook_events", ["type", "received_at"])
    op.create_index("ix_webhook_events_subject_id_created", "webhook_events", ["subject_id", "created"])
    op.create_index("ix_webhook_events_object_id", "webhook_events", ["object_id"])

    op.create_table(
        "task_outbox",
        sa.Column("id", sa.String(), nullable=False),
        sa.Column("task_name", sa.String(200), nullable=False),
        sa.Column("args", postgresql.JSONB(), server_default=sa.text("'[]'::jsonb"), nullable=False),
        sa.Column("status", sa.String(16), server_default="pending", nullable=False),
        sa.Column("attempts", sa.Integer(), server_default="0", nullable=False),
        sa.Column("last_error", sa.String(500), nullable=True),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.Column("sent_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_task_outbox"),
        sa.CheckConstraint("status IN ('pending', 'sent', 'failed')", name="ck_task_outbox_status"),
    )
    op.create_index(
        "ix_task_outbox_pending_next_attempt_at",
        "task_outbox",
        ["next_attempt_at"],
        postgresql_where=sa.text("status = 'pending'"),
    )
    op.create_index("ix_task_outbox_status_created_at", "task_outbox", ["status", "created_at"])


def downgrade() -> None:
    x_args = context.get_x_argument(as_dictionary=True)
    allow_data_loss = str(x_args.get("allow_data_loss", "")).lower() in ("1", "true", "yes")
    bind = op.get_bind()
    if not allow_data_loss:
        for table in ("webhook_events", "task_outbox"):
            rows = bind.execute(sa.text(f"SELECT count(*) FROM {table}")).scalar_one()  # noqa: S608 - fixed names
            if rows:
                raise RuntimeError(
                    f"{table} holds {rows} rows that the previous revision cannot keep; "
                    "re-run with -x allow_data_loss=true to drop them"
                )
    op.drop_table("task_outbox")
    op.drop_table("webhook_events")
