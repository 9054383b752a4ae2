"""Billing domain on the real database: plan catalog, invoice numbering, provider invoices, credits ledger,
subscription state machine, billing customers, billing audit log.

Concurrency tests run real parallel transactions: one sync connection per thread (or one AsyncSession per
coroutine on the async engine), all released at once by a barrier.
"""

from __future__ import annotations

import asyncio
import copy
import json
import logging
import secrets
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar

import pytest
import sqlalchemy as sa
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine
from sqlalchemy.orm import Session, sessionmaker

from robosystems.billing import credits, customers, invoices, subscriptions
from robosystems.billing.audit import Actor, record_billing_event
from robosystems.billing.plans import DEFAULT_PLANS_FILE, CatalogError, get_catalog, load_catalog
from robosystems.config import Settings
from robosystems.db import sync_url
from robosystems.errors import AppError, Conflict, NotFound, Unprocessable
from robosystems.ids import new_id

T = TypeVar("T")
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "stripe" / "fixtures.json"  # copy of shared/stripe


# --------------------------------------------------------------------------------------------------------------
# fixtures and helpers
# --------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def engine(database_url: str) -> Iterator[sa.Engine]:
    eng = sa.create_engine(sync_url(database_url), pool_size=25, max_overflow=5)
    yield eng
    eng.dispose()


@pytest.fixture(scope="module")
def maker(engine: sa.Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


def _scalar(engine: sa.Engine, sql: str, **params: Any) -> Any:
    with engine.connect() as conn:
        return conn.execute(sa.text(sql), params).scalar_one()


def make_org(engine: sa.Engine) -> tuple[str, str]:
    """A user with a personal org: (user_id, org_id)."""
    user_id, org_id = new_id("user"), new_id("org")
    with engine.begin() as conn:
        conn.execute(
            sa.text("INSERT INTO users (id, email, name, password_hash) VALUES (:id, :e, 'Payer', 'x')"),
            {"id": user_id, "e": f"payer-{secrets.token_hex(4)}@example.com"},
        )
        conn.execute(
            sa.text("INSERT INTO orgs (id, name, org_type, personal_user_id) VALUES (:o, 'Payer org', 'personal', :u)"),
            {"o": org_id, "u": user_id},
        )
        conn.execute(
            sa.text("INSERT INTO org_users (id, org_id, user_id, role) VALUES (:i, :o, :u, 'owner')"),
            {"i": new_id("ou"), "o": org_id, "u": user_id},
        )
    return user_id, org_id


def make_graph(maker: sessionmaker[Session], org_id: str, user_id: str, balance: int | None = None) -> str:
    """A graph of the org, with a credit pool funded by one allocation of ``balance`` when given."""
    graph_id = f"kg{secrets.token_hex(8)}"
    with maker.begin() as s:
        s.execute(
            sa.text(
                "INSERT INTO graphs (graph_id, graph_name, graph_type, schema_extensions, graph_instance_id, "
                "graph_tier, org_id) VALUES (:g, 'G', 'entity', '[]'::jsonb, 'default', 'kuzu-standard', :o)"
            ),
            {"g": graph_id, "o": org_id},
        )
        if balance is not None:
            credits.ensure_pool(s, graph_id, user_id=user_id)
            credits.grant_for_invoice(s, graph_id, f"seed-{graph_id}", balance)
    return graph_id


def run_parallel(n: int, fn: Callable[[int], T]) -> list[T | BaseException]:
    """Run fn(0..n-1) in n threads released together; exceptions are returned, not raised."""
    barrier = threading.Barrier(n)

    def call(i: int) -> T | BaseException:
        barrier.wait()
        try:
            return fn(i)
        except BaseException as exc:  # collected for the assertions
            return exc

    with ThreadPoolExecutor(max_workers=n) as pool:
        return list(pool.map(call, range(n)))


def ledger_sum(engine: sa.Engine, graph_id: str) -> Decimal:
    return Decimal(
        _scalar(
            engine, "SELECT COALESCE(sum(amount), 0) FROM graph_credit_transactions WHERE graph_id = :g", g=graph_id
        )
    )


def pool_balance(engine: sa.Engine, graph_id: str) -> Decimal:
    return Decimal(_scalar(engine, "SELECT current_balance FROM graph_credits WHERE graph_id = :g", g=graph_id))


def stripe_invoice(**overrides: Any) -> dict[str, Any]:
    """Stripe's own invoice fixture with a fresh id (and the given top-level overrides)."""
    data = json.loads(FIXTURES.read_text())["resources"]["invoice"]
    inv: dict[str, Any] = copy.deepcopy(data)
    inv["id"] = f"in_{secrets.token_hex(12)}"
    for line in inv["lines"]["data"]:
        line["id"] = f"il_{secrets.token_hex(12)}"
        line["invoice"] = inv["id"]
    inv.update(overrides)
    return inv


# --------------------------------------------------------------------------------------------------------------
# plan catalog
# --------------------------------------------------------------------------------------------------------------


def test_default_catalog_has_the_graph_plans_and_client_shapes() -> None:
    catalog = load_catalog()
    assert [p.name for p in catalog.graph_plans] == ["kuzu-standard", "kuzu-large", "kuzu-xlarge"]
    standard = catalog.plan("kuzu-standard")
    assert standard.price_cents == 4900 and standard.monthly_credits > 0 and standard.storage_gb > 0
    assert catalog.plan("premium").name == "kuzu-xlarge"  # legacy tier alias
    assert catalog.resolve_tier("standard") == "kuzu-standard"
    assert catalog.repository_plan("sec", "starter").price_cents == 2900
    with pytest.raises(Unprocessable) as caught:
        catalog.plan("kuzu-gigantic")
    assert caught.value.code == "unknown_plan"

    tier = catalog.tiers_payload()["tiers"][0]
    assert set(tier) >= {
        "tier",
        "name",
        "display_name",
        "description",
        "backend",
        "enabled",
        "max_subgraphs",
        "storage_limit_gb",
        "monthly_credits",
        "api_rate_multiplier",
        "features",
        "instance",
        "limits",
        "monthly_price",
    }
    assert set(tier["limits"]) == {"storage_gb", "monthly_credits", "max_subgraphs", "copy_operations", "backup"}
    offering = catalog.offering_payload(billing_enabled=True)
    assert offering["summary"]["total_graph_tiers"] == 3
    assert offering["graph_subscriptions"]["tiers"][2]["monthly_price_per_graph"] == 499.0
    assert {r["type"] for r in offering["repository_subscriptions"]["repositories"]} >= {"sec"}
    limits = standard.limits_payload()
    assert set(limits["copy_operations"]) == {
        "max_file_size_gb",
        "timeout_seconds",
        "concurrent_operations",
        "max_files_per_operation",
        "daily_copy_operations",
        "supported_formats",
    }
    assert set(limits["rate_limits"]) == {"requests_per_minute", "requests_per_hour", "burst_capacity"}


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda t: t.replace("[graph]", "[graph", 1), "not valid TOML"),
        (lambda t: t.replace("price_cents = 4900", "price_cents = -1", 1), "graph.plans.kuzu-standard.price_cents"),
        (lambda t: t.replace("monthly_credits = 10000\n", "", 1), "graph.plans.kuzu-standard.monthly_credits"),
        (lambda t: t.replace('premium = "kuzu-xlarge"', 'premium = "kuzu-mega"', 1), "unknown plan 'kuzu-mega'"),
        (lambda t: t.replace("memory_mb = 2048", "memory_mb = 2048\nmemroy_mb = 1", 1), "memroy_mb"),
    ],
)
def test_bad_catalog_fails_fast_naming_the_problem(tmp_path: Path, mutate: Callable[[str], str], expected: str) -> None:
    bad = tmp_path / "plans.toml"
    bad.write_text(mutate(DEFAULT_PLANS_FILE.read_text()))
    with pytest.raises(CatalogError) as caught:
        load_catalog(bad)
    assert str(bad) in str(caught.value) and expected in str(caught.value)
    # the app refuses to be built with it (checked at start, before serving anything)
    from robosystems.app import create_app

    settings = Settings(  # type: ignore[call-arg]
        _env_file=None, environment="test", jwt_secret_key="k" * 40, billing_plans_file=bad, database_url="x"
    )
    with pytest.raises(CatalogError):
        create_app(settings)


def test_missing_catalog_file(tmp_path: Path) -> None:
    with pytest.raises(CatalogError, match="file not found"):
        get_catalog(tmp_path / "nope.toml")


# --------------------------------------------------------------------------------------------------------------
# invoice numbers
# --------------------------------------------------------------------------------------------------------------


def _invoice_in_thread(maker: sessionmaker[Session], org_id: str, month: datetime, rollback: bool) -> str:
    with maker() as s:
        inv = invoices.create_invoice(
            s,
            org_id=org_id,
            period_start=month,
            period_end=month,
            subtotal_cents=4900,
            numbered_at=month,
            lines=[invoices.LineItemInput("Graph kuzu-standard", 4900, month, month)],
        )
        number = inv.invoice_number
        if rollback:
            s.rollback()
        else:
            s.commit()
        return number


def _numbers(engine: sa.Engine, prefix: str) -> list[int]:
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text("SELECT invoice_number FROM billing_invoices WHERE invoice_number LIKE :p"), {"p": prefix + "%"}
        ).scalars()
        return sorted(int(n.rsplit("-", 1)[1]) for n in rows)


def test_100_concurrent_invoices_are_numbered_1_to_100(engine: sa.Engine, maker: sessionmaker[Session]) -> None:
    _, org_id = make_org(engine)
    month = datetime(2031, 5, 17, 12, tzinfo=UTC)
    results = run_parallel(20, lambda i: [_invoice_in_thread(maker, org_id, month, False) for _ in range(5)])
    assert not [r for r in results if isinstance(r, BaseException)]
    assert _numbers(engine, "INV-2031-05-") == list(range(1, 101))
    assert _scalar(engine, "SELECT last_number FROM billing_invoice_counters WHERE period = '2031-05'") == 100
    assert _scalar(engine, "SELECT count(*) FROM billing_invoice_line_items") == 100


def test_rolled_back_invoices_give_their_number_back(engine: sa.Engine, maker: sessionmaker[Session]) -> None:
    _, org_id = make_org(engine)
    month = datetime(2031, 6, 1, tzinfo=UTC)
    # 100 transactions, every 5th rolls back AFTER it took its number (while holding the counter row)
    results = run_parallel(
        20, lambda i: [_invoice_in_thread(maker, org_id, month, (i * 5 + k) % 5 == 4) for k in range(5)]
    )
    assert not [r for r in results if isinstance(r, BaseException)]
    assert _numbers(engine, "INV-2031-06-") == list(range(1, 81))
    assert _scalar(engine, "SELECT last_number FROM billing_invoice_counters WHERE period = '2031-06'") == 80
    assert _scalar(engine, "SELECT count(*) FROM billing_audit_logs WHERE event_type = 'invoice_generated'") == 80


def test_invoice_number_format_widens_past_9999(engine: sa.Engine, maker: sessionmaker[Session]) -> None:
    with maker.begin() as s:
        s.execute(sa.text("INSERT INTO billing_invoice_counters (period, last_number) VALUES ('2032-01', 9998)"))
        first = invoices.next_invoice_number(s, datetime(2032, 1, 31, 23, 59, tzinfo=UTC))
        second = invoices.next_invoice_number(s, datetime(2032, 1, 2, tzinfo=UTC))
        fresh_month = invoices.next_invoice_number(s, datetime(2032, 2, 1, tzinfo=UTC))
    assert (first, second, fresh_month) == ("INV-2032-01-9999", "INV-2032-01-10000", "INV-2032-02-0001")


# --------------------------------------------------------------------------------------------------------------
# provider invoices
# --------------------------------------------------------------------------------------------------------------


def _subscription(maker: sessionmaker[Session], org_id: str, provider_sub: str | None = None) -> str:
    with maker.begin() as s:
        sub, _ = subscriptions.create_subscription(s, org_id=org_id, plan_name="kuzu-standard", base_price_cents=4900)
        if provider_sub:
            sub.provider_subscription_id = provider_sub
        return sub.id


def test_upsert_from_provider_creates_then_updates_numbered_once(
    engine: sa.Engine, maker: sessionmaker[Session]
) -> None:
    _, org_id = make_org(engine)
    sub_id = _subscription(maker, org_id, "sub_test_123")
    raw = stripe_invoice(
        status="open",
        amount_paid=0,
        parent={"subscription_details": {"metadata": None, "subscription": "sub_test_123"}, "type": "x"},
        hosted_invoice_url="https://pay.example/inv",
    )
    with maker.begin() as s:
        inv = invoices.upsert_from_provider(s, org_id, raw)
        first_id, number = inv.id, inv.invoice_number
        assert (inv.status, inv.subscription_id, inv.total_cents, inv.currency) == ("open", sub_id, 1000, "usd")
        assert inv.hosted_invoice_url == "https://pay.example/inv"

    paid = {**raw, "status": "paid", "amount_paid": 1000, "status_transitions": {"paid_at": 1_900_000_000}}
    with maker.begin() as s:
        inv = invoices.upsert_from_provider(s, org_id, paid)
        assert (inv.id, inv.invoice_number, inv.status, inv.amount_paid_cents) == (first_id, number, "paid", 1000)
        assert inv.paid_at == datetime.fromtimestamp(1_900_000_000, UTC)
    with maker.begin() as s:  # an older event (open) arriving late does not move it back
        inv = invoices.upsert_from_provider(s, org_id, raw)
        assert inv.status == "paid"

    assert _scalar(engine, "SELECT count(*) FROM billing_invoices WHERE stripe_invoice_id = :i", i=raw["id"]) == 1
    lines = _scalar(engine, "SELECT count(*) FROM billing_invoice_line_items WHERE invoice_id = :i", i=first_id)
    assert lines == 1
    amount = _scalar(engine, "SELECT amount_cents FROM billing_invoice_line_items WHERE invoice_id = :i", i=first_id)
    assert amount == 1000
    events = _scalar(
        engine,
        "SELECT string_agg(event_type, ',' ORDER BY event_timestamp, event_type) FROM billing_audit_logs "
        "WHERE invoice_id = :i",
        i=first_id,
    )
    assert sorted(events.split(",")) == ["invoice_generated", "invoice_paid"]


def test_concurrent_deliveries_of_one_provider_invoice_create_one_row(
    engine: sa.Engine, maker: sessionmaker[Session]
) -> None:
    _, org_id = make_org(engine)
    raw = stripe_invoice(status="open")

    def deliver(_: int) -> str:
        with maker.begin() as s:
            return invoices.upsert_from_provider(s, org_id, raw).invoice_number

    results = run_parallel(8, deliver)
    assert not [r for r in results if isinstance(r, BaseException)]
    assert len(set(results)) == 1
    assert _scalar(engine, "SELECT count(*) FROM billing_invoices WHERE stripe_invoice_id = :i", i=raw["id"]) == 1
    period = str(results[0])[4:11]
    counter = _scalar(engine, "SELECT last_number FROM billing_invoice_counters WHERE period = :p", p=period)
    assert counter == int(str(results[0]).rsplit("-", 1)[1])  # no number was burnt by the losers


def test_provider_invoice_guards(engine: sa.Engine, maker: sessionmaker[Session]) -> None:
    _, org_a = make_org(engine)
    _, org_b = make_org(engine)
    raw = stripe_invoice()
    with maker.begin() as s:
        invoices.upsert_from_provider(s, org_a, raw)
    with maker() as s, pytest.raises(Conflict) as caught:
        invoices.upsert_from_provider(s, org_b, raw)
    assert caught.value.code == "provider_invoice_org_mismatch"
    for bad in ({**raw, "id": None}, {**raw, "id": "in_x", "total": "lots"}, {**raw, "id": "in_y", "status": "x"}):
        with maker() as s, pytest.raises(Unprocessable) as caught_bad:
            invoices.upsert_from_provider(s, org_a, bad)
        assert caught_bad.value.code == "invalid_provider_invoice"


def test_mark_paid_is_idempotent_and_audited(engine: sa.Engine, maker: sessionmaker[Session]) -> None:
    admin_id, org_id = make_org(engine)
    now = datetime.now(UTC)
    with maker.begin() as s:
        inv = invoices.create_invoice(
            s, org_id=org_id, period_start=now, period_end=now, subtotal_cents=700, status="open"
        )
    for _ in range(2):
        with maker.begin() as s:
            paid = invoices.mark_paid(s, inv.id, actor=Actor.admin(admin_id), reason="wire transfer received")
            assert (paid.status, paid.amount_paid_cents) == ("paid", 700)
    with engine.connect() as conn:
        row = conn.execute(
            sa.text(
                "SELECT actor_type, actor_user_id, reason FROM billing_audit_logs WHERE event_type = 'invoice_paid'"
            )
        ).all()
    assert row == [("admin", admin_id, "wire transfer received")]
    with maker() as s, pytest.raises(NotFound):
        invoices.mark_paid(s, "binv_missing")


# --------------------------------------------------------------------------------------------------------------
# credits ledger
# --------------------------------------------------------------------------------------------------------------


def test_20_concurrent_spends_of_10_on_100_exactly_10_succeed(engine: sa.Engine, maker: sessionmaker[Session]) -> None:
    user_id, org_id = make_org(engine)
    graph_id = make_graph(maker, org_id, user_id, balance=100)

    def spend(_: int) -> Decimal:
        with maker.begin() as s:
            return credits.consume(s, graph_id, 10, description="query", user_id=user_id)

    results = run_parallel(20, spend)
    ok = [r for r in results if isinstance(r, Decimal)]
    refused = [r for r in results if isinstance(r, AppError)]
    assert len(ok) == 10 and len(refused) == 10
    assert all(r.status_code == 402 and r.code == "insufficient_credits" for r in refused)
    assert sorted(ok) == [Decimal(n) for n in range(0, 100, 10)]  # every intermediate balance seen exactly once
    assert pool_balance(engine, graph_id) == 0
    assert ledger_sum(engine, graph_id) == pool_balance(engine, graph_id)
    consumed = _scalar(
        engine,
        "SELECT count(*) FROM graph_credit_transactions WHERE graph_id = :g AND transaction_type = 'consumption'",
        g=graph_id,
    )
    assert consumed == 10


def test_grant_for_one_invoice_applies_once(engine: sa.Engine, maker: sessionmaker[Session]) -> None:
    user_id, org_id = make_org(engine)
    graph_id = make_graph(maker, org_id, user_id)  # no pool yet: the first grant creates it
    with maker.begin() as s:
        assert credits.grant_for_invoice(s, graph_id, "binv_A", 500, create_pool_for_user=user_id) is True
    with maker.begin() as s:
        assert credits.grant_for_invoice(s, graph_id, "binv_A", 500) is False

    def grant(_: int) -> bool:
        with maker.begin() as s:
            return credits.grant_for_invoice(s, graph_id, "binv_B", 250)

    results = run_parallel(10, grant)
    assert sorted(results, key=str) == [False] * 9 + [True]  # type: ignore[type-var]
    assert pool_balance(engine, graph_id) == Decimal("750.00")
    assert ledger_sum(engine, graph_id) == pool_balance(engine, graph_id)
    keys = _scalar(
        engine,
        "SELECT string_agg(idempotency_key, ',' ORDER BY idempotency_key) FROM graph_credit_transactions "
        "WHERE graph_id = :g",
        g=graph_id,
    )
    assert keys == "invoice:binv_A,invoice:binv_B"
    last_alloc = _scalar(engine, "SELECT last_allocation_date FROM graph_credits WHERE graph_id = :g", g=graph_id)
    assert last_alloc is not None


def test_ledger_operations_keep_the_invariant(engine: sa.Engine, maker: sessionmaker[Session]) -> None:
    user_id, org_id = make_org(engine)
    graph_id = make_graph(maker, org_id, user_id, balance=100)
    with maker.begin() as s:
        assert credits.consume(s, graph_id, "12.345", idempotency_key="op-1") == Decimal("87.65")
        assert credits.consume(s, graph_id, "12.345", idempotency_key="op-1") == Decimal("87.65")  # repeat: no charge
        assert credits.refund(s, graph_id, "2.35", idempotency_key="refund-op-1") is True
        assert credits.refund(s, graph_id, "2.35", idempotency_key="refund-op-1") is False
        assert credits.adjust(s, graph_id, 10, reason="goodwill", actor=Actor.admin(user_id)) == Decimal("100.00")
        assert credits.adjust(s, graph_id, -40, reason="correction", actor="admin") == Decimal("60.00")
    with maker() as s:
        with pytest.raises(Conflict) as caught:
            credits.adjust(s, graph_id, -61, reason="too much")
        assert caught.value.code == "negative_balance"
        with pytest.raises(AppError) as short:
            credits.consume(s, graph_id, 61)
        assert (short.value.status_code, short.value.code) == (402, "insufficient_credits")
        for bad in (0, -5, "abc", "1e12"):
            with pytest.raises(Unprocessable):
                credits.consume(s, graph_id, bad)
        with pytest.raises(NotFound) as missing:
            credits.consume(s, "kg0000000000000000", 1)
        assert missing.value.code == "credit_pool_not_found"
        s.rollback()
    assert pool_balance(engine, graph_id) == Decimal("60.00")
    assert ledger_sum(engine, graph_id) == Decimal("60.00")
    adjusted = _scalar(
        engine,
        "SELECT count(*) FROM billing_audit_logs WHERE event_type = 'credits_adjusted' AND org_id = :o",
        o=org_id,
    )
    assert adjusted == 2
    with pytest.raises(IntegrityError, match="ck_graph_credits_current_balance_nonnegative"), engine.begin() as conn:
        conn.execute(sa.text("UPDATE graph_credits SET current_balance = -1 WHERE graph_id = :g"), {"g": graph_id})


# --------------------------------------------------------------------------------------------------------------
# subscription state machine
# --------------------------------------------------------------------------------------------------------------

ALLOWED = {
    ("pending_payment", "provisioning"),
    ("pending_payment", "expired"),
    ("pending_payment", "canceled"),
    ("provisioning", "active"),
    ("provisioning", "failed"),
    ("active", "past_due"),
    ("active", "canceled"),
    ("active", "unpaid"),
    ("active", "paused"),
    ("past_due", "active"),
    ("past_due", "canceled"),
    ("past_due", "unpaid"),
    ("unpaid", "active"),
    ("unpaid", "canceled"),
    ("paused", "active"),
    ("paused", "canceled"),
    ("failed", "refunded"),
    ("failed", "provisioning"),
}


def test_transition_table_is_exactly_the_design() -> None:
    pairs = {(a, b) for a in subscriptions.STATES for b in subscriptions.STATES if subscriptions.can_transition(a, b)}
    assert pairs == ALLOWED
    assert subscriptions.from_provider_status("active") == "active"
    assert subscriptions.from_provider_status("trialing") == "active"
    assert subscriptions.from_provider_status("incomplete_expired") == "expired"
    assert subscriptions.from_provider_status("past_due") == "past_due"
    assert subscriptions.from_provider_status("something_new") is None


def test_every_illegal_transition_is_refused_with_409(
    engine: sa.Engine, maker: sessionmaker[Session], caplog: pytest.LogCaptureFixture
) -> None:
    _, org_id = make_org(engine)
    sub_id = _subscription(maker, org_id)
    caplog.set_level(logging.WARNING, logger="robosystems.billing.subscriptions")
    for target in set(subscriptions.STATES) - {"pending_payment", "provisioning", "expired", "canceled"}:
        with maker() as s, pytest.raises(subscriptions.IllegalTransition) as caught:
            subscriptions.transition(s, sub_id, target, actor="system", reason="test")
        assert (caught.value.status_code, caught.value.code) == (409, "illegal_transition")
    assert _scalar(engine, "SELECT status FROM billing_subscriptions WHERE id = :i", i=sub_id) == "pending_payment"
    assert sum("illegal transition" in r.getMessage() for r in caplog.records) == 6
    with maker() as s, pytest.raises(Unprocessable):
        subscriptions.transition(s, sub_id, "bogus")
    with maker() as s, pytest.raises(NotFound):
        subscriptions.transition(s, "bsub_missing", "provisioning")


def test_lifecycle_writes_one_audit_row_per_transition(engine: sa.Engine, maker: sessionmaker[Session]) -> None:
    user_id, org_id = make_org(engine)
    sub_id = _subscription(maker, org_id)
    t0 = datetime(2030, 1, 1, tzinfo=UTC)
    path = ["provisioning", "active", "past_due", "active", "canceled"]
    for minute, state in enumerate(path, start=1):
        with maker.begin() as s:
            subscriptions.transition(
                s, sub_id, state, actor=Actor.user(user_id), reason=f"step {minute}", event_at=t0.replace(minute=minute)
            )
    with maker.begin() as s:  # same state again: no-op, no audit row
        result = subscriptions.apply_transition(s, sub_id, "canceled", event_at=t0.replace(minute=9))
        assert not result.changed and not result.stale
    with maker.begin() as s:  # a stale event is ignored
        result = subscriptions.apply_transition(s, sub_id, "active", event_at=t0.replace(minute=2))
        assert result.stale and result.subscription.status == "canceled"
    with maker() as s, pytest.raises(subscriptions.IllegalTransition):
        subscriptions.transition(s, sub_id, "active", event_at=t0.replace(minute=30))

    with engine.connect() as conn:
        row = conn.execute(
            sa.text("SELECT status, started_at, canceled_at, last_event_at FROM billing_subscriptions WHERE id = :i"),
            {"i": sub_id},
        ).one()
        audit = conn.execute(
            sa.text(
                "SELECT event_type, event_data->>'from', event_data->>'to', actor_user_id, org_id "
                "FROM billing_audit_logs WHERE subscription_id = :i ORDER BY created_at, id"
            ),
            {"i": sub_id},
        ).all()
    assert row.status == "canceled" and row.started_at == t0.replace(minute=2)
    assert row.canceled_at == t0.replace(minute=5) and row.last_event_at == t0.replace(minute=9)
    assert [a[0] for a in audit] == [
        "subscription_created",
        "subscription_provisioning",
        "subscription_activated",
        "subscription_past_due",
        "subscription_activated",
        "subscription_canceled",
    ]
    assert [(a[1], a[2]) for a in audit[1:]] == list(zip(["pending_payment", *path[:-1]], path, strict=True))
    assert all(a[3] == user_id and a[4] == org_id for a in audit[1:])


def test_failed_keeps_a_reason_and_admin_can_retry(engine: sa.Engine, maker: sessionmaker[Session]) -> None:
    _, org_id = make_org(engine)
    sub_id = _subscription(maker, org_id)
    with maker.begin() as s:
        subscriptions.transition(s, sub_id, "provisioning")
        sub = subscriptions.transition(s, sub_id, "failed", reason="graph health check failed " + "x" * 300)
        assert sub.failure_reason is not None and len(sub.failure_reason) == 200
        sub = subscriptions.transition(s, sub_id, "provisioning", actor=Actor.admin(), reason="retry")
        assert sub.failure_reason is None


def test_status_check_and_one_live_subscription_per_graph(engine: sa.Engine, maker: sessionmaker[Session]) -> None:
    user_id, org_id = make_org(engine)
    graph_id = make_graph(maker, org_id, user_id)
    first, second = _subscription(maker, org_id), _subscription(maker, org_id)
    with engine.begin() as conn:
        conn.execute(
            sa.text("UPDATE billing_subscriptions SET resource_id = :g, status = 'active' WHERE id = :i"),
            {"g": graph_id, "i": first},
        )
        conn.execute(  # a canceled one may point at the same graph
            sa.text("UPDATE billing_subscriptions SET resource_id = :g, status = 'canceled' WHERE id = :i"),
            {"g": graph_id, "i": second},
        )
    with pytest.raises(IntegrityError, match="uq_billing_subscriptions_live_graph"), engine.begin() as conn:
        conn.execute(sa.text("UPDATE billing_subscriptions SET status = 'past_due' WHERE id = :i"), {"i": second})
    with pytest.raises(IntegrityError, match="ck_billing_subscriptions_status"), engine.begin() as conn:
        conn.execute(sa.text("UPDATE billing_subscriptions SET status = 'pending' WHERE id = :i"), {"i": first})


def test_create_subscription_idempotency(engine: sa.Engine, maker: sessionmaker[Session]) -> None:
    _, org_id = make_org(engine)

    def create(_: int) -> tuple[str, bool]:
        with maker.begin() as s:
            sub, created = subscriptions.create_subscription(
                s,
                org_id=org_id,
                plan_name="kuzu-large",
                base_price_cents=19900,
                idempotency_key="key-1",
                request_fingerprint="fp-1",
                resource_config={"graph_name": "X"},
            )
            return sub.id, created

    results = run_parallel(10, create)
    assert not [r for r in results if isinstance(r, BaseException)]
    assert len({r[0] for r in results}) == 1 and sum(r[1] for r in results) == 1  # type: ignore[index]
    with maker() as s, pytest.raises(Conflict) as caught:
        subscriptions.create_subscription(
            s,
            org_id=org_id,
            plan_name="kuzu-xlarge",
            base_price_cents=49900,
            idempotency_key="key-1",
            request_fingerprint="fp-other",
        )
    assert caught.value.code == "idempotency_key_reused"
    assert _scalar(engine, "SELECT count(*) FROM billing_subscriptions WHERE org_id = :o", o=org_id) == 1
    meta = _scalar(engine, "SELECT subscription_metadata FROM billing_subscriptions WHERE org_id = :o", o=org_id)
    assert meta == {"resource_config": {"graph_name": "X"}}


# --------------------------------------------------------------------------------------------------------------
# billing customers
# --------------------------------------------------------------------------------------------------------------


def test_customer_get_or_create_under_10_concurrent_callers(engine: sa.Engine, maker: sessionmaker[Session]) -> None:
    _, org_id = make_org(engine)
    calls: list[str] = []
    lock = threading.Lock()

    def create_remote(org: str) -> str:
        with lock:
            calls.append(org)
        return f"cus_{secrets.token_hex(6)}"

    def get(_: int) -> str | None:
        with maker.begin() as s:
            return customers.get_or_create_customer(s, "stripe", org_id, create_remote).stripe_customer_id

    results = run_parallel(10, get)
    assert not [r for r in results if isinstance(r, BaseException)]
    assert calls == [org_id]
    assert len(set(results)) == 1 and str(results[0]).startswith("cus_")
    assert _scalar(engine, "SELECT count(*) FROM billing_customers WHERE org_id = :o", o=org_id) == 1
    audit = _scalar(
        engine,
        "SELECT count(*) FROM billing_audit_logs WHERE event_type = 'customer_created' AND org_id = :o",
        o=org_id,
    )
    assert audit == 1
    assert customers.customer_idempotency_key(org_id) == f"customer:{org_id}"


async def test_customer_get_or_create_async_concurrent(database_url: str, engine: sa.Engine) -> None:
    _, org_id = make_org(engine)
    async_engine = create_async_engine(sync_url(database_url), pool_size=10)
    amaker = async_sessionmaker(async_engine, expire_on_commit=False)
    calls: list[str] = []

    async def create_remote(org: str) -> str:
        calls.append(org)
        await asyncio.sleep(0)
        return f"cus_{secrets.token_hex(6)}"

    async def get() -> str | None:
        async with amaker() as s, s.begin():
            cust = await customers.get_or_create_customer_async(s, "local", org_id, create_remote)
            return cust.stripe_customer_id

    try:
        results = await asyncio.gather(*(get() for _ in range(10)))
    finally:
        await async_engine.dispose()
    assert len(calls) == 1 and len(set(results)) == 1
    assert _scalar(engine, "SELECT provider FROM billing_customers WHERE org_id = :o", o=org_id) == "local"


def test_payment_method_is_recorded(engine: sa.Engine, maker: sessionmaker[Session]) -> None:
    user_id, org_id = make_org(engine)
    with maker.begin() as s:
        customers.get_or_create_customer(s, "stripe", org_id, lambda o: "cus_pm_test")
        cust = customers.record_payment_method(
            s,
            org_id,
            payment_method_id="pm_1",
            summary={"brand": "visa", "last4": "4242", "cvc": "nope"},
            actor=Actor.user(user_id),
        )
        assert cust.has_payment_method and cust.payment_method_summary == {"brand": "visa", "last4": "4242"}
    with maker() as s, pytest.raises(NotFound):
        customers.record_payment_method(s, "org_missing", payment_method_id="pm_2")


# --------------------------------------------------------------------------------------------------------------
# billing audit log
# --------------------------------------------------------------------------------------------------------------


def test_audit_log_needs_a_reference_and_is_append_only(engine: sa.Engine, maker: sessionmaker[Session]) -> None:
    _, org_id = make_org(engine)
    with maker() as s, pytest.raises(ValueError, match="names no org"):
        record_billing_event(s, "webhook_received")
    with maker.begin() as s:
        audit_id = record_billing_event(s, "admin_override", org_id=org_id, actor_type="admin", reason="because")
    with pytest.raises(IntegrityError, match="ck_billing_audit_logs_has_reference"), engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO billing_audit_logs (id, event_type, description, actor_type) "
                "VALUES ('baud_x', 'x', 'x', 'system')"
            )
        )
    for sql in ("UPDATE billing_audit_logs SET reason = 'edited'", "DELETE FROM billing_audit_logs"):
        with pytest.raises(DBAPIError, match="append-only"), engine.begin() as conn:
            conn.execute(sa.text(sql))
    assert _scalar(engine, "SELECT reason FROM billing_audit_logs WHERE id = :i", i=audit_id) == "because"
    validated = _scalar(
        engine, "SELECT convalidated FROM pg_constraint WHERE conname = 'ck_billing_audit_logs_has_reference'"
    )
    assert validated is True
