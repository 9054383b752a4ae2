"""Provisioning benchmark: payment-confirmed webhook -> graph queryable, over N purchases.

One run per mode, on a scratch database migrated to head:

* ``embedded`` — ``robosystems serve`` alone: the in-process worker runs the webhook handlers and the
  provisioning task (no broker);
* ``redis`` (``--redis``) — ``robosystems serve`` + a separate ``robosystems worker`` process on the Redis broker
  (its own queue), sharing GRAPH_STORAGE_DIR.

Each purchase, one after the other: ``POST /v1/graphs`` -> 402 with the local provider's hosted checkout;
``POST /billing/local/checkout/{id}/pay`` (the plain HTML form).  That request returns once the provider's
signed events (``checkout.session.completed`` paid, ``customer.subscription.created``, ``invoice.*``) were
verified and stored by our webhook endpoint: **t0**.  Then ``POST /v1/graphs/{graph}/query`` (``RETURN 1``) is
retried until it answers 200 (the graph id comes from the operation status once provisioned): **t1**.  Reported:
p50/p95/max of t1 - t0, plus how the time splits into "until the operation is completed" and "first query".
Polling every ``--poll-ms`` (default 10 ms) adds at most that much to each figure.

    .venv/bin/python bench/provisioning.py                    # embedded, 50 purchases
    .venv/bin/python bench/provisioning.py --redis            # broker + separate worker
    .venv/bin/python bench/provisioning.py --both --json out.json

Exit status: 0 all purchases became queryable, 1 some did not, 2 harness error.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import statistics
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402 - run as a script from any directory
    VENV_BIN,
    Server,
    admin_url_from_env,
    install_signal_handlers,
    log,
    machine_load,
    register_user,
    robosystems_server,
    scratch_database,
)

SECRET = "whsec_bench_" + secrets.token_hex(16)


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return 0.0
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def purchase(client: httpx.Client, auth: dict[str, str], n: int, poll_s: float, timeout_s: float) -> dict[str, float]:
    asked = client.post("/v1/graphs", json={"metadata": {"graph_name": f"Bench graph {n}"}}, headers=auth)
    if asked.status_code != 402:
        raise RuntimeError(f"POST /v1/graphs -> {asked.status_code}: {asked.text[:300]}")
    body = asked.json()
    paid = client.post(f"/billing/local/checkout/{body['session_id']}/pay", data={"card_number": "4242424242424242"})
    if paid.status_code != 303:
        raise RuntimeError(f"pay -> {paid.status_code}: {paid.text[:300]}")
    t0 = time.perf_counter()
    deadline = t0 + timeout_s
    graph_id = None
    while graph_id is None:
        status = client.get(f"/v1/operations/{body['subscription_id']}/status", headers=auth).json()
        if status["status"] == "completed":
            graph_id = status["graph_id"]
            break
        if status["status"] in ("failed", "cancelled") or time.perf_counter() > deadline:
            raise RuntimeError(f"purchase {n}: {status}")
        time.sleep(poll_s)
    t_op = time.perf_counter()
    while True:
        answered = client.post(f"/v1/graphs/{graph_id}/query", json={"query": "RETURN 1 AS one"}, headers=auth)
        if answered.status_code == 200:
            break
        if time.perf_counter() > deadline:
            raise RuntimeError(f"purchase {n}: query -> {answered.status_code} {answered.text[:200]}")
        time.sleep(poll_s)
    t1 = time.perf_counter()
    return {"total_ms": (t1 - t0) * 1000, "to_completed_ms": (t_op - t0) * 1000, "first_query_ms": (t1 - t_op) * 1000}


def run_mode(mode: str, args: argparse.Namespace) -> dict[str, Any]:
    with ExitStack() as stack:
        db = stack.enter_context(scratch_database(admin_url_from_env(), prefix="bench_prov"))
        graphs = Path(tempfile.mkdtemp(prefix="bench-graphs-"))
        env = {
            "STRIPE_WEBHOOK_SECRET": SECRET,
            "GRAPH_STORAGE_DIR": str(graphs),
            "WEBHOOK_RATE_LIMIT_PER_IP": "1000000/minute",
            "OUTBOX_POLL_INTERVAL_SECONDS": "0.5",
            "LOG_LEVEL": "WARNING",
            "ORG_GRAPHS_DEFAULT_LIMIT": "-1",
            "CELERY_QUEUE": f"bench-prov-{secrets.token_hex(4)}",
        }
        if mode == "redis":
            env["REDIS_URL"] = args.redis_url
        server = stack.enter_context(robosystems_server(db, extra_env=env, ready_path="/healthz"))
        if mode == "redis":
            worker_env = {**os.environ, **env, "DATABASE_URL": db, "ENVIRONMENT": "development"}
            worker_env["ROBOSYSTEMS_DATA_DIR"] = str(Path(server.cwd or ".") / "worker")
            worker = Server(
                "worker",
                [str(VENV_BIN / "robosystems"), "worker", "--pool", "threads", "--concurrency", "4",
                 "--loglevel", "WARNING"],
                server.base_url,
                env=worker_env,
                cwd=server.cwd,
            )
            stack.enter_context(worker)
        owner = register_user(server.base_url)
        auth = {"Authorization": f"Bearer {owner['token']}"}
        samples: list[dict[str, float]] = []
        with httpx.Client(base_url=server.base_url, timeout=30) as client:
            for n in range(args.warmup):
                purchase(client, auth, -n - 1, args.poll_ms / 1000, args.timeout)
            log(f"{mode}: {args.warmup} warm-up purchase(s) done; measuring {args.purchases}")
            for n in range(args.purchases):
                samples.append(purchase(client, auth, n, args.poll_ms / 1000, args.timeout))
        totals = [s["total_ms"] for s in samples]
        return {
            "mode": mode,
            "purchases": len(samples),
            "p50_ms": statistics.median(totals),
            "p95_ms": pct(totals, 95),
            "max_ms": max(totals),
            "mean_ms": statistics.fmean(totals),
            "to_completed_p50_ms": statistics.median(s["to_completed_ms"] for s in samples),
            "first_query_p50_ms": statistics.median(s["first_query_ms"] for s in samples),
            "samples": samples,
        }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--purchases", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--poll-ms", type=float, default=10.0)
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per purchase before giving up")
    parser.add_argument("--redis", action="store_true", help="REDIS_URL broker + a separate `robosystems worker`")
    parser.add_argument("--both", action="store_true", help="embedded, then redis")
    parser.add_argument("--redis-url", default=os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/14")
    parser.add_argument("--json", type=Path, help="write the results here as JSON")
    args = parser.parse_args()
    install_signal_handlers()
    log(f"machine: {machine_load()}")
    modes = ["embedded", "redis"] if args.both else (["redis"] if args.redis else ["embedded"])
    results = []
    try:
        for mode in modes:
            results.append(run_mode(mode, args))
    except Exception as exc:  # noqa: BLE001 - harness error
        log(f"harness error: {exc!r}")
        return 2
    print(f"\npayment-confirmed webhook -> graph queryable ({args.purchases} purchases, one at a time, "
          f"poll {args.poll_ms:.0f} ms)")
    print(f"{'mode':<10} {'p50 ms':>8} {'p95 ms':>8} {'max ms':>8} {'mean ms':>8} {'->done p50':>11} "
          f"{'1st query p50':>14}")
    for r in results:
        print(f"{r['mode']:<10} {r['p50_ms']:>8.1f} {r['p95_ms']:>8.1f} {r['max_ms']:>8.1f} {r['mean_ms']:>8.1f} "
              f"{r['to_completed_p50_ms']:>11.1f} {r['first_query_p50_ms']:>14.1f}")
    print(f"machine: {machine_load()}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0 if all(r["purchases"] == args.purchases for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
