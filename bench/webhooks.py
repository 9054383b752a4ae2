"""Webhook inbox benchmark: a burst of signed Stripe events at the running service.

One run: a scratch database migrated to head with ``--subscriptions`` linked graph subscriptions (each with
a billing customer); ``robosystems serve --no-migrate --workers 1`` on it (embedded default: in-process
worker, no broker; ``--redis`` adds REDIS_URL and a ``robosystems worker`` process instead); then
``--events`` signed ``customer.subscription.updated`` events (status alternating active/past_due, ``created``
increasing per subscription, 5 % re-sent as duplicates, shuffled) are POSTed open-loop at ``--rate`` events/s
over ``--connections`` keep-alive connections.

Reports the acknowledgement latency (from each event's scheduled send time, so a client falling behind is
counted, p50/p90/p99/max), the achieved events/s, non-2xx answers, duplicates recognised, the time until every
distinct event is applied (status processed/ignored), and checks ``applied == distinct sent`` and that each
subscription ends in the state of its newest event.  Goal: p99 ack < ``--goal-p99-ms`` (100) at 200 events/s.

    .venv/bin/python bench/webhooks.py                     # 2,000 events at 200/s, embedded worker
    .venv/bin/python bench/webhooks.py --rate 400 --events 4000
    .venv/bin/python bench/webhooks.py --redis             # broker + separate Celery worker

Exit status: 0 goal met, 1 goal missed or wrong result, 2 harness error.  Databases and servers are removed
even on failure or Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import secrets
import statistics
import sys
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402 - run as a script from any directory
    VENV_BIN,
    Server,
    admin_url_from_env,
    install_signal_handlers,
    log,
    machine_load,
    proc_cpu_seconds,
    robosystems_server,
    scratch_database,
)

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import stripe  # noqa: E402

SECRET = "whsec_bench_" + secrets.token_hex(16)
T0 = int(time.time()) - 3600


def seed(database_url: str, subscriptions: int) -> list[tuple[str, str, str]]:
    """Orgs, billing customers and active graph subscriptions linked to provider ids: [(bsub, sub_, cus_)]."""
    rows: list[tuple[str, str, str]] = []
    with psycopg.connect(database_url, autocommit=False) as conn:
        for i in range(subscriptions):
            tag = secrets.token_hex(6)
            user, org, bsub = f"user_bench{tag}", f"org_bench{tag}", f"bsub_bench{tag}"
            sub, cus = f"sub_bench{tag}", f"cus_bench{tag}"
            conn.execute(
                "INSERT INTO users (id, email, name, password_hash) VALUES (%s, %s, 'Bench', 'x')",
                (user, f"bench-{tag}@example.com"),
            )
            conn.execute(
                "INSERT INTO orgs (id, name, org_type, personal_user_id) VALUES (%s, 'Bench', 'personal', %s)",
                (org, user),
            )
            conn.execute(
                "INSERT INTO billing_customers (org_id, provider, stripe_customer_id) VALUES (%s, 'stripe', %s)",
                (org, cus),
            )
            conn.execute(
                "INSERT INTO billing_subscriptions (id, org_id, resource_type, plan_name, billing_interval, "
                "base_price_cents, status, payment_provider, provider_subscription_id, provider_customer_id, "
                "resource_id) VALUES (%s, %s, 'graph', 'kuzu-standard', 'monthly', 4999, 'active', 'stripe', %s, %s, "
                "%s)",
                (bsub, org, sub, cus, f"kgbench{i:012x}"),
            )
            rows.append((bsub, sub, cus))
        conn.commit()
    return rows


def build_events(subs: list[tuple[str, str, str]], total: int, dup_rate: float) -> tuple[list[bytes], dict[str, str]]:
    """Signed bodies to send (duplicates included, shuffled) and the expected final status per subscription."""
    distinct = int(round(total / (1 + dup_rate)))
    events: list[dict[str, Any]] = []
    newest: dict[str, tuple[int, str]] = {}
    for n in range(distinct):
        bsub, sub, cus = subs[n % len(subs)]
        created = T0 + n  # increasing per subscription
        status = "active" if (n // len(subs)) % 2 == 0 else "past_due"
        obj = {
            "id": sub,
            "object": "subscription",
            "customer": cus,
            "status": status,
            "cancel_at_period_end": False,
            "metadata": {},
            "items": {
                "object": "list",
                "data": [
                    {
                        "id": f"si_{sub}",
                        "object": "subscription_item",
                        "current_period_start": T0,
                        "current_period_end": T0 + 2_592_000,
                        "subscription": sub,
                    }
                ],
            },
        }
        events.append(
            {
                "id": f"evt_bench_{secrets.token_hex(10)}",
                "object": "event",
                "type": "customer.subscription.updated",
                "created": created,
                "api_version": "2025-03-31.basil",
                "livemode": False,
                "data": {"object": obj},
            }
        )
        newest[bsub] = max(newest.get(bsub, (0, "")), (created, status))
    dups = random.sample(events, total - distinct)
    sequence = events + dups
    random.shuffle(sequence)
    bodies = [json.dumps(e, separators=(",", ":")).encode() for e in sequence]
    return bodies, {bsub: status for bsub, (_, status) in newest.items()}


class RawConnection:
    """A minimal HTTP/1.1 keep-alive client connection (the load generator must cost far less CPU than the
    service it measures: httpx spends ~3 ms per request here, this ~0.2 ms)."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
        if self.writer is None or self.writer.is_closing():
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        assert self.writer is not None
        head = f"POST {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\nContent-Length: {len(body)}\r\n"
        head += "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
        self.writer.write(head.encode("latin-1") + body)
        status_line = await self.reader.readline()
        status = int(status_line.split()[1])
        length, close = 0, False
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            if name.lower() == "content-length":
                length = int(value)
            elif name.lower() == "connection" and value.strip().lower() == "close":
                close = True
        payload = await self.reader.readexactly(length) if length else b""
        if close:
            self.writer.close()
        return status, payload


async def burst(base_url: str, bodies: list[bytes], rate: float, connections: int) -> dict[str, Any]:
    parsed = httpx.URL(base_url)
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    duplicates = 0
    conns = [RawConnection(parsed.host, parsed.port or 80) for _ in range(connections)]
    start = time.perf_counter() + 0.2
    next_index = 0

    async def sender(conn: RawConnection) -> None:
        # one coroutine per connection takes the next event in order and sends it at its scheduled time;
        # latency counts from that time, so a backlog (all connections busy) is part of the measurement
        nonlocal next_index, duplicates
        while next_index < len(bodies):
            i = next_index
            next_index += 1
            body = bodies[i]
            scheduled = start + i / rate
            delay = scheduled - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            header = stripe.WebhookSignature.generate_signature_header(body.decode(), SECRET)
            try:
                code, payload = await conn.post(
                    "/admin/v1/webhooks/stripe",
                    body,
                    {"Stripe-Signature": header, "Content-Type": "application/json"},
                )
                if code == 200 and b'"duplicate":true' in payload:
                    duplicates += 1
            except (OSError, ValueError, IndexError, asyncio.IncompleteReadError):
                code = 0
                conn.writer = None
            latencies.append((time.perf_counter() - scheduled) * 1000)
            statuses[code] = statuses.get(code, 0) + 1

    await asyncio.gather(*(sender(c) for c in conns))
    elapsed = time.perf_counter() - start
    for conn in conns:
        if conn.writer is not None:
            conn.writer.close()
    latencies.sort()

    def pct(p: float) -> float:
        return latencies[min(len(latencies) - 1, int(round(p / 100 * (len(latencies) - 1))))]

    return {
        "sent": len(bodies),
        "elapsed_s": elapsed,
        "events_per_s": len(bodies) / elapsed,
        "p50_ms": pct(50),
        "p90_ms": pct(90),
        "p99_ms": pct(99),
        "max_ms": latencies[-1],
        "mean_ms": statistics.fmean(latencies),
        "statuses": statuses,
        "duplicates_acknowledged": duplicates,
        "burst_end": time.perf_counter(),
    }


def wait_applied(database_url: str, distinct: int, timeout: float) -> tuple[int, float]:
    started = time.perf_counter()
    applied = 0
    with psycopg.connect(database_url, autocommit=True) as conn:
        while time.perf_counter() - started < timeout:
            applied = conn.execute(
                "SELECT count(*) FROM webhook_events WHERE status IN ('processed', 'ignored')"
            ).fetchone()[0]  # type: ignore[index]
            if applied >= distinct:
                break
            time.sleep(0.05)
    return applied, time.perf_counter()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=2000)
    parser.add_argument("--rate", type=float, default=200.0, help="events per second (open loop)")
    parser.add_argument("--duplicates", type=float, default=0.05, help="share of re-sent events")
    parser.add_argument("--subscriptions", type=int, default=100)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--redis", action="store_true", help="REDIS_URL broker + a separate `robosystems worker`")
    parser.add_argument("--worker-pool", default="prefork", help="pool of the separate worker (prefork|threads|solo)")
    parser.add_argument("--worker-concurrency", type=int, default=2, help="concurrency of the separate worker")
    parser.add_argument("--redis-url", default=os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/14")
    parser.add_argument("--apply-timeout", type=float, default=300.0)
    parser.add_argument("--goal-p99-ms", type=float, default=100.0)
    parser.add_argument("--json", type=Path, help="write the result here as JSON")
    parser.add_argument("--env", action="append", default=[], metavar="KEY=VALUE", help="extra server setting")
    args = parser.parse_args()
    install_signal_handlers()
    log(f"machine: {machine_load()}")
    queue = f"bench-{secrets.token_hex(4)}"
    try:
        with ExitStack() as stack:
            db = stack.enter_context(scratch_database(admin_url_from_env(), prefix="bench_webhooks"))
            subs = seed(db, args.subscriptions)
            bodies, expected = build_events(subs, args.events, args.duplicates)
            distinct = len({json.loads(b)["id"] for b in bodies})
            env = {
                "STRIPE_WEBHOOK_SECRET": SECRET,
                "WEBHOOK_RATE_LIMIT_PER_IP": "1000000/minute",
                "OUTBOX_POLL_INTERVAL_SECONDS": "0.5",
                "LOG_LEVEL": "WARNING",
                "CELERY_QUEUE": queue,
            }
            if args.redis:
                env["REDIS_URL"] = args.redis_url
            env.update(item.split("=", 1) for item in args.env)
            server = stack.enter_context(robosystems_server(db, extra_env=env, ready_path="/healthz"))
            if args.redis:
                worker_env = {**os.environ, **env, "DATABASE_URL": db, "ENVIRONMENT": "development"}
                worker_env["ROBOSYSTEMS_DATA_DIR"] = str(Path(server.cwd or ".") / "worker")
                worker = Server(
                    "worker",
                    [
                        str(VENV_BIN / "robosystems"),
                        "worker",
                        "--pool",
                        args.worker_pool,
                        "--concurrency",
                        str(args.worker_concurrency),
                        "--loglevel",
                        "WARNING",
                    ],
                    server.base_url,
                    env=worker_env,
                    cwd=server.cwd,
                )
                stack.enter_context(worker)
            log(f"sending {len(bodies)} events ({distinct} distinct) at {args.rate:.0f}/s")
            server_cpu0, client_cpu0 = proc_cpu_seconds(server.pid) or 0.0, time.process_time()
            result = asyncio.run(burst(server.base_url, bodies, args.rate, args.connections))
            result["server_cpu_ms_per_event"] = (
                ((proc_cpu_seconds(server.pid) or 0.0) - server_cpu0) * 1000 / len(bodies)
            )
            result["client_cpu_ms_per_event"] = (time.process_time() - client_cpu0) * 1000 / len(bodies)
            result["machine"] = machine_load()
            applied, done = wait_applied(db, distinct, args.apply_timeout)
            result["applied"] = applied
            result["distinct"] = distinct
            result["applied_after_burst_s"] = max(0.0, done - result.pop("burst_end"))
            with psycopg.connect(db, autocommit=True) as conn:
                finals = dict(conn.execute("SELECT id, status FROM billing_subscriptions").fetchall())
                failed = conn.execute("SELECT count(*) FROM webhook_events WHERE status = 'failed'").fetchone()[0]  # type: ignore[index]
            wrong = sum(1 for bsub, status in expected.items() if finals.get(bsub) != status)
            result["subscriptions_in_wrong_state"] = wrong
            result["failed_events"] = failed
    except Exception as exc:  # noqa: BLE001 - harness error
        log(f"harness error: {exc!r}")
        return 2
    finally:
        if args.redis:  # leave nothing behind in the shared Redis
            import redis

            client = redis.Redis.from_url(args.redis_url)
            for key in [queue, *client.scan_iter(f"_kombu.binding*.{queue}")]:
                client.delete(key)

    mode = "redis broker + worker" if args.redis else "embedded (in-process worker)"
    print(
        f"\nwebhook burst — {mode}; {result['sent']} events ({result['distinct']} distinct) at {args.rate:.0f}/s target"
    )
    print(
        f"  ack latency   p50 {result['p50_ms']:.1f} ms   p90 {result['p90_ms']:.1f} ms   "
        f"p99 {result['p99_ms']:.1f} ms   max {result['max_ms']:.1f} ms"
    )
    print(
        f"  throughput    {result['events_per_s']:.0f} events/s over {result['elapsed_s']:.1f} s; "
        f"statuses {result['statuses']}; duplicates recognised {result['duplicates_acknowledged']}"
    )
    print(
        f"  cpu           server {result['server_cpu_ms_per_event']:.2f} ms/event (API"
        f"{' + in-process worker' if not args.redis else ''}), load generator {result['client_cpu_ms_per_event']:.2f}"
        f" ms/event; {result['machine']}"
    )
    print(
        f"  applied       {result['applied']} / {result['distinct']} distinct, all applied "
        f"{result['applied_after_burst_s']:.1f} s after the burst; failed {result['failed_events']}; "
        f"subscriptions not in their newest event's state: {result['subscriptions_in_wrong_state']}"
    )
    correct = (
        result["applied"] == result["distinct"]
        and result["subscriptions_in_wrong_state"] == 0
        and result["failed_events"] == 0
        and result["statuses"].get(200, 0) == result["sent"]
        and result["duplicates_acknowledged"] == result["sent"] - result["distinct"]
    )
    goal = result["p99_ms"] < args.goal_p99_ms
    print(
        f"  goal p99 < {args.goal_p99_ms:.0f} ms: {'met' if goal else 'MISSED'}; result "
        f"{'correct' if correct else 'WRONG'}"
    )
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0 if goal and correct else 1


if __name__ == "__main__":
    sys.exit(main())
