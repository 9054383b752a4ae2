"""Revision e6f7a8b9c0d1 (org billing) on a seeded legacy database.

Each test builds its own database: legacy baseline (7a89a1bfab0c) + ``seed_legacy_sample`` + extra billing rows,
then upgrades with Alembic to d5e6f7a8b9c0 (identity, graph ownership, invitations), snapshots the billing tables,
and runs the billing revision; the result is inspected with SQL.
"""

from __future__ import annotations

import logging
from argparse import Namespace
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
import sqlalchemy as sa
from alembic.config import Config
from sqlalchemy.orm import Session

from alembic import command
from robosystems import migrations
from robosystems.billing import credits, invoices, subscriptions
from robosystems.db import sync_url

try:
    from tests.legacy_seed import (
        insert_billing_audit_log,
        insert_billing_invoice,
        insert_billing_subscription,
        insert_credit_transaction,
        insert_graph,
        insert_graph_credits,
        seed_legacy_sample,
        utcnow_naive,
    )
except ModuleNotFoundError:  # pragma: no cover - tests/ on sys.path
    from legacy_seed import (  # type: ignore[no-redef]
        insert_billing_audit_log,
        insert_billing_invoice,
        insert_billing_subscription,
        insert_credit_transaction,
        insert_graph,
        insert_graph_credits,
        seed_legacy_sample,
        utcnow_naive,
    )

BASELINE = "7a89a1bfab0c"
BEFORE = "d5e6f7a8b9c0"
BILLING = "e6f7a8b9c0d1"

BILLING_TABLES: dict[str, str] = {  # table -> primary key (for ordered snapshots)
    "billing_customers": "user_id",
    "billing_subscriptions": "id",
    "billing_invoices": "id",
    "billing_invoice_line_items": "id",
    "billing_audit_logs": "id",
    "graph_credits": "id",
    "graph_credit_transactions": "id",
}


# --------------------------------------------------------------------------------------------------------------
# fixtures and helpers
# --------------------------------------------------------------------------------------------------------------


@pytest.fixture
def legacy_url(make_database: Callable[[], str]) -> str:
    url = make_database()
    migrations.upgrade(BASELINE, url)
    return url


@pytest.fixture
def engine(legacy_url: str) -> Iterator[sa.Engine]:
    eng = sa.create_engine(sync_url(legacy_url), poolclass=sa.pool.NullPool)
    yield eng
    eng.dispose()


def _config(url: str, *x: str) -> Config:
    cfg = migrations.alembic_config(url)
    cfg.cmd_opts = Namespace(x=list(x))
    return cfg


def _rows(conn: sa.Connection, sql: str, **params: Any) -> list[Any]:
    return list(conn.execute(sa.text(sql), params).all())


def _one(conn: sa.Connection, sql: str, **params: Any) -> Any:
    return conn.execute(sa.text(sql), params).scalar_one()


def _personal_org(conn: sa.Connection, user_id: str) -> str:
    return str(_one(conn, "SELECT id FROM orgs WHERE personal_user_id = :u", u=user_id))


def _snapshot(conn: sa.Connection) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of the billing tables, timestamps rendered as naive UTC, json as text."""
    result: dict[str, list[tuple[Any, ...]]] = {}
    for table, pk in BILLING_TABLES.items():
        cols = _rows(
            conn,
            "SELECT column_name, data_type FROM information_schema.columns WHERE table_name = :t "
            "AND table_schema = 'public' ORDER BY column_name <> :pk, column_name",  # primary key first
            t=table,
            pk=pk,
        )
        exprs = []
        for name, data_type in cols:
            if data_type == "timestamp with time zone":
                exprs.append(f"({name} AT TIME ZONE 'UTC') AS {name}")
            elif data_type in ("json", "jsonb"):
                exprs.append(f"{name}::jsonb::text AS {name}")
            else:
                exprs.append(name)
        result[table] = [tuple(r) for r in _rows(conn, f"SELECT {', '.join(exprs)} FROM {table} ORDER BY {pk}")]
    return result


def _schema(conn: sa.Connection) -> dict[str, Any]:
    tables = tuple(BILLING_TABLES)
    return {
        "columns": sorted(
            tuple(r)
            for r in _rows(
                conn,
                "SELECT table_name, column_name, data_type, is_nullable, column_default "
                "FROM information_schema.columns WHERE table_schema = 'public' AND table_name = ANY(:t)",
                t=list(tables),
            )
        ),
        "constraints": sorted(
            tuple(r)
            for r in _rows(
                conn,
                "SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid) FROM pg_constraint "
                "WHERE conrelid::regclass::text = ANY(:t)",
                t=list(tables),
            )
        ),
        "indexes": sorted(
            tuple(r)
            for r in _rows(
                conn, "SELECT tablename, indexname, indexdef FROM pg_indexes WHERE tablename = ANY(:t)", t=list(tables)
            )
        ),
        "tables": sorted(
            _rows(conn, "SELECT tablename FROM pg_tables WHERE schemaname = 'public' AND tablename LIKE 'billing%'")
        ),
    }


def seed(engine: sa.Engine) -> dict[str, Any]:
    """seed_legacy_sample + the extra legacy rows this revision has to carry over."""
    with engine.begin() as conn:
        data = seed_legacy_sample(conn)
        users: dict[str, str] = data["users"]  # type: ignore[assignment]
        graphs: dict[str, str] = data["graphs"]  # type: ignore[assignment]
        alice, bob, erin = users["alice"], users["bob"], users["erin"]
        now = utcnow_naive()
        extra: dict[str, Any] = {}
        # a legacy 'pending' subscription whose checkout session id sits in provider_subscription_id
        extra["pending_cs"] = insert_billing_subscription(
            conn,
            billing_customer_user_id=erin,
            resource_type="graph",
            resource_id=None,
            plan_name="kuzu-standard",
            base_price_cents=4900,
            status="pending",
            payment_provider="stripe",
            provider_subscription_id="cs_live_pending_erin",
            subscription_metadata={"resource_config": {"graph_name": "E"}},
        )
        extra["cancelled"] = insert_billing_subscription(
            conn,
            billing_customer_user_id=bob,
            resource_type="repository",
            resource_id="sec",
            plan_name="advanced",
            base_price_cents=9900,
            status="cancelled",
            canceled_at=now - timedelta(days=3),
        )
        # invoices of an earlier month: numbering of 2025-10 must continue at 8
        october = datetime(2025, 10, 1)
        extra["inv_oct_7"] = insert_billing_invoice(
            conn,
            billing_customer_user_id=bob,
            period_start=october,
            period_end=october + timedelta(days=30),
            subtotal_cents=49900,
            status="open",
            invoice_number="INV-2025-10-0007",
        )
        extra["inv_oct_3"] = insert_billing_invoice(
            conn,
            billing_customer_user_id=alice,
            period_start=october,
            period_end=october + timedelta(days=30),
            subtotal_cents=4900,
            status="void",
            invoice_number="INV-2025-10-0003",
        )
        # credit pools whose balance differs from the sum of their transactions
        g_drift = insert_graph(conn, name="Drift", created_by=erin)
        conn.execute(
            sa.text(
                "INSERT INTO user_graphs (id, user_id, graph_id, role, is_selected, created_at, updated_at) "
                "VALUES ('ug_drift', :u, :g, 'admin', true, :n, :n)"
            ),
            {"u": erin, "g": g_drift, "n": now},
        )
        drift_pool = insert_graph_credits(conn, g_drift, erin, erin, Decimal("300.00"))
        insert_credit_transaction(
            conn,
            graph_credits_id=drift_pool,
            graph_id=g_drift,
            transaction_type="allocation",
            amount=Decimal("275.00"),
            description="Initial credit allocation",
        )
        insert_credit_transaction(
            conn,
            graph_credits_id=drift_pool,
            graph_id=g_drift,
            transaction_type="consumption",
            amount=Decimal("-25.00"),
            description="query",
        )
        g_bare = insert_graph(conn, name="No ledger", created_by=erin)
        bare_pool = insert_graph_credits(conn, g_bare, erin, erin, Decimal("40.00"))
        g_empty = insert_graph(conn, name="Empty", created_by=erin)
        empty_pool = insert_graph_credits(conn, g_empty, erin, erin, Decimal("0"))
        extra["pools"] = {"drift": drift_pool, "bare": bare_pool, "empty": empty_pool}
        extra["audit_actor_only"] = insert_billing_audit_log(
            conn, event_type="admin_override", description="Admin looked", actor_user_id=bob, actor_type="admin"
        )
        del graphs
        data["extra"] = extra
        return data


# --------------------------------------------------------------------------------------------------------------
# upgrade
# --------------------------------------------------------------------------------------------------------------


def test_upgrade_carries_every_legacy_billing_row_into_the_org_model(
    engine: sa.Engine, legacy_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    data = seed(engine)
    users: dict[str, str] = data["users"]
    extra: dict[str, Any] = data["extra"]
    subs: dict[str, str] = data["subscriptions"]
    migrations.upgrade(BEFORE, legacy_url)
    with engine.connect() as conn:
        before = _snapshot(conn)
        ids_before = {t: _ids(conn, t) for t in BILLING_TABLES}
    caplog.set_level(logging.INFO)
    migrations.upgrade(BILLING, legacy_url)

    with engine.connect() as conn:
        after = _snapshot(conn)
        org = {k: _personal_org(conn, u) for k, u in users.items()}

        # --- every row is still there ------------------------------------------------------------------------
        for table, ids in ids_before.items():
            assert ids <= _ids(conn, table), table
        assert len(_ids(conn, "graph_credit_transactions")) == len(ids_before["graph_credit_transactions"]) + 2

        # --- customers: keyed by the personal org, values kept ------------------------------------------------
        customers = _rows(
            conn,
            "SELECT org_id, user_id, provider, stripe_customer_id, has_payment_method, invoice_billing_enabled, "
            "payment_terms, billing_email FROM billing_customers ORDER BY user_id",
        )
        assert {c.user_id for c in customers} == {users["alice"], users["bob"]}
        for c in customers:
            assert c.org_id == _personal_org(conn, c.user_id) and c.provider == "stripe"
        by_user = {c.user_id: c for c in customers}
        assert by_user[users["alice"]].stripe_customer_id == data["stripe_customer_id"]
        assert by_user[users["alice"]].has_payment_method is True
        assert (by_user[users["bob"]].invoice_billing_enabled, by_user[users["bob"]].payment_terms) == (True, "net_60")

        # --- subscriptions: every one in the payer's org; statuses; checkout session ids ----------------------
        rows = {
            r.id: r
            for r in _rows(
                conn,
                "SELECT id, org_id, billing_customer_user_id, status, legacy_status, resource_type, resource_id, "
                "provider_subscription_id, provider_checkout_session_id, created_at FROM billing_subscriptions",
            )
        }
        assert len(rows) == 6
        for r in rows.values():
            assert r.org_id == _personal_org(conn, r.billing_customer_user_id)
            assert r.created_at.tzinfo is not None
        pending = rows[extra["pending_cs"]]
        assert (pending.status, pending.legacy_status) == ("pending_payment", "pending")
        assert pending.provider_checkout_session_id == "cs_live_pending_erin"
        assert pending.provider_subscription_id is None and pending.resource_id is None
        seeded_pending = rows[subs["pending_checkout_alice"]]
        assert seeded_pending.provider_checkout_session_id.startswith("cs_test_")
        assert (seeded_pending.status, seeded_pending.legacy_status) == ("pending_payment", None)
        assert rows[extra["cancelled"]].status == "canceled" and rows[extra["cancelled"]].legacy_status == "cancelled"
        active_alice = rows[subs["graph_alice"]]
        assert active_alice.provider_subscription_id.startswith("sub_") and active_alice.org_id == org["alice"]
        repo = rows[subs["repository_bob_sec"]]
        assert (repo.resource_type, repo.resource_id, repo.org_id) == ("repository", "sec", org["bob"])

        # --- invoices, counters, line items ---------------------------------------------------------------------
        inv = {
            r.id: r
            for r in _rows(
                conn,
                "SELECT id, org_id, subscription_id, invoice_number, amount_paid_cents, total_cents, currency, status "
                "FROM billing_invoices",
            )
        }
        alice_inv = inv[data["invoices"]["alice"]]
        assert (alice_inv.org_id, alice_inv.subscription_id) == (org["alice"], subs["graph_alice"])
        assert (alice_inv.amount_paid_cents, alice_inv.currency) == (alice_inv.total_cents, "usd")
        assert inv[extra["inv_oct_7"]].org_id == org["bob"] and inv[extra["inv_oct_7"]].amount_paid_cents == 0
        assert inv[extra["inv_oct_3"]].org_id == org["alice"]
        counters = dict(_rows(conn, "SELECT period, last_number FROM billing_invoice_counters"))
        assert counters["2025-10"] == 7
        seeded_period = alice_inv.invoice_number[4:11]
        assert counters[seeded_period] == int(alice_inv.invoice_number[12:])
        assert before["billing_invoice_line_items"] == after["billing_invoice_line_items"]

        # --- audit log ------------------------------------------------------------------------------------------------
        audit = {
            r.id: r
            for r in _rows(conn, "SELECT id, org_id, actor_user_id, billing_customer_user_id FROM billing_audit_logs")
        }
        logs: dict[str, str] = data["audit_logs"]
        assert audit[logs["alice_customer_created"]].org_id == org["alice"]
        assert audit[logs["alice_customer_created"]].actor_user_id == users["alice"]
        assert audit[logs["bob_subscription_activated"]].org_id == org["bob"]
        assert audit[logs["webhook_received"]].org_id is None
        assert audit[extra["audit_actor_only"]].org_id is None and audit[extra["audit_actor_only"]].actor_user_id
        # the legacy webhook row names nothing: the CHECK stays NOT VALID (new rows are checked) and it is reported
        assert (
            _one(conn, "SELECT convalidated FROM pg_constraint WHERE conname = 'ck_billing_audit_logs_has_reference'")
            is False
        )
        assert any(logs["webhook_received"] in r.getMessage() for r in caplog.records)

        # --- ledger: balances unchanged, Σ ledger == balance everywhere --------------------------------------------
        bal_before = {r[0]: r for r in before["graph_credits"]}
        for r in after["graph_credits"]:
            assert r == bal_before[r[0]]  # nothing about a pool changed
        sums = _rows(
            conn,
            "SELECT gc.id, gc.current_balance, COALESCE(sum(t.amount), 0) AS total FROM graph_credits gc "
            "LEFT JOIN graph_credit_transactions t ON t.graph_credits_id = gc.id GROUP BY gc.id, gc.current_balance",
        )
        assert sums and all(s.current_balance == s.total for s in sums)
        opening = dict(
            _rows(
                conn,
                "SELECT idempotency_key, amount FROM graph_credit_transactions WHERE transaction_type = 'adjustment'",
            )
        )
        pools = extra["pools"]
        assert opening == {
            f"legacy_opening_{pools['drift']}": Decimal("50.00"),
            f"legacy_opening_{pools['bare']}": Decimal("40.00"),
        }
        triggers = _rows(
            conn, "SELECT tgname FROM pg_trigger WHERE tgrelid = 'billing_audit_logs'::regclass AND NOT tgisinternal"
        )
        assert [t[0] for t in triggers] == ["trg_billing_audit_logs_append_only"]

    # --- the migrated data works with the domain code (which runs at head: it also writes outbound events) ---------
    migrations.upgrade("head", legacy_url)
    with Session(engine) as s, s.begin():
        assert invoices.next_invoice_number(s, datetime(2025, 10, 20, tzinfo=UTC)) == "INV-2025-10-0008"
        graph_alice = data["graphs"]["alice"]
        assert credits.consume(s, graph_alice, "7.50") == Decimal("980.00")
        sub = subscriptions.transition(s, extra["pending_cs"], "provisioning", reason="paid")
        assert sub.org_id == org["erin"]
    with engine.connect() as conn:
        assert (
            _one(conn, "SELECT count(*) FROM billing_audit_logs WHERE subscription_id = :s", s=extra["pending_cs"]) == 1
        )


def _cols(conn: sa.Connection, table: str) -> list[str]:
    return [
        str(r[0])
        for r in _rows(
            conn,
            "SELECT column_name FROM information_schema.columns WHERE table_name = :t AND table_schema = 'public' "
            "ORDER BY column_name",
            t=table,
        )
    ]


def _ids(conn: sa.Connection, table: str) -> set[str]:
    pk = BILLING_TABLES[table] if table != "billing_customers" else "user_id"
    return {str(v) for v in conn.execute(sa.text(f"SELECT {pk} FROM {table}")).scalars()}


def test_downgrade_round_trip_restores_the_legacy_shape_and_rows(engine: sa.Engine, legacy_url: str) -> None:
    seed(engine)
    migrations.upgrade(BEFORE, legacy_url)
    with engine.connect() as conn:
        rows_before, schema_before = _snapshot(conn), _schema(conn)
    migrations.upgrade(BILLING, legacy_url)
    with engine.connect() as conn:
        orgs_first = _rows(conn, "SELECT id, org_id FROM billing_subscriptions ORDER BY id")
    migrations.downgrade(BEFORE, legacy_url)
    with engine.connect() as conn:
        assert _snapshot(conn) == rows_before
        assert _schema(conn) == schema_before
    migrations.upgrade(BILLING, legacy_url)  # and up again: same org for every row
    with engine.connect() as conn:
        assert _rows(conn, "SELECT id, org_id FROM billing_subscriptions ORDER BY id") == orgs_first
        sums = _rows(
            conn,
            "SELECT gc.current_balance, COALESCE(sum(t.amount), 0) FROM graph_credits gc "
            "LEFT JOIN graph_credit_transactions t ON t.graph_credits_id = gc.id GROUP BY gc.id",
        )
        assert all(a == b for a, b in sums)


def test_downgrade_refuses_rows_of_team_orgs_unless_data_loss_is_accepted(engine: sa.Engine, legacy_url: str) -> None:
    data = seed(engine)
    owner = data["users"]["bob"]
    migrations.upgrade("head", legacy_url)  # the domain code runs at head (it also writes outbound events)
    with Session(engine) as s, s.begin():
        s.execute(sa.text("INSERT INTO orgs (id, name, org_type) VALUES ('org_team', 'Team', 'team')"))
        s.execute(
            sa.text("INSERT INTO org_users (id, org_id, user_id, role) VALUES ('ou_team', 'org_team', :u, 'owner')"),
            {"u": owner},
        )
        sub, _ = subscriptions.create_subscription(
            s, org_id="org_team", plan_name="kuzu-large", base_price_cents=19900, actor=owner
        )
        team_sub = sub.id
        s.execute(sa.text("INSERT INTO billing_customers (org_id, provider) VALUES ('org_team', 'stripe')"))
    command.downgrade(_config(legacy_url, "allow_data_loss=true"), BILLING)  # drops those outbound events
    with pytest.raises(RuntimeError) as caught:
        migrations.downgrade(BEFORE, legacy_url)
    message = str(caught.value)
    assert "1 subscriptions of team/enterprise orgs" in message and "1 billing customers of team" in message
    assert "allow_data_loss" in message
    with engine.connect() as conn:  # nothing changed
        assert _one(conn, "SELECT version_num FROM alembic_version") == BILLING  # the later revisions went down
        assert _one(conn, "SELECT org_id FROM billing_subscriptions WHERE id = :i", i=team_sub) == "org_team"

    migrations.downgrade(BEFORE, legacy_url, allow_data_loss=True)
    with engine.connect() as conn:
        assert (
            _one(conn, "SELECT billing_customer_user_id FROM billing_subscriptions WHERE id = :i", i=team_sub) == owner
        )
        # bob already had a customer row: the team's is the one dropped
        assert _one(conn, "SELECT count(*) FROM billing_customers WHERE user_id = :u", u=owner) == 1
        assert _one(conn, "SELECT invoice_billing_enabled FROM billing_customers WHERE user_id = :u", u=owner) is True


# --------------------------------------------------------------------------------------------------------------
# refusals before anything changes
# --------------------------------------------------------------------------------------------------------------


def test_upgrade_stops_before_changing_anything_on_unmappable_data(engine: sa.Engine, legacy_url: str) -> None:
    data = seed(engine)
    users: dict[str, str] = data["users"]
    with engine.begin() as conn:
        weird = insert_billing_subscription(
            conn,
            billing_customer_user_id=users["bob"],
            resource_type="graph",
            resource_id=None,
            plan_name="kuzu-standard",
            base_price_cents=1,
            status="on_hold",
        )
        dup = insert_billing_subscription(
            conn,
            billing_customer_user_id=users["carol"],
            resource_type="graph",
            resource_id=data["graphs"]["alice"],
            plan_name="kuzu-standard",
            base_price_cents=1,
            status="past_due",
        )
        conn.execute(
            sa.text("UPDATE graph_credits SET current_balance = -5 WHERE id = :i"),
            {"i": data["graph_credits"]["shared_admins"]},
        )
    migrations.upgrade(BEFORE, legacy_url)
    with pytest.raises(RuntimeError) as caught:
        migrations.upgrade(BILLING, legacy_url)
    message = str(caught.value)
    assert "nothing was changed" in message
    assert f"{weird} (on_hold)" in message
    assert data["graphs"]["alice"] in message and dup in message  # two live subscriptions on one graph
    assert "negative balance" in message and "clamp_negative_credit_balances" in message
    with engine.connect() as conn:
        assert _one(conn, "SELECT version_num FROM alembic_version") == BEFORE
        assert "org_id" not in _cols(conn, "billing_subscriptions")

    with engine.begin() as conn:  # operator fixes the statuses and accepts clearing the negative pool
        conn.execute(
            sa.text("UPDATE billing_subscriptions SET status = 'canceled' WHERE id IN (:a, :b)"), {"a": weird, "b": dup}
        )
    command.upgrade(_config(legacy_url, "clamp_negative_credit_balances=true"), BILLING)
    with engine.connect() as conn:
        pool = data["graph_credits"]["shared_admins"]
        assert _one(conn, "SELECT current_balance FROM graph_credits WHERE id = :i", i=pool) == 0
        assert _one(conn, "SELECT sum(amount) FROM graph_credit_transactions WHERE graph_credits_id = :i", i=pool) == 0
        keys = {
            r[0]
            for r in _rows(
                conn, "SELECT idempotency_key FROM graph_credit_transactions WHERE graph_credits_id = :i", i=pool
            )
        }
        assert {f"legacy_opening_{pool}", f"legacy_negative_cleared_{pool}"} <= keys


def test_fresh_database_gets_a_validated_reference_check(make_database: Callable[[], str]) -> None:
    url = make_database()
    migrations.upgrade(BILLING, url)
    eng = sa.create_engine(sync_url(url), poolclass=sa.pool.NullPool)
    try:
        with eng.connect() as conn:
            assert (
                _one(
                    conn, "SELECT convalidated FROM pg_constraint WHERE conname = 'ck_billing_audit_logs_has_reference'"
                )
                is True
            )
            assert _one(conn, "SELECT count(*) FROM billing_invoice_counters") == 0
    finally:
        eng.dispose()


def test_downgrade_keys_rows_created_in_the_org_model_back_to_their_user(engine: sa.Engine, legacy_url: str) -> None:
    data = seed(engine)
    erin = data["users"]["erin"]
    pending = data["extra"]["pending_cs"]
    migrations.upgrade("head", legacy_url)  # the domain code runs at head (it also writes outbound events)
    now = datetime.now(UTC)
    with Session(engine) as s, s.begin():
        org = _personal_org(s.connection(), erin)
        subscriptions.transition(s, pending, "provisioning")  # moved on since the upgrade
        sub, _ = subscriptions.create_subscription(s, org_id=org, plan_name="kuzu-large", base_price_cents=19900)
        inv = invoices.create_invoice(
            s,
            org_id=org,
            period_start=now,
            period_end=now,
            subtotal_cents=19900,
            subscription_id=sub.id,
            lines=[invoices.LineItemInput("kuzu-large", 19900, now, now, subscription_id=sub.id)],
        )
        sub_id, inv_id = sub.id, inv.id
    command.downgrade(_config(legacy_url, "allow_data_loss=true"), BILLING)  # drops those outbound events
    migrations.downgrade(BEFORE, legacy_url)
    with engine.connect() as conn:
        rows = dict(
            _rows(conn, "SELECT id, status FROM billing_subscriptions WHERE id IN (:a, :b)", a=pending, b=sub_id)
        )
        assert rows == {pending: "provisioning", sub_id: "pending_payment"}  # not reset to the legacy 'pending'
        assert _one(conn, "SELECT billing_customer_user_id FROM billing_subscriptions WHERE id = :i", i=sub_id) == erin
        assert _one(conn, "SELECT billing_customer_user_id FROM billing_invoices WHERE id = :i", i=inv_id) == erin
        # the line item of a graph that doesn't exist yet gets a placeholder resource (legacy requires one)
        assert _one(conn, "SELECT resource_id FROM billing_invoice_line_items WHERE invoice_id = :i", i=inv_id) == (
            "unknown"
        )
        assert (
            _one(
                conn,
                "SELECT DISTINCT billing_customer_user_id FROM billing_audit_logs WHERE subscription_id = :i",
                i=sub_id,
            )
            == erin
        )
