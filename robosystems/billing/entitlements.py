"""Entitlements: the ONE answer to "what may this org do, and how much of it".

Every limit check in the service asks this module; nothing else reads plan constants for a limit.  An org's
entitlements are computed from

1. defaults (Settings: ``ORG_GRAPHS_DEFAULT_LIMIT`` via ``org_limits.max_graphs``, ``ORG_MAX_MEMBERS``,
   ``ORG_MAX_WEBHOOK_ENDPOINTS``; every enabled graph plan is an allowed tier),
2. its plans: a live per-seat plan (``max_members`` = seats bought, plus the plan's ``entitlements`` table), and per
   graph the graph's plan (storage, monthly credits, query timeout, rows per query),
3. operator overrides (``org_entitlement_overrides``, ``PUT /admin/v1/orgs/{org_id}/entitlements/{key}``), which win
   while they have not expired.  An override of a graph-scoped key applies to every graph of the org.

Use from any package::

    from robosystems.billing import entitlements
    ent = await entitlements.entitlements(session, org_id)          # Entitlements
    await entitlements.require(session, org_id, "max_webhook_endpoints", current=n)   # 409 limit_reached
    entitlements.entitlements_sync(session, org_id)                 # worker code (sync Session)
    await entitlements.graph_limits(session, org_id, graph_id, plan) # the query path: one round trip

Values: integers (``-1`` = unlimited), booleans (features) or a list of plan names (``tiers``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from robosystems.billing.plans import Catalog, GraphPlan, SeatPlan, get_catalog
from robosystems.config import Settings, get_settings
from robosystems.errors import AppError, Forbidden, Unprocessable

GIB = 1024**3
Kind = Literal["int", "bool", "tiers"]
Scope = Literal["org", "graph"]


@dataclass(frozen=True)
class KeyDef:
    key: str
    kind: Kind
    scope: Scope
    description: str


#: The catalog of entitlement keys (what an override may set).
CATALOG: dict[str, KeyDef] = {
    k.key: k
    for k in (
        KeyDef("max_graphs", "int", "org", "top-level graphs (owned + awaiting payment/provisioning); -1 unlimited"),
        KeyDef("max_members", "int", "org", "active members + pending invitations (seats on a per-seat plan)"),
        KeyDef("max_webhook_endpoints", "int", "org", "outbound webhook endpoints; -1 unlimited"),
        KeyDef("tiers", "tiers", "org", "graph plans the org may buy or move to"),
        KeyDef("priority_support", "bool", "org", "priority support"),
        KeyDef("max_storage_bytes", "int", "graph", "storage per graph; writes beyond answer 413"),
        KeyDef("monthly_credits", "int", "graph", "credits allocated to each graph per paid period"),
        KeyDef("query_timeout_seconds", "int", "graph", "longest query per graph"),
        KeyDef("max_rows_per_query", "int", "graph", "rows a query returns at most"),
    )
}


class LimitReached(AppError):
    status_code, code, detail = 409, "limit_reached", "The organization has reached a limit of its plan"


class MemberLimitReached(AppError):
    status_code, code, detail = 409, "member_limit_reached", "The organization has reached its member limit"


class SeatLimitReached(AppError):
    status_code, code, detail = 402, "seat_limit_reached", "Every seat of the organization's plan is taken"


@dataclass(frozen=True)
class Entitlement:
    key: str
    value: Any
    source: str  # default | plan:<name> | seats | override
    expires_at: datetime | None = None

    @property
    def unlimited(self) -> bool:
        return bool(self.value == -1)

    def allows(self, current: int, adding: int = 1) -> bool:
        return bool(self.unlimited or current + adding <= int(self.value))


@dataclass(frozen=True)
class SeatInfo:
    subscription_id: str
    plan_name: str
    seats: int
    price_cents_per_seat: int
    currency: str


@dataclass(frozen=True)
class GraphEntitlements:
    graph_id: str
    tier: str
    limits: dict[str, Entitlement]

    def value(self, key: str) -> int:
        return int(self.limits[key].value)

    @property
    def max_storage_bytes(self) -> int:
        return self.value("max_storage_bytes")


@dataclass(frozen=True)
class Entitlements:
    org_id: str
    limits: dict[str, Entitlement]
    features: list[str]
    graphs: dict[str, GraphEntitlements]
    seats: SeatInfo | None
    overrides: list[dict[str, Any]] = field(default_factory=list)

    def value(self, key: str) -> Any:
        return self.limits[key].value

    def payload(self) -> dict[str, Any]:
        """``GET /v1/orgs/{org_id}/entitlements``."""
        totals = {
            "storage_bytes": sum(g.max_storage_bytes for g in self.graphs.values()),
            "monthly_credits": sum(g.value("monthly_credits") for g in self.graphs.values()),
        }
        return {
            "org_id": self.org_id,
            "limits": {k: _entry(e) for k, e in self.limits.items()},
            "totals": totals,
            "features": list(self.features),
            "tiers": list(self.value("tiers")),
            "seats": None
            if self.seats is None
            else {
                "subscription_id": self.seats.subscription_id,
                "plan_name": self.seats.plan_name,
                "seats": self.seats.seats,
                "price_cents_per_seat": self.seats.price_cents_per_seat,
                "currency": self.seats.currency,
            },
            "graphs": [
                {"graph_id": g.graph_id, "tier": g.tier, "limits": {k: _entry(e) for k, e in g.limits.items()}}
                for g in self.graphs.values()
            ],
            "overrides": list(self.overrides),
        }


def _entry(e: Entitlement) -> dict[str, Any]:
    return {"value": e.value, "source": e.source, "expires_at": e.expires_at.isoformat() if e.expires_at else None}


# --- override values --------------------------------------------------------------------------------------------


def validate_override(catalog: Catalog, key: str, value: Any) -> Any:
    """The override ``value`` for ``key`` in canonical form; 422 for an unknown key or a value of the wrong kind."""
    spec = CATALOG.get(key)
    if spec is None:
        raise Unprocessable(f"Unknown entitlement {key[:64]!r}", code="unknown_entitlement")
    if spec.kind == "bool":
        if not isinstance(value, bool):
            raise Unprocessable(f"{key} takes true or false", code="invalid_entitlement_value")
        return value
    if spec.kind == "tiers":
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise Unprocessable(f"{key} takes a list of plan names", code="invalid_entitlement_value")
        unknown = [v for v in value if catalog.find_plan(v) is None]
        if unknown:
            raise Unprocessable(f"Unknown plans in {key}: {unknown[:5]}", code="invalid_entitlement_value")
        return sorted({p.name for v in value if (p := catalog.find_plan(v)) is not None})
    if isinstance(value, bool) or not isinstance(value, int) or value < -1 or value > 10**15:
        raise Unprocessable(f"{key} takes an integer >= -1 (-1 = unlimited)", code="invalid_entitlement_value")
    return value


# --- computation (pure) -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Override:
    value: Any
    expires_at: datetime | None


def graph_entitlements(
    graph_id: str, plan: GraphPlan, overrides: Mapping[str, _Override], legacy_storage_gb: Any = None
) -> GraphEntitlements:
    """A graph's limits from its plan (``graph_credits.storage_override_gb`` of legacy graphs wins over the plan),
    then the org's overrides."""
    source = f"plan:{plan.name}"
    storage = Entitlement("max_storage_bytes", plan.storage_gb * GIB, source)
    if legacy_storage_gb is not None:
        storage = Entitlement("max_storage_bytes", int(float(legacy_storage_gb) * GIB), "graph_storage_override")
    limits = {
        "max_storage_bytes": storage,
        "monthly_credits": Entitlement("monthly_credits", plan.monthly_credits, source),
        "query_timeout_seconds": Entitlement("query_timeout_seconds", plan.limits.queries.max_timeout_seconds, source),
        "max_rows_per_query": Entitlement("max_rows_per_query", plan.limits.queries.max_rows_per_query, source),
    }
    for key in limits:
        if key in overrides:
            limits[key] = Entitlement(key, overrides[key].value, "override", overrides[key].expires_at)
    return GraphEntitlements(graph_id, plan.name, limits)


def _compute(
    catalog: Catalog,
    settings: Settings,
    org_id: str,
    *,
    max_graphs: int | None,
    seat_row: Any,
    overrides: dict[str, _Override],
    override_rows: list[dict[str, Any]],
    graphs: list[Any],
) -> Entitlements:
    default = "default"
    limits: dict[str, Entitlement] = {
        "max_graphs": Entitlement(
            "max_graphs", max_graphs if max_graphs is not None else settings.org_graphs_default_limit, default
        ),
        "max_members": Entitlement("max_members", settings.org_max_members, default),
        "max_webhook_endpoints": Entitlement("max_webhook_endpoints", settings.org_max_webhook_endpoints, default),
        "tiers": Entitlement("tiers", [p.name for p in catalog.graph_plans if p.enabled], default),
        "priority_support": Entitlement("priority_support", False, default),
    }
    features: set[str] = set()
    seats: SeatInfo | None = None
    seat_plan: SeatPlan | None = catalog.seats.plans.get(seat_row.plan_name) if seat_row is not None else None
    if seat_row is not None and seat_plan is not None:
        seats = SeatInfo(
            seat_row.id, seat_plan.name, int(seat_row.quantity), seat_plan.price_cents_per_seat, catalog.currency
        )
        limits["max_members"] = Entitlement("max_members", int(seat_row.quantity), "seats")
        for key, value in seat_plan.entitlements.items():
            if key in limits:
                limits[key] = Entitlement(key, value, f"plan:{seat_plan.name}")
        features.update(seat_plan.features)
    graph_ents: dict[str, GraphEntitlements] = {}
    for g in graphs:
        plan = _plan_of(catalog, g.plan_name, g.graph_tier)
        graph_ents[g.graph_id] = graph_entitlements(g.graph_id, plan, overrides, g.storage_override_gb)
        if plan.priority_support:
            limits["priority_support"] = Entitlement("priority_support", True, f"plan:{plan.name}")
        if plan.max_subgraphs:
            features.add("subgraphs")
    for key, override in overrides.items():
        if key in limits:
            limits[key] = Entitlement(key, override.value, "override", override.expires_at)
    if limits["priority_support"].value:
        features.add("priority_support")
    return Entitlements(org_id, limits, sorted(features), graph_ents, seats, override_rows)


def _plan_of(catalog: Catalog, plan_name: str | None, graph_tier: str | None) -> GraphPlan:
    for name in (plan_name, graph_tier):
        found = catalog.find_plan(name)
        if found is not None:
            return found
    return catalog.graph_plans[0]


# --- queries ----------------------------------------------------------------------------------------------------

_OVERRIDES_SQL = text(
    "SELECT key, value, expires_at, reason, updated_at FROM org_entitlement_overrides "
    "WHERE org_id = :org AND (expires_at IS NULL OR expires_at > now()) ORDER BY key"
)
_ORG_SQL = text(
    """
    SELECT (SELECT max_graphs FROM org_limits WHERE org_id = :org) AS max_graphs,
           s.id, s.plan_name, s.quantity
    FROM (SELECT 1) one
    LEFT JOIN LATERAL (
        SELECT id, plan_name, quantity FROM billing_subscriptions
         WHERE org_id = :org AND resource_type = 'org_seats'
           AND status IN ('provisioning', 'active', 'past_due', 'unpaid', 'paused')
         ORDER BY created_at DESC LIMIT 1
    ) s ON true
    """
)
_GRAPHS_SQL = text(
    """
    SELECT g.graph_id, g.graph_tier, s.plan_name, gc.storage_override_gb
    FROM graphs g
    LEFT JOIN graph_credits gc ON gc.graph_id = g.graph_id
    LEFT JOIN LATERAL (
        SELECT plan_name FROM billing_subscriptions bs
         WHERE bs.resource_type = 'graph' AND bs.resource_id = g.graph_id
         ORDER BY (bs.status IN ('provisioning', 'active', 'past_due', 'unpaid', 'paused')) DESC,
                  bs.created_at DESC
         LIMIT 1
    ) s ON true
    WHERE g.org_id = :org AND NOT g.is_subgraph
    ORDER BY g.created_at, g.graph_id
    """
)
_GRAPH_OVERRIDES_SQL = text(
    "SELECT key, value, expires_at FROM org_entitlement_overrides "
    "WHERE org_id = :org AND (expires_at IS NULL OR expires_at > now()) "
    "UNION ALL SELECT '_legacy_storage_gb', to_jsonb(storage_override_gb), NULL FROM graph_credits "
    "WHERE graph_id = :graph AND storage_override_gb IS NOT NULL"
)


def _overrides(rows: list[Any]) -> tuple[dict[str, _Override], list[dict[str, Any]]]:
    found = {r.key: _Override(r.value, r.expires_at) for r in rows if r.key in CATALOG}
    listed = [
        {
            "key": r.key,
            "value": r.value,
            "expires_at": r.expires_at.isoformat() if r.expires_at else None,
            "reason": r.reason,
            "updated_at": r.updated_at.isoformat() if r.updated_at else None,
        }
        for r in rows
    ]
    return found, listed


def org_overrides_sync(session: Session, org_id: str) -> dict[str, _Override]:
    """The org's live overrides by key."""
    return _overrides(list(session.execute(_OVERRIDES_SQL, {"org": org_id}).all()))[0]


def entitlements_sync(session: Session, org_id: str, *, settings: Settings | None = None) -> Entitlements:
    """The org's entitlements (three short queries), on a sync session (worker code, ``run_sync``)."""
    settings = settings or get_settings()
    catalog = get_catalog(settings.billing_plans_file)
    org = session.execute(_ORG_SQL, {"org": org_id}).one()
    overrides, listed = _overrides(list(session.execute(_OVERRIDES_SQL, {"org": org_id}).all()))
    graphs = list(session.execute(_GRAPHS_SQL, {"org": org_id}).all())
    return _compute(
        catalog,
        settings,
        org_id,
        max_graphs=None if org.max_graphs is None else int(org.max_graphs),
        seat_row=org if org.id is not None else None,
        overrides=overrides,
        override_rows=listed,
        graphs=graphs,
    )


async def entitlements(session: AsyncSession, org_id: str, *, settings: Settings | None = None) -> Entitlements:
    return await session.run_sync(lambda s: entitlements_sync(s, org_id, settings=settings))


def require_sync(
    session: Session, org_id: str, key: str, *, current: int, adding: int = 1, settings: Settings | None = None
) -> Entitlement:
    """Refuse (the error of :func:`refuse`) when ``current + adding`` exceeds the org's ``key``."""
    ent = entitlements_sync(session, org_id, settings=settings)
    entry = ent.limits[key]
    if not entry.allows(current, adding):
        raise refuse(ent, key, current)
    return entry


async def require(
    session: AsyncSession,
    org_id: str,
    key: str,
    *,
    current: int,
    adding: int = 1,
    settings: Settings | None = None,
) -> Entitlement:
    return await session.run_sync(
        lambda s: require_sync(s, org_id, key, current=current, adding=adding, settings=settings)
    )


_MEMBERS_SQL = text(
    "SELECT (SELECT count(*) FROM org_users WHERE org_id = :org AND is_active) AS members, "
    "(SELECT count(*) FROM org_invitations WHERE org_id = :org AND status = 'pending' AND expires_at > now()) "
    "AS pending"
)


def seats_in_use_sync(session: Session, org_id: str, *, with_pending: bool = True) -> int:
    """Active members (+ live pending invitations): what counts against ``max_members`` / seats."""
    row = session.execute(_MEMBERS_SQL, {"org": org_id}).one()
    return int(row.members) + (int(row.pending) if with_pending else 0)


async def require_member_slot(
    session: AsyncSession, org_id: str, *, with_pending: bool, settings: Settings | None = None
) -> None:
    """One more member (an invitation, or joining): 402 ``seat_limit_reached`` on a per-seat plan whose seats are
    taken (with the price of one more seat), 409 ``member_limit_reached`` otherwise."""

    def check(s: Session) -> None:
        require_sync(
            s, org_id, "max_members", current=seats_in_use_sync(s, org_id, with_pending=with_pending), settings=settings
        )

    await session.run_sync(check)


def refuse(ent: Entitlements, key: str, current: int) -> AppError:
    """The error for ``key`` being used up (stable codes: graph_limit_reached 403, seat_limit_reached 402 with the
    price of one more seat, member_limit_reached 409, limit_reached 409 naming the key)."""
    limit = ent.value(key)
    extra: dict[str, Any] = {"limit": key, "max": limit, "current": current}
    if key == "max_graphs":
        return Forbidden(
            f"This organization has reached its graph limit ({limit})",
            code="graph_limit_reached",
            extra={**extra, "max_graphs": limit},
        )
    if key == "max_members" and ent.seats is not None and ent.limits[key].source == "seats":
        return SeatLimitReached(
            f"All {ent.seats.seats} seats of the {ent.seats.plan_name} plan are taken: add a seat "
            f"({ent.seats.price_cents_per_seat / 100:.2f} {ent.seats.currency.upper()} per month) to add a member",
            extra={
                **extra,
                "seats": ent.seats.seats,
                "subscription_id": ent.seats.subscription_id,
                "plan_name": ent.seats.plan_name,
                "seat_price_cents": ent.seats.price_cents_per_seat,
                "currency": ent.seats.currency,
            },
        )
    if key == "max_members":
        return MemberLimitReached(extra=extra)
    return LimitReached(f"This organization has reached its {key} limit ({limit})", extra=extra)


async def graph_limits(session: AsyncSession, org_id: str | None, graph_id: str, plan: GraphPlan) -> GraphEntitlements:
    """One graph's limits in ONE round trip (the hot query path): its plan + the org's overrides."""
    if org_id is None:  # shared repositories: the plan's limits
        return graph_entitlements(graph_id, plan, {})
    rows = (await session.execute(_GRAPH_OVERRIDES_SQL, {"org": org_id, "graph": graph_id})).all()
    legacy = next((r.value for r in rows if r.key == "_legacy_storage_gb"), None)
    overrides = {r.key: _Override(r.value, r.expires_at) for r in rows if r.key in CATALOG}
    return graph_entitlements(graph_id, plan, overrides, legacy)
