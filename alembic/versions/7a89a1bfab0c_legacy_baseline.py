"""Legacy (user-centric) RoboSystems baseline.

Revision ID: 7a89a1bfab0c
Revises:
Create Date: 2025-11-26

This revision recreates, in one step, the schema that a production RoboSystems database has at the head of the
legacy upstream chain (RoboFinSystems/robosystems @ bfbe956, whose head revision is also ``7a89a1bfab0c``), for the
tables listed in ``legacy-schema.md`` §1. Because the revision id is the same, a real legacy database (whose
``alembic_version`` is already ``7a89a1bfab0c``) continues directly with the next revision of this chain, and a fresh
database reaches the same starting point by running this file.

Fidelity rules (see legacy-schema.md §0):

* Every constraint and index name is written out and wrapped in ``op.f()`` so that the MetaData naming convention of
  the application (which Alembic applies to ``op.create_table``) can never rename it. Unnamed legacy constraints carry
  the PostgreSQL default names (``<table>_pkey``, ``<table>_<col>_fkey``, ``<table>_<col>_key``).
* No foreign key has an ``ON DELETE`` action except ``fk_user_repository_graph_id`` (RESTRICT).
* Server defaults exist only on ``graphs.is_subgraph``, ``graphs.is_repository`` and
  ``billing_subscriptions.subscription_metadata``; every other default lived in the legacy ORM.
* ``timestamp without time zone`` everywhere except graph_credits, graph_credit_transactions and user_repository.
* The PostgreSQL enum ``subscriptionstatus`` is created although no table uses it: upstream dropped
  ``graph_subscriptions`` but left its type behind.

This module is self-contained on purpose: it must not import from ``robosystems``.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from alembic import op

revision: str = "7a89a1bfab0c"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


# PostgreSQL enum types present at the legacy head: name -> labels (the stored values are the Python member NAMES).
ENUM_TYPES: dict[str, tuple[str, ...]] = {
    "subscriptionstatus": ("ACTIVE", "PAST_DUE", "CANCELED", "UNPAID"),  # orphaned: used by no table
    "repositorytype": ("SEC", "INDUSTRY", "ECONOMIC"),
    "repositoryaccesslevel": ("NONE", "READ", "WRITE", "ADMIN"),
    "repositoryplan": ("STARTER", "ADVANCED", "UNLIMITED"),
}

# Drop order for downgrade(): children before parents.
TABLES_IN_DROP_ORDER: tuple[str, ...] = (
    "billing_audit_logs",
    "billing_invoice_line_items",
    "billing_subscriptions",
    "billing_invoices",
    "billing_customers",
    "graph_credit_transactions",
    "graph_credits",
    "graph_usage_tracking",
    "user_repository",
    "user_limits",
    "user_graphs",
    "user_tokens",
    "user_api_keys",
    "graphs",
    "users",
)


# --------------------------------------------------------------------------------------------------------------------
# Small helpers that always give constraints an explicit, convention-proof name.
# --------------------------------------------------------------------------------------------------------------------


def _pk(table: str, *columns: str) -> sa.PrimaryKeyConstraint:
    """Primary key with PostgreSQL's default name ``<table>_pkey``."""
    return sa.PrimaryKeyConstraint(*columns, name=op.f(f"{table}_pkey"))


def _fk(
    table: str,
    column: str,
    target: str,
    *,
    name: str | None = None,
    ondelete: str | None = None,
) -> sa.ForeignKeyConstraint:
    """Single-column foreign key, named ``<table>_<column>_fkey`` (PostgreSQL's default) unless ``name`` is given."""
    return sa.ForeignKeyConstraint(
        [column],
        [target],
        name=op.f(name or f"{table}_{column}_fkey"),
        ondelete=ondelete,
    )


def _uq_key(table: str, column: str) -> sa.UniqueConstraint:
    """Single-column unique constraint with PostgreSQL's default name ``<table>_<column>_key``."""
    return sa.UniqueConstraint(column, name=op.f(f"{table}_{column}_key"))


def _index(name: str, table: str, columns: list[str], *, unique: bool = False, using: str | None = None) -> None:
    if using is None:
        op.create_index(op.f(name), table, columns, unique=unique)
    else:
        op.create_index(op.f(name), table, columns, unique=unique, postgresql_using=using)


def _ts(*, tz: bool = False) -> sa.DateTime:
    """``timestamp without time zone`` by default, ``timestamp with time zone`` when ``tz``."""
    return sa.DateTime(timezone=tz)


def _enum(name: str) -> postgresql.ENUM:
    """Reference to an enum type created explicitly in upgrade(); never created or dropped implicitly."""
    return postgresql.ENUM(*ENUM_TYPES[name], name=name, create_type=False)


# --------------------------------------------------------------------------------------------------------------------
# upgrade
# --------------------------------------------------------------------------------------------------------------------


def _create_enum_types() -> None:
    for name, labels in ENUM_TYPES.items():
        quoted = ", ".join(f"'{label}'" for label in labels)
        op.execute(f"CREATE TYPE {name} AS ENUM ({quoted})")


def _create_users() -> None:
    op.create_table(
        "users",
        sa.Column("id", sa.String(), nullable=False),
        sa.Column("email", sa.String(), nullable=False),
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("password_hash", sa.String(), nullable=False),
        sa.Column("is_active", sa.Boolean(), nullable=False),
        sa.Column("email_verified", sa.Boolean(), nullable=False),
        sa.Column("created_at", _ts(), nullable=False),
        sa.Column("updated_at", _ts(), nullable=False),
        _pk("users", "id"),
    )
    # Case-sensitive unique btree on the raw address (the legacy DB allows case-duplicates).
    _index("ix_users_email", "users", ["email"], unique=True)


def _create_graphs() -> None:
    op.create_table(
        "graphs",
        sa.Column("graph_id", sa.String(), nullable=False),
        sa.Column("graph_name", sa.String(), nullable=False),
        sa.Column("graph_type", sa.String(), nullable=False),
        sa.Column("base_schema", sa.String(), nullable=True),
        sa.Column("schema_extensions", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("graph_instance_id", sa.String(), nullable=False),
        sa.Column("graph_cluster_region", sa.String(), nullable=True),
        sa.Column("graph_tier", sa.String(), nullable=False),
        sa.Column("created_at", _ts(), nullable=False),
        sa.Column("updated_at", _ts(), nullable=False),
        sa.Column("graph_metadata", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        # subgraph columns (2bcbf00568eb)
        sa.Column("parent_graph_id", sa.String(), nullable=True),  # no FK
        sa.Column("subgraph_index", sa.Integer(), nullable=True),
        sa.Column("subgraph_name", sa.String(), nullable=True),
        sa.Column("is_subgraph", sa.Boolean(), server_default=sa.text("false"), nullable=False),
        sa.Column("subgraph_metadata", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        # repository columns (db62e86988de)
        sa.Column("is_repository", sa.Boolean(), server_default=sa.text("false"), nullable=False),
        sa.Column("repository_type", sa.String(), nullable=True),
        sa.Column("data_source_type", sa.String(), nullable=True),
        sa.Column("data_source_url", sa.String(), nullable=True),
        sa.Column("last_sync_at", _ts(), nullable=True),
        sa.Column("sync_status", sa.String(), nullable=True),
        sa.Column("sync_frequency", sa.String(), nullable=True),
        sa.Column("sync_error_message", sa.String(), nullable=True),
        _pk("graphs", "graph_id"),
        sa.CheckConstraint(
            "graph_type IN ('generic', 'entity', 'repository')",
            name=op.f("check_graph_type"),
        ),
        sa.CheckConstraint(
            "(is_subgraph = false AND parent_graph_id IS NULL AND subgraph_index IS NULL AND subgraph_name IS NULL)"
            " OR "
            "(is_subgraph = true AND parent_graph_id IS NOT NULL AND subgraph_index IS NOT NULL"
            " AND subgraph_name IS NOT NULL)",
            name=op.f("check_subgraph_consistency"),
        ),
        sa.UniqueConstraint("parent_graph_id", "subgraph_index", name=op.f("unique_subgraph_index")),
    )
    _index("idx_graphs_instance", "graphs", ["graph_instance_id"])
    _index("ix_graphs_graph_instance_id", "graphs", ["graph_instance_id"])  # legacy duplicate of the above
    _index("idx_graphs_schema_extensions", "graphs", ["schema_extensions"], using="gin")
    _index("idx_graphs_tier", "graphs", ["graph_tier"])
    _index("idx_graphs_type", "graphs", ["graph_type"])
    _index("idx_graphs_is_subgraph", "graphs", ["is_subgraph"])
    _index("idx_graphs_parent", "graphs", ["parent_graph_id"])
    _index("ix_graphs_parent_graph_id", "graphs", ["parent_graph_id"])  # legacy duplicate of the above
    _index("idx_graphs_is_repository", "graphs", ["is_repository"])
    _index("idx_graphs_repository_type", "graphs", ["repository_type"])


def _create_user_api_keys() -> None:
    op.create_table(
        "user_api_keys",
        sa.Column("id", sa.String(), nullable=False),
        sa.Column("user_id", sa.String(), nullable=False),
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("key_hash", sa.String(), nullable=False),
        sa.Column("prefix", sa.String(), nullable=False),
        sa.Column("is_active", sa.Boolean(), nullable=False),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("last_used_at", _ts(), nullable=True),
        sa.Column("created_at", _ts(), nullable=False),
        sa.Column("updated_at", _ts(), nullable=False),
        sa.Column("expires_at", _ts(), nullable=True),  # c52984bde339
        _pk("user_api_keys", "id"),
        _fk("user_api_keys", "user_id", "users.id"),
    )
    _index("idx_user_api_keys_hash_active", "user_api_keys", ["key_hash", "is_active"])
    _index("idx_user_api_keys_last_used", "user_api_keys", ["last_used_at"])
    _index("idx_user_api_keys_prefix_active", "user_api_keys", ["prefix", "is_active"])
    _index("ix_user_api_keys_key_hash", "user_api_keys", ["key_hash"], unique=True)
    _index("ix_user_api_keys_prefix", "user_api_keys", ["prefix"])
    _index("ix_user_api_keys_user_id", "user_api_keys", ["user_id"])


def _create_user_tokens() -> None:
    op.create_table(
        "user_tokens",
        sa.Column("id", sa.String(), nullable=False),
        sa.Column("user_id", sa.String(), nullable=False),  # no FK in the legacy schema
        sa.Column("token_hash", sa.String(), nullable=False),
        sa.Column("token_type", sa.String(length=50), nullable=False),
        sa.Column("expires_at", _ts(), nullable=False),
        sa.Column("used_at", _ts(), nullable=True),
        sa.Column("created_at", _ts(), nullable=False),
        sa.Column("ip_address", sa.String(length=45), nullable=True),
        sa.Column("user_agent", sa.Text(), nullable=True),
        _pk("user_tokens", "id"),
    )
    _index("idx_expired_unused", "user_tokens", ["expires_at", "used_at"])
    _index("idx_expires", "user_tokens", ["expires_at"])
    _index("idx_user_tokens", "user_tokens", ["user_id", "token_type"])
    _index("ix_user_tokens_token_hash", "user_tokens", ["token_hash"], unique=True)
    _index("ix_user_tokens_user_id", "user_tokens", ["user_id"])


def _create_user_graphs() -> None:
    op.create_table(
        "user_graphs",
        sa.Column("id", sa.String(), nullable=False),
        sa.Column("user_id", sa.String(), nullable=False),
        sa.Column("graph_id", sa.String(), nullable=False),
        sa.Column("role", sa.String(), nullable=False),
        sa.Column("is_selected", sa.Boolean(), nullable=False),
        sa.Column("created_at", _ts(), nullable=False),
        sa.Column("updated_at", _ts(), nullable=False),
        _pk("user_graphs", "id"),
        _fk("user_graphs", "graph_id", "graphs.graph_id"),
        _fk("user_graphs", "user_id", "users.id"),
        sa.UniqueConstraint("user_id", "graph_id", name=op.f("_user_graph_uc")),
    )
    _index("idx_user_graphs_user_graph_id", "user_graphs", ["user_id", "graph_id"])
    _index("idx_user_graphs_user_selected", "user_graphs", ["user_id", "is_selected"])
    _index("ix_user_graphs_graph_id", "user_graphs", ["graph_id"])
    _index("ix_user_graphs_user_id", "user_graphs", ["user_id"])


def _create_user_limits() -> None:
    op.create_table(
        "user_limits",
        sa.Column("id", sa.String(), nullable=False),
        sa.Column("user_id", sa.String(), nullable=False),
        sa.Column("max_user_graphs", sa.Integer(), nullable=False),
        sa.Column("created_at", _ts(), nullable=False),
        sa.Column("updated_at", _ts(), nullable=False),
        _pk("user_limits", "id"),
        _fk("user_limits", "user_id", "users.id"),
        _uq_key("user_limits", "user_id"),
    )


def _create_user_repository() -> None:
    # Context-only table (legacy-schema.md §1): the described columns exactly, plus the remaining legacy columns as
    # nullable extras.
    op.create_table(
        "user_repository",
        sa.Column("id", sa.String(), nullable=False),
        sa.Column("user_id", sa.String(), nullable=False),
        sa.Column("repository_type", _enum("repositorytype"), nullable=False),
        sa.Column("repository_name", sa.String(), nullable=False),
        sa.Column("access_level", _enum("repositoryaccesslevel"), nullable=False),
        sa.Column("repository_plan", _enum("repositoryplan"), nullable=False),
        sa.Column("is_active", sa.Boolean(), nullable=True),
        sa.Column("activated_at", _ts(tz=True), nullable=True),
        sa.Column("expires_at", _ts(tz=True), nullable=True),
        sa.Column("monthly_price_cents", sa.Integer(), nullable=True),
        sa.Column("billing_cycle_day", sa.Integer(), nullable=True),
        sa.Column("last_billed_at", _ts(tz=True), nullable=True),
        sa.Column("next_billing_at", _ts(tz=True), nullable=True),
        sa.Column("monthly_credit_allocation", sa.Integer(), nullable=True),
        sa.Column("granted_by", sa.String(), nullable=True),
        sa.Column("granted_at", _ts(tz=True), nullable=True),
        sa.Column("access_scope", sa.String(), nullable=True),
        sa.Column("quota_limits", sa.String(), nullable=True),
        sa.Column("extra_metadata", sa.Text(), nullable=True),
        sa.Column("created_at", _ts(tz=True), nullable=False),
        sa.Column("updated_at", _ts(tz=True), nullable=False),
        _pk("user_repository", "id"),
        _fk("user_repository", "granted_by", "users.id"),
        _fk("user_repository", "user_id", "users.id"),
        _fk(
            "user_repository",
            "repository_name",
            "graphs.graph_id",
            name="fk_user_repository_graph_id",
            ondelete="RESTRICT",
        ),
        sa.UniqueConstraint(
            "user_id",
            "repository_type",
            "repository_name",
            name=op.f("uq_user_repo_access"),
        ),
    )
    _index("idx_user_shared_repo_billing", "user_repository", ["next_billing_at", "is_active"])
    _index("idx_user_shared_repo_expires", "user_repository", ["expires_at", "is_active"])
    _index("idx_user_shared_repo_plan", "user_repository", ["repository_plan", "is_active"])
    _index("idx_user_shared_repo_type_level", "user_repository", ["repository_type", "access_level", "is_active"])
    _index("idx_user_shared_repo_user_active", "user_repository", ["user_id", "is_active"])


def _create_graph_usage_tracking() -> None:
    op.create_table(
        "graph_usage_tracking",
        sa.Column("id", sa.String(), nullable=False),
        sa.Column("user_id", sa.String(), nullable=False),  # no FK
        sa.Column("graph_id", sa.String(), nullable=False),  # no FK
        sa.Column("event_type", sa.String(), nullable=False),
        sa.Column("operation_type", sa.String(), nullable=True),
        sa.Column("graph_tier", sa.String(), nullable=False),
        sa.Column("instance_id", sa.String(), nullable=True),
        sa.Column("region", sa.String(), nullable=True),
        sa.Column("storage_bytes", sa.Float(), nullable=True),
        sa.Column("storage_gb", sa.Float(), nullable=True),
        sa.Column("storage_delta_gb", sa.Float(), nullable=True),
        sa.Column("credits_consumed", sa.Numeric(precision=10, scale=2), nullable=True),
        sa.Column("base_credit_cost", sa.Numeric(precision=10, scale=2), nullable=True),
        sa.Column("duration_ms", sa.Integer(), nullable=True),
        sa.Column("memory_mb", sa.Float(), nullable=True),
        sa.Column("cpu_percent", sa.Float(), nullable=True),
        sa.Column("request_size_kb", sa.Float(), nullable=True),
        sa.Column("response_size_kb", sa.Float(), nullable=True),
        sa.Column("status_code", sa.Integer(), nullable=True),
        sa.Column("cached_operation", sa.Boolean(), nullable=True),
        sa.Column("storage_overage_gb", sa.Float(), nullable=True),
        sa.Column("estimated_cost_cents", sa.Integer(), nullable=True),
        sa.Column("error_type", sa.String(), nullable=True),
        sa.Column("error_message", sa.Text(), nullable=True),
        sa.Column("metadata", sa.Text(), nullable=True),
        sa.Column("user_agent", sa.String(), nullable=True),
        sa.Column("ip_address", sa.String(), nullable=True),
        sa.Column("recorded_at", _ts(), nullable=False),
        sa.Column("billing_year", sa.Integer(), nullable=False),
        sa.Column("billing_month", sa.Integer(), nullable=False),
        sa.Column("billing_day", sa.Integer(), nullable=False),
        sa.Column("billing_hour", sa.Integer(), nullable=False),
        # storage breakdown (7a35e59fc400)
        sa.Column("files_storage_gb", sa.Float(), nullable=True),
        sa.Column("tables_storage_gb", sa.Float(), nullable=True),
        sa.Column("graphs_storage_gb", sa.Float(), nullable=True),
        sa.Column("subgraphs_storage_gb", sa.Float(), nullable=True),
        _pk("graph_usage_tracking", "id"),
    )
    table = "graph_usage_tracking"
    _index("idx_billing_period", table, ["billing_year", "billing_month", "user_id"])
    _index("idx_credits_consumed", table, ["credits_consumed"])
    _index("idx_event_type_time", table, ["event_type", "recorded_at"])
    _index("idx_graph_tier_time", table, ["graph_tier", "recorded_at"])
    _index("idx_performance_analysis", table, ["operation_type", "duration_ms", "recorded_at"])
    _index("idx_storage_billing", table, ["user_id", "graph_id", "billing_year", "billing_month"])
    _index("idx_user_graph_time", table, ["user_id", "graph_id", "recorded_at"])
    for column in (
        "billing_day",
        "billing_month",
        "billing_year",
        "event_type",
        "graph_id",
        "graph_tier",
        "recorded_at",
        "user_id",
    ):
        _index(f"ix_{table}_{column}", table, [column])


def _create_graph_credits() -> None:
    op.create_table(
        "graph_credits",
        sa.Column("id", sa.String(), nullable=False),
        sa.Column("graph_id", sa.String(), nullable=False),
        sa.Column("user_id", sa.String(), nullable=False),
        sa.Column("current_balance", sa.Numeric(precision=10, scale=2), nullable=False),
        sa.Column("monthly_allocation", sa.Numeric(precision=10, scale=2), nullable=False),
        sa.Column("storage_limit_gb", sa.Numeric(precision=10, scale=2), nullable=False),
        sa.Column("storage_override_gb", sa.Numeric(precision=10, scale=2), nullable=True),
        sa.Column("auto_expand_enabled", sa.Boolean(), nullable=False),
        sa.Column("last_storage_warning_at", _ts(tz=True), nullable=True),
        sa.Column("storage_warning_threshold", sa.Numeric(precision=3, scale=2), nullable=False),
        sa.Column("billing_admin_id", sa.String(), nullable=False),
        sa.Column("last_allocation_date", _ts(tz=True), nullable=True),
        sa.Column("created_at", _ts(tz=True), nullable=False),
        sa.Column("updated_at", _ts(tz=True), nullable=False),
        _pk("graph_credits", "id"),
        _fk("graph_credits", "billing_admin_id", "users.id"),
        _fk("graph_credits", "graph_id", "graphs.graph_id"),
        _fk("graph_credits", "user_id", "users.id"),
        _uq_key("graph_credits", "graph_id"),
    )
    _index("idx_graph_credits_billing_admin", "graph_credits", ["billing_admin_id"])
    _index("idx_graph_credits_graph_id", "graph_credits", ["graph_id"])
    _index("idx_graph_credits_storage_monitoring", "graph_credits", ["storage_limit_gb"])
    _index("idx_graph_credits_user_id", "graph_credits", ["user_id"])


def _create_graph_credit_transactions() -> None:
    table = "graph_credit_transactions"
    op.create_table(
        table,
        sa.Column("id", sa.String(), nullable=False),
        sa.Column("graph_credits_id", sa.String(), nullable=False),
        sa.Column("graph_id", sa.String(), nullable=False),  # no FK
        sa.Column("transaction_type", sa.String(), nullable=False),
        sa.Column("amount", sa.Numeric(precision=10, scale=2), nullable=False),
        sa.Column("description", sa.String(length=500), nullable=False),
        sa.Column("idempotency_key", sa.String(length=255), nullable=True),
        sa.Column("request_id", sa.String(length=255), nullable=True),
        sa.Column("operation_id", sa.String(length=255), nullable=True),
        sa.Column("user_id", sa.String(), nullable=True),  # no FK
        sa.Column("metadata", sa.Text(), nullable=True),
        sa.Column("created_at", _ts(tz=True), nullable=False),
        _pk(table, "id"),
        _fk(table, "graph_credits_id", "graph_credits.id"),
    )
    _index("idx_credit_transactions_created", table, ["created_at"])
    _index(
        "idx_credit_transactions_dedup",
        table,
        ["graph_credits_id", "transaction_type", "amount", "created_at", "operation_id"],
    )
    _index("idx_credit_transactions_graph_credits", table, ["graph_credits_id"])
    _index("idx_credit_transactions_graph_id", table, ["graph_id"])
    _index("idx_credit_transactions_idempotency", table, ["idempotency_key"], unique=True)
    _index("idx_credit_transactions_operation_id", table, ["operation_id"])
    _index("idx_credit_transactions_type", table, ["transaction_type"])
    _index("idx_credit_transactions_user_id", table, ["user_id"])


def _create_billing_tables() -> None:
    op.create_table(
        "billing_customers",
        sa.Column("user_id", sa.String(), nullable=False),
        sa.Column("stripe_customer_id", sa.String(), nullable=True),
        sa.Column("has_payment_method", sa.Boolean(), nullable=False),
        sa.Column("default_payment_method_id", sa.String(), nullable=True),
        sa.Column("invoice_billing_enabled", sa.Boolean(), nullable=False),
        sa.Column("billing_email", sa.String(), nullable=True),
        sa.Column("billing_contact_name", sa.String(), nullable=True),
        sa.Column("payment_terms", sa.String(), nullable=False),
        sa.Column("created_at", _ts(), nullable=False),
        sa.Column("updated_at", _ts(), nullable=False),
        _pk("billing_customers", "user_id"),
        _fk("billing_customers", "user_id", "users.id"),
        _uq_key("billing_customers", "stripe_customer_id"),
    )

    op.create_table(
        "billing_invoices",
        sa.Column("id", sa.String(), nullable=False),
        sa.Column("billing_customer_user_id", sa.String(), nullable=False),
        sa.Column("invoice_number", sa.String(), nullable=False),
        sa.Column("period_start", _ts(), nullable=False),
        sa.Column("period_end", _ts(), nullable=False),
        sa.Column("subtotal_cents", sa.Integer(), nullable=False),
        sa.Column("tax_cents", sa.Integer(), nullable=False),
        sa.Column("discount_cents", sa.Integer(), nullable=False),
        sa.Column("total_cents", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(), nullable=False),
        sa.Column("stripe_invoice_id", sa.String(), nullable=True),
        sa.Column("sent_at", _ts(), nullable=True),
        sa.Column("due_date", _ts(), nullable=True),
        sa.Column("paid_at", _ts(), nullable=True),
        sa.Column("payment_method", sa.String(), nullable=True),
        sa.Column("payment_reference", sa.String(), nullable=True),
        sa.Column("notes", sa.String(), nullable=True),
        sa.Column("created_at", _ts(), nullable=False),
        sa.Column("updated_at", _ts(), nullable=False),
        _pk("billing_invoices", "id"),
        _fk("billing_invoices", "billing_customer_user_id", "users.id"),
        _uq_key("billing_invoices", "invoice_number"),
        _uq_key("billing_invoices", "stripe_invoice_id"),
    )
    _index("idx_billing_invoice_customer", "billing_invoices", ["billing_customer_user_id"])
    _index("idx_billing_invoice_due_date", "billing_invoices", ["due_date"])
    _index("idx_billing_invoice_period", "billing_invoices", ["period_start", "period_end"])
    _index("idx_billing_invoice_status", "billing_invoices", ["status"])

    op.create_table(
        "billing_subscriptions",
        sa.Column("id", sa.String(), nullable=False),
        sa.Column("billing_customer_user_id", sa.String(), nullable=False),
        sa.Column("resource_type", sa.String(), nullable=False),
        sa.Column("resource_id", sa.String(), nullable=True),  # nullable since 7a89a1bfab0c (pending checkout)
        sa.Column("plan_name", sa.String(), nullable=False),
        sa.Column("billing_interval", sa.String(), nullable=False),
        sa.Column("base_price_cents", sa.Integer(), nullable=False),
        sa.Column("stripe_subscription_id", sa.String(), nullable=True),
        sa.Column("stripe_product_id", sa.String(), nullable=True),
        sa.Column("stripe_price_id", sa.String(), nullable=True),
        sa.Column("status", sa.String(), nullable=False),
        sa.Column("started_at", _ts(), nullable=True),
        sa.Column("current_period_start", _ts(), nullable=True),
        sa.Column("current_period_end", _ts(), nullable=True),
        sa.Column("canceled_at", _ts(), nullable=True),
        sa.Column("ends_at", _ts(), nullable=True),
        sa.Column("created_at", _ts(), nullable=False),
        sa.Column("updated_at", _ts(), nullable=False),
        # payment provider fields (upstream 7a89a1bfab0c)
        sa.Column("payment_provider", sa.String(), nullable=False),  # no server default
        sa.Column("provider_subscription_id", sa.String(), nullable=True),
        sa.Column("provider_customer_id", sa.String(), nullable=True),
        sa.Column(
            "subscription_metadata",
            postgresql.JSONB(astext_type=sa.Text()),
            server_default=sa.text("'{}'::jsonb"),
            nullable=False,
        ),
        _pk("billing_subscriptions", "id"),
        _fk("billing_subscriptions", "billing_customer_user_id", "users.id"),  # -> users, not billing_customers
        _uq_key("billing_subscriptions", "stripe_subscription_id"),
        sa.UniqueConstraint("provider_subscription_id", name=op.f("uq_billing_sub_provider_subscription_id")),
    )
    _index("idx_billing_sub_customer", "billing_subscriptions", ["billing_customer_user_id"])
    _index("idx_billing_sub_resource", "billing_subscriptions", ["resource_type", "resource_id"])
    _index("idx_billing_sub_status", "billing_subscriptions", ["status"])
    _index("idx_billing_sub_stripe", "billing_subscriptions", ["stripe_subscription_id"])
    _index("idx_billing_sub_provider", "billing_subscriptions", ["provider_subscription_id"])

    op.create_table(
        "billing_audit_logs",
        sa.Column("id", sa.String(), nullable=False),
        sa.Column("event_type", sa.String(), nullable=False),
        sa.Column("event_timestamp", _ts(), nullable=False),
        sa.Column("billing_customer_user_id", sa.String(), nullable=True),
        sa.Column("subscription_id", sa.String(), nullable=True),
        sa.Column("invoice_id", sa.String(), nullable=True),
        sa.Column("event_data", sa.JSON(), nullable=True),
        sa.Column("description", sa.String(), nullable=False),
        sa.Column("actor_user_id", sa.String(), nullable=True),
        sa.Column("actor_type", sa.String(), nullable=False),
        sa.Column("actor_ip", sa.String(), nullable=True),
        sa.Column("created_at", _ts(), nullable=False),
        _pk("billing_audit_logs", "id"),
        _fk("billing_audit_logs", "actor_user_id", "users.id"),
        _fk("billing_audit_logs", "billing_customer_user_id", "users.id"),
        _fk("billing_audit_logs", "invoice_id", "billing_invoices.id"),
        _fk("billing_audit_logs", "subscription_id", "billing_subscriptions.id"),
    )
    _index("idx_billing_audit_actor", "billing_audit_logs", ["actor_user_id"])
    _index("idx_billing_audit_customer", "billing_audit_logs", ["billing_customer_user_id"])
    _index("idx_billing_audit_event_type", "billing_audit_logs", ["event_type"])
    _index("idx_billing_audit_invoice", "billing_audit_logs", ["invoice_id"])
    _index("idx_billing_audit_subscription", "billing_audit_logs", ["subscription_id"])
    _index("idx_billing_audit_timestamp", "billing_audit_logs", ["event_timestamp"])

    op.create_table(
        "billing_invoice_line_items",
        sa.Column("id", sa.String(), nullable=False),
        sa.Column("invoice_id", sa.String(), nullable=False),
        sa.Column("subscription_id", sa.String(), nullable=True),
        sa.Column("resource_type", sa.String(), nullable=False),
        sa.Column("resource_id", sa.String(), nullable=False),
        sa.Column("description", sa.String(), nullable=False),
        sa.Column("quantity", sa.Integer(), nullable=False),
        sa.Column("unit_price_cents", sa.Integer(), nullable=False),
        sa.Column("amount_cents", sa.Integer(), nullable=False),
        sa.Column("period_start", _ts(), nullable=False),
        sa.Column("period_end", _ts(), nullable=False),
        sa.Column("line_metadata", sa.JSON(), nullable=True),
        sa.Column("created_at", _ts(), nullable=False),
        _pk("billing_invoice_line_items", "id"),
        _fk("billing_invoice_line_items", "invoice_id", "billing_invoices.id"),
        _fk("billing_invoice_line_items", "subscription_id", "billing_subscriptions.id"),
    )
    _index("idx_billing_line_item_invoice", "billing_invoice_line_items", ["invoice_id"])
    _index("idx_billing_line_item_resource", "billing_invoice_line_items", ["resource_type", "resource_id"])
    _index("idx_billing_line_item_subscription", "billing_invoice_line_items", ["subscription_id"])


def upgrade() -> None:
    _create_enum_types()
    _create_users()
    _create_graphs()
    _create_user_api_keys()
    _create_user_tokens()
    _create_user_graphs()
    _create_user_limits()
    _create_user_repository()
    _create_graph_usage_tracking()
    _create_graph_credits()
    _create_graph_credit_transactions()
    _create_billing_tables()


def downgrade() -> None:
    # Dropping a table drops its indexes and constraints with it.
    for table in TABLES_IN_DROP_ORDER:
        op.drop_table(table)
    for name in reversed(ENUM_TYPES):
        # IF EXISTS: a later revision may legitimately drop the orphaned ``subscriptionstatus`` type.
        op.execute(f"DROP TYPE IF EXISTS {name}")
