"""The plan catalog (``plans.toml``, read with ``tomllib`` and validated with pydantic).

One catalog feeds ``/v1/offering``, ``/v1/graphs/tiers``, checkout (price), provisioning (tier, limits) and the
monthly credit allocation.  :func:`load_catalog` raises :class:`CatalogError` naming the file and the offending
entry for a missing file, a TOML syntax error, an unknown or missing field, a bad value or an alias that points
nowhere, so a bad file stops the service at start.  The ``*_payload`` helpers build the client's response shapes
(GraphTierInfo, GraphSubscriptionTier, ServiceOfferingsResponse, the static parts of GraphLimitsResponse).
"""

from __future__ import annotations

import re
import tomllib
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from robosystems.config import ConfigError
from robosystems.errors import Unprocessable

DEFAULT_PLANS_FILE = Path(__file__).with_name("plans.toml")
PLAN_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,47}$")


def _keyed(data: Any, table: str, field: str) -> Any:
    """Copy each entry's table key of ``data[table]`` into its ``field``."""
    if isinstance(data, dict) and isinstance(data.get(table), dict):
        data = {**data, table: {k: _with_key(v, field, k) for k, v in data[table].items()}}
    return data


def _with_key(value: Any, field: str, key: str) -> Any:
    """Copy a table's key into ``field`` (a written value must agree with the key)."""
    if isinstance(value, dict):
        if field in value and value[field] != key:
            raise ValueError(f"{field} {value[field]!r} differs from its table key {key!r}")
        return {**value, field: key}
    return value


class CatalogError(ConfigError):
    """The plan catalog file can't be used."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class QueryLimits(_Model):
    max_timeout_seconds: int = Field(gt=0)
    chunk_size: int = Field(gt=0)
    max_rows_per_query: int = Field(gt=0)
    concurrent_queries: int = Field(gt=0)
    max_queries_per_hour: int | None = Field(default=None, gt=0)


class CopyOperationLimits(_Model):
    max_file_size_gb: float = Field(gt=0)
    timeout_seconds: int = Field(gt=0)
    concurrent_operations: int = Field(gt=0)
    max_files_per_operation: int = Field(gt=0)
    daily_copy_operations: int = Field(ge=0)
    supported_formats: list[str] = Field(min_length=1)


class BackupLimits(_Model):
    max_backup_size_gb: int = Field(ge=0)
    backup_retention_days: int = Field(ge=0)
    max_backups_per_day: int = Field(ge=0)


class RateLimits(_Model):
    requests_per_minute: int = Field(gt=0)
    requests_per_hour: int = Field(gt=0)
    burst_capacity: int = Field(gt=0)


class CreditLimits(_Model):
    storage_billing_enabled: bool = False
    storage_rate_per_gb_per_day: int = Field(default=0, ge=0)


class PlanLimits(_Model):
    queries: QueryLimits
    copy_operations: CopyOperationLimits
    backups: BackupLimits
    rate_limits: RateLimits
    credits: CreditLimits = CreditLimits()


class GraphPlan(_Model):
    name: str  # filled from the table key
    display_name: str = Field(min_length=1)
    description: str = ""
    backend: str = "kuzu"
    infrastructure: str = ""
    instance_type: str | None = None
    memory_mb: int = Field(gt=0)
    is_multitenant: bool = False
    enabled: bool = True
    price_cents: int = Field(ge=0)
    billing_interval: Literal["monthly", "annual"] = "monthly"
    monthly_credits: int = Field(ge=0)
    storage_gb: int = Field(gt=0)
    storage_overage_cents_per_gb: int = Field(default=0, ge=0)
    max_subgraphs: int | None = Field(default=None, ge=0)
    api_rate_multiplier: float = Field(default=1.0, gt=0)
    priority_support: bool = False
    features: list[str] = Field(default_factory=list)
    provider_price_ids: dict[Literal["stripe"], str] = Field(default_factory=dict)
    limits: PlanLimits

    @property
    def monthly_price(self) -> float:
        """Dollars (the client's float fields)."""
        return self.price_cents / 100

    def tier_info_payload(self) -> dict[str, Any]:
        """``GraphTierInfo``."""
        cp, bk = self.limits.copy_operations, self.limits.backups
        return {
            "tier": self.name,
            "name": self.name,
            "display_name": self.display_name,
            "description": self.description,
            "backend": self.backend,
            "enabled": self.enabled,
            "max_subgraphs": self.max_subgraphs,
            "storage_limit_gb": self.storage_gb,
            "monthly_credits": self.monthly_credits,
            "api_rate_multiplier": self.api_rate_multiplier,
            "features": list(self.features),
            "instance": {
                "type": self.instance_type or self.name,
                "memory_mb": self.memory_mb,
                "is_multitenant": self.is_multitenant,
            },
            "limits": {
                "storage_gb": self.storage_gb,
                "monthly_credits": self.monthly_credits,
                "max_subgraphs": self.max_subgraphs,
                "copy_operations": {
                    "max_file_size_gb": cp.max_file_size_gb,
                    "timeout_seconds": cp.timeout_seconds,
                    "concurrent_operations": cp.concurrent_operations,
                    "max_files_per_operation": cp.max_files_per_operation,
                    "daily_copy_operations": cp.daily_copy_operations,
                },
                "backup": {
                    "max_backup_size_gb": bk.max_backup_size_gb,
                    "backup_retention_days": bk.backup_retention_days,
                    "max_backups_per_day": bk.max_backups_per_day,
                },
            },
            "monthly_price": self.monthly_price,
        }

    def subscription_tier_payload(self) -> dict[str, Any]:
        """``GraphSubscriptionTier`` (inside ``/v1/offering``)."""
        return {
            "name": self.name,
            "display_name": self.display_name,
            "description": self.description,
            "monthly_price_per_graph": self.monthly_price,
            "monthly_credits_per_graph": self.monthly_credits,
            "storage_included_gb": self.storage_gb,
            "storage_overage_per_gb": self.storage_overage_cents_per_gb / 100,
            "infrastructure": self.infrastructure,
            "features": list(self.features),
            "backup_retention_days": self.limits.backups.backup_retention_days,
            "priority_support": self.priority_support,
            "api_rate_multiplier": self.api_rate_multiplier,
            "backend": self.backend,
            "max_queries_per_hour": self.limits.queries.max_queries_per_hour,
            "max_subgraphs": self.max_subgraphs if self.max_subgraphs is not None else 0,
            "instance_type": self.instance_type,
        }

    def limits_payload(self) -> dict[str, Any]:
        """The static parts of ``GraphLimitsResponse``: queries, copy_operations, backups, rate_limits."""
        q, cp, bk, rl = self.limits.queries, self.limits.copy_operations, self.limits.backups, self.limits.rate_limits
        return {
            "queries": {
                "max_timeout_seconds": q.max_timeout_seconds,
                "chunk_size": q.chunk_size,
                "max_rows_per_query": q.max_rows_per_query,
                "concurrent_queries": q.concurrent_queries,
            },
            "copy_operations": cp.model_dump(),
            "backups": bk.model_dump(),
            "rate_limits": rl.model_dump(),
        }


class RepositoryPlan(_Model):
    plan: str  # filled from the table key
    name: str = Field(min_length=1)
    price_cents: int = Field(ge=0)
    monthly_credits: int = Field(ge=0)
    access_level: Literal["read", "write", "admin"] = "read"
    features: list[str] = Field(default_factory=list)
    rate_limits: dict[str, int] | None = None
    provider_price_ids: dict[Literal["stripe"], str] = Field(default_factory=dict)

    def payload(self) -> dict[str, Any]:
        """``OfferingRepositoryPlan``."""
        return {
            "plan": self.plan,
            "name": self.name,
            "monthly_price": self.price_cents / 100,
            "monthly_credits": self.monthly_credits,
            "access_level": self.access_level,
            "features": list(self.features),
            "rate_limits": dict(self.rate_limits) if self.rate_limits is not None else None,
        }


class Repository(_Model):
    type: str  # filled from the table key
    name: str = Field(min_length=1)
    description: str = ""
    enabled: bool = True
    coming_soon: bool = False
    plans: dict[str, RepositoryPlan] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _plan_keys(cls, data: Any) -> Any:
        return _keyed(data, "plans", "plan")

    def payload(self) -> dict[str, Any]:
        """``RepositoryInfo``."""
        return {
            "type": self.type,
            "name": self.name,
            "description": self.description,
            "enabled": self.enabled,
            "coming_soon": self.coming_soon,
            "plans": [p.payload() for p in self.plans.values()],
        }


class SeatPlan(_Model):
    """A per-seat org plan: ``quantity`` = seats (members + pending invitations may not exceed it)."""

    name: str  # filled from the table key
    display_name: str = Field(min_length=1)
    description: str = ""
    enabled: bool = True
    price_cents_per_seat: int = Field(ge=0)
    billing_interval: Literal["monthly", "annual"] = "monthly"
    min_seats: int = Field(default=1, ge=1)
    max_seats: int = Field(default=1000, ge=1)
    features: list[str] = Field(default_factory=list)
    #: org entitlements the plan grants (keys of robosystems.billing.entitlements.CATALOG, e.g. max_graphs)
    entitlements: dict[str, int | bool] = Field(default_factory=dict)
    provider_price_ids: dict[Literal["stripe"], str] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _seat_range(self) -> SeatPlan:
        if self.max_seats < self.min_seats:
            raise ValueError("max_seats is below min_seats")
        return self

    def payload(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "display_name": self.display_name,
            "description": self.description,
            "price_per_seat": self.price_cents_per_seat / 100,
            "price_cents_per_seat": self.price_cents_per_seat,
            "billing_interval": self.billing_interval,
            "min_seats": self.min_seats,
            "max_seats": self.max_seats,
            "features": list(self.features),
            "entitlements": dict(self.entitlements),
        }


class CreditPack(_Model):
    """A one-time purchase of credits for one graph (never reset at renewal)."""

    name: str  # filled from the table key
    display_name: str = Field(min_length=1)
    credits: int = Field(gt=0)
    price_cents: int = Field(gt=0)
    enabled: bool = True

    def payload(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "display_name": self.display_name,
            "credits": self.credits,
            "price": self.price_cents / 100,
            "price_cents": self.price_cents,
        }


class SeatSection(_Model):
    description: str = ""
    plans: dict[str, SeatPlan] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _plan_keys(cls, data: Any) -> Any:
        return _keyed(data, "plans", "name")


class GraphSection(_Model):
    description: str = ""
    pricing_model: str = "per_graph_monthly"
    notes: list[str] = Field(default_factory=list)
    aliases: dict[str, str] = Field(default_factory=dict)
    plans: dict[str, GraphPlan] = Field(min_length=1)

    @model_validator(mode="before")
    @classmethod
    def _plan_keys(cls, data: Any) -> Any:
        return _keyed(data, "plans", "name")

    @field_validator("plans")
    @classmethod
    def _names(cls, plans: dict[str, GraphPlan]) -> dict[str, GraphPlan]:
        for key in plans:
            if not PLAN_NAME.match(key):
                raise ValueError(f"plan name {key!r} must be lowercase letters, digits, '-' or '_'")
        if not any(p.enabled for p in plans.values()):
            raise ValueError("at least one graph plan must be enabled")
        return plans

    @model_validator(mode="after")
    def _aliases_resolve(self) -> GraphSection:
        for alias, target in self.aliases.items():
            if target not in self.plans:
                raise ValueError(f"alias {alias!r} points to unknown plan {target!r}")
            if alias in self.plans:
                raise ValueError(f"alias {alias!r} shadows a plan of the same name")
        return self


class RepositorySection(_Model):
    description: str = ""
    pricing_model: str = "per_repository_monthly"
    notes: list[str] = Field(default_factory=list)
    repositories: dict[str, Repository] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _repo_keys(cls, data: Any) -> Any:
        return _keyed(data, "repositories", "type")


class OperationCosts(_Model):
    description: str = ""
    ai_operations: dict[str, float] = Field(default_factory=dict)
    token_pricing: dict[str, float] = Field(default_factory=dict)
    included_operations: list[str] = Field(default_factory=list)
    notes: list[str] = Field(default_factory=list)


class Catalog(_Model):
    version: Literal[1] = 1
    currency: str = Field(default="usd", pattern=r"^[a-z]{3}$")
    graph: GraphSection
    repository: RepositorySection = RepositorySection()
    operation_costs: OperationCosts = OperationCosts()
    seats: SeatSection = SeatSection()
    credit_packs: dict[str, CreditPack] = Field(default_factory=dict)
    source: str = ""  # the file it was read from

    @model_validator(mode="before")
    @classmethod
    def _pack_keys(cls, data: Any) -> Any:
        return _keyed(data, "credit_packs", "name")

    @model_validator(mode="after")
    def _names_unique(self) -> Catalog:
        clash = set(self.seats.plans) & (set(self.graph.plans) | set(self.graph.aliases))
        if clash:
            raise ValueError(f"seat plan names clash with graph plans: {sorted(clash)}")
        return self

    # --- lookups ---------------------------------------------------------------------------------------------
    @property
    def graph_plans(self) -> list[GraphPlan]:
        return list(self.graph.plans.values())

    def resolve_tier(self, name: str | None) -> str | None:
        """A plan name for a plan name or a legacy tier alias (``standard`` -> ``kuzu-standard``)."""
        if not name:
            return None
        if name in self.graph.plans:
            return name
        return self.graph.aliases.get(name.strip().lower())

    def find_plan(self, name: str | None) -> GraphPlan | None:
        resolved = self.resolve_tier(name)
        return None if resolved is None else self.graph.plans[resolved]

    def plan(self, name: str | None) -> GraphPlan:
        """The enabled graph plan ``name`` (aliases accepted); 422 ``unknown_plan`` otherwise."""
        found = self.find_plan(name)
        if found is None or not found.enabled:
            raise Unprocessable(f"Unknown plan {str(name)[:60]!r}", code="unknown_plan")
        return found

    def seat_plan(self, name: str | None) -> SeatPlan:
        """The enabled seat plan ``name``; 422 ``unknown_plan`` otherwise."""
        found = self.seats.plans.get(name or "")
        if found is None or not found.enabled:
            raise Unprocessable(f"Unknown plan {str(name)[:60]!r}", code="unknown_plan")
        return found

    def credit_pack(self, name: str | None) -> CreditPack:
        found = self.credit_packs.get(name or "")
        if found is None or not found.enabled:
            raise Unprocessable(f"Unknown credit pack {str(name)[:60]!r}", code="unknown_credit_pack")
        return found

    def repository_plan(self, repository: str, plan: str) -> RepositoryPlan:
        repo = self.repository.repositories.get(repository)
        if repo is None or not repo.enabled or plan not in repo.plans:
            raise Unprocessable(f"Unknown repository plan {repository!r}/{plan!r}", code="unknown_plan")
        return repo.plans[plan]

    # --- response shapes -------------------------------------------------------------------------------------
    def tiers_payload(self) -> dict[str, Any]:
        """``AvailableGraphTiersResponse``."""
        return {"tiers": [p.tier_info_payload() for p in self.graph_plans]}

    def offering_payload(self, *, billing_enabled: bool) -> dict[str, Any]:
        """``ServiceOfferingsResponse``."""
        plans = [p for p in self.graph_plans if p.enabled]
        repos = list(self.repository.repositories.values())
        return {
            "billing_enabled": billing_enabled,
            "graph_subscriptions": {
                "description": self.graph.description,
                "pricing_model": self.graph.pricing_model,
                "tiers": [p.subscription_tier_payload() for p in plans],
                "storage": {
                    "included_per_tier": {p.name: p.storage_gb for p in plans},
                    "overage_pricing": {p.name: p.storage_overage_cents_per_gb / 100 for p in plans},
                },
                "notes": list(self.graph.notes),
            },
            "repository_subscriptions": {
                "description": self.repository.description,
                "pricing_model": self.repository.pricing_model,
                "repositories": [r.payload() for r in repos],
                "notes": list(self.repository.notes),
            },
            "operation_costs": {
                "description": self.operation_costs.description,
                "ai_operations": dict(self.operation_costs.ai_operations),
                "token_pricing": dict(self.operation_costs.token_pricing),
                "included_operations": list(self.operation_costs.included_operations),
                "notes": list(self.operation_costs.notes),
            },
            "seat_plans": [p.payload() for p in self.seats.plans.values() if p.enabled],
            "credit_packs": [p.payload() for p in self.credit_packs.values() if p.enabled],
            "summary": {
                "total_graph_tiers": len(plans),
                "total_repositories": len(repos),
                "enabled_repositories": sum(1 for r in repos if r.enabled),
                "coming_soon_repositories": sum(1 for r in repos if r.coming_soon),
            },
        }


def _describe(error: ValidationError) -> str:
    parts = []
    for e in error.errors()[:10]:
        where = ".".join(str(p) for p in e["loc"]) or "(top level)"
        parts.append(f"{where}: {e['msg']}")
    more = len(error.errors()) - 10
    return "; ".join(parts) + (f"; … and {more} more" if more > 0 else "")


def load_catalog(path: Path | str | None = None) -> Catalog:
    """Read and validate the catalog (default: the packaged ``plans.toml``).  Raises :class:`CatalogError`."""
    file = Path(path) if path else DEFAULT_PLANS_FILE
    try:
        raw = tomllib.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CatalogError(f"plan catalog {file}: file not found (BILLING_PLANS_FILE)") from None
    except OSError as exc:
        raise CatalogError(f"plan catalog {file}: can't be read ({exc.strerror})") from None
    except tomllib.TOMLDecodeError as exc:
        raise CatalogError(f"plan catalog {file}: not valid TOML: {exc}") from None
    try:
        return Catalog.model_validate({**raw, "source": str(file)})
    except ValidationError as exc:
        raise CatalogError(f"plan catalog {file} is invalid: {_describe(exc)}") from None


@lru_cache(maxsize=8)
def _cached(path: str) -> Catalog:
    return load_catalog(path or None)


def get_catalog(path: Path | str | None = None) -> Catalog:
    """The catalog for ``path`` (``Settings.billing_plans_file``; None = packaged default), loaded once."""
    return _cached(str(path) if path else "")
