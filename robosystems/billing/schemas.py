"""Request and response models of the billing and offering endpoints.

Field names and types follow robosystems-client 0.2.13 (client-0.2.13.txt): ``CheckoutResponse``,
``CheckoutStatusResponse``, ``BillingCustomer``, ``PaymentMethod``, ``UpdatePaymentMethodResponse``,
``GraphSubscriptionResponse``, ``Invoice``/``InvoicesResponse``, ``ServiceOfferingsResponse`` and its
nested models, ``GraphTierInfo``/``AvailableGraphTiersResponse``.  Fields marked [ours] go beyond the
client (it ignores unknown fields).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

_TEXT = r"^[^\x00-\x1f\x7f]*$"  # no control characters


class _In(BaseModel):
    model_config = ConfigDict(extra="ignore", str_strip_whitespace=True)


class GraphResourceConfig(_In):
    """``resource_config`` of a graph checkout: what the paid graph will be called (the tier comes from the plan)."""

    graph_name: str = Field(min_length=1, max_length=100, pattern=_TEXT)
    description: str | None = Field(default=None, max_length=1000)
    tags: list[str] = Field(default_factory=list, max_length=20)
    schema_extensions: list[str] = Field(default_factory=list, max_length=20)

    @field_validator("tags", "schema_extensions")
    @classmethod
    def _short_items(cls, value: list[str]) -> list[str]:
        cleaned = [item.strip() for item in value]
        if any(not item or len(item) > 64 for item in cleaned):
            raise ValueError("items must be 1..64 characters")
        return cleaned


class CreateCheckoutRequest(_In):
    """A subscription checkout (the client's shape: a graph plan, ``resource_type: graph``) or [ours] a per-seat
    org plan (``resource_type: org``, ``quantity`` seats) or a credit pack (``kind: credit_pack``, ``pack``,
    ``graph_id``: a one-time payment)."""

    kind: Literal["subscription", "credit_pack"] = "subscription"
    plan_name: str | None = Field(default=None, min_length=1, max_length=100)
    resource_type: Literal["graph", "org"] = "graph"
    resource_config: GraphResourceConfig | None = None
    org_id: str | None = Field(default=None, min_length=1, max_length=64)  # [ours] default: the token's org
    quantity: int | None = Field(default=None, ge=1, le=100_000)  # [ours] seats (resource_type org)
    pack: str | None = Field(default=None, min_length=1, max_length=100)  # [ours] credit pack name
    graph_id: str | None = Field(default=None, min_length=3, max_length=64)  # [ours] the credit pack's graph

    @model_validator(mode="after")
    def _complete(self) -> CreateCheckoutRequest:
        if self.kind == "credit_pack":
            if not self.pack or not self.graph_id:
                raise ValueError("a credit_pack checkout names the pack and the graph_id")
        elif not self.plan_name:
            raise ValueError("plan_name is required")
        elif self.resource_type == "graph" and self.resource_config is None:
            raise ValueError("resource_config is required for a graph")
        return self


class CheckoutResponse(BaseModel):
    checkout_url: str | None = None
    session_id: str | None = None
    subscription_id: str | None = None
    requires_checkout: bool = True
    billing_disabled: bool = False
    status: str | None = None  # [ours] the subscription status
    expires_at: str | None = None  # [ours] when the checkout session ends unpaid
    purchase_id: str | None = None  # [ours] a credit pack purchase (kind credit_pack)


class CheckoutStatusResponse(BaseModel):
    status: str
    subscription_id: str
    resource_id: str | None = None
    operation_id: str | None = None
    error: str | None = None


class PaymentMethod(BaseModel):
    id: str
    type: str
    is_default: bool
    brand: str | None = None
    last4: str | None = None
    exp_month: int | None = None
    exp_year: int | None = None


class BillingCustomer(BaseModel):
    org_id: str
    has_payment_method: bool
    invoice_billing_enabled: bool
    payment_methods: list[PaymentMethod]
    created_at: str
    stripe_customer_id: str | None = None
    provider: str | None = None  # [ours] stripe | local (owner/admin only)
    payment_terms: str | None = None  # [ours] (owner/admin only)


class UpdatePaymentMethodRequest(_In):
    payment_method_id: str = Field(min_length=3, max_length=255, pattern=r"^[A-Za-z0-9_]+$")


class UpdatePaymentMethodResponse(BaseModel):
    message: str
    payment_method: PaymentMethod


class PortalSessionResponse(BaseModel):
    portal_url: str


class GraphSubscriptionResponse(BaseModel):
    id: str
    resource_type: str
    resource_id: str  # "" until the graph exists (the client types it as a plain string)
    plan_name: str
    billing_interval: str
    status: str
    base_price_cents: int
    created_at: str
    current_period_start: str | None = None
    current_period_end: str | None = None
    started_at: str | None = None
    canceled_at: str | None = None
    org_id: str | None = None  # [ours]
    cancel_at_period_end: bool = False  # [ours]
    ends_at: str | None = None  # [ours]
    failure_reason: str | None = None  # [ours]
    quantity: int = 1  # [ours] seats of a per-seat plan
    scheduled_change: ScheduledChangeView | None = None  # [ours] a period-end change waiting to take effect


class ScheduledChangeView(BaseModel):
    change_id: str
    plan_name: str
    quantity: int
    effective_at: str | None


class PlanChangeRequest(_In):
    """``…/change`` and ``…/change/preview``: the target plan and/or seats (unchanged when omitted)."""

    plan_name: str | None = Field(default=None, min_length=1, max_length=100)
    quantity: int | None = Field(default=None, ge=1, le=100_000)
    billing_interval: Literal["monthly", "annual"] | None = None
    when: Literal["immediate", "period_end"] | None = None  # default: upgrades now, downgrades at period end
    proration_date: int | None = Field(default=None, ge=0, le=10**11)  # epoch seconds of a preview


class ChangePreviewLine(BaseModel):
    description: str
    amount: int


class ChangePreviewResponse(BaseModel):
    amount_due_now: int
    currency: str
    lines: list[ChangePreviewLine]
    next_invoice_total: int
    effective_at: str | None
    proration_date: int
    when: str
    direction: str
    plan_name: str
    quantity: int


class PlanChangeView(BaseModel):
    id: str
    status: str
    when: str
    direction: str
    from_plan: str
    to_plan: str
    from_quantity: int
    to_quantity: int
    amount_due_now: int
    currency: str
    effective_at: str | None
    provider_invoice_id: str | None
    failure_reason: str | None
    created_at: str
    applied_at: str | None


class PlanChangeResponse(BaseModel):
    subscription: GraphSubscriptionResponse
    change: PlanChangeView


class InvoiceLineItem(BaseModel):
    description: str
    amount: int
    quantity: int
    period_start: str | None = None
    period_end: str | None = None


class Invoice(BaseModel):
    id: str
    status: str
    amount_due: int
    amount_paid: int
    currency: str
    created: str
    line_items: list[InvoiceLineItem]
    number: str | None = None
    due_date: str | None = None
    paid_at: str | None = None
    invoice_pdf: str | None = None
    hosted_invoice_url: str | None = None
    subscription_id: str | None = None


class UpcomingInvoice(BaseModel):
    """The client's ``UpcomingInvoice`` (``GET …/invoices/{org_id}/upcoming``; null when nothing renews)."""

    amount_due: int
    currency: str
    period_start: str
    period_end: str
    line_items: list[InvoiceLineItem]
    subscription_id: str | None = None
    due_date: str | None = None  # [ours] when the renewal is charged


class InvoicesResponse(BaseModel):
    invoices: list[Invoice]
    total_count: int
    has_more: bool


# --- offering and tiers -------------------------------------------------------------------------


class GraphSubscriptionTier(BaseModel):
    name: str
    display_name: str
    description: str
    monthly_price_per_graph: float
    monthly_credits_per_graph: int
    storage_included_gb: int
    storage_overage_per_gb: float
    infrastructure: str
    features: list[str]
    backup_retention_days: int
    priority_support: bool
    api_rate_multiplier: float
    backend: str
    max_queries_per_hour: int | None = None
    max_subgraphs: int | None = None
    instance_type: str | None = None


class StorageInfo(BaseModel):
    included_per_tier: dict[str, Any]
    overage_pricing: dict[str, Any]


class GraphSubscriptions(BaseModel):
    description: str
    pricing_model: str
    tiers: list[GraphSubscriptionTier]
    storage: StorageInfo
    notes: list[str]


class OfferingRepositoryPlan(BaseModel):
    plan: str
    name: str
    monthly_price: float
    monthly_credits: int
    access_level: str
    features: list[str]
    rate_limits: dict[str, Any] | None = None


class RepositoryInfo(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    type: str
    name: str
    description: str
    enabled: bool
    coming_soon: bool
    plans: list[OfferingRepositoryPlan]


class RepositorySubscriptions(BaseModel):
    description: str
    pricing_model: str
    repositories: list[RepositoryInfo]
    notes: list[str]


class OperationCosts(BaseModel):
    description: str
    ai_operations: dict[str, Any]
    token_pricing: dict[str, Any]
    included_operations: list[str]
    notes: list[str]


class ServiceOfferingSummary(BaseModel):
    total_graph_tiers: int
    total_repositories: int
    enabled_repositories: int
    coming_soon_repositories: int


class ServiceOfferingsResponse(BaseModel):
    billing_enabled: bool
    graph_subscriptions: GraphSubscriptions
    repository_subscriptions: RepositorySubscriptions
    operation_costs: OperationCosts
    summary: ServiceOfferingSummary
    seat_plans: list[dict[str, Any]] = Field(default_factory=list)  # [ours] per-seat org plans
    credit_packs: list[dict[str, Any]] = Field(default_factory=list)  # [ours] one-time credit packs


class GraphTierInstance(BaseModel):
    type: str
    memory_mb: int
    is_multitenant: bool


class GraphTierCopyOperations(BaseModel):
    max_file_size_gb: float
    timeout_seconds: int
    concurrent_operations: int
    max_files_per_operation: int
    daily_copy_operations: int


class GraphTierBackup(BaseModel):
    max_backup_size_gb: int
    backup_retention_days: int
    max_backups_per_day: int


class GraphTierLimits(BaseModel):
    storage_gb: int
    monthly_credits: int
    max_subgraphs: int | None
    copy_operations: GraphTierCopyOperations
    backup: GraphTierBackup


class GraphTierInfo(BaseModel):
    tier: str
    name: str
    display_name: str
    description: str
    backend: str
    enabled: bool
    max_subgraphs: int | None
    storage_limit_gb: int
    monthly_credits: int
    api_rate_multiplier: float
    features: list[str]
    instance: GraphTierInstance
    limits: GraphTierLimits
    monthly_price: float | None = None
    plan_name: str | None = None  # [ours] the plan_name to pass to checkout
    monthly_price_cents: int | None = None  # [ours]


class AvailableGraphTiersResponse(BaseModel):
    tiers: list[GraphTierInfo]
