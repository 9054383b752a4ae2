"""Checkout paths under load, against ``GET /v1/auth/me`` measured in the same run on the same server.

Setup: a scratch database migrated to head; ``robosystems serve --no-migrate --workers 1`` on it with the
local payment provider (no Stripe account needed); one user registered over HTTP, the graph limit of
their personal org lifted (by SQL: data setup, not the thing measured); one checkout created.  Then, one
target after the other (never at once), a warm-up and a measured load of N connections for D seconds:

    (a) me        GET  /v1/auth/me
    (b) offering  GET  /v1/offering                              (public, the plan catalog)
    (c) status    GET  /v1/billing/checkout/{session_id}/status  (polled by clients after Pay)
    (d) replay    POST /v1/billing/checkout  + the same Idempotency-Key (answered without the org lock)
    (e) create    POST /v1/billing/checkout  without a key: a new pending subscription + a provider
                  checkout session per request, all in ONE org (they serialize on the org row lock:
                  the worst case; checkouts of different orgs don't wait for each other)

Prints requests/s, p50/p90/p99 and CPU ms per request (app, PostgreSQL backends), the ratio to (a),
and checks (c) and (d) against ``--goal`` (default 0.4).  After each run it verifies that every 201 of
(e) made exactly one subscription (give or take the requests in flight at the end) and that no other
target made any.  Exit status: 0 goal met, 1 missed, 2 harness error.

    .venv/bin/python bench/checkout.py                     # 32 connections, 10 s, 1 round
    .venv/bin/python bench/checkout.py -c 64 -d 20 --rounds 3 --profile out/

The scratch database and the server are removed even on failure or Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402 - run as a script from any directory
    CpuProbe,
    LoadResult,
    Profile,
    admin_url_from_env,
    check_get,
    db_backend_pids,
    ensure_wrk,
    install_signal_handlers,
    load_arguments,
    log,
    median_result,
    print_profile,
    print_table,
    py_spy_profile,
    register_user,
    robosystems_server,
    run_load,
    run_script,
    scratch_database,
    spread,
    summarise_py_spy,
)

NAMES = ("me", "offering", "status", "replay", "create")
GOAL_TARGETS = ("status", "replay")
CHECKOUT_BODY = json.dumps(
    {"plan_name": "kuzu-standard", "resource_type": "graph", "resource_config": {"graph_name": "Bench graph"}}
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = load_arguments(__doc__)
    p.add_argument("--goal", type=float, default=0.4, help="required ratio target/me for status and replay")
    return p.parse_args(argv)


def subscription_count(database_url: str, org_id: str) -> int:
    with psycopg.connect(database_url) as conn:
        row = conn.execute("SELECT count(*) FROM billing_subscriptions WHERE org_id = %s", (org_id,)).fetchone()
        return int(row[0]) if row else 0


def settled_count(database_url: str, org_id: str, rounds: int = 50) -> int:
    """The count once requests still in flight after a load run have finished (two equal reads 0.2 s apart)."""
    last = subscription_count(database_url, org_id)
    for _ in range(rounds):
        time.sleep(0.2)
        current = subscription_count(database_url, org_id)
        if current == last:
            return current
        last = current
    return last


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    install_signal_handlers()
    wrk = None if args.python_load else ensure_wrk(install=not args.no_install)
    if wrk is None:
        log("load generator: Python asyncio+httpx (wrk unavailable or --python-load)")
    results: dict[str, list[LoadResult]] = {name: [] for name in NAMES}
    profiles: dict[str, Profile] = {}
    created_total = 0

    with ExitStack() as stack:
        url = stack.enter_context(scratch_database(args.admin_url or admin_url_from_env()))
        ours = stack.enter_context(
            robosystems_server(url, port=args.port or None, extra_env={"PAYMENT_PROVIDER": "local"})
        )
        registered = register_user(ours.base_url)
        org_id = registered["org"]["id"]
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("UPDATE org_limits SET max_graphs = -1 WHERE org_id = %s", (org_id,))
        auth = {"Authorization": f"Bearer {registered['token']}"}
        json_auth = {**auth, "Content-Type": "application/json"}
        replay_headers = {**json_auth, "Idempotency-Key": "bench-replay-key"}
        first = httpx.post(f"{ours.base_url}/v1/billing/checkout", content=CHECKOUT_BODY, headers=replay_headers)
        if first.status_code != 201:
            raise RuntimeError(f"checkout failed: HTTP {first.status_code} {first.text[:300]}")
        session_id = first.json()["session_id"]
        check_get(f"{ours.base_url}/v1/billing/checkout/{session_id}/status", auth)
        check_get(f"{ours.base_url}/v1/offering")

        targets: dict[str, tuple[str, str, dict[str, str], str | None]] = {
            "me": ("GET", f"{ours.base_url}/v1/auth/me", auth, None),
            "offering": ("GET", f"{ours.base_url}/v1/offering", {}, None),
            "status": ("GET", f"{ours.base_url}/v1/billing/checkout/{session_id}/status", auth, None),
            "replay": ("POST", f"{ours.base_url}/v1/billing/checkout", replay_headers, CHECKOUT_BODY),
            "create": ("POST", f"{ours.base_url}/v1/billing/checkout", json_auth, CHECKOUT_BODY),
        }

        def load(name: str, seconds: float) -> LoadResult:
            method, target_url, headers, body = targets[name]
            probe = CpuProbe({"app": lambda: [ours.pid], "db": lambda: db_backend_pids(url)})
            return run_load(
                name,
                target_url,
                connections=args.connections,
                duration=seconds,
                threads=args.threads,
                headers=headers,
                method=method,
                body=body,
                wrk=wrk,
                cpu=probe,
            )

        def measured(name: str, seconds: float) -> LoadResult:
            nonlocal created_total
            before = subscription_count(url, org_id)
            result = load(name, seconds)
            made = settled_count(url, org_id) - before
            if name == "create":
                created_total += made
                # wrk does not count the requests still in flight when the time is up (at most one per connection)
                answered = result.requests - result.errors
                if not answered <= made <= answered + args.connections:
                    raise RuntimeError(f"create: {answered} answers but {made} subscriptions")
            elif made:
                raise RuntimeError(f"{name}: created {made} subscriptions (must create none)")
            return result

        for name in NAMES:
            if args.warmup > 0:
                log(f"warm-up {name} {args.warmup:.0f}s")
                measured(name, args.warmup)
        for round_no in range(1, args.rounds + 1):
            for name in NAMES:
                log(f"round {round_no}/{args.rounds}: {name} {args.connections} conns x {args.duration:.0f}s")
                result = measured(name, args.duration)
                if result.errors:
                    raise RuntimeError(f"{name}: {result.errors} errors/non-2xx responses in {result.requests}")
                results[name].append(result)

        if args.profile is not None:
            for name in NAMES:
                out = args.profile / name
                log(f"profiling {name} with py-spy for {args.duration:.0f}s -> {out}")
                spy = py_spy_profile(ours.pid, args.duration, out)
                load(name, args.duration)
                profiles[name] = summarise_py_spy(spy, out)

    medians = {name: median_result(runs) for name, runs in results.items()}
    reference = medians["me"]
    print_table(
        list(medians.values()),
        reference=reference,
        title=f"checkout paths vs GET /v1/auth/me: {args.connections} connections, {args.duration:.0f}s, "
        f"{args.rounds} round(s), {reference.tool}, median round, local payment provider",
    )
    if args.rounds > 1:
        for name, runs in results.items():
            print(
                f"  {name:<10} req/s per round: {', '.join(f'{r.rps:.0f}' for r in runs)}"
                f"  -> {spread([r.rps for r in runs])}"
            )
    print(f"create: {created_total} subscriptions created, one per 201 (checked after every run); replay: none")
    ratios = {name: medians[name].rps / reference.rps if reference.rps else 0.0 for name in GOAL_TARGETS}
    ok = all(r >= args.goal for r in ratios.values())
    for name, ratio in ratios.items():
        print(f"ratio {name}/me = {ratio:.2f}  (goal >= {args.goal:.2f}): {'PASS' if ratio >= args.goal else 'FAIL'}")
    for name, profile in profiles.items():
        print_profile(profile, f"py-spy profile of {name} under load (not the measured run)")
    if args.json is not None:
        payload: dict[str, Any] = {
            "connections": args.connections,
            "duration_s": args.duration,
            "rounds": args.rounds,
            "ratios": ratios,
            "goal": args.goal,
            "pass": ok,
            "created": created_total,
            "runs": {name: [r.as_dict() for r in runs] for name, runs in results.items()},
        }
        args.json.write_text(json.dumps(payload, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    run_script(main)
