"""Graphs and everything keyed by a graph: access grants, the credit pool and ledger, usage events.

These tables come from the legacy schema (legacy-schema.md §1).  Revision c4d5e6f7a8b9 added
``graphs.org_id`` (NULL only for shared repositories: ``ck_graphs_org_required``), renamed
``user_graphs`` -> ``graph_users`` and ``graph_usage_tracking`` -> ``graph_usage`` and made the graphs /
graph_users timestamps ``timestamptz``.  Legacy constraint and index names that do not follow the naming
convention are kept with :func:`conv`.  ``graph_usage.recorded_at`` is still ``timestamp`` (UTC values).
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    Boolean,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    Numeric,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.orm import Mapped, mapped_column
from sqlalchemy.sql.elements import conv

from robosystems.ids import new_id
from robosystems.models.base import Base, created_at_column, updated_at_column

#: Graph access roles stored in graph_users (legacy rows may hold other strings, kept as they are).
GRAPH_ROLES = ("admin", "member", "viewer")


def _utcnow() -> datetime:
    return datetime.now(UTC)


class Graph(Base):
    __tablename__ = "graphs"
    __table_args__ = (
        CheckConstraint("graph_type IN ('generic', 'entity', 'repository')", name=conv("check_graph_type")),
        CheckConstraint(
            "(is_subgraph = false AND parent_graph_id IS NULL AND subgraph_index IS NULL AND subgraph_name IS NULL)"
            " OR (is_subgraph = true AND parent_graph_id IS NOT NULL AND subgraph_index IS NOT NULL"
            " AND subgraph_name IS NOT NULL)",
            name=conv("check_subgraph_consistency"),
        ),
        CheckConstraint("org_id IS NOT NULL OR is_repository", name="org_required"),
        UniqueConstraint("parent_graph_id", "subgraph_index", name=conv("unique_subgraph_index")),
        Index("ix_graphs_org_id", "org_id"),
    )

    graph_id: Mapped[str] = mapped_column(String, primary_key=True)
    org_id: Mapped[str | None] = mapped_column(String, ForeignKey("orgs.id", ondelete="RESTRICT"))
    graph_name: Mapped[str] = mapped_column(String, nullable=False)
    graph_type: Mapped[str] = mapped_column(String, nullable=False)
    base_schema: Mapped[str | None] = mapped_column(String)
    schema_extensions: Mapped[list[Any]] = mapped_column(JSONB, nullable=False, default=list)
    graph_instance_id: Mapped[str] = mapped_column(String, nullable=False, default="default")
    graph_cluster_region: Mapped[str | None] = mapped_column(String)
    graph_tier: Mapped[str] = mapped_column(String, nullable=False, default="kuzu-standard")
    graph_metadata: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    is_subgraph: Mapped[bool] = mapped_column(Boolean, nullable=False, server_default="false", default=False)
    parent_graph_id: Mapped[str | None] = mapped_column(String)  # no FK (legacy)
    subgraph_index: Mapped[int | None] = mapped_column(Integer)
    subgraph_name: Mapped[str | None] = mapped_column(String)
    subgraph_metadata: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    is_repository: Mapped[bool] = mapped_column(Boolean, nullable=False, server_default="false", default=False)
    repository_type: Mapped[str | None] = mapped_column(String)
    data_source_type: Mapped[str | None] = mapped_column(String)
    data_source_url: Mapped[str | None] = mapped_column(String)
    last_sync_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    sync_status: Mapped[str | None] = mapped_column(String)
    sync_frequency: Mapped[str | None] = mapped_column(String)
    sync_error_message: Mapped[str | None] = mapped_column(String)
    created_at: Mapped[datetime] = created_at_column()
    updated_at: Mapped[datetime] = updated_at_column()


class GraphUser(Base):
    """An explicit grant on one graph (legacy ``user_graphs``).  Org members need none: their access comes
    from the membership (:mod:`robosystems.graphs.access`)."""

    __tablename__ = "graph_users"
    __table_args__ = (
        UniqueConstraint("user_id", "graph_id"),
        Index("ix_graph_users_user_id", "user_id"),
        Index("ix_graph_users_graph_id", "graph_id"),
        Index("ix_graph_users_user_id_is_selected", "user_id", "is_selected"),
    )

    id: Mapped[str] = mapped_column(String, primary_key=True, default=lambda: new_id("gu"))
    user_id: Mapped[str] = mapped_column(String, ForeignKey("users.id", ondelete="CASCADE"), nullable=False)
    graph_id: Mapped[str] = mapped_column(String, ForeignKey("graphs.graph_id", ondelete="CASCADE"), nullable=False)
    role: Mapped[str] = mapped_column(String, nullable=False, server_default="member", default="member")
    is_selected: Mapped[bool] = mapped_column(Boolean, nullable=False, server_default="false", default=False)
    created_at: Mapped[datetime] = created_at_column()
    updated_at: Mapped[datetime] = updated_at_column()


class GraphCredits(Base):
    """One credit pool per graph.  ``user_id``/``billing_admin_id`` are legacy user columns (kept as is)."""

    __tablename__ = "graph_credits"
    __table_args__ = (
        UniqueConstraint("graph_id", name=conv("graph_credits_graph_id_key")),
        CheckConstraint("current_balance >= 0", name="current_balance_nonnegative"),  # e6f7a8b9c0d1
        CheckConstraint(  # b9c0d1e2f3a4
            "purchased_balance >= 0 AND (current_balance < 0 OR purchased_balance <= current_balance)",
            name="purchased_balance",
        ),
        Index("idx_graph_credits_billing_admin", "billing_admin_id"),
        Index("idx_graph_credits_user_id", "user_id"),
    )

    id: Mapped[str] = mapped_column(String, primary_key=True, default=lambda: new_id("crd"))
    graph_id: Mapped[str] = mapped_column(
        String, ForeignKey("graphs.graph_id", name=conv("graph_credits_graph_id_fkey")), nullable=False
    )
    user_id: Mapped[str] = mapped_column(
        String, ForeignKey("users.id", name=conv("graph_credits_user_id_fkey")), nullable=False
    )
    current_balance: Mapped[Decimal] = mapped_column(Numeric(10, 2), nullable=False, default=Decimal("0"))
    #: the part of the balance bought as credit packs: never reset at renewal, consumed after the allocation
    purchased_balance: Mapped[Decimal] = mapped_column(
        Numeric(10, 2), nullable=False, server_default="0", default=Decimal("0")
    )
    monthly_allocation: Mapped[Decimal] = mapped_column(Numeric(10, 2), nullable=False, default=Decimal("0"))
    storage_limit_gb: Mapped[Decimal] = mapped_column(Numeric(10, 2), nullable=False, default=Decimal("500"))
    storage_override_gb: Mapped[Decimal | None] = mapped_column(Numeric(10, 2))
    auto_expand_enabled: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    last_storage_warning_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    storage_warning_threshold: Mapped[Decimal] = mapped_column(Numeric(3, 2), nullable=False, default=Decimal("0.8"))
    billing_admin_id: Mapped[str] = mapped_column(
        String, ForeignKey("users.id", name=conv("graph_credits_billing_admin_id_fkey")), nullable=False
    )
    last_allocation_date: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False, default=_utcnow)
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), nullable=False, default=_utcnow, onupdate=_utcnow
    )


class GraphCreditTransaction(Base):
    """The credit ledger: ``amount`` is negative for ``consumption``."""

    __tablename__ = "graph_credit_transactions"
    __table_args__ = (
        Index("idx_credit_transactions_graph_id", "graph_id"),
        Index("idx_credit_transactions_created", "created_at"),
        Index("idx_credit_transactions_idempotency", "idempotency_key", unique=True),
        CheckConstraint(  # e6f7a8b9c0d1; bonus/expiration are legacy types, kept as they are
            "transaction_type IN ('allocation', 'consumption', 'refund', 'adjustment', 'bonus', 'expiration')",
            name="transaction_type",
        ),
    )

    id: Mapped[str] = mapped_column(String, primary_key=True, default=lambda: new_id("txn"))
    graph_credits_id: Mapped[str] = mapped_column(
        String,
        ForeignKey("graph_credits.id", name=conv("graph_credit_transactions_graph_credits_id_fkey")),
        nullable=False,
    )
    graph_id: Mapped[str] = mapped_column(String, nullable=False)  # no FK (legacy)
    transaction_type: Mapped[str] = mapped_column(String, nullable=False)
    amount: Mapped[Decimal] = mapped_column(Numeric(10, 2), nullable=False)
    description: Mapped[str] = mapped_column(String(500), nullable=False)
    idempotency_key: Mapped[str | None] = mapped_column(String(255))
    request_id: Mapped[str | None] = mapped_column(String(255))
    operation_id: Mapped[str | None] = mapped_column(String(255))
    user_id: Mapped[str | None] = mapped_column(String)  # acting user; no FK (legacy)
    transaction_metadata: Mapped[str | None] = mapped_column("metadata", Text)  # JSON string
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False, default=_utcnow)


class GraphUsage(Base):
    """Recorded usage events (legacy ``graph_usage_tracking``).  Storage snapshots were written once per
    grant (E7): aggregate per graph and hour, never per row."""

    __tablename__ = "graph_usage"
    __table_args__ = (
        Index("ix_graph_usage_tracking_graph_id", "graph_id"),
        Index("ix_graph_usage_tracking_recorded_at", "recorded_at"),
        Index("idx_event_type_time", "event_type", "recorded_at"),
    )

    id: Mapped[str] = mapped_column(String, primary_key=True, default=lambda: new_id("usg"))
    user_id: Mapped[str] = mapped_column(String, nullable=False)  # no FK (legacy)
    graph_id: Mapped[str] = mapped_column(String, nullable=False)  # no FK (legacy)
    event_type: Mapped[str] = mapped_column(String, nullable=False)
    operation_type: Mapped[str | None] = mapped_column(String)
    graph_tier: Mapped[str] = mapped_column(String, nullable=False)
    instance_id: Mapped[str | None] = mapped_column(String)
    region: Mapped[str | None] = mapped_column(String)
    storage_bytes: Mapped[float | None] = mapped_column(Float)
    storage_gb: Mapped[float | None] = mapped_column(Float)
    storage_delta_gb: Mapped[float | None] = mapped_column(Float)
    credits_consumed: Mapped[Decimal | None] = mapped_column(Numeric(10, 2))
    base_credit_cost: Mapped[Decimal | None] = mapped_column(Numeric(10, 2))
    duration_ms: Mapped[int | None] = mapped_column(Integer)
    memory_mb: Mapped[float | None] = mapped_column(Float)
    cpu_percent: Mapped[float | None] = mapped_column(Float)
    request_size_kb: Mapped[float | None] = mapped_column(Float)
    response_size_kb: Mapped[float | None] = mapped_column(Float)
    status_code: Mapped[int | None] = mapped_column(Integer)
    cached_operation: Mapped[bool | None] = mapped_column(Boolean)
    storage_overage_gb: Mapped[float | None] = mapped_column(Float)
    estimated_cost_cents: Mapped[int | None] = mapped_column(Integer)
    error_type: Mapped[str | None] = mapped_column(String)
    error_message: Mapped[str | None] = mapped_column(Text)
    event_metadata: Mapped[str | None] = mapped_column("metadata", Text)  # JSON string
    user_agent: Mapped[str | None] = mapped_column(String)
    ip_address: Mapped[str | None] = mapped_column(String)
    recorded_at: Mapped[datetime] = mapped_column(DateTime(timezone=False), nullable=False)  # naive UTC
    billing_year: Mapped[int] = mapped_column(Integer, nullable=False)
    billing_month: Mapped[int] = mapped_column(Integer, nullable=False)
    billing_day: Mapped[int] = mapped_column(Integer, nullable=False)
    billing_hour: Mapped[int] = mapped_column(Integer, nullable=False)
    files_storage_gb: Mapped[float | None] = mapped_column(Float)
    tables_storage_gb: Mapped[float | None] = mapped_column(Float)
    graphs_storage_gb: Mapped[float | None] = mapped_column(Float)
    subgraphs_storage_gb: Mapped[float | None] = mapped_column(Float)


class GraphOwnershipConflict(Base):
    """Written once by migration c4d5e6f7a8b9: graphs whose owner an operator should review."""

    __tablename__ = "graph_ownership_conflicts"

    graph_id: Mapped[str] = mapped_column(String, ForeignKey("graphs.graph_id", ondelete="CASCADE"), primary_key=True)
    chosen_org_id: Mapped[str] = mapped_column(String, nullable=False)
    chosen_user_id: Mapped[str | None] = mapped_column(String)
    chosen_source: Mapped[str] = mapped_column(String(40), nullable=False)
    reasons: Mapped[list[str]] = mapped_column(ARRAY(Text), nullable=False)
    signals: Mapped[dict[str, Any]] = mapped_column(JSONB, nullable=False)
    created_at: Mapped[datetime] = created_at_column()
