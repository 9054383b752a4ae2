"""Revision b9c0d1e2f3a4 (billing depth): the migrated tables and columns are what the models declare (so the
naming convention names each constraint once), and the downgrade refuses to lose plan changes, overrides or
purchased credits unless told to."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import Engine, text

from robosystems import migrations
from robosystems.models import Base
from tests.test_migration_identity import engine_for, schema_fingerprint

__all__ = ["engine_for"]  # fixture

NEW_TABLES = ("billing_plan_changes", "org_entitlement_overrides", "billing_credit_purchases")
NEW_COLUMNS = {
    ("billing_subscriptions", "quantity"),
    ("billing_invoices", "billing_reason"),
    ("graph_credits", "purchased_balance"),
    ("org_limits", "credits_low_threshold"),
}
NEW_CONSTRAINTS = {
    ("billing_subscriptions", "ck_billing_subscriptions_quantity"),
    ("graph_credits", "ck_graph_credits_purchased_balance"),
    ("org_limits", "ck_org_limits_credits_low_threshold"),
}


def _shape(engine: Engine) -> dict[str, set[tuple[Any, ...]]]:
    fp = schema_fingerprint(engine)
    return {
        "columns": {r for r in fp["columns"] if r[0] in NEW_TABLES or (r[0], r[1]) in NEW_COLUMNS},
        "constraints": {
            (t, n, k, d) for t, n, k, d in fp["constraints"] if t in NEW_TABLES or (t, n) in NEW_CONSTRAINTS
        },
        "indexes": {
            (t, n) for t, n, _ in fp["indexes"] if t in NEW_TABLES or n in ("uq_billing_subscriptions_live_seats",)
        },
    }


def test_migrated_schema_matches_the_models(
    make_database: Callable[[], str], engine_for: Callable[[str], Engine]
) -> None:
    migrated_url = make_database()
    migrations.upgrade("head", migrated_url)
    modelled = engine_for(make_database())
    Base.metadata.create_all(modelled)
    want, have = _shape(modelled), _shape(engine_for(migrated_url))
    assert have["columns"] == want["columns"]
    assert have["constraints"] == want["constraints"]
    assert have["indexes"] == want["indexes"]
    assert {n for _, n, _, _ in have["constraints"]} >= {n for _, n in NEW_CONSTRAINTS}


def test_downgrade_refuses_to_lose_billing_depth_data(
    make_database: Callable[[], str], engine_for: Callable[[str], Engine]
) -> None:
    url = make_database()
    migrations.upgrade("head", url)
    engine = engine_for(url)
    migrations.downgrade("a8b9c0d1e2f3", url)  # nothing to lose: fine
    migrations.upgrade("head", url)
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO orgs (id, name, org_type) VALUES ('org_x', 'X', 'team')"))
        conn.execute(
            text(
                "INSERT INTO org_entitlement_overrides (id, org_id, key, value, reason) "
                "VALUES ('ent_x', 'org_x', 'max_graphs', '3', 'contract')"
            )
        )
    with pytest.raises(RuntimeError, match="1 entitlement overrides"):
        migrations.downgrade("a8b9c0d1e2f3", url)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM org_entitlement_overrides")).scalar_one() == 1
