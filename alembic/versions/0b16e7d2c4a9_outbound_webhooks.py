"""Outbound webhooks: customer endpoints, events, deliveries and attempts (robosystems/outbound).

* ``outbound_endpoints``: an org's URL, subscribed event types (CHECK: a known, non-empty set), signing secret and
  the previous secret while a rotation overlaps, enabled / disabled_reason.
* ``outbound_events``: one row per event of an org, written in the transaction of the change; ``body`` is the exact
  JSON signed and sent; ``dedupe_key`` unique per org (partial index).  Type vocabulary by CHECK.
* ``outbound_deliveries``: unique per (endpoint, event); status pending | delivered | failed (CHECK); due and
  in-flight partial indexes for the worker's claim.
* ``outbound_attempts``: one row per HTTP attempt.

Every table cascades from its org (an org purge removes them).  Downgrade drops the four tables; refused while
any holds rows unless ``-x allow_data_loss=true`` (customers' endpoints and secrets would be lost).

Revision ID: 0b16e7d2c4a9
Revises: a8b9c0d1e2f3
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from alembic import context, op

revision: str = "0b16e7d2c4a9"
down_revision: str | None = "a8b9c0d1e2f3"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SUBSCRIBABLE = (
    "org.updated",
    "org.deleted",
    "member.added",
    "member.removed",
    "member.role_changed",
    "invitation.created",
    "invitation.accepted",
    "subscription.created",
    "subscription.updated",
    "subscription.canceled",
    "invoice.paid",
    "invoice.payment_failed",
    "graph.provisioned",
    "graph.provisioning_failed",
    "graph.read_only",
    "graph.deleted",
    "credits.low",
)
EVENT_TYPES = (*SUBSCRIBABLE, "ping")
TABLES = ("outbound_attempts", "outbound_deliveries", "outbound_events", "outbound_endpoints")


def _quoted(values: Sequence[str]) -> str:
    return ", ".join(f"'{v}'" for v in values)


def upgrade() -> None:
    op.create_table(
        "outbound_endpoints",
        sa.Column("id", sa.String(), nullable=False),
        sa.Column("org_id", sa.String(), nullable=False),
        sa.Column("url", sa.String(2048), nullable=False),
        sa.Column("description", sa.String(500), nullable=True),
        sa.Column("events", postgresql.ARRAY(sa.String(64)), nullable=False),
        sa.Column("secret", sa.String(100), nullable=False),
        sa.Column("previous_secret", sa.String(100), nullable=True),
        sa.Column("previous_secret_expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("enabled", sa.Boolean(), server_default=sa.text("true"), nullable=False),
        sa.Column("disabled_reason", sa.String(200), nullable=True),
        sa.Column("disabled_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_by", sa.String(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_outbound_endpoints"),
        sa.ForeignKeyConstraint(["org_id"], ["orgs.id"], name="fk_outbound_endpoints_org_id_orgs", ondelete="CASCADE"),
        sa.CheckConstraint("cardinality(events) >= 1", name="ck_outbound_endpoints_has_events"),
        sa.CheckConstraint(
            f"events <@ ARRAY[{_quoted(SUBSCRIBABLE)}]::varchar[]", name="ck_outbound_endpoints_known_events"
        ),
    )
    op.create_index("ix_outbound_endpoints_org_id_created_at", "outbound_endpoints", ["org_id", "created_at"])

    op.create_table(
        "outbound_events",
        sa.Column("id", sa.String(), nullable=False),
        sa.Column("org_id", sa.String(), nullable=False),
        sa.Column("type", sa.String(64), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("dedupe_key", sa.String(200), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_outbound_events"),
        sa.ForeignKeyConstraint(["org_id"], ["orgs.id"], name="fk_outbound_events_org_id_orgs", ondelete="CASCADE"),
        sa.CheckConstraint(f"type IN ({_quoted(EVENT_TYPES)})", name="ck_outbound_events_type"),
    )
    op.create_index("ix_outbound_events_org_id_created_at", "outbound_events", ["org_id", "created_at"])
    op.create_index("ix_outbound_events_created_at", "outbound_events", ["created_at"])
    op.create_index(
        "uq_outbound_events_org_id_dedupe_key",
        "outbound_events",
        ["org_id", "dedupe_key"],
        unique=True,
        postgresql_where=sa.text("dedupe_key IS NOT NULL"),
    )

    op.create_table(
        "outbound_deliveries",
        sa.Column("id", sa.String(), nullable=False),
        sa.Column("endpoint_id", sa.String(), nullable=False),
        sa.Column("event_id", sa.String(), nullable=False),
        sa.Column("status", sa.String(16), server_default="pending", nullable=False),
        sa.Column("attempt_count", sa.Integer(), server_default="0", nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=True),
        sa.Column("retrying_since", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.Column("lease_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_status_code", sa.Integer(), nullable=True),
        sa.Column("last_attempt_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("delivered_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_outbound_deliveries"),
        sa.ForeignKeyConstraint(
            ["endpoint_id"],
            ["outbound_endpoints.id"],
            name="fk_outbound_deliveries_endpoint_id_outbound_endpoints",
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["event_id"],
            ["outbound_events.id"],
            name="fk_outbound_deliveries_event_id_outbound_events",
            ondelete="CASCADE",
        ),
        sa.UniqueConstraint("endpoint_id", "event_id", name="uq_outbound_deliveries_endpoint_id_event_id"),
        sa.CheckConstraint("status IN ('pending', 'delivered', 'failed')", name="ck_outbound_deliveries_status"),
        sa.CheckConstraint("attempt_count >= 0", name="ck_outbound_deliveries_attempt_count_non_negative"),
    )
    op.create_index(
        "ix_outbound_deliveries_due",
        "outbound_deliveries",
        ["endpoint_id", "next_attempt_at"],
        postgresql_where=sa.text("status = 'pending'"),
    )
    op.create_index(
        "ix_outbound_deliveries_in_flight",
        "outbound_deliveries",
        ["endpoint_id"],
        postgresql_where=sa.text("status = 'pending' AND lease_until IS NOT NULL"),
    )
    op.create_index(
        "ix_outbound_deliveries_endpoint_id_created_at", "outbound_deliveries", ["endpoint_id", "created_at"]
    )
    op.create_index("ix_outbound_deliveries_event_id", "outbound_deliveries", ["event_id"])

    op.create_table(
        "outbound_attempts",
        sa.Column("id", sa.String(), nullable=False),
        sa.Column("delivery_id", sa.String(), nullable=False),
        sa.Column("attempted_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("status_code", sa.Integer(), nullable=True),
        sa.Column("duration_ms", sa.Integer(), nullable=False),
        sa.Column("response_body", sa.Text(), nullable=True),
        sa.Column("error", sa.String(200), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_outbound_attempts"),
        sa.ForeignKeyConstraint(
            ["delivery_id"],
            ["outbound_deliveries.id"],
            name="fk_outbound_attempts_delivery_id_outbound_deliveries",
            ondelete="CASCADE",
        ),
    )
    op.create_index(
        "ix_outbound_attempts_delivery_id_attempted_at", "outbound_attempts", ["delivery_id", "attempted_at"]
    )


def downgrade() -> None:
    x_args = context.get_x_argument(as_dictionary=True)
    allow_data_loss = str(x_args.get("allow_data_loss", "")).lower() in ("1", "true", "yes")
    bind = op.get_bind()
    if not allow_data_loss:
        for table in TABLES:
            rows = bind.execute(sa.text(f"SELECT count(*) FROM {table}")).scalar_one()  # noqa: S608 - fixed names
            if rows:
                raise RuntimeError(
                    f"{table} holds {rows} rows (customers' webhook endpoints, their secrets and delivery history) "
                    "that the previous revision cannot keep; re-run with -x allow_data_loss=true to drop them"
                )
    for table in TABLES:
        op.drop_table(table)
