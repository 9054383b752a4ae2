"""``GET /v1/offering`` and ``GET /v1/graphs/tiers``: views of the one plan catalog
(:mod:`robosystems.billing.plans`), the same catalog checkout prices and provisioning sizes from."""

from __future__ import annotations

from typing import Any

from robosystems.billing.plans import get_catalog
from robosystems.billing.schemas import AvailableGraphTiersResponse, ServiceOfferingsResponse
from robosystems.config import Settings


def _token_pricing(pricing: dict[str, Any]) -> dict[str, Any]:
    """The client's shape is ``{model: {input_per_1k_tokens: int, output_per_1k_tokens: int}}``; a catalog
    that prices tokens once (flat ``{input_per_1k_tokens, output_per_1k_tokens}``) is one ``default`` model."""
    if pricing and all(isinstance(v, int | float) for v in pricing.values()):
        return {
            "default": {
                "input_per_1k_tokens": int(pricing.get("input_per_1k_tokens", 0)),
                "output_per_1k_tokens": int(pricing.get("output_per_1k_tokens", 0)),
            }
        }
    return pricing


def service_offerings(settings: Settings) -> ServiceOfferingsResponse:
    catalog = get_catalog(settings.billing_plans_file)
    payload = catalog.offering_payload(billing_enabled=settings.billing_enabled)
    payload["operation_costs"]["token_pricing"] = _token_pricing(payload["operation_costs"]["token_pricing"])
    return ServiceOfferingsResponse.model_validate(payload)


def graph_tiers(settings: Settings, *, include_disabled: bool = False) -> AvailableGraphTiersResponse:
    catalog = get_catalog(settings.billing_plans_file)
    tiers = []
    for plan in catalog.graph_plans:
        if plan.enabled or include_disabled:
            tier = plan.tier_info_payload()
            tier["plan_name"] = plan.name
            tier["monthly_price_cents"] = plan.price_cents
            tiers.append(tier)
    return AvailableGraphTiersResponse.model_validate({"tiers": tiers})
