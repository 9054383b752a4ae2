"""Request and response models of the graph endpoints.

Field names and types follow robosystems-client 0.2.13 (client-0.2.13.txt): ``CreateGraphRequest`` /
``GraphMetadata``, ``UserGraphsResponse`` / ``GraphInfo``, ``CypherQueryRequest``, ``DatabaseInfoResponse``,
``DatabaseHealthResponse``, ``GraphLimitsResponse`` (+ ``StorageLimits``, ``QueryLimits``, ``CopyOperationLimits``,
``BackupLimits``, ``RateLimits``, ``CreditLimits``), ``CreditSummaryResponse``, ``DetailedTransactionsResponse``
(+ ``EnhancedCreditTransactionResponse``), ``StorageLimitResponse``, ``GraphMetricsResponse``,
``GraphUsageResponse`` (+ ``StorageSummary``, ``CreditSummary``, ``PerformanceInsights``), ``SuccessResponse``.
The client declares no model for some responses (create 202, query 200, balance check, storage usage, operation
status): those are plain objects documented here.  Fields marked [ours] go beyond the client (it ignores them).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from robosystems.billing.schemas import GraphResourceConfig

_TEXT = r"^[^\x00-\x1f\x7f]*$"


class _In(BaseModel):
    model_config = ConfigDict(extra="ignore", str_strip_whitespace=True)


# --- create ----------------------------------------------------------------------------------------------------


class GraphMetadata(_In):
    graph_name: str = Field(min_length=1, max_length=100, pattern=_TEXT)
    description: str | None = Field(default=None, max_length=1000)
    schema_extensions: list[str] = Field(default_factory=list, max_length=20)
    tags: list[str] = Field(default_factory=list, max_length=20)


class CreateGraphRequest(_In):
    metadata: GraphMetadata
    instance_tier: str | None = Field(default=None, max_length=100)  # the plan; default: the first plan
    tags: list[str] = Field(default_factory=list, max_length=20)
    custom_schema: dict[str, Any] | None = None  # accepted, not applied (base schema only)
    initial_entity: dict[str, Any] | None = None  # accepted, not applied
    create_entity: bool = False
    org_id: str | None = Field(default=None, min_length=1, max_length=64)  # [ours] default: the token's org

    def resource_config(self) -> GraphResourceConfig:
        tags = list(dict.fromkeys([*self.metadata.tags, *self.tags]))[:20]
        return GraphResourceConfig(
            graph_name=self.metadata.graph_name,
            description=self.metadata.description,
            tags=tags,
            schema_extensions=self.metadata.schema_extensions,
        )


class CreateGraphAccepted(BaseModel):
    """202: provisioning started or will start when the payment is confirmed."""

    operation_id: str
    subscription_id: str
    status_url: str
    status: str  # [ours] the subscription status
    graph_id: str | None = None  # [ours] set once provisioned


class PaymentRequired(BaseModel):
    """402: the org must pay first (hosted checkout)."""

    detail: str
    code: str = "payment_required"
    checkout_url: str | None = None
    session_id: str | None = None  # [ours]
    subscription_id: str | None = None  # [ours]
    request_id: str | None = None


# --- list / select ---------------------------------------------------------------------------------------------


class GraphInfo(BaseModel):
    """The client's ``GraphInfo`` is camelCase on the wire (``graphId``, ``isSelected`` …)."""

    graph_id: str = Field(serialization_alias="graphId")
    graph_name: str = Field(serialization_alias="graphName")
    role: str
    is_selected: bool = Field(serialization_alias="isSelected")
    created_at: str = Field(serialization_alias="createdAt")
    is_repository: bool = Field(default=False, serialization_alias="isRepository")
    repository_type: str | None = Field(default=None, serialization_alias="repositoryType")
    org_id: str | None = Field(default=None, serialization_alias="orgId")  # [ours]
    graph_tier: str | None = Field(default=None, serialization_alias="graphTier")  # [ours]
    read_only: bool = Field(default=False, serialization_alias="readOnly")  # [ours] frozen by its subscription


class UserGraphsResponse(BaseModel):
    graphs: list[GraphInfo]
    selected_graph_id: str | None = Field(default=None, serialization_alias="selectedGraphId")


class SuccessResponse(BaseModel):
    message: str
    success: bool = True
    data: dict[str, Any] | None = None


# --- query -----------------------------------------------------------------------------------------------------


class CypherQueryRequest(_In):
    query: str = Field(min_length=1)
    parameters: dict[str, Any] | None = None
    timeout: int | None = Field(default=None, ge=1, le=86400)  # seconds; capped by the plan

    @field_validator("query")
    @classmethod
    def _no_nul(cls, value: str) -> str:
        if "\x00" in value:
            raise ValueError("the query must not contain NUL characters")
        return value


class CypherQueryResponse(BaseModel):
    success: bool = True
    graph_id: str
    query_id: str
    data: list[dict[str, Any]]
    columns: list[str]
    row_count: int
    truncated: bool
    execution_time_ms: float
    timeout_seconds: int
    max_rows: int
    read_only: bool
    credits_consumed: float
    credits_remaining: float | None
    timestamp: str


# --- info / health / limits ------------------------------------------------------------------------------------


class DatabaseInfoResponse(BaseModel):
    graph_id: str
    database_name: str
    database_size_bytes: int
    database_size_mb: float
    node_count: int
    relationship_count: int
    node_labels: list[str]
    relationship_types: list[str]
    created_at: str
    last_modified: str
    read_only: bool
    backup_count: int
    schema_version: str | None = None
    last_backup_date: str | None = None


class DatabaseHealthResponse(BaseModel):
    graph_id: str
    status: str
    connection_status: str
    uptime_seconds: float
    query_count_24h: int
    avg_query_time_ms: float
    error_rate_24h: float
    last_query_time: str | None = None
    memory_usage_mb: float | None = None
    storage_usage_mb: float | None = None
    alerts: list[str] = Field(default_factory=list)


class StorageLimits(BaseModel):
    max_storage_gb: float
    approaching_limit: bool
    current_usage_gb: float | None = None


class QueryLimits(BaseModel):
    max_timeout_seconds: int
    chunk_size: int
    max_rows_per_query: int
    concurrent_queries: int


class CopyOperationLimits(BaseModel):
    max_file_size_gb: float
    timeout_seconds: int
    concurrent_operations: int
    max_files_per_operation: int
    daily_copy_operations: int
    supported_formats: list[str]


class BackupLimits(BaseModel):
    max_backup_size_gb: float
    backup_retention_days: int
    max_backups_per_day: int


class RateLimits(BaseModel):
    requests_per_minute: int
    requests_per_hour: int
    burst_capacity: int


class CreditLimits(BaseModel):
    monthly_ai_credits: int
    current_balance: int
    storage_billing_enabled: bool
    storage_rate_per_gb_per_day: int


class GraphLimitsResponse(BaseModel):
    graph_id: str
    subscription_tier: str
    graph_tier: str
    is_shared_repository: bool
    storage: StorageLimits
    queries: QueryLimits
    copy_operations: CopyOperationLimits
    backups: BackupLimits
    rate_limits: RateLimits
    credits: CreditLimits | None = None
    read_only: bool = False  # [ours]
    subscription_status: str | None = None  # [ours]


# --- credits ---------------------------------------------------------------------------------------------------


class CreditSummaryResponse(BaseModel):
    graph_id: str
    graph_tier: str
    current_balance: float
    monthly_allocation: float
    consumed_this_month: float
    transaction_count: int
    usage_percentage: float
    last_allocation_date: str | None = None


class EnhancedCreditTransactionResponse(BaseModel):
    id: str
    type: str
    amount: float
    description: str
    metadata: dict[str, Any]
    created_at: str
    operation_id: str | None = None
    idempotency_key: str | None = None
    request_id: str | None = None
    user_id: str | None = None


class DetailedTransactionsResponse(BaseModel):
    transactions: list[EnhancedCreditTransactionResponse]
    summary: dict[str, Any]
    total_count: int
    filtered_count: int
    date_range: dict[str, Any]


class StorageLimitResponse(BaseModel):
    graph_id: str
    current_storage_gb: float
    effective_limit_gb: float
    usage_percentage: float
    within_limit: bool
    approaching_limit: bool
    needs_warning: bool
    has_override: bool
    recommendations: list[str] | None = None


# --- analytics -------------------------------------------------------------------------------------------------


class GraphMetricsResponse(BaseModel):
    graph_id: str
    timestamp: str
    total_nodes: int
    total_relationships: int
    node_counts: dict[str, int]
    relationship_counts: dict[str, int]
    estimated_size: dict[str, Any]
    health_status: dict[str, Any]
    graph_name: str | None = None
    user_role: str | None = None


class StorageSummary(BaseModel):
    graph_tier: str
    avg_storage_gb: float
    max_storage_gb: float
    min_storage_gb: float
    total_gb_hours: float
    measurement_count: int


class CreditSummary(BaseModel):
    graph_tier: str
    total_credits_consumed: float
    total_base_cost: float
    operation_breakdown: dict[str, Any]
    cached_operations: int
    billable_operations: int
    transaction_count: int


class PerformanceInsights(BaseModel):
    analysis_period_days: int
    total_operations: int
    operation_stats: dict[str, Any]
    slow_queries: list[dict[str, Any]]
    performance_score: int


class GraphUsageResponse(BaseModel):
    graph_id: str
    time_range: str
    timestamp: str
    storage_summary: StorageSummary | None = None
    credit_summary: CreditSummary | None = None
    performance_insights: PerformanceInsights | None = None
    recent_events: list[dict[str, Any]] = Field(default_factory=list)


# --- operations / admin ----------------------------------------------------------------------------------------


class OperationStatusResponse(BaseModel):
    operation_id: str
    operation_type: str
    status: str  # pending | running | completed | failed | cancelled
    subscription_id: str
    subscription_status: str
    progress_percent: int
    message: str
    graph_id: str | None = None
    result: dict[str, Any] | None = None
    error: str | None = None
    attempt: int = 0
    created_at: str
    updated_at: str
    completed_at: str | None = None


class RetryProvisioningRequest(_In):
    reason: str = Field(min_length=3, max_length=500, pattern=_TEXT)


class RetryProvisioningResponse(BaseModel):
    subscription_id: str
    status: str
    operation_id: str
    status_url: str
