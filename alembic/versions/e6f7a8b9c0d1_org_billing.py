"""Billing moves to orgs: customers, subscriptions, invoices and the billing audit log keyed by org.

The legacy tables are transformed IN PLACE (same names, every row kept; set-based SQL only):

* ``billing_customers``: ``org_id`` = the personal org of ``user_id`` becomes the primary key
  (``pk_billing_customers``); ``user_id`` stays as the (nullable) legacy payer; new ``provider``
  (legacy rows: ``stripe``) and ``payment_method_summary``.
* ``billing_subscriptions``: ``org_id`` = personal org of ``billing_customer_user_id`` for every row (every
  resource_type and status, ``resource_id`` NULL included).  Checkout session ids that legacy kept in
  ``provider_subscription_id`` (``cs_…``) move to ``provider_checkout_session_id``.  Status vocabulary by CHECK
  (``pending`` -> ``pending_payment``, ``cancelled`` -> ``canceled``; the original is kept in ``legacy_status``).
  New: idempotency key + request fingerprint (unique per org), ``failure_reason``, ``last_event_at``,
  ``cancel_at_period_end``, ``checkout_expires_at``.  Partial unique index: one live subscription per graph.
* ``billing_invoices``: ``org_id``, ``subscription_id`` (derived from the line items when they name exactly one
  subscription), ``currency`` ('usd'), ``amount_paid_cents`` (total for paid invoices), hosted/pdf URLs, status
  CHECK.  New ``billing_invoice_counters`` (period 'YYYY-MM', last number) backfilled from the existing
  ``INV-YYYY-MM-NNNN`` numbers, so numbering continues after the highest legacy number of each month.
* ``billing_invoice_line_items``: ``resource_id`` nullable (an invoice is paid before its graph exists).
* ``billing_audit_logs``: ``org_id`` (personal org of ``billing_customer_user_id``), ``reason``; CHECK
  ``ck_billing_audit_logs_has_reference`` added NOT VALID, then validated -- unless legacy rows violate it: then it
  stays NOT VALID (every new row is checked; the legacy rows predate the rule) and the rows are named in the log.
  Append-only by trigger (``rs_refuse_change()``).
* Ledger: ``graph_credit_transactions.transaction_type`` CHECK (allocation, consumption, refund, adjustment; legacy
  bonus/expiration kept).  Where a pool's balance differs from the sum of its transactions, ONE ``adjustment`` row
  'legacy opening balance' with the difference is added (idempotency key ``legacy_opening_<graph_credits.id>``):
  balances are unchanged and Σ ledger == balance holds.  CHECK ``current_balance >= 0``.
* All touched timestamps become ``timestamptz`` (values read as UTC) with ``now()`` defaults.

The upgrade stops BEFORE changing anything (naming the rows) when: a billing row's user has no personal org,
a subscription/invoice status or credit transaction type is outside the vocabulary, two live subscriptions hold the
same graph, or a credit pool is negative (rerun with ``-x clamp_negative_credit_balances=true`` to bring such pools
to 0 with an audited ``adjustment`` row each).

Downgrade restores the legacy shape (user keys, naive timestamps, legacy statuses from ``legacy_status``, checkout
session ids back in ``provider_subscription_id``, audit ``reason`` folded into ``event_data``, the opening adjustments
removed).  It refuses (unless ``-x allow_data_loss=true``) when the legacy shape cannot say who pays: billing rows of
team/enterprise orgs (legacy keys them by user; with the flag they go to the org's earliest owner, and a team-org
customer whose owner already has one is dropped) or invoices in a currency other than USD.  Line items of a
resource that doesn't exist yet (NULL ``resource_id``) get their subscription's resource, else ``'unknown'``.

Revision ID: e6f7a8b9c0d1
Revises: d5e6f7a8b9c0
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import sqlalchemy as sa

from alembic import context, op
from robosystems.migrate_tools import runtime, snapshot

revision: str = "e6f7a8b9c0d1"
down_revision: str | None = "d5e6f7a8b9c0"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

log = logging.getLogger("alembic.runtime.migration.e6f7a8b9c0d1_org_billing")

LISTED = 50  # how many ids an error/log message names

SUBSCRIPTION_STATUSES = (
    "pending_payment",
    "provisioning",
    "active",
    "past_due",
    "unpaid",
    "paused",
    "canceled",
    "failed",
    "refunded",
    "expired",
)
LIVE_STATUSES = ("provisioning", "active", "past_due", "unpaid", "paused")
INVOICE_STATUSES = ("draft", "open", "paid", "void", "uncollectible")
TRANSACTION_TYPES = ("allocation", "consumption", "refund", "adjustment", "bonus", "expiration")

# legacy status -> new status (anything else must already be in SUBSCRIPTION_STATUSES)
_STATUS_MAP_SQL = (
    "CASE lower(btrim(status)) WHEN 'pending' THEN 'pending_payment' WHEN 'cancelled' THEN 'canceled' "
    "ELSE lower(btrim(status)) END"
)
_LEGACY_STATUS_MAP_SQL = _STATUS_MAP_SQL.replace("status", "legacy_status")

TZ_COLUMNS = {
    "billing_customers": ("created_at", "updated_at"),
    "billing_subscriptions": (
        "started_at",
        "current_period_start",
        "current_period_end",
        "canceled_at",
        "ends_at",
        "created_at",
        "updated_at",
    ),
    "billing_invoices": ("period_start", "period_end", "sent_at", "due_date", "paid_at", "created_at", "updated_at"),
    "billing_invoice_line_items": ("period_start", "period_end", "created_at"),
    "billing_audit_logs": ("event_timestamp", "created_at"),
}
NOW_DEFAULTS = {
    "billing_customers": ("created_at", "updated_at"),
    "billing_subscriptions": ("created_at", "updated_at"),
    "billing_invoices": ("created_at", "updated_at"),
    "billing_invoice_line_items": ("created_at",),
    "billing_audit_logs": ("event_timestamp", "created_at"),
}
# column -> SQL default, added on upgrade and dropped on downgrade (legacy had only ORM defaults)
VALUE_DEFAULTS = {
    "billing_customers": {
        "has_payment_method": "false",
        "invoice_billing_enabled": "false",
        "payment_terms": "'net_30'",
    },
    "billing_subscriptions": {"billing_interval": "'monthly'"},
    "billing_invoices": {"tax_cents": "0", "discount_cents": "0", "status": "'draft'"},
    "billing_invoice_line_items": {"quantity": "1"},
    "billing_audit_logs": {"actor_type": "'system'"},
}


def _in(values: Sequence[str]) -> str:
    return ", ".join(f"'{v}'" for v in values)


def _x(name: str) -> bool:
    return str(context.get_x_argument(as_dictionary=True).get(name, "")).lower() in ("1", "true", "yes")


def _listing(values: Sequence[str]) -> str:
    shown = ", ".join(values[:LISTED])
    return shown + (f" … and {len(values) - LISTED} more" if len(values) > LISTED else "")


def _strings(conn: sa.Connection, sql: str) -> list[str]:
    return [str(v) for v in conn.execute(sa.text(sql)).scalars()]


def _personal_org(user_column: str) -> str:
    return f"(SELECT o.id FROM orgs o WHERE o.personal_user_id = {user_column} AND o.org_type = 'personal')"


def _tz_and_defaults(table: str) -> None:
    parts = [f"ALTER COLUMN {c} TYPE timestamptz USING {c} AT TIME ZONE 'UTC'" for c in TZ_COLUMNS[table]]
    parts += [f"ALTER COLUMN {c} SET DEFAULT now()" for c in NOW_DEFAULTS[table]]
    parts += [f"ALTER COLUMN {c} SET DEFAULT {v}" for c, v in VALUE_DEFAULTS[table].items()]
    op.execute(f"ALTER TABLE {table} " + ", ".join(parts))


def _naive_and_no_defaults(table: str) -> None:
    parts = [f"ALTER COLUMN {c} DROP DEFAULT" for c in NOW_DEFAULTS[table]]
    parts += [f"ALTER COLUMN {c} DROP DEFAULT" for c in VALUE_DEFAULTS[table]]
    parts += [f"ALTER COLUMN {c} TYPE timestamp USING {c} AT TIME ZONE 'UTC'" for c in TZ_COLUMNS[table]]
    op.execute(f"ALTER TABLE {table} " + ", ".join(parts))


# ------------------------------------------------------------------------------------------------------------------
# upgrade
# ------------------------------------------------------------------------------------------------------------------


def _prechecks(conn: sa.Connection) -> None:
    problems: list[str] = []
    no_org = _strings(
        conn,
        "SELECT DISTINCT x.who FROM ("
        "  SELECT 'billing_customers ' || user_id AS who, user_id AS u FROM billing_customers"
        "  UNION ALL SELECT 'billing_subscriptions ' || id, billing_customer_user_id FROM billing_subscriptions"
        "  UNION ALL SELECT 'billing_invoices ' || id, billing_customer_user_id FROM billing_invoices"
        ") x WHERE NOT EXISTS (SELECT 1 FROM orgs o WHERE o.personal_user_id = x.u AND o.org_type = 'personal') "
        "ORDER BY 1",
    )
    if no_org:
        problems.append(f"{len(no_org)} billing row(s) whose user has no personal org: {_listing(no_org)}")
    bad_status = _strings(
        conn,
        f"SELECT id || ' (' || status || ')' FROM billing_subscriptions "
        f"WHERE {_STATUS_MAP_SQL} NOT IN ({_in(SUBSCRIPTION_STATUSES)}) ORDER BY id",
    )
    if bad_status:
        problems.append(
            f"{len(bad_status)} subscription(s) with a status outside {', '.join(SUBSCRIPTION_STATUSES)} "
            f"(legacy 'pending' is mapped): {_listing(bad_status)}"
        )
    bad_invoice = _strings(
        conn,
        f"SELECT id || ' (' || status || ')' FROM billing_invoices "
        f"WHERE status NOT IN ({_in(INVOICE_STATUSES)}) ORDER BY id",
    )
    if bad_invoice:
        problems.append(
            f"{len(bad_invoice)} invoice(s) with a status outside {', '.join(INVOICE_STATUSES)}: "
            f"{_listing(bad_invoice)}"
        )
    dup_live = _strings(
        conn,
        f"SELECT resource_id || ' (' || string_agg(id, ', ' ORDER BY id) || ')' FROM billing_subscriptions "
        f"WHERE resource_type = 'graph' AND resource_id IS NOT NULL AND {_STATUS_MAP_SQL} IN ({_in(LIVE_STATUSES)}) "
        "GROUP BY resource_id HAVING count(*) > 1 ORDER BY resource_id",
    )
    if dup_live:
        problems.append(
            f"{len(dup_live)} graph(s) held by more than one live subscription (cancel all but one first): "
            f"{_listing(dup_live)}"
        )
    bad_type = _strings(
        conn,
        f"SELECT id || ' (' || transaction_type || ')' FROM graph_credit_transactions "
        f"WHERE transaction_type NOT IN ({_in(TRANSACTION_TYPES)}) ORDER BY id",
    )
    if bad_type:
        problems.append(
            f"{len(bad_type)} credit transaction(s) with a type outside {', '.join(TRANSACTION_TYPES)}: "
            f"{_listing(bad_type)}"
        )
    negative = _strings(
        conn,
        "SELECT graph_id || ' (' || current_balance || ')' FROM graph_credits WHERE current_balance < 0 ORDER BY 1",
    )
    if negative and not _x("clamp_negative_credit_balances"):
        problems.append(
            f"{len(negative)} credit pool(s) with a negative balance (the org schema forbids it; rerun with "
            f"-x clamp_negative_credit_balances=true to bring them to 0 with an adjustment row each): "
            f"{_listing(negative)}"
        )
    if problems:
        raise RuntimeError("org billing upgrade stopped, nothing was changed: " + "; ".join(problems))


def _upgrade_customers() -> None:
    op.execute(
        "ALTER TABLE billing_customers ADD COLUMN org_id varchar, ADD COLUMN provider varchar(16), "
        "ADD COLUMN payment_method_summary jsonb"
    )
    op.execute(
        f"UPDATE billing_customers SET org_id = {_personal_org('billing_customers.user_id')}, provider = 'stripe'"
    )
    op.execute(
        "ALTER TABLE billing_customers DROP CONSTRAINT billing_customers_pkey, "
        "ALTER COLUMN org_id SET NOT NULL, ALTER COLUMN user_id DROP NOT NULL, "
        "ALTER COLUMN provider SET NOT NULL, ALTER COLUMN provider SET DEFAULT 'stripe', "
        "ADD CONSTRAINT pk_billing_customers PRIMARY KEY (org_id), "
        "ADD CONSTRAINT fk_billing_customers_org_id_orgs FOREIGN KEY (org_id) REFERENCES orgs (id) ON DELETE RESTRICT, "
        "ADD CONSTRAINT ck_billing_customers_provider CHECK (provider IN ('stripe', 'local'))"
    )
    op.execute("CREATE INDEX ix_billing_customers_user_id ON billing_customers (user_id)")
    _tz_and_defaults("billing_customers")


def _upgrade_subscriptions(progress: runtime.Progress) -> None:
    op.execute(
        "ALTER TABLE billing_subscriptions ADD COLUMN org_id varchar, "
        "ADD COLUMN provider_checkout_session_id varchar, ADD COLUMN idempotency_key varchar(255), "
        "ADD COLUMN request_fingerprint varchar(128), ADD COLUMN failure_reason varchar(200), "
        "ADD COLUMN last_event_at timestamptz, ADD COLUMN cancel_at_period_end boolean NOT NULL DEFAULT false, "
        "ADD COLUMN checkout_expires_at timestamptz, ADD COLUMN legacy_status varchar, "
        "ALTER COLUMN billing_customer_user_id DROP NOT NULL"
    )
    progress.batched(
        "subscriptions -> orgs",
        "UPDATE billing_subscriptions SET "
        f"org_id = {_personal_org('billing_subscriptions.billing_customer_user_id')}, "
        "provider_checkout_session_id = CASE WHEN starts_with(provider_subscription_id, 'cs_') "
        "  THEN provider_subscription_id END, "
        "provider_subscription_id = CASE WHEN starts_with(provider_subscription_id, 'cs_') "
        "  THEN NULL ELSE provider_subscription_id END, "
        f"legacy_status = CASE WHEN {_STATUS_MAP_SQL} <> status THEN status END, "
        f"status = {_STATUS_MAP_SQL} WHERE {{range}}",
        runtime.key_ranges(progress.conn, "billing_subscriptions", "id"),
        key="id",
    )
    op.execute(
        "ALTER TABLE billing_subscriptions ALTER COLUMN org_id SET NOT NULL, "
        "ADD CONSTRAINT fk_billing_subscriptions_org_id_orgs FOREIGN KEY (org_id) REFERENCES orgs (id) "
        "ON DELETE RESTRICT, "
        f"ADD CONSTRAINT ck_billing_subscriptions_status CHECK (status IN ({_in(SUBSCRIPTION_STATUSES)})), "
        "ADD CONSTRAINT uq_billing_subscriptions_provider_checkout_session_id UNIQUE (provider_checkout_session_id), "
        "ADD CONSTRAINT uq_billing_subscriptions_org_id_idempotency_key UNIQUE (org_id, idempotency_key)"
    )
    op.execute(
        "CREATE UNIQUE INDEX uq_billing_subscriptions_live_graph ON billing_subscriptions (resource_type, resource_id) "
        f"WHERE resource_type = 'graph' AND resource_id IS NOT NULL AND status IN ({_in(LIVE_STATUSES)})"
    )
    op.execute("CREATE INDEX ix_billing_subscriptions_org_id_created_at ON billing_subscriptions (org_id, created_at)")
    _tz_and_defaults("billing_subscriptions")


def _upgrade_invoices(progress: runtime.Progress) -> None:
    op.execute(
        "ALTER TABLE billing_invoices ADD COLUMN org_id varchar, ADD COLUMN subscription_id varchar, "
        "ADD COLUMN currency varchar(3) NOT NULL DEFAULT 'usd', ADD COLUMN amount_paid_cents integer, "
        "ADD COLUMN hosted_invoice_url varchar, ADD COLUMN invoice_pdf varchar, "
        "ALTER COLUMN billing_customer_user_id DROP NOT NULL"
    )
    progress.batched(
        "invoices -> orgs",
        "UPDATE billing_invoices i SET "
        f"org_id = {_personal_org('i.billing_customer_user_id')}, "
        "amount_paid_cents = CASE WHEN i.status = 'paid' THEN i.total_cents ELSE 0 END, "
        "subscription_id = (SELECT min(li.subscription_id) FROM billing_invoice_line_items li "
        "  WHERE li.invoice_id = i.id HAVING count(DISTINCT li.subscription_id) = 1) WHERE {range}",
        runtime.key_ranges(progress.conn, "billing_invoices", "id"),
        key="i.id",
    )
    op.execute(
        "ALTER TABLE billing_invoices ALTER COLUMN org_id SET NOT NULL, "
        "ALTER COLUMN amount_paid_cents SET NOT NULL, ALTER COLUMN amount_paid_cents SET DEFAULT 0, "
        "ADD CONSTRAINT fk_billing_invoices_org_id_orgs FOREIGN KEY (org_id) REFERENCES orgs (id) ON DELETE RESTRICT, "
        "ADD CONSTRAINT fk_billing_invoices_subscription_id_billing_subscriptions FOREIGN KEY (subscription_id) "
        "REFERENCES billing_subscriptions (id), "
        f"ADD CONSTRAINT ck_billing_invoices_status CHECK (status IN ({_in(INVOICE_STATUSES)}))"
    )
    op.execute("CREATE INDEX ix_billing_invoices_org_id_created_at ON billing_invoices (org_id, created_at)")
    op.execute("CREATE INDEX ix_billing_invoices_subscription_id ON billing_invoices (subscription_id)")
    _tz_and_defaults("billing_invoices")

    op.execute(
        "CREATE TABLE billing_invoice_counters ("
        "  period varchar(7) NOT NULL, last_number integer NOT NULL, updated_at timestamptz NOT NULL DEFAULT now(),"
        "  CONSTRAINT pk_billing_invoice_counters PRIMARY KEY (period),"
        "  CONSTRAINT ck_billing_invoice_counters_period_format CHECK (period ~ '^[0-9]{4}-[0-9]{2}$'),"
        "  CONSTRAINT ck_billing_invoice_counters_last_number CHECK (last_number >= 0))"
    )
    op.execute(
        "INSERT INTO billing_invoice_counters (period, last_number) "
        "SELECT substring(invoice_number FROM 5 FOR 7), max(substring(invoice_number FROM 13)::integer) "
        "FROM billing_invoices WHERE invoice_number ~ '^INV-[0-9]{4}-[0-9]{2}-[0-9]{4,9}$' GROUP BY 1"
    )

    op.execute("ALTER TABLE billing_invoice_line_items ALTER COLUMN resource_id DROP NOT NULL")
    _tz_and_defaults("billing_invoice_line_items")


def _upgrade_audit_logs(conn: sa.Connection, progress: runtime.Progress) -> None:
    op.execute("ALTER TABLE billing_audit_logs ADD COLUMN org_id varchar, ADD COLUMN reason varchar(500)")
    progress.batched(
        "billing audit rows -> orgs",
        "UPDATE billing_audit_logs SET org_id = "
        f"{_personal_org('billing_audit_logs.billing_customer_user_id')} "
        "WHERE billing_customer_user_id IS NOT NULL AND {range}",
        runtime.key_ranges(progress.conn, "billing_audit_logs", "id"),
        key="id",
    )
    _tz_and_defaults("billing_audit_logs")
    op.execute(
        "CREATE INDEX ix_billing_audit_logs_org_id_event_timestamp ON billing_audit_logs (org_id, event_timestamp)"
    )
    op.execute(
        "ALTER TABLE billing_audit_logs ADD CONSTRAINT ck_billing_audit_logs_has_reference CHECK ("
        "org_id IS NOT NULL OR subscription_id IS NOT NULL OR invoice_id IS NOT NULL "
        "OR actor_user_id IS NOT NULL OR billing_customer_user_id IS NOT NULL) NOT VALID"
    )
    unreferenced = _strings(
        conn,
        "SELECT id || ' (' || event_type || ')' FROM billing_audit_logs WHERE org_id IS NULL "
        "AND subscription_id IS NULL AND invoice_id IS NULL AND actor_user_id IS NULL "
        "AND billing_customer_user_id IS NULL ORDER BY id",
    )
    if unreferenced:
        log.warning(
            "billing_audit_logs: %d legacy row(s) name no org, subscription, invoice or user; "
            "ck_billing_audit_logs_has_reference stays NOT VALID (new rows are checked): %s",
            len(unreferenced),
            _listing(unreferenced),
        )
    else:
        op.execute("ALTER TABLE billing_audit_logs VALIDATE CONSTRAINT ck_billing_audit_logs_has_reference")
    op.execute(
        "CREATE TRIGGER trg_billing_audit_logs_append_only BEFORE UPDATE OR DELETE ON billing_audit_logs "
        "FOR EACH ROW EXECUTE FUNCTION rs_refuse_change()"
    )


def _upgrade_ledger(conn: sa.Connection) -> None:
    op.execute(
        "ALTER TABLE graph_credit_transactions ADD CONSTRAINT ck_graph_credit_transactions_transaction_type "
        f"CHECK (transaction_type IN ({_in(TRANSACTION_TYPES)}))"
    )
    opened = conn.execute(
        sa.text(
            "INSERT INTO graph_credit_transactions (id, graph_credits_id, graph_id, transaction_type, amount, "
            "  description, idempotency_key, metadata, created_at) "
            "SELECT 'txn_' || rs_ulid(), gc.id, gc.graph_id, 'adjustment', gc.current_balance - COALESCE(t.total, 0), "
            "  'legacy opening balance', 'legacy_opening_' || gc.id, "
            "  json_build_object('source', 'migration e6f7a8b9c0d1', 'balance', gc.current_balance, "
            "                    'ledger_sum', COALESCE(t.total, 0))::text, now() "
            "FROM graph_credits gc "
            "LEFT JOIN (SELECT graph_credits_id, sum(amount) AS total FROM graph_credit_transactions "
            "           GROUP BY graph_credits_id) t ON t.graph_credits_id = gc.id "
            "WHERE gc.current_balance <> COALESCE(t.total, 0) "
            "ON CONFLICT (idempotency_key) DO NOTHING"
        )
    ).rowcount
    if opened:
        log.info("graph credits: %d pool(s) got a 'legacy opening balance' adjustment (balances unchanged)", opened)
    if _x("clamp_negative_credit_balances"):
        cleared = _strings(conn, "SELECT graph_id FROM graph_credits WHERE current_balance < 0 ORDER BY graph_id")
        op.execute(
            "INSERT INTO graph_credit_transactions (id, graph_credits_id, graph_id, transaction_type, amount, "
            "  description, idempotency_key, metadata, created_at) "
            "SELECT 'txn_' || rs_ulid(), id, graph_id, 'adjustment', -current_balance, "
            "  'legacy negative balance cleared', 'legacy_negative_cleared_' || id, "
            "  json_build_object('source', 'migration e6f7a8b9c0d1', 'balance', current_balance)::text, now() "
            "FROM graph_credits WHERE current_balance < 0"
        )
        op.execute("UPDATE graph_credits SET current_balance = 0, updated_at = now() WHERE current_balance < 0")
        if cleared:
            log.warning("graph credits: negative balances cleared to 0 by the operator: %s", _listing(cleared))
    op.execute(
        "ALTER TABLE graph_credits ADD CONSTRAINT ck_graph_credits_current_balance_nonnegative "
        "CHECK (current_balance >= 0)"
    )


def upgrade() -> None:
    conn = op.get_bind()
    progress = runtime.begin(conn, revision)  # bounded lock waits / statement time, progress logs
    _prechecks(conn)
    snapshot.refresh_before(conn, revision)  # billing/credit tables edited since the snapshot (e.g. to fix a blocker)
    progress.info("prechecks passed")
    _upgrade_customers()
    progress.info("billing_customers keyed by org")
    _upgrade_subscriptions(progress)
    progress.info("billing_subscriptions moved to orgs")
    _upgrade_invoices(progress)
    progress.info("billing_invoices moved to orgs, counters backfilled")
    _upgrade_audit_logs(conn, progress)
    progress.info("billing_audit_logs moved to orgs")
    _upgrade_ledger(conn)
    progress.info("done: ledger opening balances")


# ------------------------------------------------------------------------------------------------------------------
# downgrade
# ------------------------------------------------------------------------------------------------------------------

# The user a billing row goes back to: the personal org's user, else (data loss accepted) the org's earliest owner.
_PAYER_OF_ORG = (
    "COALESCE((SELECT o.personal_user_id FROM orgs o WHERE o.id = {col}), "
    "(SELECT ou.user_id FROM org_users ou WHERE ou.org_id = {col} AND ou.role = 'owner' "
    " ORDER BY ou.is_active DESC, ou.joined_at, ou.id LIMIT 1))"
)


def _refuse_lossy_downgrade(conn: sa.Connection) -> None:
    non_personal = "(SELECT o.id FROM orgs o WHERE o.org_type <> 'personal')"
    checks = {
        "billing customers of team/enterprise orgs": (
            f"SELECT count(*) FROM billing_customers WHERE org_id IN {non_personal}"
        ),
        "subscriptions of team/enterprise orgs (legacy keys subscriptions by user)": (
            f"SELECT count(*) FROM billing_subscriptions WHERE org_id IN {non_personal}"
        ),
        "invoices of team/enterprise orgs": f"SELECT count(*) FROM billing_invoices WHERE org_id IN {non_personal}",
        "billing audit rows of team/enterprise orgs": (
            f"SELECT count(*) FROM billing_audit_logs WHERE org_id IN {non_personal}"
        ),
        "invoices in a currency other than USD (legacy amounts are USD cents)": (
            "SELECT count(*) FROM billing_invoices WHERE currency <> 'usd'"
        ),
    }
    lost = {what: int(conn.execute(sa.text(sql)).scalar_one()) for what, sql in checks.items()}
    lost = {what: n for what, n in lost.items() if n}
    if lost and not _x("allow_data_loss"):
        listing = ", ".join(f"{n} {what}" for what, n in lost.items())
        raise RuntimeError(
            f"refusing to downgrade below e6f7a8b9c0d1: the legacy user-keyed schema cannot hold {listing}. "
            "Back up first, then rerun with `-x allow_data_loss=true` (rows of team orgs then go to the org's "
            "earliest owner; a team-org customer whose owner already has one is dropped)."
        )


def downgrade() -> None:
    conn = op.get_bind()
    runtime.begin(conn, f"{revision} downgrade")
    _refuse_lossy_downgrade(conn)

    # ---- ledger --------------------------------------------------------------------------------------------------
    op.execute("ALTER TABLE graph_credits DROP CONSTRAINT ck_graph_credits_current_balance_nonnegative")
    op.execute("ALTER TABLE graph_credit_transactions DROP CONSTRAINT ck_graph_credit_transactions_transaction_type")
    op.execute("DELETE FROM graph_credit_transactions WHERE starts_with(idempotency_key, 'legacy_opening_')")

    # ---- audit logs ----------------------------------------------------------------------------------------------
    op.execute("DROP TRIGGER IF EXISTS trg_billing_audit_logs_append_only ON billing_audit_logs")
    op.execute(
        "UPDATE billing_audit_logs SET "
        f"billing_customer_user_id = COALESCE(billing_customer_user_id, {_PAYER_OF_ORG.format(col='org_id')}), "
        "event_data = CASE WHEN reason IS NULL THEN event_data "
        "  ELSE (COALESCE(event_data::jsonb, '{}'::jsonb) || jsonb_build_object('reason', reason))::json END "
        "WHERE org_id IS NOT NULL OR reason IS NOT NULL"
    )
    op.execute("ALTER TABLE billing_audit_logs DROP CONSTRAINT ck_billing_audit_logs_has_reference")
    op.execute("DROP INDEX ix_billing_audit_logs_org_id_event_timestamp")
    op.execute("ALTER TABLE billing_audit_logs DROP COLUMN org_id, DROP COLUMN reason")
    _naive_and_no_defaults("billing_audit_logs")

    # ---- line items, invoices, counters ----------------------------------------------------------------------------
    op.execute(
        "UPDATE billing_invoice_line_items li SET resource_id = COALESCE("
        "(SELECT s.resource_id FROM billing_subscriptions s WHERE s.id = li.subscription_id), 'unknown') "
        "WHERE li.resource_id IS NULL"
    )
    op.execute("ALTER TABLE billing_invoice_line_items ALTER COLUMN resource_id SET NOT NULL")
    _naive_and_no_defaults("billing_invoice_line_items")

    op.execute("DROP TABLE billing_invoice_counters")
    op.execute(
        "UPDATE billing_invoices SET billing_customer_user_id = "
        f"{_PAYER_OF_ORG.format(col='billing_invoices.org_id')} WHERE billing_customer_user_id IS NULL"
    )
    op.execute("DROP INDEX ix_billing_invoices_org_id_created_at")
    op.execute("DROP INDEX ix_billing_invoices_subscription_id")
    op.execute(
        "ALTER TABLE billing_invoices ALTER COLUMN billing_customer_user_id SET NOT NULL, "
        "DROP CONSTRAINT ck_billing_invoices_status, "
        "DROP CONSTRAINT fk_billing_invoices_subscription_id_billing_subscriptions, "
        "DROP CONSTRAINT fk_billing_invoices_org_id_orgs, "
        "DROP COLUMN org_id, DROP COLUMN subscription_id, DROP COLUMN currency, DROP COLUMN amount_paid_cents, "
        "DROP COLUMN hosted_invoice_url, DROP COLUMN invoice_pdf"
    )
    _naive_and_no_defaults("billing_invoices")

    # ---- subscriptions -----------------------------------------------------------------------------------------------
    op.execute("DROP INDEX uq_billing_subscriptions_live_graph")
    op.execute("DROP INDEX ix_billing_subscriptions_org_id_created_at")
    op.execute(
        "ALTER TABLE billing_subscriptions DROP CONSTRAINT uq_billing_subscriptions_org_id_idempotency_key, "
        "DROP CONSTRAINT uq_billing_subscriptions_provider_checkout_session_id, "
        "DROP CONSTRAINT ck_billing_subscriptions_status, DROP CONSTRAINT fk_billing_subscriptions_org_id_orgs"
    )
    op.execute(
        "UPDATE billing_subscriptions SET "
        "billing_customer_user_id = COALESCE(billing_customer_user_id, "
        f"  {_PAYER_OF_ORG.format(col='billing_subscriptions.org_id')}), "
        "provider_subscription_id = COALESCE(provider_subscription_id, provider_checkout_session_id), "
        # the legacy spelling comes back only while the status is still the one it was mapped to
        f"status = CASE WHEN legacy_status IS NOT NULL AND status = {_LEGACY_STATUS_MAP_SQL} "
        "THEN legacy_status ELSE status END"
    )
    op.execute(
        "ALTER TABLE billing_subscriptions ALTER COLUMN billing_customer_user_id SET NOT NULL, "
        "DROP COLUMN org_id, DROP COLUMN provider_checkout_session_id, DROP COLUMN idempotency_key, "
        "DROP COLUMN request_fingerprint, DROP COLUMN failure_reason, DROP COLUMN last_event_at, "
        "DROP COLUMN cancel_at_period_end, DROP COLUMN checkout_expires_at, DROP COLUMN legacy_status"
    )
    _naive_and_no_defaults("billing_subscriptions")

    # ---- customers ----------------------------------------------------------------------------------------------
    op.execute(
        "UPDATE billing_customers SET user_id = "
        f"{_PAYER_OF_ORG.format(col='billing_customers.org_id')} WHERE user_id IS NULL"
    )
    # a team-org customer whose fallback owner already has a customer row (or no owner at all) can't be kept
    op.execute(
        "DELETE FROM billing_customers bc WHERE bc.user_id IS NULL OR EXISTS (SELECT 1 FROM billing_customers o "
        "WHERE o.user_id = bc.user_id AND o.org_id <> bc.org_id AND "
        "(o.org_id IN (SELECT id FROM orgs WHERE org_type = 'personal') OR o.org_id < bc.org_id) "
        "AND bc.org_id NOT IN (SELECT id FROM orgs WHERE org_type = 'personal'))"
    )
    op.execute("DROP INDEX ix_billing_customers_user_id")
    op.execute(
        "ALTER TABLE billing_customers DROP CONSTRAINT pk_billing_customers, "
        "DROP CONSTRAINT fk_billing_customers_org_id_orgs, DROP CONSTRAINT ck_billing_customers_provider, "
        "ALTER COLUMN user_id SET NOT NULL, ADD CONSTRAINT billing_customers_pkey PRIMARY KEY (user_id), "
        "DROP COLUMN org_id, DROP COLUMN provider, DROP COLUMN payment_method_summary"
    )
    _naive_and_no_defaults("billing_customers")
