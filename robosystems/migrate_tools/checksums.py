"""Row counts and checksums of the business columns of every legacy table, in each shape the chain gives it.

A *checksum* is the order-independent sum of the first 64 bits of ``md5(ROW(<business columns>)::text)`` over all
rows (a multiset hash: streaming, no sort, no giant string, any row order).  Each table has one or more *variants*:
the SQL that yields the same ROW for the same business data in the schema as it stands from a given revision on
(table renamed, email lower-cased, status mapped and the legacy value kept in ``legacy_status`` …).  Recording with
the variant of the snapshot's revision and recomputing with the variant of the current revision must give equal
results when the upgrade kept every business value, which is what ``robosystems migrate verify`` checks.

Conventions that make the variants comparable across type changes:

* timestamps as ``extract(epoch FROM col)``: a ``timestamp`` holding UTC and the ``timestamptz`` it becomes
  (``col AT TIME ZONE 'UTC'``) give the same number;
* enums/json as text; emails as ``lower(btrim(email))`` (the identity revision lower-cases them; the original
  spelling is compared separately through ``legacy_email_case``).

Columns that the application or the migration legitimately rewrites (``updated_at``, ``last_used_at``, new columns)
are not business columns here.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import sqlalchemy as sa

LEGACY = "7a89a1bfab0c"
SNAPSHOT = "a1b2c3d4e5f6"
IDENTITY = "b3c1f0e2a9d4"
GRAPH_OWNERSHIP = "c4d5e6f7a8b9"
ORG_BILLING = "e6f7a8b9c0d1"


def _ts(column: str) -> str:
    return f"extract(epoch FROM {column})"


@dataclass(frozen=True)
class Variant:
    since: str  # first revision whose schema this SQL fits
    source: str  # FROM … [WHERE …]
    row: str  # comma-separated expressions of the business columns


@dataclass(frozen=True)
class TableSpec:
    name: str
    description: str
    variants: tuple[Variant, ...]

    def variant(self, revision: str) -> Variant:
        order = revision_order()
        if revision not in order:
            raise ValueError(f"unknown revision {revision!r}")
        chosen = None
        for v in self.variants:
            if order[v.since] <= order[revision]:
                chosen = v
        if chosen is None:
            raise ValueError(f"{self.name}: no variant for revision {revision}")
        return chosen


# The revision that first reshapes each table's data.  At that revision's start the snapshot entry is checked again
# (robosystems.migrate_tools.snapshot.refresh_before): data an operator changed between two upgrade runs (to clear a
# blocker) is then what verify compares with, and the change is reported.  user_repository is reshaped by none.
TOUCHED_BY = {
    "users": IDENTITY,
    "user_email_spelling": IDENTITY,
    "graph_limits": IDENTITY,
    "user_api_keys": IDENTITY,
    "user_tokens": IDENTITY,
    "graphs": GRAPH_OWNERSHIP,
    "graph_memberships": GRAPH_OWNERSHIP,
    "graph_usage": GRAPH_OWNERSHIP,
    "graph_credits": ORG_BILLING,
    "graph_credit_transactions": ORG_BILLING,
    "billing_customers": ORG_BILLING,
    "billing_subscriptions": ORG_BILLING,
    "billing_invoices": ORG_BILLING,
    "billing_invoice_line_items": ORG_BILLING,
    "billing_audit_logs": ORG_BILLING,
}


def default_graph_limit() -> int:
    """``ORG_GRAPHS_DEFAULT_LIMIT`` as ``b3c1f0e2a9d4`` reads it (an unusable value makes that revision stop; the
    snapshot then uses 100 and the preflight reports the value as a blocker)."""
    raw = os.environ.get("ORG_GRAPHS_DEFAULT_LIMIT")
    if raw is None:
        return 100
    try:
        value = int(raw.strip())
    except ValueError:
        return 100
    return value if value >= -1 else 100


_USERS = "id, lower(btrim(email)), name, password_hash, is_active, email_verified, " + _ts("created_at")
_GRAPHS = (
    "graph_id, graph_name, graph_type, base_schema, schema_extensions::text, graph_instance_id, graph_tier, "
    "graph_metadata::text, is_subgraph, parent_graph_id, subgraph_index, subgraph_name, is_repository, "
    "repository_type, " + _ts("created_at")
)
_MEMBERSHIPS = "id, user_id, graph_id, role, is_selected, " + _ts("created_at")
_USAGE = (
    "id, user_id, graph_id, event_type, operation_type, graph_tier, storage_bytes, credits_consumed, duration_ms, "
    "status_code, metadata, " + _ts("recorded_at")
)
_TXNS = (
    "id, graph_credits_id, graph_id, transaction_type, amount, description, idempotency_key, operation_id, user_id, "
    + _ts("created_at")
)
# rows the billing revision adds to the ledger (opening balances, operator-requested clearing of negative pools)
MIGRATION_LEDGER_KEYS = "(starts_with(idempotency_key, 'legacy_opening_') OR " + (
    "starts_with(idempotency_key, 'legacy_negative_cleared_'))"
)
_SUBS_COMMON = (
    "id, billing_customer_user_id, resource_type, resource_id, plan_name, billing_interval, base_price_cents, "
    "stripe_subscription_id, {status}, payment_provider, {provider_id}, provider_customer_id, "
    "subscription_metadata::text, "
    + ", ".join(_ts(c) for c in ("started_at", "current_period_end", "canceled_at", "created_at"))
)


def specs() -> tuple[TableSpec, ...]:
    limit = default_graph_limit()
    return (
        TableSpec("users", "users (email compared lower-cased)", (Variant(LEGACY, "FROM users", _USERS),)),
        TableSpec(
            "user_email_spelling",
            "original spelling of every address that is not lower-case",
            (
                Variant(LEGACY, "FROM users WHERE email <> lower(btrim(email))", "id, email"),
                Variant(IDENTITY, "FROM legacy_email_case", "user_id, original_email"),
            ),
        ),
        TableSpec(
            "graph_limits",
            "user_limits.max_user_graphs -> org_limits.max_graphs of the personal org (missing row: default)",
            (
                Variant(
                    LEGACY,
                    "FROM users u LEFT JOIN user_limits ul ON ul.user_id = u.id",
                    f"u.id, COALESCE(ul.max_user_graphs, {int(limit)})",
                ),
                Variant(
                    IDENTITY,
                    "FROM orgs o JOIN org_limits l ON l.org_id = o.id WHERE o.org_type = 'personal'",
                    "o.personal_user_id, l.max_graphs",
                ),
            ),
        ),
        TableSpec(
            "user_api_keys",
            "API keys",
            (
                Variant(
                    LEGACY,
                    "FROM user_api_keys",
                    "id, user_id, name, key_hash, prefix, is_active, description, " + _ts("expires_at"),
                ),
            ),
        ),
        TableSpec(
            "user_tokens",
            "email/password tokens (orphans included)",
            (
                Variant(
                    LEGACY,
                    "FROM user_tokens",
                    "id, user_id, token_hash, token_type, "
                    + ", ".join(_ts(c) for c in ("expires_at", "used_at", "created_at")),
                ),
            ),
        ),
        TableSpec("graphs", "graphs (ownership columns excluded)", (Variant(LEGACY, "FROM graphs", _GRAPHS),)),
        TableSpec(
            "graph_memberships",
            "user_graphs -> graph_users (every row, every role)",
            (
                Variant(LEGACY, "FROM user_graphs", _MEMBERSHIPS),
                Variant(GRAPH_OWNERSHIP, "FROM graph_users", _MEMBERSHIPS),
            ),
        ),
        TableSpec(
            "user_repository",
            "per-user repository access",
            (
                Variant(
                    LEGACY,
                    "FROM user_repository",
                    "id, user_id, repository_type::text, repository_name, access_level::text, "
                    "repository_plan::text, is_active, monthly_price_cents",
                ),
            ),
        ),
        TableSpec(
            "graph_usage",
            "graph_usage_tracking -> graph_usage",
            (
                Variant(LEGACY, "FROM graph_usage_tracking", _USAGE),
                Variant(GRAPH_OWNERSHIP, "FROM graph_usage", _USAGE),
            ),
        ),
        TableSpec(
            "graph_credits",
            "credit pools (balance included)",
            (
                Variant(
                    LEGACY,
                    "FROM graph_credits",
                    "id, graph_id, user_id, billing_admin_id, current_balance, monthly_allocation, storage_limit_gb, "
                    "storage_override_gb, auto_expand_enabled",
                ),
            ),
        ),
        TableSpec(
            "graph_credit_transactions",
            "credit ledger (rows added by the migration excluded)",
            (
                Variant(LEGACY, "FROM graph_credit_transactions", _TXNS),
                Variant(
                    ORG_BILLING,
                    f"FROM graph_credit_transactions WHERE idempotency_key IS NULL OR NOT {MIGRATION_LEDGER_KEYS}",
                    _TXNS,
                ),
            ),
        ),
        TableSpec(
            "billing_customers",
            "billing customers (legacy payer user kept)",
            (
                Variant(
                    LEGACY,
                    "FROM billing_customers",
                    "user_id, stripe_customer_id, has_payment_method, default_payment_method_id, "
                    "invoice_billing_enabled, billing_email, billing_contact_name, payment_terms, " + _ts("created_at"),
                ),
            ),
        ),
        TableSpec(
            "billing_subscriptions",
            "subscriptions (status and provider ids compared in their legacy meaning)",
            (
                Variant(
                    LEGACY,
                    "FROM billing_subscriptions",
                    _SUBS_COMMON.format(status="status", provider_id="provider_subscription_id"),
                ),
                Variant(
                    ORG_BILLING,
                    "FROM billing_subscriptions",
                    _SUBS_COMMON.format(
                        status="COALESCE(legacy_status, status)",
                        provider_id="COALESCE(provider_subscription_id, provider_checkout_session_id)",
                    ),
                ),
            ),
        ),
        TableSpec(
            "billing_invoices",
            "invoices",
            (
                Variant(
                    LEGACY,
                    "FROM billing_invoices",
                    "id, billing_customer_user_id, invoice_number, subtotal_cents, tax_cents, discount_cents, "
                    "total_cents, status, stripe_invoice_id, payment_method, payment_reference, notes, "
                    + ", ".join(_ts(c) for c in ("period_start", "period_end", "due_date", "paid_at", "created_at")),
                ),
            ),
        ),
        TableSpec(
            "billing_invoice_line_items",
            "invoice line items",
            (
                Variant(
                    LEGACY,
                    "FROM billing_invoice_line_items",
                    "id, invoice_id, subscription_id, resource_type, resource_id, description, quantity, "
                    "unit_price_cents, amount_cents, line_metadata::text, "
                    + ", ".join(_ts(c) for c in ("period_start", "period_end")),
                ),
            ),
        ),
        TableSpec(
            "billing_audit_logs",
            "billing audit log (actor stays a user)",
            (
                Variant(
                    LEGACY,
                    "FROM billing_audit_logs",
                    "id, event_type, billing_customer_user_id, subscription_id, invoice_id, event_data::text, "
                    "description, actor_user_id, actor_type, actor_ip, " + _ts("event_timestamp"),
                ),
            ),
        ),
    )


def checksum_sql(variant: Variant) -> str:
    return (
        "SELECT count(*), COALESCE(sum(('x' || substr(md5(ROW("
        + variant.row
        + ")::text), 1, 16))::bit(64)::bigint::numeric), 0) "
        + variant.source
    )


def compute(conn: sa.Connection, revision: str, names: Sequence[str] | None = None) -> dict[str, tuple[int, str]]:
    """``name -> (row count, checksum)`` for the schema as it stands at ``revision``."""
    out: dict[str, tuple[int, str]] = {}
    for spec in specs():
        if names is not None and spec.name not in names:
            continue
        count, checksum = conn.execute(sa.text(checksum_sql(spec.variant(revision)))).one()
        out[spec.name] = (int(count), str(checksum))
    return out


@lru_cache(maxsize=1)
def revision_order() -> dict[str, int]:
    """revision id -> position in the (linear) chain, base first."""
    return {rev: i for i, rev in enumerate(chain())}


@lru_cache(maxsize=1)
def chain() -> tuple[str, ...]:
    from alembic.script import ScriptDirectory

    from robosystems.migrations import alembic_config

    script = ScriptDirectory.from_config(alembic_config("postgresql://unused@localhost/unused"))
    return tuple(reversed([r.revision for r in script.walk_revisions("base", "heads")]))


def head() -> str:
    return chain()[-1]
