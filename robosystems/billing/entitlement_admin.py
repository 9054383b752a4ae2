"""Changing what feeds the entitlements: an operator's override (``PUT /admin/v1/orgs/{org_id}/entitlements/{key}``
``{"value", "expires_at"?, "reason"}``; ``value: null`` removes it) and an org's own low-credit threshold
(``PUT /v1/orgs/{org_id}/credits/threshold`` ``{"threshold"}``).  Both audited in the billing audit log."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import delete, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession

from robosystems.billing import entitlements
from robosystems.billing.audit import Actor, record_for_actor
from robosystems.billing.plans import get_catalog
from robosystems.config import Settings
from robosystems.errors import NotFound, Unprocessable
from robosystems.ids import new_id
from robosystems.models import Org, OrgEntitlementOverride, OrgLimits
from robosystems.orgs.access import OrgAccess


class OverrideRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    value: Any = None  # null removes the override
    expires_at: datetime | None = None
    reason: str = Field(min_length=3, max_length=500)


class ThresholdRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    threshold: Decimal | None = Field(default=None, ge=0, le=Decimal("99999999"))  # null: the default percentage


async def set_override(
    session: AsyncSession, settings: Settings, org_id: str, key: str, body: OverrideRequest
) -> dict[str, Any]:
    if (await session.execute(select(Org.id).where(Org.id == org_id))).first() is None:
        raise NotFound("Organization not found", code="org_not_found")
    if body.expires_at is not None:
        expires = body.expires_at if body.expires_at.tzinfo else body.expires_at.replace(tzinfo=UTC)
        if expires <= datetime.now(UTC):
            raise Unprocessable("expires_at is in the past", code="invalid_expires_at")
    else:
        expires = None
    if body.value is None:
        if key not in entitlements.CATALOG:
            raise Unprocessable(f"Unknown entitlement {key[:64]!r}", code="unknown_entitlement")
        await session.execute(
            delete(OrgEntitlementOverride).where(
                OrgEntitlementOverride.org_id == org_id, OrgEntitlementOverride.key == key
            )
        )
        event, value = "entitlement_override_removed", None
    else:
        value = entitlements.validate_override(get_catalog(settings.billing_plans_file), key, body.value)
        stmt = pg_insert(OrgEntitlementOverride).values(
            id=new_id("ent"),
            org_id=org_id,
            key=key,
            value=value,
            expires_at=expires,
            reason=body.reason,
            set_by="admin",
        )
        await session.execute(
            stmt.on_conflict_do_update(
                index_elements=[OrgEntitlementOverride.org_id, OrgEntitlementOverride.key],
                set_={
                    "value": stmt.excluded.value,
                    "expires_at": expires,
                    "reason": body.reason,
                    "updated_at": datetime.now(UTC),
                },
            )
        )
        event = "entitlement_override_set"
    await session.run_sync(
        lambda s: record_for_actor(
            s,
            event,
            Actor.admin(),
            org_id=org_id,
            reason=body.reason,
            description=f"Entitlement {key} {'removed' if value is None else f'set to {value!r}'}"[:500],
            data={"key": key, "value": value, "expires_at": expires.isoformat() if expires else None},
        )
    )
    return (await entitlements.entitlements(session, org_id, settings=settings)).payload()


async def set_low_threshold(session: AsyncSession, access: OrgAccess, body: ThresholdRequest) -> dict[str, Any]:
    await session.execute(
        update(OrgLimits).where(OrgLimits.org_id == access.org_id).values(credits_low_threshold=body.threshold)
    )
    await session.run_sync(
        lambda s: record_for_actor(
            s,
            "credits_low_threshold_set",
            Actor.user(access.user_id),
            org_id=access.org_id,
            description=f"Low-credit threshold set to {body.threshold if body.threshold is not None else 'default'}",
            data={"threshold": str(body.threshold) if body.threshold is not None else None},
        )
    )
    return {
        "org_id": access.org_id,
        "credits_low_threshold": float(body.threshold) if body.threshold is not None else None,
    }
