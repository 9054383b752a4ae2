"""Identity moves to the org model: lower-case emails, personal orgs, org limits, sessions.

* Stops before changing anything when two users' emails differ only by case (names them).
* Every user (active or not) gets a personal org, an ``owner`` membership and ``org_limits``
  (``max_graphs`` from ``user_limits.max_user_graphs``, else ``ORG_GRAPHS_DEFAULT_LIMIT``/100);
  ``user_limits`` is dropped.  Original mixed-case emails are kept in ``legacy_email_case`` so a
  downgrade restores them.
* Timestamps of users, user_api_keys and user_tokens become ``timestamptz`` (values read as UTC).
* API keys gain ``hash_algo``: legacy rows are ``bcrypt`` (still accepted, converted to SHA-256
  on first use), new keys ``sha256``.
* New tables: auth_sessions, security_audit_events (append-only by trigger), mail_outbox.
* Re-running after an interruption is safe: the revision is one transaction (an interruption rolls it
  back entirely), and every insert is ``ON CONFLICT DO NOTHING`` keyed by a natural unique key (one
  personal org per user, one membership per (org, user)).
* Bounded lock waits and statement times (``MIGRATION_LOCK_TIMEOUT``/``MIGRATION_STATEMENT_TIMEOUT``); the
  per-user inserts run in batches of ``MIGRATION_BATCH_SIZE`` users with progress logs
  (robosystems.migrate_tools.runtime).

Revision ID: b3c1f0e2a9d4
Revises: a1b2c3d4e5f6 (the pre-upgrade snapshot; the legacy baseline 7a89a1bfab0c before it)
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from alembic import context, op
from robosystems.migrate_tools import runtime, snapshot

revision: str = "b3c1f0e2a9d4"
down_revision: str | None = "a1b2c3d4e5f6"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TZ_COLUMNS = {
    "users": ("created_at", "updated_at"),
    "user_api_keys": ("created_at", "updated_at", "last_used_at", "expires_at"),
    "user_tokens": ("expires_at", "used_at", "created_at"),
}

ULID_FUNCTION = """
CREATE OR REPLACE FUNCTION rs_ulid() RETURNS text LANGUAGE plpgsql VOLATILE AS $$
DECLARE
  alphabet CONSTANT text := '0123456789ABCDEFGHJKMNPQRSTVWXYZ';
  ts bigint := floor(extract(epoch FROM clock_timestamp()) * 1000);
  result text := '';
  i int;
BEGIN
  FOR i IN REVERSE 9..0 LOOP
    result := result || substr(alphabet, ((ts >> (i * 5)) & 31)::int + 1, 1);
  END LOOP;
  FOR i IN 1..16 LOOP
    result := result || substr(alphabet, floor(random() * 32)::int + 1, 1);
  END LOOP;
  RETURN result;
END $$;
"""

APPEND_ONLY_FUNCTION = """
CREATE OR REPLACE FUNCTION rs_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  RAISE EXCEPTION 'table % is append-only', TG_TABLE_NAME USING ERRCODE = 'insufficient_privilege';
END $$;
"""


def _default_graph_limit() -> int:
    """``ORG_GRAPHS_DEFAULT_LIMIT`` from the environment (as Settings reads it), else 100.

    An unusable value stops the upgrade: silently falling back to 100 would hand every user without a legacy
    ``user_limits`` row the code default instead of the configured one (e.g. production's 5).
    """
    raw = os.environ.get("ORG_GRAPHS_DEFAULT_LIMIT")
    if raw is None:
        return 100
    try:
        value = int(raw.strip())
    except ValueError:
        value = -2
    if value < -1:
        raise RuntimeError(
            f"ORG_GRAPHS_DEFAULT_LIMIT={raw!r} is not a whole number >= -1; "
            "fix it before upgrading (nothing was changed)"
        )
    return value


def _stop_on_case_duplicates(conn: sa.Connection) -> None:
    rows = conn.execute(
        sa.text(
            "SELECT lower(btrim(email)) AS e, "
            "string_agg(id || ' <' || email || '>', ', ' ORDER BY id) AS who "
            "FROM users GROUP BY lower(btrim(email)) HAVING count(*) > 1 ORDER BY 1"
        )
    ).all()
    if rows:
        listing = "; ".join(f"{r.e}: {r.who}" for r in rows)
        raise RuntimeError(
            f"{len(rows)} email address(es) are shared by users that differ only by case; merge or rename them "
            f"before upgrading (nothing was changed): {listing}"
        )


def upgrade() -> None:
    conn = op.get_bind()
    default_limit = _default_graph_limit()  # checked before anything changes
    progress = runtime.begin(conn, revision)  # lock/statement timeouts for this transaction (also validated here)
    _stop_on_case_duplicates(conn)
    snapshot.refresh_before(conn, revision)  # identity tables edited since the snapshot (e.g. to fix a blocker)
    op.execute(ULID_FUNCTION)
    op.execute(APPEND_ONLY_FUNCTION)

    # --- emails: keep originals, then lower-case ---------------------------------------------
    op.create_table(
        "legacy_email_case",
        sa.Column("user_id", sa.String(), primary_key=True),
        sa.Column("original_email", sa.String(), nullable=False),
    )
    op.execute(
        "INSERT INTO legacy_email_case (user_id, original_email) "
        "SELECT id, email FROM users WHERE email <> lower(btrim(email)) ON CONFLICT DO NOTHING"
    )
    op.execute("UPDATE users SET email = lower(btrim(email)) WHERE email <> lower(btrim(email))")
    op.create_check_constraint(op.f("ck_users_email_lowercase"), "users", "email = lower(email)")

    # --- timezone-aware timestamps and server defaults ----------------------------------------
    for table, columns in TZ_COLUMNS.items():
        for column in columns:
            op.alter_column(
                table,
                column,
                type_=sa.DateTime(timezone=True),
                postgresql_using=f"{column} AT TIME ZONE 'UTC'",
            )
    for table in ("users", "user_api_keys"):
        op.alter_column(table, "created_at", server_default=sa.func.now())
        op.alter_column(table, "updated_at", server_default=sa.func.now())
    op.alter_column("user_tokens", "created_at", server_default=sa.func.now())
    op.alter_column("users", "is_active", server_default=sa.true())
    op.alter_column("users", "email_verified", server_default=sa.false())

    # --- API keys ----------------------------------------------------------------------------
    op.add_column("user_api_keys", sa.Column("hash_algo", sa.String(16), nullable=False, server_default="bcrypt"))
    op.alter_column("user_api_keys", "hash_algo", server_default="sha256")
    op.add_column("user_api_keys", sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True))
    op.alter_column("user_api_keys", "is_active", server_default=sa.true())
    op.create_check_constraint(op.f("ck_user_api_keys_hash_algo"), "user_api_keys", "hash_algo IN ('sha256', 'bcrypt')")

    # --- orgs ----------------------------------------------------------------------------------
    op.create_table(
        "orgs",
        sa.Column("id", sa.String(), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("org_type", sa.String(20), nullable=False),
        sa.Column("personal_user_id", sa.String(), nullable=True),
        sa.Column("deleted_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_orgs"),
        sa.ForeignKeyConstraint(
            ["personal_user_id"], ["users.id"], name="fk_orgs_personal_user_id_users", ondelete="CASCADE"
        ),
        sa.UniqueConstraint("personal_user_id", name="uq_orgs_personal_user_id"),
        sa.CheckConstraint("org_type IN ('personal', 'team', 'enterprise')", name=op.f("ck_orgs_org_type")),
        sa.CheckConstraint(
            "(org_type = 'personal') = (personal_user_id IS NOT NULL)", name=op.f("ck_orgs_personal_owner")
        ),
    )
    op.create_table(
        "org_users",
        sa.Column("id", sa.String(), nullable=False),
        sa.Column("org_id", sa.String(), nullable=False),
        sa.Column("user_id", sa.String(), nullable=False),
        sa.Column("role", sa.String(20), nullable=False),
        sa.Column("is_active", sa.Boolean(), server_default=sa.true(), nullable=False),
        sa.Column("joined_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_org_users"),
        sa.ForeignKeyConstraint(["org_id"], ["orgs.id"], name="fk_org_users_org_id_orgs", ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name="fk_org_users_user_id_users", ondelete="CASCADE"),
        sa.UniqueConstraint("org_id", "user_id", name="uq_org_users_org_id_user_id"),
        sa.CheckConstraint("role IN ('owner', 'admin', 'member')", name=op.f("ck_org_users_role")),
    )
    op.create_index("ix_org_users_user_id", "org_users", ["user_id"])
    op.create_table(
        "org_limits",
        sa.Column("id", sa.String(), nullable=False),
        sa.Column("org_id", sa.String(), nullable=False),
        sa.Column("max_graphs", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_org_limits"),
        sa.ForeignKeyConstraint(["org_id"], ["orgs.id"], name="fk_org_limits_org_id_orgs", ondelete="CASCADE"),
        sa.UniqueConstraint("org_id", name="uq_org_limits_org_id"),
        sa.CheckConstraint("max_graphs >= -1", name=op.f("ck_org_limits_max_graphs")),
    )

    # --- personal orgs for every user (inactive ones too) -------------------------------------
    # In batches of users (key ranges over users.id), each insert idempotent by its natural key.
    ranges = runtime.key_ranges(conn, "users", "id")
    progress.batched(
        "personal orgs",
        "INSERT INTO orgs (id, name, org_type, personal_user_id, created_at, updated_at) "
        "SELECT 'org_' || rs_ulid(), left(u.name, 190) || '''s org', 'personal', u.id, u.created_at, now() "
        "FROM users u WHERE {range} ON CONFLICT (personal_user_id) DO NOTHING",
        ranges,
        key="u.id",
    )
    progress.batched(
        "owner memberships",
        "INSERT INTO org_users (id, org_id, user_id, role, is_active, joined_at, created_at, updated_at) "
        "SELECT 'ou_' || rs_ulid(), o.id, o.personal_user_id, 'owner', true, o.created_at, o.created_at, now() "
        "FROM orgs o WHERE o.org_type = 'personal' AND {range} ON CONFLICT (org_id, user_id) DO NOTHING",
        ranges,
        key="o.personal_user_id",
    )
    progress.batched(
        "org limits",
        "INSERT INTO org_limits (id, org_id, max_graphs, created_at, updated_at) "
        "SELECT 'olim_' || rs_ulid(), o.id, COALESCE(ul.max_user_graphs, :default_limit), "
        "COALESCE(ul.created_at AT TIME ZONE 'UTC', now()), COALESCE(ul.updated_at AT TIME ZONE 'UTC', now()) "
        "FROM orgs o LEFT JOIN user_limits ul ON ul.user_id = o.personal_user_id "
        "WHERE o.org_type = 'personal' AND {range} ON CONFLICT (org_id) DO NOTHING",
        ranges,
        key="o.personal_user_id",
        params={"default_limit": default_limit},
    )
    op.drop_table("user_limits")

    # --- sessions, security audit, mail outbox ------------------------------------------------
    op.create_table(
        "auth_sessions",
        sa.Column("id", sa.String(), nullable=False),
        sa.Column("user_id", sa.String(), nullable=False),
        sa.Column("org_id", sa.String(), nullable=True),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revoke_reason", sa.String(40), nullable=True),
        sa.Column("replaced_by", sa.String(), nullable=True),
        sa.Column("ip_address", sa.String(64), nullable=True),
        sa.Column("user_agent", sa.String(512), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_auth_sessions"),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name="fk_auth_sessions_user_id_users", ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["org_id"], ["orgs.id"], name="fk_auth_sessions_org_id_orgs", ondelete="SET NULL"),
    )
    op.create_index("ix_auth_sessions_user_id_revoked_at", "auth_sessions", ["user_id", "revoked_at"])

    op.create_table(
        "security_audit_events",
        sa.Column("id", sa.String(), nullable=False),
        sa.Column("event_type", sa.String(64), nullable=False),
        sa.Column("user_id", sa.String(), nullable=True),
        sa.Column("email", sa.String(320), nullable=True),
        sa.Column("ip_address", sa.String(64), nullable=True),
        sa.Column("user_agent", sa.String(512), nullable=True),
        sa.Column("request_id", sa.String(128), nullable=True),
        sa.Column("details", postgresql.JSONB(), server_default=sa.text("'{}'::jsonb"), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_security_audit_events"),
    )
    op.create_index("ix_security_audit_events_user_id_created_at", "security_audit_events", ["user_id", "created_at"])
    op.create_index(
        "ix_security_audit_events_event_type_created_at", "security_audit_events", ["event_type", "created_at"]
    )
    op.execute(
        "CREATE TRIGGER trg_security_audit_events_append_only BEFORE UPDATE OR DELETE ON security_audit_events "
        "FOR EACH ROW EXECUTE FUNCTION rs_refuse_change()"
    )

    op.create_table(
        "mail_outbox",
        sa.Column("id", sa.String(), nullable=False),
        sa.Column("to_email", sa.String(320), nullable=False),
        sa.Column("subject", sa.String(300), nullable=False),
        sa.Column("body_text", sa.Text(), nullable=False),
        sa.Column("kind", sa.String(40), nullable=False),
        sa.Column("status", sa.String(16), server_default="pending", nullable=False),
        sa.Column("attempts", sa.Integer(), server_default="0", nullable=False),
        sa.Column("last_error", sa.String(500), nullable=True),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.Column("sent_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_mail_outbox"),
        sa.CheckConstraint("status IN ('pending', 'sent', 'failed')", name=op.f("ck_mail_outbox_status")),
    )
    op.create_index("ix_mail_outbox_status_next_attempt_at", "mail_outbox", ["status", "next_attempt_at"])


def _allow_data_loss() -> bool:
    return str(context.get_x_argument(as_dictionary=True).get("allow_data_loss", "")).lower() in ("1", "true", "yes")


def _refuse_lossy_downgrade(conn: sa.Connection) -> None:
    checks = {
        "team/enterprise organizations": "SELECT count(*) FROM orgs WHERE org_type <> 'personal'",
        "memberships outside the member's personal org": (
            "SELECT count(*) FROM org_users ou JOIN orgs o ON o.id = ou.org_id "
            "WHERE o.personal_user_id IS DISTINCT FROM ou.user_id"
        ),
        "security audit events": "SELECT count(*) FROM security_audit_events",
        "queued mails": "SELECT count(*) FROM mail_outbox WHERE status = 'pending'",
        "API keys stored as SHA-256 (the legacy code cannot verify them)": (
            "SELECT count(*) FROM user_api_keys WHERE hash_algo = 'sha256'"
        ),
        "passwords hashed with Argon2id (the legacy code verifies bcrypt only)": (
            "SELECT count(*) FROM users WHERE starts_with(password_hash, '$argon2')"
        ),
    }
    lost = {what: conn.execute(sa.text(sql)).scalar_one() for what, sql in checks.items()}
    lost = {what: n for what, n in lost.items() if n}
    if lost and not _allow_data_loss():
        listing = ", ".join(f"{n} {what}" for what, n in lost.items())
        raise RuntimeError(
            f"refusing to downgrade below b3c1f0e2a9d4: it would lose {listing}. Back up first, then rerun with "
            "`-x allow_data_loss=true` to accept the loss."
        )


def downgrade() -> None:
    conn = op.get_bind()
    _refuse_lossy_downgrade(conn)
    op.drop_table("mail_outbox")
    op.execute("DROP TRIGGER IF EXISTS trg_security_audit_events_append_only ON security_audit_events")
    op.drop_table("security_audit_events")
    op.drop_table("auth_sessions")

    op.create_table(
        "user_limits",
        sa.Column("id", sa.String(), nullable=False),
        sa.Column("user_id", sa.String(), nullable=False),
        sa.Column("max_user_graphs", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="user_limits_pkey"),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name="user_limits_user_id_fkey"),
        sa.UniqueConstraint("user_id", name="user_limits_user_id_key"),
    )
    op.execute(
        "INSERT INTO user_limits (id, user_id, max_user_graphs, created_at, updated_at) "
        "SELECT 'ul_' || rs_ulid(), o.personal_user_id, l.max_graphs, "
        "l.created_at AT TIME ZONE 'UTC', l.updated_at AT TIME ZONE 'UTC' "
        "FROM org_limits l JOIN orgs o ON o.id = l.org_id WHERE o.org_type = 'personal'"
    )
    op.drop_table("org_limits")
    op.drop_index("ix_org_users_user_id", table_name="org_users")
    op.drop_table("org_users")
    op.drop_table("orgs")

    op.drop_constraint(op.f("ck_user_api_keys_hash_algo"), "user_api_keys", type_="check")
    op.drop_column("user_api_keys", "revoked_at")
    op.drop_column("user_api_keys", "hash_algo")
    op.alter_column("user_api_keys", "is_active", server_default=None)
    op.alter_column("users", "is_active", server_default=None)
    op.alter_column("users", "email_verified", server_default=None)
    op.alter_column("user_tokens", "created_at", server_default=None)
    for table in ("users", "user_api_keys"):
        op.alter_column(table, "created_at", server_default=None)
        op.alter_column(table, "updated_at", server_default=None)
    for table, columns in TZ_COLUMNS.items():
        for column in columns:
            op.alter_column(
                table, column, type_=sa.DateTime(timezone=False), postgresql_using=f"{column} AT TIME ZONE 'UTC'"
            )

    op.drop_constraint(op.f("ck_users_email_lowercase"), "users", type_="check")
    # Only where the address is still the one that was lower-cased: an email changed since the upgrade stays.
    op.execute(
        "UPDATE users u SET email = l.original_email FROM legacy_email_case l "
        "WHERE l.user_id = u.id AND u.email = lower(btrim(l.original_email))"
    )
    op.drop_table("legacy_email_case")
    op.execute("DROP FUNCTION IF EXISTS rs_refuse_change()")
    op.execute("DROP FUNCTION IF EXISTS rs_ulid()")
