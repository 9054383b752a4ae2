"""Credit consumption path: operations/s on ONE graph with N concurrent spenders (default 8).

Each spender runs ``billing.credits.consume`` (one conditional UPDATE of the pool + one ledger
INSERT, its own transaction) in a loop for ``--seconds``.  The same-run baseline is the floor of
that pattern: N threads each committing a bare ``UPDATE … SET n = n + 1`` of one shared row (the
same row-lock contention, no ledger, no checks).  Afterwards it checks the invariants the path
promises: balance >= 0 and Σ ledger == balance.

Usage: .venv/bin/python bench/credits.py [--spenders 8] [--seconds 10]
"""

from __future__ import annotations

import argparse
import secrets
import statistics
import sys
import threading
import time
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common import install_signal_handlers, log, machine_load, scratch_database  # noqa: E402

from robosystems.billing import credits  # noqa: E402
from robosystems.db import sync_url  # noqa: E402
from robosystems.ids import new_id  # noqa: E402


def setup(engine: sa.Engine, maker: sessionmaker[Session], balance: int) -> str:
    user_id, org_id, graph_id = new_id("user"), new_id("org"), f"kg{secrets.token_hex(8)}"
    with engine.begin() as conn:
        conn.execute(
            sa.text("INSERT INTO users (id, email, name, password_hash) VALUES (:u, :e, 'Bench', 'x')"),
            {"u": user_id, "e": f"bench-{secrets.token_hex(4)}@example.com"},
        )
        conn.execute(
            sa.text("INSERT INTO orgs (id, name, org_type, personal_user_id) VALUES (:o, 'B', 'personal', :u)"),
            {"o": org_id, "u": user_id},
        )
        conn.execute(
            sa.text(
                "INSERT INTO graphs (graph_id, graph_name, graph_type, schema_extensions, graph_instance_id, "
                "graph_tier, org_id) VALUES (:g, 'G', 'entity', '[]'::jsonb, 'default', 'kuzu-standard', :o)"
            ),
            {"g": graph_id, "o": org_id},
        )
        conn.execute(sa.text("CREATE TABLE bench_counter (id int PRIMARY KEY, n bigint NOT NULL)"))
        conn.execute(sa.text("INSERT INTO bench_counter VALUES (1, 0)"))
    with maker.begin() as s:
        credits.ensure_pool(s, graph_id, user_id=user_id)
        credits.grant_for_invoice(s, graph_id, f"bench-{graph_id}", balance)
    return graph_id


def hammer(threads: int, seconds: float, op: Callable[[], None]) -> tuple[int, list[float]]:
    """Run ``op`` in ``threads`` threads for ``seconds``; return (operations, latencies in ms)."""
    stop = time.monotonic() + seconds
    latencies: list[list[float]] = [[] for _ in range(threads)]
    barrier = threading.Barrier(threads)

    def run(i: int) -> None:
        barrier.wait()
        while time.monotonic() < stop:
            start = time.perf_counter()
            op()
            latencies[i].append((time.perf_counter() - start) * 1000)

    workers = [threading.Thread(target=run, args=(i,)) for i in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    flat = [x for per in latencies for x in per]
    return len(flat), flat


def pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[int(q) - 1] if len(values) > 1 else (values[0] if values else 0.0)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--spenders", type=int, default=8)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--cost", type=int, default=1)
    args = p.parse_args()
    install_signal_handlers()
    log(f"load average {machine_load()}")
    with scratch_database() as url:
        engine = sa.create_engine(sync_url(url), pool_size=args.spenders + 2, max_overflow=0)
        maker = sessionmaker(engine)
        graph_id = setup(engine, maker, balance=10_000_000)

        def spend() -> None:
            with maker.begin() as s:
                credits.consume(s, graph_id, args.cost, description="bench")

        def bump() -> None:
            with engine.begin() as conn:
                conn.execute(sa.text("UPDATE bench_counter SET n = n + 1 WHERE id = 1"))

        log(f"baseline: {args.spenders} threads x {args.seconds}s bare UPDATE of one row")
        base_ops, base_lat = hammer(args.spenders, args.seconds, bump)
        log(f"ours: {args.spenders} threads x {args.seconds}s credits.consume on one graph")
        ops, lat = hammer(args.spenders, args.seconds, spend)
        with engine.connect() as conn:
            bal = conn.execute(
                sa.text("SELECT current_balance FROM graph_credits WHERE graph_id = :g"), {"g": graph_id}
            ).scalar_one()
            ledger = conn.execute(
                sa.text("SELECT coalesce(sum(amount), 0) FROM graph_credit_transactions WHERE graph_id = :g"),
                {"g": graph_id},
            ).scalar_one()
            consumed = conn.execute(
                sa.text(
                    "SELECT count(*) FROM graph_credit_transactions WHERE graph_id = :g "
                    "AND transaction_type = 'consumption'"
                ),
                {"g": graph_id},
            ).scalar_one()
        engine.dispose()
    base_rate, rate = base_ops / args.seconds, ops / args.seconds
    print(f"\ncredit consumption on one graph, {args.spenders} concurrent spenders, {args.seconds:.0f}s each")
    print(f"{'target':<34}{'ops/s':>10}{'p50 ms':>10}{'p99 ms':>10}")
    print(
        f"{'baseline (bare UPDATE one row)':<34}{base_rate:>10.0f}{pct(base_lat, 50):>10.2f}{pct(base_lat, 99):>10.2f}"
    )
    print(f"{'credits.consume':<34}{rate:>10.0f}{pct(lat, 50):>10.2f}{pct(lat, 99):>10.2f}")
    print(f"ratio ours/baseline = {rate / base_rate:.2f}")
    ok = Decimal(bal) == Decimal(ledger) and Decimal(bal) >= 0 and consumed == ops
    print(
        f"invariants: balance {bal} == Σ ledger {ledger}; consumption rows {consumed} == operations {ops}: "
        f"{'OK' if ok else 'VIOLATED'}"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
