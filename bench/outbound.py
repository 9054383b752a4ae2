"""Outbound webhooks benchmark: fan-out throughput on one worker, and event committed -> delivered latency.

Both against a local receiver in its own process (``bench/webhook_receiver.py``, aiohttp, answers 204), on a
scratch database migrated to head.

1. **fan-out** — one org with ``--endpoints`` (50) endpoints subscribed to ``org.updated``; ``--events`` (1,000)
   events emitted the way the features do (``outbound.events.emit``, one transaction each: 50,000 deliveries).
   Then ONE worker — this process, running the delivery task through the task outbox exactly like the in-process
   runner (``InlineDispatcher``) — delivers them: claims, signs (``standardwebhooks``), POSTs, records every
   attempt.  Reported: deliveries/s and events/s (an event counts once all its endpoints have it) from the first
   claim to the last record.  **Baseline**, same run: the same number of plain, unsigned POSTs of the same body
   from one process, same HTTP client (aiohttp) and the same concurrency (``OUTBOUND_WEBHOOKS_CONCURRENCY``),
   no database.  Ratio = ours / baseline.
2. **latency** — ``robosystems serve`` with its embedded worker (the default layout) and
   ``OUTBOUND_WEBHOOKS_ALLOW_PRIVATE=true``; one endpoint on the receiver; ``--latency-events`` (200) ``PUT
   /v1/orgs/{id}`` at ``--rate`` (20/s).  Latency = arrival at the receiver - the event's ``timestamp`` (taken
   inside the transaction, just before its commit, so the figure is an upper bound of committed -> delivered).
   p50/p99/max.  Goal: p50 < 500 ms.

    .venv/bin/python bench/outbound.py
    .venv/bin/python bench/outbound.py --events 200 --endpoints 10 --latency-events 50

Exit status: 0 done (and every delivery arrived), 1 some did not arrive or the goal was missed, 2 harness error.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import statistics
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402 - run as a script from any directory
    VENV_BIN,
    Server,
    admin_url_from_env,
    free_port,
    install_signal_handlers,
    load_arguments,
    log,
    machine_load,
    register_user,
    robosystems_server,
    run_script,
    scratch_database,
)

HERE = Path(__file__).resolve().parent


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))] if ordered else 0.0


def receiver(port: int) -> Server:
    return Server("receiver", [str(VENV_BIN / "python"), str(HERE / "webhook_receiver.py"), str(port)],
                  f"http://127.0.0.1:{port}", ready_path="/healthz")


def received(port: int) -> int:
    return int(httpx.get(f"http://127.0.0.1:{port}/_stats", timeout=10).json()["count"])


def reset(port: int) -> None:
    httpx.post(f"http://127.0.0.1:{port}/_reset", timeout=10)


# --- 1. fan-out ----------------------------------------------------------------------------------------------------


def seed(ctx: Any, port: int, endpoints: int, events: int) -> tuple[str, str]:
    """An org, its endpoints and the events (each emitted in its own transaction, like the features do)."""
    from sqlalchemy import text

    from robosystems.db import sync_unit_of_work
    from robosystems.ids import new_id
    from robosystems.outbound import events as outbound
    from robosystems.outbound.signing import new_secret

    org_id = new_id("org")
    with sync_unit_of_work(ctx.maker) as session:
        session.execute(text("INSERT INTO orgs (id, name, org_type) VALUES (:id, 'Bench org', 'team')"), {"id": org_id})
        for i in range(endpoints):
            session.execute(
                text("INSERT INTO outbound_endpoints (id, org_id, url, events, secret) "
                     "VALUES (:id, :org, :url, ARRAY['org.updated'], :secret)"),
                {"id": new_id("whep"), "org": org_id, "url": f"http://127.0.0.1:{port}/e/{i}?timestamps=0",
                 "secret": new_secret()},
            )
    body = ""
    for n in range(events):
        with sync_unit_of_work(ctx.maker) as session:
            data = {"id": org_id, "name": f"Bench org {n}", "org_type": "team", "previous_attributes": {"name": "x"}}
            outbound.emit(session, org_id, "org.updated", data)
            body = outbound.render("org.updated", datetime.now(), data)
    return org_id, body


def run_worker(ctx: Any, total: int, timeout: float) -> tuple[float, int]:
    """Run the delivery task from the outbox in this thread until every delivery is recorded as delivered."""
    from sqlalchemy import text

    from robosystems.outbound.events import DELIVER_TASK
    from robosystems.worker import outbox

    dispatcher = outbox.InlineDispatcher(ctx.settings)
    started = time.perf_counter()
    deadline = started + timeout
    done = 0
    while time.perf_counter() < deadline:
        handled = outbox.drain_until_idle(ctx.engine, dispatcher, only=[DELIVER_TASK])
        with ctx.engine.connect() as conn:
            done = int(conn.execute(text("SELECT count(*) FROM outbound_deliveries WHERE status = 'delivered'"))
                       .scalar_one())
        if done >= total:
            break
        if not handled:
            time.sleep(0.05)
    return time.perf_counter() - started, done


async def plain_posts(url_for: Any, total: int, concurrency: int, body: bytes) -> float:
    """The baseline: ``total`` unsigned POSTs, ``concurrency`` at once, one process, the same client (aiohttp,
    keep-alive), no database."""
    import aiohttp

    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(total):
        queue.put_nowait(i)
    headers = {"content-type": "application/json"}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session:

        async def worker() -> None:
            while True:
                try:
                    i = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                async with session.post(url_for(i), data=body, headers=headers) as response:
                    await response.read()
                    if not 200 <= response.status < 300:
                        raise RuntimeError(f"baseline POST -> {response.status}")

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return time.perf_counter() - started


def fan_out(args: Any, db: str, port: int) -> dict[str, Any]:
    from robosystems.config import Settings
    from robosystems.worker import context

    settings = Settings(_env_file=None, database_url=db, environment="development",  # type: ignore[call-arg]
                        outbound_webhooks_allow_private=True, log_json=False)
    ctx = context.configure(settings)
    total = args.events * args.endpoints
    log(f"fan-out: seeding {args.events} events x {args.endpoints} endpoints = {total} deliveries")
    _org, body = seed(ctx, port, args.endpoints, args.events)
    reset(port)
    log("fan-out: one worker delivering")
    elapsed, done = run_worker(ctx, total, args.timeout)
    arrived = received(port)
    reset(port)
    log(f"fan-out: baseline, {total} plain POSTs from one process")
    base = asyncio.run(plain_posts(lambda i: f"http://127.0.0.1:{port}/e/{i % args.endpoints}?timestamps=0",
                                   total, settings.outbound_webhooks_concurrency, body.encode()))
    ctx.engine.dispose()
    context.reset()
    ours = done / elapsed
    baseline = total / base
    return {
        "deliveries": total, "delivered": done, "arrived": arrived, "seconds": round(elapsed, 2),
        "deliveries_per_s": round(ours, 1), "events_per_s": round(ours / args.endpoints, 1),
        "baseline_seconds": round(base, 2), "baseline_posts_per_s": round(baseline, 1),
        "ratio": round(ours / baseline, 2),
    }


# --- 2. latency ----------------------------------------------------------------------------------------------------


def latency(args: Any, db: str, port: int) -> dict[str, Any]:
    env = {"OUTBOUND_WEBHOOKS_ALLOW_PRIVATE": "true"}
    with robosystems_server(db, extra_env=env) as server:
        base = server.base_url
        user = register_user(base)
        auth = {"Authorization": f"Bearer {user['token']}"}
        with httpx.Client(base_url=base, timeout=30) as client:
            org_id = client.post("/v1/orgs", json={"name": "Latency"}, headers=auth).json()["id"]
            made = client.post(f"/v1/orgs/{org_id}/webhook-endpoints", headers=auth,
                               json={"url": f"http://127.0.0.1:{port}/latency", "events": ["org.updated"]})
            if made.status_code != 201:
                raise RuntimeError(f"endpoint: {made.status_code} {made.text[:300]}")
            reset(port)
            log(f"latency: {args.latency_events} org updates at {args.rate}/s")
            interval = 1.0 / args.rate
            next_at = time.perf_counter()
            for n in range(args.latency_events):
                next_at += interval
                r = client.put(f"/v1/orgs/{org_id}", json={"name": f"Latency {n}"}, headers=auth)
                if r.status_code != 200:
                    raise RuntimeError(f"PUT org -> {r.status_code}")
                time.sleep(max(0.0, next_at - time.perf_counter()))
        deadline = time.monotonic() + 60
        while received(port) < args.latency_events and time.monotonic() < deadline:
            time.sleep(0.1)
    arrivals = httpx.get(f"http://127.0.0.1:{port}/_arrivals", timeout=10).json()
    lat = [
        (a["at"] - datetime.fromisoformat(a["timestamp"].replace("Z", "+00:00")).timestamp()) * 1000
        for a in arrivals if a["path"] == "/latency" and a.get("timestamp")
    ]
    return {
        "events": args.latency_events, "arrived": len(lat), "p50_ms": round(pct(lat, 50), 1),
        "p99_ms": round(pct(lat, 99), 1), "max_ms": round(max(lat, default=0.0), 1),
        "mean_ms": round(statistics.fmean(lat), 1) if lat else 0.0,
    }


def main() -> int:
    install_signal_handlers()
    parser = load_arguments(__doc__, server=False)
    parser.add_argument("--admin-url", default=None, help="PostgreSQL server for the scratch DB")
    parser.add_argument("--events", type=int, default=1000)
    parser.add_argument("--endpoints", type=int, default=50)
    parser.add_argument("--timeout", type=float, default=900.0, help="longest fan-out delivery, seconds")
    parser.add_argument("--latency-events", type=int, default=200)
    parser.add_argument("--rate", type=float, default=20.0, help="org updates per second in the latency run")
    parser.add_argument("--goal-p50-ms", type=float, default=500.0)
    args = parser.parse_args()
    os.environ.setdefault("ROBOSYSTEMS_DATA_DIR", f"/tmp/bench-outbound-{secrets.token_hex(3)}")
    port = free_port()
    results: dict[str, Any] = {"load": machine_load()}
    with receiver(port), scratch_database(args.admin_url or admin_url_from_env()) as db:
        results["fan_out"] = fan_out(args, db, port)
        log(f"fan-out: {results['fan_out']}")
        reset(port)
        results["latency"] = latency(args, db, port)
    results["load_after"] = machine_load()
    f, lat = results["fan_out"], results["latency"]
    print(f"\noutbound webhooks ({results['load']} before, {results['load_after']} after)")
    print(f"fan-out, one worker: {f['deliveries']} deliveries ({args.events} events x {args.endpoints} endpoints) in "
          f"{f['seconds']} s = {f['deliveries_per_s']} deliveries/s = {f['events_per_s']} events/s; "
          f"arrived {f['arrived']}")
    print(f"baseline, plain POSTs from one process: {f['baseline_posts_per_s']} POST/s; ratio {f['ratio']}x")
    print(f"latency committed -> delivered (serve, embedded worker): p50 {lat['p50_ms']} ms, p99 {lat['p99_ms']} ms, "
          f"max {lat['max_ms']} ms ({lat['arrived']}/{lat['events']} arrived); goal p50 < {args.goal_p50_ms:g} ms")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    complete = f["delivered"] == f["deliveries"] and lat["arrived"] == lat["events"]
    return 0 if complete and lat["p50_ms"] < args.goal_p50_ms else 1


if __name__ == "__main__":
    run_script(main)
