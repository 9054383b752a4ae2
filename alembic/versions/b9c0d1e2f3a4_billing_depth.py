"""Billing depth: plan changes, seats, entitlement overrides, credit packs, credit reset, low-credit threshold.

* ``billing_subscriptions.quantity`` (int >= 1, default 1): seats of a per-seat plan (1 for graph plans); a partial
  unique index allows one live seat subscription per org.
* ``billing_plan_changes``: every plan / seat change of a subscription (preview-confirmed upgrades waiting for their
  proration invoice, scheduled period-end downgrades, changes made at the provider).  A partial unique index allows
  ONE open change (``pending_payment`` | ``scheduled``) per subscription: two concurrent changes, one wins.
* ``billing_invoices.billing_reason`` (Stripe's: subscription_create | subscription_cycle | subscription_update | …):
  a renewal resets the monthly credits, an update's invoice switches the plan.
* ``graph_credits.purchased_balance``: the part of the balance bought as credit packs (never reset at renewal;
  consumed after the monthly allocation).  CHECK ``0 <= purchased_balance <= current_balance``.
* ``org_entitlement_overrides``: an operator's override of one entitlement of an org (value, optional expiry, reason).
* ``billing_credit_purchases``: one-time credit pack checkouts (granted once when paid, keyed by the purchase).
* ``org_limits.credits_low_threshold``: per org, the balance below which ``credits.low`` is emitted (NULL = default).

Downgrade drops all of it; it refuses (naming what would be lost) while plan changes, overrides, purchases,
purchased credits, seat subscriptions or thresholds exist.

Revision ID: b9c0d1e2f3a4
Revises: 0b16e7d2c4a9
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.sql.elements import conv

from alembic import context, op

revision: str = "b9c0d1e2f3a4"
down_revision: str | None = "0b16e7d2c4a9"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

LIVE = "status IN ('provisioning', 'active', 'past_due', 'unpaid', 'paused')"
CHANGE_STATUSES = "('pending_payment', 'scheduled', 'applied', 'failed', 'canceled')"
PURCHASE_STATUSES = "('pending_payment', 'paid', 'expired', 'canceled')"


def upgrade() -> None:
    op.add_column("billing_subscriptions", sa.Column("quantity", sa.Integer(), server_default="1", nullable=False))
    op.create_check_constraint(conv("ck_billing_subscriptions_quantity"), "billing_subscriptions", "quantity >= 1")
    op.create_index(
        "uq_billing_subscriptions_live_seats",
        "billing_subscriptions",
        ["resource_type", "resource_id"],
        unique=True,
        postgresql_where=sa.text(f"resource_type = 'org_seats' AND resource_id IS NOT NULL AND {LIVE}"),
    )
    op.add_column("billing_invoices", sa.Column("billing_reason", sa.String(40)))
    op.add_column(
        "graph_credits", sa.Column("purchased_balance", sa.Numeric(10, 2), server_default="0", nullable=False)
    )
    op.create_check_constraint(
        conv("ck_graph_credits_purchased_balance"),
        "graph_credits",
        "purchased_balance >= 0 AND (current_balance < 0 OR purchased_balance <= current_balance)",
    )
    op.add_column("org_limits", sa.Column("credits_low_threshold", sa.Numeric(10, 2)))
    op.create_check_constraint(
        conv("ck_org_limits_credits_low_threshold"),
        "org_limits",
        "credits_low_threshold IS NULL OR credits_low_threshold >= 0",
    )
    op.create_table(
        "billing_plan_changes",
        sa.Column("id", sa.String(), nullable=False),
        sa.Column("org_id", sa.String(), nullable=False),
        sa.Column("subscription_id", sa.String(), nullable=False),
        sa.Column("from_plan", sa.String(), nullable=False),
        sa.Column("to_plan", sa.String(), nullable=False),
        sa.Column("from_quantity", sa.Integer(), nullable=False),
        sa.Column("to_quantity", sa.Integer(), nullable=False),
        sa.Column("direction", sa.String(16), nullable=False),
        sa.Column("timing", sa.String(16), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("source", sa.String(16), server_default="api", nullable=False),
        sa.Column("proration_date", sa.DateTime(timezone=True)),
        sa.Column("amount_due_cents", sa.Integer(), server_default="0", nullable=False),
        sa.Column("currency", sa.String(3), server_default="usd", nullable=False),
        sa.Column("provider_invoice_id", sa.String()),
        sa.Column("provider_schedule_id", sa.String()),
        sa.Column("effective_at", sa.DateTime(timezone=True)),
        sa.Column("failure_reason", sa.String(200)),
        sa.Column("requested_by", sa.String()),
        sa.Column("applied_at", sa.DateTime(timezone=True)),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=conv("pk_billing_plan_changes")),
        sa.ForeignKeyConstraint(
            ["org_id"], ["orgs.id"], name=conv("fk_billing_plan_changes_org_id_orgs"), ondelete="RESTRICT"
        ),
        sa.ForeignKeyConstraint(
            ["subscription_id"],
            ["billing_subscriptions.id"],
            name=conv("fk_billing_plan_changes_subscription_id_billing_subscriptions"),
        ),
        sa.CheckConstraint(f"status IN {CHANGE_STATUSES}", name=conv("ck_billing_plan_changes_status")),
        sa.CheckConstraint("timing IN ('immediate', 'period_end')", name=conv("ck_billing_plan_changes_timing")),
        sa.CheckConstraint("direction IN ('upgrade', 'downgrade')", name=conv("ck_billing_plan_changes_direction")),
        sa.CheckConstraint("source IN ('api', 'provider')", name=conv("ck_billing_plan_changes_source")),
        sa.CheckConstraint("from_quantity >= 1 AND to_quantity >= 1", name=conv("ck_billing_plan_changes_quantity")),
    )
    op.create_index(
        "uq_billing_plan_changes_open",
        "billing_plan_changes",
        ["subscription_id"],
        unique=True,
        postgresql_where=sa.text("status IN ('pending_payment', 'scheduled')"),
    )
    op.create_index("ix_billing_plan_changes_org_id_created_at", "billing_plan_changes", ["org_id", "created_at"])
    op.create_index("ix_billing_plan_changes_provider_invoice_id", "billing_plan_changes", ["provider_invoice_id"])
    op.create_table(
        "org_entitlement_overrides",
        sa.Column("id", sa.String(), nullable=False),
        sa.Column("org_id", sa.String(), nullable=False),
        sa.Column("key", sa.String(64), nullable=False),
        sa.Column("value", postgresql.JSONB(), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True)),
        sa.Column("reason", sa.String(500), nullable=False),
        sa.Column("set_by", sa.String()),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=conv("pk_org_entitlement_overrides")),
        sa.ForeignKeyConstraint(
            ["org_id"], ["orgs.id"], name=conv("fk_org_entitlement_overrides_org_id_orgs"), ondelete="CASCADE"
        ),
        sa.UniqueConstraint("org_id", "key", name=conv("uq_org_entitlement_overrides_org_id_key")),
    )
    op.create_table(
        "billing_credit_purchases",
        sa.Column("id", sa.String(), nullable=False),
        sa.Column("org_id", sa.String(), nullable=False),
        sa.Column("graph_id", sa.String(), nullable=False),
        sa.Column("pack_name", sa.String(), nullable=False),
        sa.Column("credits", sa.Numeric(10, 2), nullable=False),
        sa.Column("price_cents", sa.Integer(), nullable=False),
        sa.Column("currency", sa.String(3), server_default="usd", nullable=False),
        sa.Column("status", sa.String(16), server_default="pending_payment", nullable=False),
        sa.Column("payment_provider", sa.String(16), nullable=False),
        sa.Column("provider_checkout_session_id", sa.String()),
        sa.Column("checkout_url", sa.String()),
        sa.Column("checkout_expires_at", sa.DateTime(timezone=True)),
        sa.Column("idempotency_key", sa.String(255)),
        sa.Column("requested_by", sa.String()),
        sa.Column("paid_at", sa.DateTime(timezone=True)),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=conv("pk_billing_credit_purchases")),
        sa.ForeignKeyConstraint(
            ["org_id"], ["orgs.id"], name=conv("fk_billing_credit_purchases_org_id_orgs"), ondelete="RESTRICT"
        ),
        sa.CheckConstraint(f"status IN {PURCHASE_STATUSES}", name=conv("ck_billing_credit_purchases_status")),
        sa.CheckConstraint("credits > 0 AND price_cents >= 0", name=conv("ck_billing_credit_purchases_amounts")),
        sa.UniqueConstraint(
            "provider_checkout_session_id", name=conv("uq_billing_credit_purchases_provider_checkout_session_id")
        ),
        sa.UniqueConstraint(
            "org_id", "idempotency_key", name=conv("uq_billing_credit_purchases_org_id_idempotency_key")
        ),
    )


def _refuse_lossy_downgrade() -> None:
    conn = op.get_bind()
    checks = {
        "plan changes": "SELECT count(*) FROM billing_plan_changes",
        "entitlement overrides": "SELECT count(*) FROM org_entitlement_overrides",
        "credit pack purchases": "SELECT count(*) FROM billing_credit_purchases",
        "graphs with purchased credits": "SELECT count(*) FROM graph_credits WHERE purchased_balance <> 0",
        "subscriptions with more than one seat or a seat plan": (
            "SELECT count(*) FROM billing_subscriptions WHERE quantity <> 1 OR resource_type = 'org_seats'"
        ),
        "low-credit thresholds": "SELECT count(*) FROM org_limits WHERE credits_low_threshold IS NOT NULL",
        "invoice billing reasons": "SELECT count(*) FROM billing_invoices WHERE billing_reason IS NOT NULL",
    }
    lost = {what: conn.execute(sa.text(sql)).scalar_one() for what, sql in checks.items()}
    lost = {what: n for what, n in lost.items() if n}
    allow = str(context.get_x_argument(as_dictionary=True).get("allow_data_loss", "")).lower() in ("1", "true", "yes")
    if lost and not allow:
        listing = ", ".join(f"{n} {what}" for what, n in lost.items())
        raise RuntimeError(
            f"refusing to downgrade below b9c0d1e2f3a4: it would lose {listing}. Back up first, then rerun with "
            "`-x allow_data_loss=true` (CLI: --allow-data-loss) to accept the loss."
        )


def downgrade() -> None:
    _refuse_lossy_downgrade()
    op.drop_table("billing_credit_purchases")
    op.drop_table("org_entitlement_overrides")
    op.drop_index("ix_billing_plan_changes_provider_invoice_id", table_name="billing_plan_changes")
    op.drop_index("ix_billing_plan_changes_org_id_created_at", table_name="billing_plan_changes")
    op.drop_index("uq_billing_plan_changes_open", table_name="billing_plan_changes")
    op.drop_table("billing_plan_changes")
    op.drop_constraint(conv("ck_org_limits_credits_low_threshold"), "org_limits", type_="check")
    op.drop_column("org_limits", "credits_low_threshold")
    op.drop_constraint(conv("ck_graph_credits_purchased_balance"), "graph_credits", type_="check")
    op.drop_column("graph_credits", "purchased_balance")
    op.drop_column("billing_invoices", "billing_reason")
    op.drop_index("uq_billing_subscriptions_live_seats", table_name="billing_subscriptions")
    op.drop_constraint(conv("ck_billing_subscriptions_quantity"), "billing_subscriptions", type_="check")
    op.drop_column("billing_subscriptions", "quantity")
