"""The legacy baseline revision 7a89a1bfab0c reproduces the legacy schema of legacy-schema.md §0/§1.

Every test gets a fresh, uniquely named database (fixture ``legacy_db_url``) on the server given by
``TEST_ADMIN_DATABASE_URL``, migrates it to ``7a89a1bfab0c`` with Alembic and inspects it through the catalogs.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import bcrypt
import pytest
import sqlalchemy as sa
from alembic.config import Config
from sqlalchemy.engine import make_url

from alembic import command

try:
    from tests.legacy_seed import seed_legacy_sample, sha256_hex
except ModuleNotFoundError:  # tests/ is not a package: pytest puts tests/ itself on sys.path
    from legacy_seed import seed_legacy_sample, sha256_hex

BASELINE = "7a89a1bfab0c"
REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"

LEGACY_TABLES = {
    "users",
    "user_api_keys",
    "user_tokens",
    "graphs",
    "user_graphs",
    "user_limits",
    "graph_usage_tracking",
    "graph_credits",
    "graph_credit_transactions",
    "billing_customers",
    "billing_subscriptions",
    "billing_invoices",
    "billing_invoice_line_items",
    "billing_audit_logs",
    "user_repository",
}

ENUM_TYPES = {
    "subscriptionstatus": ["ACTIVE", "PAST_DUE", "CANCELED", "UNPAID"],
    "repositorytype": ["SEC", "INDUSTRY", "ECONOMIC"],
    "repositoryaccesslevel": ["NONE", "READ", "WRITE", "ADMIN"],
    "repositoryplan": ["STARTER", "ADVANCED", "UNLIMITED"],
}

# (table, constraint name, contype) — p=primary key, f=foreign key, u=unique, c=check
EXPECTED_CONSTRAINTS = [
    ("users", "users_pkey", "p"),
    ("user_api_keys", "user_api_keys_pkey", "p"),
    ("user_api_keys", "user_api_keys_user_id_fkey", "f"),
    ("user_tokens", "user_tokens_pkey", "p"),
    ("graphs", "graphs_pkey", "p"),
    ("graphs", "check_graph_type", "c"),
    ("graphs", "check_subgraph_consistency", "c"),
    ("graphs", "unique_subgraph_index", "u"),
    ("user_graphs", "user_graphs_pkey", "p"),
    ("user_graphs", "user_graphs_user_id_fkey", "f"),
    ("user_graphs", "user_graphs_graph_id_fkey", "f"),
    ("user_graphs", "_user_graph_uc", "u"),
    ("user_limits", "user_limits_pkey", "p"),
    ("user_limits", "user_limits_user_id_fkey", "f"),
    ("user_limits", "user_limits_user_id_key", "u"),
    ("graph_usage_tracking", "graph_usage_tracking_pkey", "p"),
    ("graph_credits", "graph_credits_pkey", "p"),
    ("graph_credits", "graph_credits_graph_id_fkey", "f"),
    ("graph_credits", "graph_credits_user_id_fkey", "f"),
    ("graph_credits", "graph_credits_billing_admin_id_fkey", "f"),
    ("graph_credits", "graph_credits_graph_id_key", "u"),
    ("graph_credit_transactions", "graph_credit_transactions_pkey", "p"),
    ("graph_credit_transactions", "graph_credit_transactions_graph_credits_id_fkey", "f"),
    ("billing_customers", "billing_customers_pkey", "p"),
    ("billing_customers", "billing_customers_user_id_fkey", "f"),
    ("billing_customers", "billing_customers_stripe_customer_id_key", "u"),
    ("billing_subscriptions", "billing_subscriptions_pkey", "p"),
    ("billing_subscriptions", "billing_subscriptions_billing_customer_user_id_fkey", "f"),
    ("billing_subscriptions", "billing_subscriptions_stripe_subscription_id_key", "u"),
    ("billing_subscriptions", "uq_billing_sub_provider_subscription_id", "u"),
    ("billing_invoices", "billing_invoices_pkey", "p"),
    ("billing_invoices", "billing_invoices_billing_customer_user_id_fkey", "f"),
    ("billing_invoices", "billing_invoices_invoice_number_key", "u"),
    ("billing_invoices", "billing_invoices_stripe_invoice_id_key", "u"),
    ("billing_invoice_line_items", "billing_invoice_line_items_pkey", "p"),
    ("billing_invoice_line_items", "billing_invoice_line_items_invoice_id_fkey", "f"),
    ("billing_invoice_line_items", "billing_invoice_line_items_subscription_id_fkey", "f"),
    ("billing_audit_logs", "billing_audit_logs_pkey", "p"),
    ("billing_audit_logs", "billing_audit_logs_billing_customer_user_id_fkey", "f"),
    ("billing_audit_logs", "billing_audit_logs_actor_user_id_fkey", "f"),
    ("billing_audit_logs", "billing_audit_logs_subscription_id_fkey", "f"),
    ("billing_audit_logs", "billing_audit_logs_invoice_id_fkey", "f"),
    ("user_repository", "user_repository_pkey", "p"),
    ("user_repository", "fk_user_repository_graph_id", "f"),
    ("user_repository", "user_repository_user_id_fkey", "f"),
    ("user_repository", "user_repository_granted_by_fkey", "f"),
    ("user_repository", "uq_user_repo_access", "u"),
]

# (table, index name, unique?, access method) for indexes that are not backing a constraint
EXPECTED_INDEXES = [
    ("users", "ix_users_email", True, "btree"),
    ("user_api_keys", "ix_user_api_keys_user_id", False, "btree"),
    ("user_api_keys", "ix_user_api_keys_key_hash", True, "btree"),
    ("user_api_keys", "ix_user_api_keys_prefix", False, "btree"),
    ("user_api_keys", "idx_user_api_keys_hash_active", False, "btree"),
    ("user_api_keys", "idx_user_api_keys_last_used", False, "btree"),
    ("user_api_keys", "idx_user_api_keys_prefix_active", False, "btree"),
    ("user_tokens", "ix_user_tokens_user_id", False, "btree"),
    ("user_tokens", "ix_user_tokens_token_hash", True, "btree"),
    ("user_tokens", "idx_user_tokens", False, "btree"),
    ("user_tokens", "idx_expires", False, "btree"),
    ("user_tokens", "idx_expired_unused", False, "btree"),
    ("graphs", "idx_graphs_schema_extensions", False, "gin"),
    ("graphs", "idx_graphs_instance", False, "btree"),
    ("graphs", "ix_graphs_graph_instance_id", False, "btree"),
    ("graphs", "idx_graphs_tier", False, "btree"),
    ("graphs", "idx_graphs_is_subgraph", False, "btree"),
    ("graphs", "idx_graphs_parent", False, "btree"),
    ("graphs", "ix_graphs_parent_graph_id", False, "btree"),
    ("graphs", "idx_graphs_is_repository", False, "btree"),
    ("graphs", "idx_graphs_repository_type", False, "btree"),
    ("user_graphs", "ix_user_graphs_user_id", False, "btree"),
    ("user_graphs", "ix_user_graphs_graph_id", False, "btree"),
    ("user_graphs", "idx_user_graphs_user_graph_id", False, "btree"),
    ("user_graphs", "idx_user_graphs_user_selected", False, "btree"),
    ("graph_usage_tracking", "idx_billing_period", False, "btree"),
    ("graph_usage_tracking", "idx_credits_consumed", False, "btree"),
    ("graph_usage_tracking", "idx_event_type_time", False, "btree"),
    ("graph_usage_tracking", "idx_graph_tier_time", False, "btree"),
    ("graph_usage_tracking", "idx_performance_analysis", False, "btree"),
    ("graph_usage_tracking", "idx_storage_billing", False, "btree"),
    ("graph_usage_tracking", "idx_user_graph_time", False, "btree"),
    *[
        ("graph_usage_tracking", f"ix_graph_usage_tracking_{col}", False, "btree")
        for col in (
            "billing_day",
            "billing_month",
            "billing_year",
            "event_type",
            "graph_id",
            "graph_tier",
            "recorded_at",
            "user_id",
        )
    ],
    ("graph_credits", "idx_graph_credits_graph_id", False, "btree"),
    ("graph_credits", "idx_graph_credits_user_id", False, "btree"),
    ("graph_credits", "idx_graph_credits_billing_admin", False, "btree"),
    ("graph_credits", "idx_graph_credits_storage_monitoring", False, "btree"),
    ("graph_credit_transactions", "idx_credit_transactions_idempotency", True, "btree"),
    ("graph_credit_transactions", "idx_credit_transactions_dedup", False, "btree"),
    *[
        ("graph_credit_transactions", f"idx_credit_transactions_{suffix}", False, "btree")
        for suffix in ("created", "graph_credits", "graph_id", "operation_id", "type", "user_id")
    ],
    ("billing_subscriptions", "idx_billing_sub_customer", False, "btree"),
    ("billing_subscriptions", "idx_billing_sub_resource", False, "btree"),
    ("billing_subscriptions", "idx_billing_sub_status", False, "btree"),
    ("billing_subscriptions", "idx_billing_sub_stripe", False, "btree"),
    ("billing_subscriptions", "idx_billing_sub_provider", False, "btree"),
    ("billing_invoices", "idx_billing_invoice_customer", False, "btree"),
    ("billing_invoices", "idx_billing_invoice_period", False, "btree"),
    ("billing_invoices", "idx_billing_invoice_status", False, "btree"),
    ("billing_invoices", "idx_billing_invoice_due_date", False, "btree"),
    ("billing_invoice_line_items", "idx_billing_line_item_invoice", False, "btree"),
    ("billing_invoice_line_items", "idx_billing_line_item_subscription", False, "btree"),
    ("billing_invoice_line_items", "idx_billing_line_item_resource", False, "btree"),
    ("billing_audit_logs", "idx_billing_audit_event_type", False, "btree"),
    ("billing_audit_logs", "idx_billing_audit_timestamp", False, "btree"),
    ("billing_audit_logs", "idx_billing_audit_customer", False, "btree"),
    ("billing_audit_logs", "idx_billing_audit_subscription", False, "btree"),
    ("billing_audit_logs", "idx_billing_audit_invoice", False, "btree"),
    ("billing_audit_logs", "idx_billing_audit_actor", False, "btree"),
    # not named in legacy-schema.md, but present in the legacy database (created by upstream c2f378adcdb4)
    ("graphs", "idx_graphs_type", False, "btree"),
    *[
        ("user_repository", f"idx_user_shared_repo_{suffix}", False, "btree")
        for suffix in ("billing", "expires", "plan", "type_level", "user_active")
    ],
]

# (table, column) -> (format_type, is NOT NULL)
EXPECTED_COLUMNS = {
    ("users", "id"): ("character varying", True),
    ("users", "email"): ("character varying", True),
    ("users", "is_active"): ("boolean", True),
    ("users", "created_at"): ("timestamp without time zone", True),
    ("users", "updated_at"): ("timestamp without time zone", True),
    ("user_api_keys", "description"): ("text", False),
    ("user_api_keys", "expires_at"): ("timestamp without time zone", False),
    ("user_tokens", "token_type"): ("character varying(50)", True),
    ("user_tokens", "ip_address"): ("character varying(45)", False),
    ("user_tokens", "expires_at"): ("timestamp without time zone", True),
    ("graphs", "schema_extensions"): ("jsonb", True),
    ("graphs", "graph_metadata"): ("jsonb", False),
    ("graphs", "graph_tier"): ("character varying", True),
    ("graphs", "created_at"): ("timestamp without time zone", True),
    ("graphs", "is_subgraph"): ("boolean", True),
    ("graphs", "is_repository"): ("boolean", True),
    ("graphs", "parent_graph_id"): ("character varying", False),
    ("graphs", "subgraph_index"): ("integer", False),
    ("graphs", "subgraph_metadata"): ("jsonb", False),
    ("graphs", "last_sync_at"): ("timestamp without time zone", False),
    ("user_graphs", "role"): ("character varying", True),
    ("user_graphs", "is_selected"): ("boolean", True),
    ("user_graphs", "created_at"): ("timestamp without time zone", True),
    ("user_limits", "max_user_graphs"): ("integer", True),
    ("graph_usage_tracking", "user_id"): ("character varying", True),
    ("graph_usage_tracking", "graph_tier"): ("character varying", True),
    ("graph_usage_tracking", "credits_consumed"): ("numeric(10,2)", False),
    ("graph_usage_tracking", "base_credit_cost"): ("numeric(10,2)", False),
    ("graph_usage_tracking", "storage_gb"): ("double precision", False),
    ("graph_usage_tracking", "metadata"): ("text", False),
    ("graph_usage_tracking", "recorded_at"): ("timestamp without time zone", True),
    ("graph_usage_tracking", "billing_hour"): ("integer", True),
    ("graph_usage_tracking", "subgraphs_storage_gb"): ("double precision", False),
    ("graph_credits", "current_balance"): ("numeric(10,2)", True),
    ("graph_credits", "storage_override_gb"): ("numeric(10,2)", False),
    ("graph_credits", "storage_warning_threshold"): ("numeric(3,2)", True),
    ("graph_credits", "last_storage_warning_at"): ("timestamp with time zone", False),
    ("graph_credits", "created_at"): ("timestamp with time zone", True),
    ("graph_credits", "updated_at"): ("timestamp with time zone", True),
    ("graph_credit_transactions", "amount"): ("numeric(10,2)", True),
    ("graph_credit_transactions", "description"): ("character varying(500)", True),
    ("graph_credit_transactions", "idempotency_key"): ("character varying(255)", False),
    ("graph_credit_transactions", "user_id"): ("character varying", False),
    ("graph_credit_transactions", "created_at"): ("timestamp with time zone", True),
    ("billing_customers", "user_id"): ("character varying", True),
    ("billing_customers", "payment_terms"): ("character varying", True),
    ("billing_customers", "created_at"): ("timestamp without time zone", True),
    ("billing_subscriptions", "resource_id"): ("character varying", False),
    ("billing_subscriptions", "payment_provider"): ("character varying", True),
    ("billing_subscriptions", "subscription_metadata"): ("jsonb", True),
    ("billing_subscriptions", "current_period_end"): ("timestamp without time zone", False),
    ("billing_invoices", "billing_customer_user_id"): ("character varying", True),
    ("billing_invoices", "stripe_invoice_id"): ("character varying", False),
    ("billing_invoices", "period_start"): ("timestamp without time zone", True),
    ("billing_invoice_line_items", "resource_id"): ("character varying", True),
    ("billing_invoice_line_items", "line_metadata"): ("json", False),
    ("billing_audit_logs", "event_data"): ("json", False),
    ("billing_audit_logs", "billing_customer_user_id"): ("character varying", False),
    ("billing_audit_logs", "actor_user_id"): ("character varying", False),
    ("user_repository", "repository_type"): ("repositorytype", True),
    ("user_repository", "access_level"): ("repositoryaccesslevel", True),
    ("user_repository", "repository_plan"): ("repositoryplan", True),
    ("user_repository", "created_at"): ("timestamp with time zone", True),
}


# --------------------------------------------------------------------------------------------------------------------
# fixtures / helpers
# --------------------------------------------------------------------------------------------------------------------


@pytest.fixture
def legacy_db_url() -> Iterator[str]:
    """Create a uniquely named, empty database on TEST_ADMIN_DATABASE_URL's server; yield its URL; drop it."""
    admin_url = make_url(os.environ.get("TEST_ADMIN_DATABASE_URL", DEFAULT_ADMIN_URL))
    db_name = f"rs_legacy_test_{uuid.uuid4().hex[:12]}"
    admin_engine = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)
    try:
        with admin_engine.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{db_name}"'))
        yield admin_url.set(database=db_name).render_as_string(hide_password=False)
    finally:
        with admin_engine.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)'))
        admin_engine.dispose()


def _alembic_config(url: str) -> Config:
    cfg = Config(str(REPO_ROOT / "alembic.ini"))
    cfg.set_main_option("sqlalchemy.url", url)
    return cfg


def _engine(url: str) -> sa.Engine:
    return sa.create_engine(url, poolclass=sa.pool.NullPool)


@pytest.fixture
def baseline_engine(legacy_db_url: str) -> Iterator[sa.Engine]:
    command.upgrade(_alembic_config(legacy_db_url), BASELINE)
    engine = _engine(legacy_db_url)
    yield engine
    engine.dispose()


def _public_tables(conn: sa.Connection) -> set[str]:
    rows = conn.execute(
        sa.text("SELECT tablename FROM pg_catalog.pg_tables WHERE schemaname = 'public'"),
    ).scalars()
    return set(rows)


def _public_enum_types(conn: sa.Connection) -> dict[str, list[str]]:
    rows = conn.execute(
        sa.text(
            """
            SELECT t.typname, e.enumlabel
            FROM pg_catalog.pg_type t
            JOIN pg_catalog.pg_enum e ON e.enumtypid = t.oid
            WHERE t.typnamespace = 'public'::regnamespace
            ORDER BY t.typname, e.enumsortorder
            """
        )
    ).all()
    result: dict[str, list[str]] = {}
    for typname, label in rows:
        result.setdefault(typname, []).append(label)
    return result


# --------------------------------------------------------------------------------------------------------------------
# tests
# --------------------------------------------------------------------------------------------------------------------


def test_upgrade_creates_every_legacy_table_and_enum(baseline_engine: sa.Engine) -> None:
    with baseline_engine.connect() as conn:
        tables = _public_tables(conn)
        assert tables == LEGACY_TABLES | {"alembic_version"}
        assert conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar_one() == BASELINE
        # the orphaned subscriptionstatus type exists with its 4 labels, and no column uses it
        assert _public_enum_types(conn) == ENUM_TYPES
        users_of_orphan = conn.execute(
            sa.text(
                "SELECT count(*) FROM information_schema.columns "
                "WHERE table_schema = 'public' AND udt_name = 'subscriptionstatus'"
            )
        ).scalar_one()
        assert users_of_orphan == 0
        assert "graph_subscriptions" not in tables
        assert "graph_usage" not in tables


def test_constraint_names_and_kinds(baseline_engine: sa.Engine) -> None:
    with baseline_engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                """
                SELECT c.conrelid::regclass::text, c.conname, c.contype::text
                FROM pg_catalog.pg_constraint c
                WHERE c.connamespace = 'public'::regnamespace AND c.contype IN ('p', 'f', 'u', 'c')
                """
            )
        ).all()
    actual = {(table, name, kind) for table, name, kind in rows if table != "alembic_version"}
    missing = [c for c in EXPECTED_CONSTRAINTS if c not in actual]
    assert not missing, f"missing constraints: {missing}"
    # Exactly the legacy constraints: no extra (e.g. naming-convention or Enum/Boolean CHECK) constraint leaked in.
    assert actual == set(EXPECTED_CONSTRAINTS), f"unexpected constraints: {actual - set(EXPECTED_CONSTRAINTS)}"


def test_index_names_uniqueness_and_methods(baseline_engine: sa.Engine) -> None:
    with baseline_engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                """
                SELECT t.relname, i.relname, ix.indisunique, am.amname
                FROM pg_catalog.pg_index ix
                JOIN pg_catalog.pg_class i ON i.oid = ix.indexrelid
                JOIN pg_catalog.pg_class t ON t.oid = ix.indrelid
                JOIN pg_catalog.pg_am am ON am.oid = i.relam
                WHERE t.relnamespace = 'public'::regnamespace AND t.relname <> 'alembic_version'
                  AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_constraint c WHERE c.conindid = ix.indexrelid)
                """
            )
        ).all()
    actual = {(table, name, unique, method) for table, name, unique, method in rows}
    missing = [i for i in EXPECTED_INDEXES if i not in actual]
    assert not missing, f"missing or different indexes: {missing}"
    assert actual == set(EXPECTED_INDEXES), f"unexpected indexes: {actual - set(EXPECTED_INDEXES)}"


def test_index_columns_for_unusual_indexes(baseline_engine: sa.Engine) -> None:
    with baseline_engine.connect() as conn:
        defs: dict[str, str] = dict(
            conn.execute(
                sa.text("SELECT indexname, indexdef FROM pg_catalog.pg_indexes WHERE schemaname = 'public'")
            ).all()
        )
    assert defs["ix_users_email"].endswith("USING btree (email)")
    assert defs["idx_graphs_schema_extensions"].endswith("USING gin (schema_extensions)")
    assert defs["idx_graphs_instance"].endswith("(graph_instance_id)")
    assert defs["ix_graphs_graph_instance_id"].endswith("(graph_instance_id)")
    assert defs["idx_graphs_parent"].endswith("(parent_graph_id)")
    assert defs["ix_graphs_parent_graph_id"].endswith("(parent_graph_id)")
    assert defs["unique_subgraph_index"].endswith("(parent_graph_id, subgraph_index)")
    assert defs["_user_graph_uc"].endswith("(user_id, graph_id)")
    assert defs["uq_user_repo_access"].endswith("(user_id, repository_type, repository_name)")
    assert defs["idx_credit_transactions_dedup"].endswith(
        "(graph_credits_id, transaction_type, amount, created_at, operation_id)"
    )
    assert defs["idx_billing_period"].endswith("(billing_year, billing_month, user_id)")
    assert defs["idx_storage_billing"].endswith("(user_id, graph_id, billing_year, billing_month)")


def test_column_types_and_nullability(baseline_engine: sa.Engine) -> None:
    with baseline_engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                """
                SELECT c.relname, a.attname, pg_catalog.format_type(a.atttypid, a.atttypmod), a.attnotnull
                FROM pg_catalog.pg_attribute a
                JOIN pg_catalog.pg_class c ON c.oid = a.attrelid
                WHERE c.relnamespace = 'public'::regnamespace AND c.relkind = 'r' AND c.relname <> 'alembic_version'
                  AND a.attnum > 0 AND NOT a.attisdropped
                """
            )
        ).all()
    actual = {(table, column): (type_, notnull) for table, column, type_, notnull in rows}
    wrong = {
        key: (actual.get(key), expected) for key, expected in EXPECTED_COLUMNS.items() if actual.get(key) != expected
    }
    assert not wrong, f"(actual, expected) mismatches: {wrong}"
    # Every varchar the spec gives without a length really has none (only these six columns have one).
    sized = {key for key, (type_, _) in actual.items() if type_.startswith("character varying(")}
    assert sized == {
        ("user_tokens", "token_type"),
        ("user_tokens", "ip_address"),
        ("graph_credit_transactions", "description"),
        ("graph_credit_transactions", "idempotency_key"),
        ("graph_credit_transactions", "request_id"),
        ("graph_credit_transactions", "operation_id"),
    }
    # timestamptz only where the spec says so
    tz_tables = {table for (table, _), (type_, _) in actual.items() if type_ == "timestamp with time zone"}
    assert tz_tables == {"graph_credits", "graph_credit_transactions", "user_repository"}
    assert ("graph_usage_tracking", "credit_multiplier") not in actual
    assert ("graph_credits", "credit_multiplier") not in actual
    assert not any(table == "graphs" and column in ("org_id", "owner_id") for table, column in actual)


def test_server_defaults_only_where_legacy_had_them(baseline_engine: sa.Engine) -> None:
    with baseline_engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                """
                SELECT table_name, column_name, column_default
                FROM information_schema.columns
                WHERE table_schema = 'public' AND column_default IS NOT NULL
                """
            )
        ).all()
    assert {(table, column): default for table, column, default in rows} == {
        ("graphs", "is_subgraph"): "false",
        ("graphs", "is_repository"): "false",
        ("billing_subscriptions", "subscription_metadata"): "'{}'::jsonb",
    }


def test_foreign_key_actions(baseline_engine: sa.Engine) -> None:
    with baseline_engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                """
                SELECT conname, confdeltype::text, confupdtype::text
                FROM pg_catalog.pg_constraint
                WHERE connamespace = 'public'::regnamespace AND contype = 'f'
                """
            )
        ).all()
    actions = {name: (on_delete, on_update) for name, on_delete, on_update in rows}
    assert actions.pop("fk_user_repository_graph_id") == ("r", "a")  # ON DELETE RESTRICT
    assert actions and all(action == ("a", "a") for action in actions.values()), actions  # NO ACTION everywhere else
    # no FK on the columns the spec calls FK-less
    with baseline_engine.connect() as conn:
        fk_columns = set(
            conn.execute(
                sa.text(
                    """
                    SELECT c.conrelid::regclass::text || '.' || a.attname
                    FROM pg_catalog.pg_constraint c
                    JOIN pg_catalog.pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = ANY (c.conkey)
                    WHERE c.connamespace = 'public'::regnamespace AND c.contype = 'f'
                    """
                )
            ).scalars()
        )
    for column in (
        "user_tokens.user_id",
        "graphs.parent_graph_id",
        "graph_usage_tracking.user_id",
        "graph_usage_tracking.graph_id",
        "graph_credit_transactions.user_id",
        "graph_credit_transactions.graph_id",
    ):
        assert column not in fk_columns


def test_graph_check_constraints(baseline_engine: sa.Engine) -> None:
    insert = sa.text(
        """
        INSERT INTO graphs (graph_id, graph_name, graph_type, schema_extensions, graph_instance_id, graph_tier,
                            created_at, updated_at, parent_graph_id, subgraph_index, subgraph_name, is_subgraph)
        VALUES (:gid, 'g', :gtype, '[]', 'default', 'kuzu-standard', now(), now(), :parent, :idx, :sname, :sub)
        """
    )
    ok: list[dict[str, object]] = [
        {"gid": "kg0000000000000001", "gtype": "entity", "parent": None, "idx": None, "sname": None, "sub": False},
        {"gid": "kg0000000000000002", "gtype": "generic", "parent": None, "idx": None, "sname": None, "sub": False},
        {"gid": "sec", "gtype": "repository", "parent": None, "idx": None, "sname": None, "sub": False},
        {
            "gid": "kg0000000000000001_dev",
            "gtype": "entity",
            "parent": "kg0000000000000001",
            "idx": 1,
            "sname": "dev",
            "sub": True,
        },
    ]
    bad: list[tuple[dict[str, object], str]] = [
        ({"gid": "x1", "gtype": "other", "parent": None, "idx": None, "sname": None, "sub": False}, "check_graph_type"),
        (
            {"gid": "x2", "gtype": "entity", "parent": "kg0000000000000001", "idx": None, "sname": None, "sub": False},
            "check_subgraph_consistency",
        ),
        (
            {"gid": "x3", "gtype": "entity", "parent": "kg0000000000000001", "idx": 2, "sname": None, "sub": True},
            "check_subgraph_consistency",
        ),
        (
            {"gid": "x4", "gtype": "entity", "parent": "kg0000000000000001", "idx": 1, "sname": "dup", "sub": True},
            "unique_subgraph_index",
        ),
    ]
    with baseline_engine.connect() as conn:
        for params in ok:
            conn.execute(insert, params)
        conn.commit()
        for params, constraint in bad:
            with pytest.raises(sa.exc.IntegrityError) as excinfo, conn.begin_nested():
                conn.execute(insert, params)
            assert constraint in str(excinfo.value)
        # is_subgraph / is_repository defaults are applied by the server
        conn.execute(
            sa.text(
                "INSERT INTO graphs (graph_id, graph_name, graph_type, schema_extensions, graph_instance_id,"
                " graph_tier, created_at, updated_at) VALUES ('kg00000000000000ff', 'd', 'entity', '[]', 'default',"
                " 'kuzu-standard', now(), now())"
            )
        )
        row = conn.execute(
            sa.text("SELECT is_subgraph, is_repository FROM graphs WHERE graph_id = 'kg00000000000000ff'")
        ).one()
        assert tuple(row) == (False, False)


def test_email_index_is_case_sensitive(baseline_engine: sa.Engine) -> None:
    insert = sa.text(
        "INSERT INTO users (id, email, name, password_hash, is_active, email_verified, created_at, updated_at)"
        " VALUES (:id, :email, 'n', 'h', true, true, now(), now())"
    )
    with baseline_engine.begin() as conn:
        conn.execute(insert, {"id": "user_a", "email": "Case@Example.com"})
        conn.execute(insert, {"id": "user_b", "email": "case@example.com"})  # allowed by the legacy DB
        with pytest.raises(sa.exc.IntegrityError, match="ix_users_email"), conn.begin_nested():
            conn.execute(insert, {"id": "user_c", "email": "case@example.com"})


def test_seed_legacy_sample(baseline_engine: sa.Engine) -> None:
    with baseline_engine.begin() as conn:
        seeded = seed_legacy_sample(conn)

    users = seeded["users"]
    graphs = seeded["graphs"]
    assert isinstance(users, dict)
    assert isinstance(graphs, dict)
    with baseline_engine.connect() as conn:

        def scalar(sql: str, **params: object) -> Any:
            return conn.execute(sa.text(sql), params).scalar_one()

        assert scalar("SELECT count(*) FROM users") == 5
        assert scalar("SELECT count(*) FROM users WHERE NOT is_active") == 1
        assert scalar("SELECT count(*) FROM user_limits") == 3
        # mixed-case emails, no case-duplicates
        assert scalar("SELECT count(*) FROM users WHERE email <> lower(email)") >= 2
        assert scalar("SELECT count(DISTINCT lower(email)) FROM users") == 5
        # legacy id formats
        assert scalar("SELECT count(*) FROM users WHERE id ~ '^user_[A-Za-z0-9_-]{22}$'") == 5
        assert scalar("SELECT count(*) FROM graphs WHERE graph_id ~ '^kg[0-9a-f]{16}$'") == 3
        assert scalar("SELECT count(*) FROM graph_credits WHERE id ~ '^crd_[0-9A-Z]{26}$'") == 2
        # passwords are real bcrypt hashes of the returned plain passwords
        passwords = seeded["passwords"]
        assert isinstance(passwords, dict)
        for key, plain in passwords.items():
            stored = scalar("SELECT password_hash FROM users WHERE id = :id", id=users[key])
            assert bcrypt.checkpw(plain.encode(), str(stored).encode())
        # api key: bcrypt of the plain key, prefix = first 8 chars
        api_key = seeded["api_key"]
        assert isinstance(api_key, dict)
        key_hash, prefix = conn.execute(
            sa.text("SELECT key_hash, prefix FROM user_api_keys WHERE id = :id"), {"id": api_key["id"]}
        ).one()
        assert prefix == api_key["plain"][:8]
        assert api_key["plain"].startswith("rfs")
        assert bcrypt.checkpw(api_key["plain"].encode(), key_hash.encode())
        token = seeded["password_reset_token"]
        assert isinstance(token, dict)
        assert scalar("SELECT token_type FROM user_tokens WHERE token_hash = :h", h=sha256_hex(token["plain"])) == (
            "password_reset"
        )
        # graph shapes
        assert (
            scalar("SELECT count(*) FROM user_graphs WHERE graph_id = :g AND role = 'admin'", g=graphs["shared_admins"])
            == 2
        )
        assert scalar("SELECT count(*) FROM user_graphs WHERE graph_id = :g", g=graphs["no_admin"]) == 1
        assert (
            scalar("SELECT count(*) FROM user_graphs WHERE graph_id = :g AND role = 'admin'", g=graphs["no_admin"]) == 0
        )
        assert scalar("SELECT count(*) FROM user_graphs WHERE user_id = :u", u=users["erin"]) == 0
        assert (
            scalar("SELECT parent_graph_id FROM graphs WHERE graph_id = :g", g=graphs["subgraph"])
            == (graphs["shared_admins"])
        )
        sec = conn.execute(
            sa.text("SELECT is_repository, graph_type, graph_tier, graph_metadata FROM graphs WHERE graph_id = 'sec'")
        ).one()
        assert tuple(sec) == (True, "repository", "kuzu-shared", None)
        assert scalar("SELECT count(*) FROM user_graphs WHERE graph_id = 'sec'") == 0
        assert scalar("SELECT count(*) FROM graphs WHERE graph_tier IN ('standard', 'premium')") >= 2
        assert (
            scalar("SELECT graph_metadata->>'created_by' FROM graphs WHERE graph_id = :g", g=graphs["alice"])
            == users["alice"]
        )
        # billing
        assert scalar("SELECT count(*) FROM billing_subscriptions WHERE resource_type = 'repository'") == 1
        assert scalar("SELECT count(*) FROM billing_subscriptions WHERE resource_id IS NULL") == 1
        subscriptions = seeded["subscriptions"]
        assert isinstance(subscriptions, dict)
        assert (
            scalar(
                "SELECT subscription_metadata::text FROM billing_subscriptions WHERE id = :id",
                id=subscriptions["graph_bob"],
            )
            == "{}"
        )
        assert scalar("SELECT count(*) FROM billing_invoice_line_items") == 1
        assert scalar("SELECT count(*) FROM billing_audit_logs") >= 3
        assert scalar("SELECT count(*) FROM graph_credit_transactions") >= 2
        # one storage snapshot per member of the shared graph in the same hour
        assert (
            scalar(
                "SELECT count(DISTINCT user_id) FROM graph_usage_tracking"
                " WHERE graph_id = :g AND event_type = 'storage_snapshot'",
                g=graphs["alice"],
            )
            == 2
        )


def test_downgrade_to_base_removes_everything(legacy_db_url: str) -> None:
    cfg = _alembic_config(legacy_db_url)
    command.upgrade(cfg, BASELINE)
    engine = _engine(legacy_db_url)
    try:
        with engine.begin() as conn:
            seed_legacy_sample(conn)  # downgrade must also work with data present
        command.downgrade(cfg, "base")
        with engine.connect() as conn:
            assert _public_tables(conn) <= {"alembic_version"}
            assert conn.execute(sa.text("SELECT count(*) FROM alembic_version")).scalar_one() == 0
            assert _public_enum_types(conn) == {}
            leftover = conn.execute(
                sa.text(
                    "SELECT count(*) FROM pg_catalog.pg_class WHERE relnamespace = 'public'::regnamespace"
                    " AND relname <> 'alembic_version' AND relname <> 'alembic_version_pkc'"
                )
            ).scalar_one()
            assert leftover == 0
        # and the baseline can be applied again on the same database
        command.upgrade(cfg, BASELINE)
        with engine.connect() as conn:
            assert _public_tables(conn) == LEGACY_TABLES | {"alembic_version"}
    finally:
        engine.dispose()
