"""Insert rows into the legacy (user-centric) schema of revision ``7a89a1bfab0c`` with raw SQL.

The legacy schema has almost no server defaults (legacy-schema.md §0), so every helper supplies ids, booleans and
timestamps itself, in the legacy formats:

* ``prefix_`` + ``secrets.token_urlsafe(16)`` for users (``user_``), api keys (``uak_``), tokens (``tok_``),
  user_graphs (``ug_``), user_limits (``ul_``), subscriptions (``bsub_``), invoices (``binv_``), line items (``bli_``)
  and audit logs (``baud_``). These ids may contain ``_`` and ``-``.
* ``prefix_<ULID>`` for graph_credits (``crd_``), credit transactions (``txn_``) and usage rows (``usg_``).
* ``kg`` + 16 hex chars for user graph ids; plain names (``sec``) for shared repositories; ``<parent>_<name>`` for
  subgraphs.

Naive UTC datetimes go to ``timestamp without time zone`` columns, aware UTC datetimes to ``timestamptz`` ones.
Nothing here imports ``robosystems``: the helpers only need a SQLAlchemy sync ``Connection``.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import secrets
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import bcrypt
from sqlalchemy import Connection, text
from ulid import ULID

# Cheap but real bcrypt cost: hashes verify with bcrypt.checkpw like the legacy cost-12 ones.
BCRYPT_ROUNDS = 4
DEFAULT_PASSWORD = "LegacyPassw0rd!"

_invoice_counter = itertools.count(1)


# --------------------------------------------------------------------------------------------------------------------
# id / value helpers
# --------------------------------------------------------------------------------------------------------------------


def legacy_id(prefix: str) -> str:
    """``<prefix>_`` + ``secrets.token_urlsafe(16)`` (22 base64url chars), as the legacy ORM defaults did."""
    return f"{prefix}_{secrets.token_urlsafe(16)}"


def ulid_id(prefix: str) -> str:
    """``<prefix>_<ULID>``, as used by graph_credits / graph_credit_transactions / graph_usage_tracking."""
    return f"{prefix}_{ULID()}"


def new_graph_id() -> str:
    """Legacy user graph id: ``kg`` + 16 lowercase hex chars."""
    return f"kg{secrets.token_hex(8)}"


def new_api_key() -> str:
    """Legacy plain API key: ``rfs`` + 64 hex chars."""
    return f"rfs{secrets.token_hex(32)}"


def bcrypt_hash(plain: str) -> str:
    return bcrypt.hashpw(plain.encode(), bcrypt.gensalt(rounds=BCRYPT_ROUNDS)).decode()


def sha256_hex(plain: str) -> str:
    return hashlib.sha256(plain.encode()).hexdigest()


def utcnow_naive() -> datetime:
    """For ``timestamp without time zone`` columns."""
    return datetime.now(UTC).replace(tzinfo=None, microsecond=0)


def utcnow_aware() -> datetime:
    """For ``timestamp with time zone`` columns."""
    return datetime.now(UTC).replace(microsecond=0)


def _naive(value: datetime | None) -> datetime:
    if value is None:
        return utcnow_naive()
    if value.tzinfo is not None:
        return value.astimezone(UTC).replace(tzinfo=None)
    return value


def _aware(value: datetime | None) -> datetime:
    if value is None:
        return utcnow_aware()
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


def _json(value: Any) -> str | None:
    return None if value is None else json.dumps(value)


def _insert(conn: Connection, table: str, values: dict[str, Any], casts: dict[str, str] | None = None) -> None:
    """INSERT one row; ``casts`` maps a column to a SQL type (``jsonb``/``json``/an enum) for ``CAST(:col AS type)``."""
    casts = casts or {}
    columns = ", ".join(values)
    params = ", ".join(f"CAST(:{col} AS {casts[col]})" if col in casts else f":{col}" for col in values)
    conn.execute(text(f"INSERT INTO {table} ({columns}) VALUES ({params})"), values)


# --------------------------------------------------------------------------------------------------------------------
# identity
# --------------------------------------------------------------------------------------------------------------------


def insert_user(
    conn: Connection,
    *,
    email: str,
    name: str = "Legacy User",
    is_active: bool = True,
    password_hash: str | None = None,
    user_id: str | None = None,
    email_verified: bool = True,
    created_at: datetime | None = None,
) -> str:
    """Insert a legacy user. ``password_hash`` defaults to a bcrypt hash of :data:`DEFAULT_PASSWORD`."""
    user_id = user_id or legacy_id("user")
    created = _naive(created_at)
    _insert(
        conn,
        "users",
        {
            "id": user_id,
            "email": email,
            "name": name,
            "password_hash": password_hash or bcrypt_hash(DEFAULT_PASSWORD),
            "is_active": is_active,
            "email_verified": email_verified,
            "created_at": created,
            "updated_at": created,
        },
    )
    return user_id


def insert_user_limits(conn: Connection, user_id: str, max_user_graphs: int) -> str:
    limits_id = legacy_id("ul")
    now = utcnow_naive()
    _insert(
        conn,
        "user_limits",
        {"id": limits_id, "user_id": user_id, "max_user_graphs": max_user_graphs, "created_at": now, "updated_at": now},
    )
    return limits_id


def insert_api_key(
    conn: Connection,
    user_id: str,
    plain_key: str,
    *,
    name: str = "Legacy API key",
    is_active: bool = True,
    description: str | None = None,
    last_used_at: datetime | None = None,
    expires_at: datetime | None = None,
) -> str:
    """Store a bcrypt hash of ``plain_key`` and its first 8 chars as prefix, like the legacy API did."""
    key_id = legacy_id("uak")
    now = utcnow_naive()
    _insert(
        conn,
        "user_api_keys",
        {
            "id": key_id,
            "user_id": user_id,
            "name": name,
            "key_hash": bcrypt_hash(plain_key),
            "prefix": plain_key[:8],
            "is_active": is_active,
            "description": description,
            "last_used_at": None if last_used_at is None else _naive(last_used_at),
            "created_at": now,
            "updated_at": now,
            "expires_at": None if expires_at is None else _naive(expires_at),
        },
    )
    return key_id


def insert_user_token(
    conn: Connection,
    user_id: str,
    token_type: str,
    token_plain: str,
    expires_at: datetime,
    *,
    used_at: datetime | None = None,
    ip_address: str | None = None,
    user_agent: str | None = None,
) -> str:
    """Store the sha256 hex of ``token_plain`` (types: ``email_verification``, ``password_reset``)."""
    token_id = legacy_id("tok")
    _insert(
        conn,
        "user_tokens",
        {
            "id": token_id,
            "user_id": user_id,
            "token_hash": sha256_hex(token_plain),
            "token_type": token_type,
            "expires_at": _naive(expires_at),
            "used_at": None if used_at is None else _naive(used_at),
            "created_at": utcnow_naive(),
            "ip_address": ip_address,
            "user_agent": user_agent,
        },
    )
    return token_id


# --------------------------------------------------------------------------------------------------------------------
# graphs and membership
# --------------------------------------------------------------------------------------------------------------------


def insert_graph(
    conn: Connection,
    *,
    graph_id: str | None = None,
    name: str = "Legacy graph",
    graph_type: str = "entity",
    tier: str = "kuzu-standard",
    created_by: str | None = None,
    is_repository: bool = False,
    repository_type: str | None = None,
    parent_graph_id: str | None = None,
    subgraph_index: int | None = None,
    subgraph_name: str | None = None,
    graph_metadata: dict[str, Any] | None = None,
    created_at: datetime | None = None,
) -> str:
    """Insert a graph row. A subgraph is inserted when ``parent_graph_id`` is given.

    ``graph_metadata.created_by`` is set from ``created_by`` (legacy entity/generic graphs); repositories pass none.
    Subgraph ids default to ``<parent>_<subgraph_name>``.
    """
    is_subgraph = parent_graph_id is not None
    if is_subgraph:
        subgraph_index = 1 if subgraph_index is None else subgraph_index
        subgraph_name = subgraph_name or f"sub{subgraph_index}"
        graph_id = graph_id or f"{parent_graph_id}_{subgraph_name}"
    graph_id = graph_id or new_graph_id()
    metadata = dict(graph_metadata or {})
    if created_by is not None:
        metadata.setdefault("created_by", created_by)
    created = _naive(created_at)
    _insert(
        conn,
        "graphs",
        {
            "graph_id": graph_id,
            "graph_name": name,
            "graph_type": graph_type,
            "schema_extensions": json.dumps([]),
            "graph_instance_id": "default",
            "graph_tier": tier,
            "created_at": created,
            "updated_at": created,
            "graph_metadata": _json(metadata) if metadata else None,
            "is_subgraph": is_subgraph,
            "parent_graph_id": parent_graph_id,
            "subgraph_index": subgraph_index if is_subgraph else None,
            "subgraph_name": subgraph_name if is_subgraph else None,
            "is_repository": is_repository,
            "repository_type": repository_type,
        },
        casts={"schema_extensions": "jsonb", "graph_metadata": "jsonb"},
    )
    return graph_id


def insert_user_graph(
    conn: Connection,
    user_id: str,
    graph_id: str,
    role: str = "admin",
    is_selected: bool = False,
    created_at: datetime | None = None,
) -> str:
    ug_id = legacy_id("ug")
    created = _naive(created_at)
    _insert(
        conn,
        "user_graphs",
        {
            "id": ug_id,
            "user_id": user_id,
            "graph_id": graph_id,
            "role": role,
            "is_selected": is_selected,
            "created_at": created,
            "updated_at": created,
        },
    )
    return ug_id


def insert_user_repository(
    conn: Connection,
    user_id: str,
    repository_name: str,
    *,
    repository_type: str = "SEC",
    access_level: str = "READ",
    repository_plan: str = "STARTER",
    granted_by: str | None = None,
    is_active: bool = True,
) -> str:
    """Per-user repository access row; enum values are the uppercase member NAMES stored by the legacy ORM."""
    row_id = legacy_id("urep")
    now = utcnow_aware()
    _insert(
        conn,
        "user_repository",
        {
            "id": row_id,
            "user_id": user_id,
            "repository_type": repository_type,
            "repository_name": repository_name,
            "access_level": access_level,
            "repository_plan": repository_plan,
            "is_active": is_active,
            "activated_at": now,
            "granted_by": granted_by,
            "granted_at": now if granted_by else None,
            "created_at": now,
            "updated_at": now,
        },
        casts={
            "repository_type": "repositorytype",
            "access_level": "repositoryaccesslevel",
            "repository_plan": "repositoryplan",
        },
    )
    return row_id


# --------------------------------------------------------------------------------------------------------------------
# credits and usage
# --------------------------------------------------------------------------------------------------------------------


def insert_graph_credits(
    conn: Connection,
    graph_id: str,
    user_id: str,
    billing_admin_id: str,
    balance: Decimal | int | str = Decimal("1000.00"),
    *,
    monthly_allocation: Decimal | int | str = Decimal("1000.00"),
    storage_limit_gb: Decimal | int | str = Decimal("500.00"),
    storage_override_gb: Decimal | int | str | None = None,
    auto_expand_enabled: bool = False,
    storage_warning_threshold: Decimal | str = Decimal("0.80"),
    last_allocation_date: datetime | None = None,
) -> str:
    credits_id = ulid_id("crd")
    now = utcnow_aware()
    _insert(
        conn,
        "graph_credits",
        {
            "id": credits_id,
            "graph_id": graph_id,
            "user_id": user_id,
            "current_balance": Decimal(str(balance)),
            "monthly_allocation": Decimal(str(monthly_allocation)),
            "storage_limit_gb": Decimal(str(storage_limit_gb)),
            "storage_override_gb": None if storage_override_gb is None else Decimal(str(storage_override_gb)),
            "auto_expand_enabled": auto_expand_enabled,
            "last_storage_warning_at": None,
            "storage_warning_threshold": Decimal(str(storage_warning_threshold)),
            "billing_admin_id": billing_admin_id,
            "last_allocation_date": _aware(last_allocation_date),
            "created_at": now,
            "updated_at": now,
        },
    )
    return credits_id


def insert_credit_transaction(
    conn: Connection,
    *,
    graph_credits_id: str,
    graph_id: str,
    transaction_type: str,
    amount: Decimal | int | str,
    description: str = "Legacy credit transaction",
    user_id: str | None = None,
    idempotency_key: str | None = None,
    request_id: str | None = None,
    operation_id: str | None = None,
    metadata: dict[str, Any] | None = None,
    created_at: datetime | None = None,
) -> str:
    """Types: allocation, consumption (negative amount), bonus, refund, expiration. ``metadata`` is a JSON string."""
    txn_id = ulid_id("txn")
    _insert(
        conn,
        "graph_credit_transactions",
        {
            "id": txn_id,
            "graph_credits_id": graph_credits_id,
            "graph_id": graph_id,
            "transaction_type": transaction_type,
            "amount": Decimal(str(amount)),
            "description": description,
            "idempotency_key": idempotency_key,
            "request_id": request_id,
            "operation_id": operation_id,
            "user_id": user_id,
            "metadata": _json(metadata),
            "created_at": _aware(created_at),
        },
    )
    return txn_id


def insert_usage_row(
    conn: Connection,
    *,
    user_id: str,
    graph_id: str,
    event_type: str,
    graph_tier: str,
    recorded_at: datetime | None = None,
    operation_type: str | None = None,
    storage_gb: float | None = None,
    storage_bytes: float | None = None,
    credits_consumed: Decimal | int | str | None = None,
    base_credit_cost: Decimal | int | str | None = None,
    duration_ms: int | None = None,
    status_code: int | None = None,
    files_storage_gb: float | None = None,
    tables_storage_gb: float | None = None,
    graphs_storage_gb: float | None = None,
    subgraphs_storage_gb: float | None = None,
    metadata: dict[str, Any] | None = None,
) -> str:
    """One graph_usage_tracking row; billing_year/month/day/hour are derived from ``recorded_at``."""
    usage_id = ulid_id("usg")
    recorded = _naive(recorded_at)
    _insert(
        conn,
        "graph_usage_tracking",
        {
            "id": usage_id,
            "user_id": user_id,
            "graph_id": graph_id,
            "event_type": event_type,
            "operation_type": operation_type,
            "graph_tier": graph_tier,
            "storage_bytes": storage_bytes,
            "storage_gb": storage_gb,
            "credits_consumed": None if credits_consumed is None else Decimal(str(credits_consumed)),
            "base_credit_cost": None if base_credit_cost is None else Decimal(str(base_credit_cost)),
            "duration_ms": duration_ms,
            "status_code": status_code,
            "metadata": _json(metadata),
            "recorded_at": recorded,
            "billing_year": recorded.year,
            "billing_month": recorded.month,
            "billing_day": recorded.day,
            "billing_hour": recorded.hour,
            "files_storage_gb": files_storage_gb,
            "tables_storage_gb": tables_storage_gb,
            "graphs_storage_gb": graphs_storage_gb,
            "subgraphs_storage_gb": subgraphs_storage_gb,
        },
    )
    return usage_id


# --------------------------------------------------------------------------------------------------------------------
# billing
# --------------------------------------------------------------------------------------------------------------------


def insert_billing_customer(
    conn: Connection,
    user_id: str,
    *,
    stripe_customer_id: str | None = None,
    has_payment_method: bool = False,
    default_payment_method_id: str | None = None,
    invoice_billing_enabled: bool = False,
    billing_email: str | None = None,
    billing_contact_name: str | None = None,
    payment_terms: str = "net_30",
) -> str:
    """billing_customers is keyed by user: returns ``user_id`` (its primary key)."""
    now = utcnow_naive()
    _insert(
        conn,
        "billing_customers",
        {
            "user_id": user_id,
            "stripe_customer_id": stripe_customer_id,
            "has_payment_method": has_payment_method,
            "default_payment_method_id": default_payment_method_id,
            "invoice_billing_enabled": invoice_billing_enabled,
            "billing_email": billing_email,
            "billing_contact_name": billing_contact_name,
            "payment_terms": payment_terms,
            "created_at": now,
            "updated_at": now,
        },
    )
    return user_id


def insert_billing_subscription(
    conn: Connection,
    *,
    billing_customer_user_id: str,
    resource_type: str,
    resource_id: str | None,
    plan_name: str,
    base_price_cents: int,
    status: str = "active",
    billing_interval: str = "monthly",
    payment_provider: str = "invoice",
    stripe_subscription_id: str | None = None,
    stripe_product_id: str | None = None,
    stripe_price_id: str | None = None,
    provider_subscription_id: str | None = None,
    provider_customer_id: str | None = None,
    subscription_metadata: dict[str, Any] | None = None,
    started_at: datetime | None = None,
    current_period_start: datetime | None = None,
    current_period_end: datetime | None = None,
    canceled_at: datetime | None = None,
    ends_at: datetime | None = None,
) -> str:
    """``subscription_metadata=None`` leaves the column to its server default ``'{}'::jsonb``."""
    sub_id = legacy_id("bsub")
    now = utcnow_naive()
    values: dict[str, Any] = {
        "id": sub_id,
        "billing_customer_user_id": billing_customer_user_id,
        "resource_type": resource_type,
        "resource_id": resource_id,
        "plan_name": plan_name,
        "billing_interval": billing_interval,
        "base_price_cents": base_price_cents,
        "stripe_subscription_id": stripe_subscription_id,
        "stripe_product_id": stripe_product_id,
        "stripe_price_id": stripe_price_id,
        "status": status,
        "started_at": None if started_at is None else _naive(started_at),
        "current_period_start": None if current_period_start is None else _naive(current_period_start),
        "current_period_end": None if current_period_end is None else _naive(current_period_end),
        "canceled_at": None if canceled_at is None else _naive(canceled_at),
        "ends_at": None if ends_at is None else _naive(ends_at),
        "created_at": now,
        "updated_at": now,
        "payment_provider": payment_provider,
        "provider_subscription_id": provider_subscription_id,
        "provider_customer_id": provider_customer_id,
    }
    if subscription_metadata is not None:
        values["subscription_metadata"] = json.dumps(subscription_metadata)
    _insert(conn, "billing_subscriptions", values, casts={"subscription_metadata": "jsonb"})
    return sub_id


def insert_billing_invoice(
    conn: Connection,
    *,
    billing_customer_user_id: str,
    period_start: datetime,
    period_end: datetime,
    subtotal_cents: int,
    total_cents: int | None = None,
    tax_cents: int = 0,
    discount_cents: int = 0,
    status: str = "paid",
    invoice_number: str | None = None,
    stripe_invoice_id: str | None = None,
    sent_at: datetime | None = None,
    due_date: datetime | None = None,
    paid_at: datetime | None = None,
    payment_method: str | None = None,
    payment_reference: str | None = None,
    notes: str | None = None,
) -> str:
    """``invoice_number`` defaults to ``INV-YYYY-MM-NNNN`` (period_start's month, a per-process counter)."""
    invoice_id = legacy_id("binv")
    start = _naive(period_start)
    invoice_number = invoice_number or f"INV-{start.year}-{start.month:02d}-{next(_invoice_counter):04d}"
    if total_cents is None:
        total_cents = subtotal_cents + tax_cents - discount_cents
    now = utcnow_naive()
    _insert(
        conn,
        "billing_invoices",
        {
            "id": invoice_id,
            "billing_customer_user_id": billing_customer_user_id,
            "invoice_number": invoice_number,
            "period_start": start,
            "period_end": _naive(period_end),
            "subtotal_cents": subtotal_cents,
            "tax_cents": tax_cents,
            "discount_cents": discount_cents,
            "total_cents": total_cents,
            "status": status,
            "stripe_invoice_id": stripe_invoice_id,
            "sent_at": None if sent_at is None else _naive(sent_at),
            "due_date": None if due_date is None else _naive(due_date),
            "paid_at": None if paid_at is None else _naive(paid_at),
            "payment_method": payment_method,
            "payment_reference": payment_reference,
            "notes": notes,
            "created_at": now,
            "updated_at": now,
        },
    )
    return invoice_id


def insert_billing_line_item(
    conn: Connection,
    *,
    invoice_id: str,
    resource_type: str,
    resource_id: str,
    description: str,
    unit_price_cents: int,
    period_start: datetime,
    period_end: datetime,
    quantity: int = 1,
    amount_cents: int | None = None,
    subscription_id: str | None = None,
    line_metadata: dict[str, Any] | None = None,
) -> str:
    line_id = legacy_id("bli")
    _insert(
        conn,
        "billing_invoice_line_items",
        {
            "id": line_id,
            "invoice_id": invoice_id,
            "subscription_id": subscription_id,
            "resource_type": resource_type,
            "resource_id": resource_id,
            "description": description,
            "quantity": quantity,
            "unit_price_cents": unit_price_cents,
            "amount_cents": unit_price_cents * quantity if amount_cents is None else amount_cents,
            "period_start": _naive(period_start),
            "period_end": _naive(period_end),
            "line_metadata": _json(line_metadata),
            "created_at": utcnow_naive(),
        },
        casts={"line_metadata": "json"},
    )
    return line_id


def insert_billing_audit_log(
    conn: Connection,
    *,
    event_type: str,
    description: str,
    billing_customer_user_id: str | None = None,
    subscription_id: str | None = None,
    invoice_id: str | None = None,
    event_data: dict[str, Any] | None = None,
    actor_user_id: str | None = None,
    actor_type: str = "system",
    actor_ip: str | None = None,
    event_timestamp: datetime | None = None,
) -> str:
    audit_id = legacy_id("baud")
    timestamp = _naive(event_timestamp)
    _insert(
        conn,
        "billing_audit_logs",
        {
            "id": audit_id,
            "event_type": event_type,
            "event_timestamp": timestamp,
            "billing_customer_user_id": billing_customer_user_id,
            "subscription_id": subscription_id,
            "invoice_id": invoice_id,
            "event_data": _json(event_data),
            "description": description,
            "actor_user_id": actor_user_id,
            "actor_type": actor_type,
            "actor_ip": actor_ip,
            "created_at": timestamp,
        },
        casts={"event_data": "json"},
    )
    return audit_id


# --------------------------------------------------------------------------------------------------------------------
# representative dataset
# --------------------------------------------------------------------------------------------------------------------


def seed_legacy_sample(conn: Connection) -> dict[str, object]:
    """Build a small legacy dataset covering the edge cases of legacy-schema.md §5 (E1–E9).

    Users
      * alice  ``Alice.Admin@Example.com`` (mixed case), user_limits 5, owns ``graph_alice`` (kuzu-standard), API key,
        password_reset token, Stripe billing customer, graph subscription, a pending checkout (resource_id NULL),
        invoice + line item.
      * bob    ``bob@example.com``, user_limits 100, first admin of ``graph_shared_admins`` (legacy tier ``premium``),
        invoice-billing customer, graph subscription and a repository subscription on ``sec``, user_repository row.
      * carol  ``Carol.Member@Example.ORG`` (mixed case), no user_limits, second admin of ``graph_shared_admins`` and
        member of ``graph_alice`` (so graph_alice is shared: two storage snapshots per hour).
      * dave   ``dave@example.net``, inactive, user_limits 5, only a ``member`` row on ``graph_no_admin``
        (legacy tier ``standard``, created_by dave, no credits, no billing).
      * erin   ``erin@example.com``, no user_limits, no graphs, nothing else.
    Graphs
      * ``subgraph`` = ``<graph_shared_admins>_analysis``: subgraph of graph_shared_admins, no user_graphs/credits.
      * ``sec``: shared repository (is_repository, graph_type 'repository', tier 'kuzu-shared'), no user_graphs,
        no credits, no created_by.
    """
    now = utcnow_naive()
    hour = now.replace(minute=0, second=0)
    period_start = datetime(now.year, now.month, 1)
    period_end = period_start + timedelta(days=30)

    passwords = {
        "alice": "Alice-Legacy-Passw0rd!",
        "bob": "Bob-Legacy-Passw0rd!",
        "carol": "Carol-Legacy-Passw0rd!",
        "dave": "Dave-Legacy-Passw0rd!",
        "erin": "Erin-Legacy-Passw0rd!",
    }
    emails = {
        "alice": "Alice.Admin@Example.com",
        "bob": "bob@example.com",
        "carol": "Carol.Member@Example.ORG",
        "dave": "dave@example.net",
        "erin": "erin@example.com",
    }
    names = {"alice": "Alice Admin", "bob": "Bob Builder", "carol": "Carol Member", "dave": "Dave Gone", "erin": "Erin"}

    users: dict[str, str] = {}
    for offset, key in enumerate(passwords):
        users[key] = insert_user(
            conn,
            email=emails[key],
            name=names[key],
            is_active=key != "dave",
            password_hash=bcrypt_hash(passwords[key]),
            created_at=now - timedelta(days=100 - offset),
        )
    alice, bob, carol, dave, erin = (users[k] for k in ("alice", "bob", "carol", "dave", "erin"))

    user_limits = {
        "alice": insert_user_limits(conn, alice, 5),
        "bob": insert_user_limits(conn, bob, 100),
        "dave": insert_user_limits(conn, dave, 5),
    }

    # --- graphs -------------------------------------------------------------------------------------------------
    graph_alice = insert_graph(conn, name="Alice Corp", graph_type="entity", tier="kuzu-standard", created_by=alice)
    graph_shared_admins = insert_graph(conn, name="Bob & Carol", graph_type="entity", tier="premium", created_by=bob)
    graph_no_admin = insert_graph(conn, name="Dave's notes", graph_type="generic", tier="standard", created_by=dave)
    subgraph = insert_graph(
        conn,
        name="Bob & Carol / analysis",
        graph_type="entity",
        tier="premium",
        created_by=bob,
        parent_graph_id=graph_shared_admins,
        subgraph_index=1,
        subgraph_name="analysis",
    )
    sec = insert_graph(
        conn,
        graph_id="sec",
        name="SEC XBRL filings",
        graph_type="repository",
        tier="kuzu-shared",
        is_repository=True,
        repository_type="sec",
    )

    user_graphs = {
        "alice_admin": insert_user_graph(
            conn, alice, graph_alice, "admin", is_selected=True, created_at=now - timedelta(days=90)
        ),
        "carol_member_alice": insert_user_graph(
            conn, carol, graph_alice, "member", is_selected=False, created_at=now - timedelta(days=60)
        ),
        "bob_admin": insert_user_graph(
            conn, bob, graph_shared_admins, "admin", is_selected=True, created_at=now - timedelta(days=80)
        ),
        "carol_admin": insert_user_graph(
            conn, carol, graph_shared_admins, "admin", is_selected=True, created_at=now - timedelta(days=50)
        ),
        "dave_member": insert_user_graph(
            conn, dave, graph_no_admin, "member", is_selected=True, created_at=now - timedelta(days=70)
        ),
    }

    # --- credits ------------------------------------------------------------------------------------------------
    credits_alice = insert_graph_credits(
        conn, graph_alice, alice, alice, Decimal("987.50"), monthly_allocation=Decimal("1000.00")
    )
    credits_shared = insert_graph_credits(
        conn,
        graph_shared_admins,
        bob,
        bob,
        Decimal("25000.00"),
        monthly_allocation=Decimal("25000.00"),
        storage_limit_gb=Decimal("2000.00"),
    )
    transactions = {
        "alice_allocation": insert_credit_transaction(
            conn,
            graph_credits_id=credits_alice,
            graph_id=graph_alice,
            transaction_type="allocation",
            amount=Decimal("1000.00"),
            description="Initial credit allocation",
            idempotency_key=f"initial_allocation_{graph_alice}",
            user_id=alice,
            metadata={"source": "graph_creation"},
        ),
        "carol_consumption": insert_credit_transaction(
            conn,
            graph_credits_id=credits_alice,
            graph_id=graph_alice,
            transaction_type="consumption",
            amount=Decimal("-12.50"),
            description="AI agent call",
            user_id=carol,
            operation_id="op_agent_call_1",
            metadata={"operation": "agent_call"},
        ),
        "bob_allocation": insert_credit_transaction(
            conn,
            graph_credits_id=credits_shared,
            graph_id=graph_shared_admins,
            transaction_type="allocation",
            amount=Decimal("25000.00"),
            description="Initial credit allocation",
            idempotency_key=f"initial_allocation_{graph_shared_admins}",
            user_id=bob,
        ),
    }

    # --- identity extras ----------------------------------------------------------------------------------------
    api_key_plain = new_api_key()
    api_key_id = insert_api_key(conn, alice, api_key_plain, name="alice laptop", last_used_at=now)
    reset_token_plain = secrets.token_urlsafe(32)
    reset_token_id = insert_user_token(
        conn, alice, "password_reset", reset_token_plain, now + timedelta(hours=1), ip_address="203.0.113.7"
    )
    user_repository_bob = insert_user_repository(
        conn, bob, sec, repository_type="SEC", access_level="READ", repository_plan="STARTER"
    )

    # --- billing ------------------------------------------------------------------------------------------------
    stripe_customer_alice = f"cus_{secrets.token_hex(7)}"
    insert_billing_customer(
        conn,
        alice,
        stripe_customer_id=stripe_customer_alice,
        has_payment_method=True,
        default_payment_method_id=f"pm_{secrets.token_hex(8)}",
        billing_email=emails["alice"],
        billing_contact_name=names["alice"],
    )
    insert_billing_customer(
        conn, bob, invoice_billing_enabled=True, billing_email="ap@bob.example.com", payment_terms="net_60"
    )

    stripe_sub_alice = f"sub_{secrets.token_hex(8)}"
    sub_graph_alice = insert_billing_subscription(
        conn,
        billing_customer_user_id=alice,
        resource_type="graph",
        resource_id=graph_alice,
        plan_name="kuzu-standard",
        base_price_cents=4900,
        status="active",
        payment_provider="stripe",
        stripe_subscription_id=stripe_sub_alice,
        provider_subscription_id=stripe_sub_alice,
        provider_customer_id=stripe_customer_alice,
        subscription_metadata={"resource_config": {"graph_id": graph_alice, "tier": "kuzu-standard"}},
        started_at=now - timedelta(days=90),
        current_period_start=period_start,
        current_period_end=period_end,
    )
    sub_pending_alice = insert_billing_subscription(
        conn,
        billing_customer_user_id=alice,
        resource_type="graph",
        resource_id=None,
        plan_name="kuzu-large",
        base_price_cents=19900,
        status="pending_payment",
        payment_provider="stripe",
        provider_subscription_id=f"cs_test_{secrets.token_hex(12)}",
        subscription_metadata={"resource_config": {"graph_name": "Alice Two", "tier": "kuzu-large"}},
    )
    sub_graph_bob = insert_billing_subscription(
        conn,
        billing_customer_user_id=bob,
        resource_type="graph",
        resource_id=graph_shared_admins,
        plan_name="kuzu-xlarge",
        base_price_cents=49900,
        status="active",
        started_at=now - timedelta(days=80),
        current_period_start=period_start,
        current_period_end=period_end,
    )  # subscription_metadata left to the server default '{}'::jsonb
    sub_repo_bob = insert_billing_subscription(
        conn,
        billing_customer_user_id=bob,
        resource_type="repository",
        resource_id=sec,
        plan_name="starter",
        base_price_cents=2900,
        status="active",
        started_at=now - timedelta(days=40),
    )

    invoice_alice = insert_billing_invoice(
        conn,
        billing_customer_user_id=alice,
        period_start=period_start,
        period_end=period_end,
        subtotal_cents=4900,
        status="paid",
        stripe_invoice_id=f"in_{secrets.token_hex(8)}",
        sent_at=period_start,
        due_date=period_start + timedelta(days=30),
        paid_at=period_start + timedelta(days=1),
        payment_method="card",
    )
    line_item_alice = insert_billing_line_item(
        conn,
        invoice_id=invoice_alice,
        subscription_id=sub_graph_alice,
        resource_type="graph",
        resource_id=graph_alice,
        description="Graph subscription kuzu-standard",
        unit_price_cents=4900,
        period_start=period_start,
        period_end=period_end,
        line_metadata={"plan_name": "kuzu-standard"},
    )

    audit_logs = {
        "alice_customer_created": insert_billing_audit_log(
            conn,
            event_type="customer_created",
            description="Billing customer created",
            billing_customer_user_id=alice,
            actor_user_id=alice,
            actor_type="user",
            actor_ip="203.0.113.7",
        ),
        "alice_subscription_created": insert_billing_audit_log(
            conn,
            event_type="subscription_created",
            description="Graph subscription created",
            billing_customer_user_id=alice,
            subscription_id=sub_graph_alice,
            event_data={"plan_name": "kuzu-standard", "resource_id": graph_alice},
            actor_user_id=alice,
            actor_type="user",
        ),
        "alice_invoice_generated": insert_billing_audit_log(
            conn,
            event_type="invoice_generated",
            description="Invoice generated",
            billing_customer_user_id=alice,
            invoice_id=invoice_alice,
            event_data={"total_cents": 4900},
        ),
        "bob_subscription_activated": insert_billing_audit_log(
            conn,
            event_type="subscription_activated",
            description="Repository subscription activated by admin",
            billing_customer_user_id=bob,
            subscription_id=sub_repo_bob,
            actor_type="admin",
        ),
        "webhook_received": insert_billing_audit_log(
            conn,
            event_type="webhook_received",
            description="Stripe webhook without a customer",
            event_data={"type": "checkout.session.completed"},
        ),
    }

    # --- usage --------------------------------------------------------------------------------------------------
    usage = {
        # graph_alice is shared with carol: one storage snapshot per user_graphs row, same hour.
        "snapshot_alice": insert_usage_row(
            conn,
            user_id=alice,
            graph_id=graph_alice,
            event_type="storage_snapshot",
            graph_tier="kuzu-standard",
            recorded_at=hour,
            storage_gb=1.25,
            storage_bytes=1.25 * 1024**3,
            files_storage_gb=0.25,
            tables_storage_gb=0.5,
            graphs_storage_gb=0.5,
            subgraphs_storage_gb=0.0,
        ),
        "snapshot_carol": insert_usage_row(
            conn,
            user_id=carol,
            graph_id=graph_alice,
            event_type="storage_snapshot",
            graph_tier="kuzu-standard",
            recorded_at=hour,
            storage_gb=1.25,
            storage_bytes=1.25 * 1024**3,
            files_storage_gb=0.25,
            tables_storage_gb=0.5,
            graphs_storage_gb=0.5,
            subgraphs_storage_gb=0.0,
        ),
        "credit_consumption_carol": insert_usage_row(
            conn,
            user_id=carol,
            graph_id=graph_alice,
            event_type="credit_consumption",
            operation_type="agent_call",
            graph_tier="kuzu-standard",
            recorded_at=hour + timedelta(minutes=5),
            credits_consumed=Decimal("12.50"),
            base_credit_cost=Decimal("12.50"),
            duration_ms=840,
            status_code=200,
            metadata={"operation_id": "op_agent_call_1"},
        ),
        "api_call_bob_legacy_tier": insert_usage_row(
            conn,
            user_id=bob,
            graph_id=graph_shared_admins,
            event_type="api_call",
            operation_type="query",
            graph_tier="premium",
            recorded_at=hour - timedelta(hours=1),
            duration_ms=120,
            status_code=200,
        ),
        "snapshot_dave_fallback_tier": insert_usage_row(
            conn,
            user_id=dave,
            graph_id=graph_no_admin,
            event_type="storage_snapshot",
            graph_tier="standard",
            recorded_at=hour,
            storage_gb=0.1,
        ),
    }

    return {
        "users": users,
        "emails": emails,
        "passwords": passwords,
        "user_limits": user_limits,
        "users_without_limits": [carol, erin],
        "inactive_users": [dave],
        "users_without_graphs": [erin],
        "graphs": {
            "alice": graph_alice,
            "shared_admins": graph_shared_admins,
            "no_admin": graph_no_admin,
            "subgraph": subgraph,
            "sec": sec,
        },
        "graph_tiers": {
            graph_alice: "kuzu-standard",
            graph_shared_admins: "premium",
            graph_no_admin: "standard",
            subgraph: "premium",
            sec: "kuzu-shared",
        },
        "user_graphs": user_graphs,
        "graph_credits": {"alice": credits_alice, "shared_admins": credits_shared},
        "credit_transactions": transactions,
        "api_key": {"id": api_key_id, "user_id": alice, "plain": api_key_plain, "prefix": api_key_plain[:8]},
        "password_reset_token": {"id": reset_token_id, "user_id": alice, "plain": reset_token_plain},
        "user_repository": {"bob_sec": user_repository_bob},
        "billing_customers": {"alice": alice, "bob": bob},
        "stripe_customer_id": stripe_customer_alice,
        "subscriptions": {
            "graph_alice": sub_graph_alice,
            "pending_checkout_alice": sub_pending_alice,
            "graph_bob": sub_graph_bob,
            "repository_bob_sec": sub_repo_bob,
        },
        "invoices": {"alice": invoice_alice},
        "line_items": {"alice": line_item_alice},
        "audit_logs": audit_logs,
        "usage": usage,
    }
