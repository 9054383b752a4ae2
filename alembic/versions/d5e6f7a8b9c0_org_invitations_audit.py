"""Org invitations and the append-only org audit log.

* ``org_invitations``: one row per invitation (token stored as SHA-256 only), bound to a
  lower-cased email, with expiry and single use; at most one ``pending`` row per (org, email).
* ``org_audit_log``: membership and org lifecycle events; no foreign keys (it outlives purged
  orgs and deleted users); UPDATE and DELETE refused by the ``rs_refuse_change()`` trigger
  created in b3c1f0e2a9d4.

Downgrade drops both tables (pending invitations and the org audit trail are lost: refused
unless ``-x allow_data_loss=true`` when either holds rows).

Revision ID: d5e6f7a8b9c0
Revises: c4d5e6f7a8b9
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from alembic import context, op

revision: str = "d5e6f7a8b9c0"
down_revision: str | None = "c4d5e6f7a8b9"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "org_invitations",
        sa.Column("id", sa.String(), nullable=False),
        sa.Column("org_id", sa.String(), nullable=False),
        sa.Column("email", sa.String(320), nullable=False),
        sa.Column("role", sa.String(20), nullable=False),
        sa.Column("status", sa.String(16), server_default="pending", nullable=False),
        sa.Column("token_hash", sa.String(64), nullable=False),
        sa.Column("invited_by", sa.String(), nullable=True),
        sa.Column("accepted_by", sa.String(), nullable=True),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("accepted_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_sent_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.Column("send_count", sa.Integer(), server_default="1", nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_org_invitations"),
        sa.ForeignKeyConstraint(["org_id"], ["orgs.id"], name="fk_org_invitations_org_id_orgs", ondelete="CASCADE"),
        sa.ForeignKeyConstraint(
            ["invited_by"], ["users.id"], name="fk_org_invitations_invited_by_users", ondelete="SET NULL"
        ),
        sa.ForeignKeyConstraint(
            ["accepted_by"], ["users.id"], name="fk_org_invitations_accepted_by_users", ondelete="SET NULL"
        ),
        sa.UniqueConstraint("token_hash", name="uq_org_invitations_token_hash"),
        sa.CheckConstraint("role IN ('owner', 'admin', 'member')", name="ck_org_invitations_role"),
        sa.CheckConstraint(
            "status IN ('pending', 'accepted', 'revoked', 'expired')", name="ck_org_invitations_status"
        ),
        sa.CheckConstraint("email = lower(email)", name="ck_org_invitations_email_lowercase"),
        sa.CheckConstraint(
            "(status = 'accepted') = (accepted_at IS NOT NULL)", name="ck_org_invitations_accepted_at"
        ),
    )
    op.create_index(
        "uq_org_invitations_org_id_email_pending",
        "org_invitations",
        ["org_id", "email"],
        unique=True,
        postgresql_where=sa.text("status = 'pending'"),
    )
    op.create_index("ix_org_invitations_email_status", "org_invitations", ["email", "status"])
    op.create_index("ix_org_invitations_status_expires_at", "org_invitations", ["status", "expires_at"])
    op.create_index("ix_org_invitations_org_id_created_at", "org_invitations", ["org_id", "created_at"])

    op.create_table(
        "org_audit_log",
        sa.Column("id", sa.String(), nullable=False),
        sa.Column("org_id", sa.String(), nullable=False),
        sa.Column("actor_user_id", sa.String(), nullable=True),
        sa.Column("target_user_id", sa.String(), nullable=True),
        sa.Column("event_type", sa.String(64), nullable=False),
        sa.Column("details", postgresql.JSONB(), server_default=sa.text("'{}'::jsonb"), nullable=False),
        sa.Column("request_id", sa.String(128), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_org_audit_log"),
        sa.CheckConstraint("event_type ~ '^[a-z]+(\\.[a-z_]+)+$'", name="ck_org_audit_log_event_type_format"),
    )
    op.create_index("ix_org_audit_log_org_id_created_at", "org_audit_log", ["org_id", "created_at"])
    op.create_index(
        "ix_org_audit_log_org_id_event_type_created_at", "org_audit_log", ["org_id", "event_type", "created_at"]
    )
    op.execute(
        "CREATE TRIGGER trg_org_audit_log_append_only BEFORE UPDATE OR DELETE ON org_audit_log "
        "FOR EACH ROW EXECUTE FUNCTION rs_refuse_change()"
    )


def _allow_data_loss() -> bool:
    return str(context.get_x_argument(as_dictionary=True).get("allow_data_loss", "")).lower() in ("1", "true", "yes")


def downgrade() -> None:
    conn = op.get_bind()
    lost = {
        "invitations": conn.execute(sa.text("SELECT count(*) FROM org_invitations")).scalar_one(),
        "org audit events": conn.execute(sa.text("SELECT count(*) FROM org_audit_log")).scalar_one(),
    }
    lost = {what: n for what, n in lost.items() if n}
    if lost and not _allow_data_loss():
        listing = ", ".join(f"{n} {what}" for what, n in lost.items())
        raise RuntimeError(
            f"refusing to downgrade below d5e6f7a8b9c0: it would lose {listing}. Back up first, then rerun with "
            "`-x allow_data_loss=true` to accept the loss."
        )
    op.execute("DROP TRIGGER IF EXISTS trg_org_audit_log_append_only ON org_audit_log")
    op.drop_table("org_audit_log")
    op.drop_table("org_invitations")
