"""Org read paths under load: ``GET /v1/orgs/{org_id}`` and ``GET /v1/orgs`` against the foundation
benchmark's baseline (``bench/baseline_app.py``: one PK SELECT per request, same stack and pool), measured in
the same run; ``GET /v1/auth/me`` is run too, for reference.

Setup: a scratch database migrated to head; ``robosystems serve --no-migrate --workers 1`` and the baseline app
on it; one user registered over HTTP, then put (by SQL, it's data setup, not the thing measured) into 20 team
orgs with 50 active members each (the user included; roles owner/admin/member in rotation) and 3 graphs per
org.  Then, one target after the other (never at once), a warm-up and a measured load of N connections for D
seconds on

    (a) baseline   GET /user/{id}                (baseline app: one PK SELECT)
    (b) me         GET /v1/auth/me
    (c) get_org    GET /v1/orgs/{org_id}        (50 members, 3 graphs, limits)
    (d) list_orgs  GET /v1/orgs?limit=50        (21 orgs with member/graph counts)

Prints requests/s, p50/p90/p99, CPU ms per request (app process, PostgreSQL backends), the ratios to (a) and
the goal check (get_org and list_orgs each >= --goal x baseline, default 0.5).  Exit status: 0 goal met,
1 missed, 2 harness error.

    .venv/bin/python bench/orgs.py                        # 32 connections, 10 s, 1 round
    .venv/bin/python bench/orgs.py -c 64 -d 20 --rounds 3
    .venv/bin/python bench/orgs.py --profile out/         # + py-spy profiles of each target

The scratch database and the servers are removed even on failure or Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import sys
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402 - run as a script from any directory
    CpuProbe,
    LoadResult,
    Profile,
    admin_url_from_env,
    baseline_server,
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

ORGS = 20
MEMBERS_PER_ORG = 50  # including the benchmark user
GRAPHS_PER_ORG = 3

SEED_SQL = """
INSERT INTO users (id, email, name, password_hash, is_active, email_verified, created_at, updated_at)
SELECT 'user_bench' || lpad(i::text, 6, '0'), 'bench-member-' || i || '@example.com', 'Member ' || i,
       'not-a-login-account', true, true, now(), now()
FROM generate_series(1, %(others)s) AS i;

INSERT INTO orgs (id, name, org_type, created_at, updated_at)
SELECT 'org_bench' || lpad(j::text, 3, '0'), 'Bench org ' || j, 'team', now(), now()
FROM generate_series(1, %(orgs)s) AS j;

INSERT INTO org_limits (id, org_id, max_graphs, created_at, updated_at)
SELECT 'olim_bench' || lpad(j::text, 3, '0'), 'org_bench' || lpad(j::text, 3, '0'), 100, now(), now()
FROM generate_series(1, %(orgs)s) AS j;

-- the benchmark user: owner / admin / member in rotation
INSERT INTO org_users (id, org_id, user_id, role, is_active, joined_at, created_at, updated_at)
SELECT 'ou_bench_me_' || j, 'org_bench' || lpad(j::text, 3, '0'), %(user_id)s,
       (ARRAY['owner', 'admin', 'member'])[1 + j %% 3], true, now(), now(), now()
FROM generate_series(1, %(orgs)s) AS j;

-- everybody else: (MEMBERS_PER_ORG - 1) distinct users per org, the first of them owner
INSERT INTO org_users (id, org_id, user_id, role, is_active, joined_at, created_at, updated_at)
SELECT 'ou_bench_' || j || '_' || k, 'org_bench' || lpad(j::text, 3, '0'),
       'user_bench' || lpad(((j - 1) * %(per_org)s + k)::text, 6, '0'),
       CASE WHEN k = 1 THEN 'owner' WHEN k <= 5 THEN 'admin' ELSE 'member' END,
       true, now() + k * interval '1 millisecond', now(), now()
FROM generate_series(1, %(orgs)s) AS j, generate_series(1, %(per_org)s) AS k;

INSERT INTO graphs (graph_id, org_id, graph_name, graph_type, schema_extensions, graph_instance_id, graph_tier,
                    created_at, updated_at)
SELECT 'kg' || lpad(to_hex(j * 100 + g), 16, '0'), 'org_bench' || lpad(j::text, 3, '0'), 'Graph ' || g,
       'generic', '[]'::jsonb, 'default', 'kuzu-standard', now(), now()
FROM generate_series(1, %(orgs)s) AS j, generate_series(1, %(graphs)s) AS g;
"""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = load_arguments(__doc__)
    p.add_argument(
        "--goal", type=float, default=0.5, help="required ratio target/baseline (requests/s) for each org target"
    )
    return p.parse_args(argv)


def seed(database_url: str, user_id: str) -> None:
    params = {
        "others": ORGS * (MEMBERS_PER_ORG - 1),
        "orgs": ORGS,
        "per_org": MEMBERS_PER_ORG - 1,
        "graphs": GRAPHS_PER_ORG,
        "user_id": user_id,
    }
    with psycopg.connect(database_url, autocommit=False) as conn:
        for statement in filter(None, (part.strip() for part in SEED_SQL.split(";\n"))):
            conn.execute(statement, params)  # type: ignore[arg-type]
        conn.execute("ANALYZE")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    install_signal_handlers()
    wrk = None if args.python_load else ensure_wrk(install=not args.no_install)
    if wrk is None:
        log("load generator: Python asyncio+httpx (wrk unavailable or --python-load)")
    names = ("baseline", "me", "get_org", "list_orgs")
    results: dict[str, list[LoadResult]] = {name: [] for name in names}
    profiles: dict[str, Profile] = {}

    with ExitStack() as stack:
        url = stack.enter_context(scratch_database(args.admin_url or admin_url_from_env()))
        ours = stack.enter_context(robosystems_server(url, port=args.port or None))
        base = stack.enter_context(baseline_server(url))
        registered = register_user(ours.base_url)
        user_id = registered["user"]["id"]
        seed(url, user_id)
        auth = {"Authorization": f"Bearer {registered['token']}"}
        org_id = "org_bench001"
        targets: dict[str, str] = {
            "baseline": f"{base.base_url}/user/{user_id}",
            "me": f"{ours.base_url}/v1/auth/me",
            "get_org": f"{ours.base_url}/v1/orgs/{org_id}",
            "list_orgs": f"{ours.base_url}/v1/orgs?limit=50",
        }
        if check_get(targets["baseline"])["id"] != user_id:
            raise RuntimeError("baseline sanity check failed")
        detail = check_get(targets["get_org"], auth)
        listing = check_get(targets["list_orgs"], auth)
        if len(detail["members"]) != MEMBERS_PER_ORG or len(detail["graphs"]) != GRAPHS_PER_ORG:
            raise RuntimeError(f"seed check failed: {len(detail['members'])} members, {len(detail['graphs'])} graphs")
        if listing["total"] != ORGS + 1 or any(
            o["member_count"] != MEMBERS_PER_ORG for o in listing["orgs"] if o["org_type"] == "team"
        ):
            raise RuntimeError(f"seed check failed: list total {listing['total']}")
        log(
            f"user {user_id} in {ORGS} orgs x {MEMBERS_PER_ORG} members (+ personal org); detail of {org_id} is "
            f"{len(json.dumps(detail))} bytes, list {len(json.dumps(listing))} bytes"
        )

        def load(name: str, seconds: float) -> LoadResult:
            server = base if name == "baseline" else ours
            probe = CpuProbe({"app": lambda: [server.pid], "db": lambda: db_backend_pids(url)})
            return run_load(
                name,
                targets[name],
                connections=args.connections,
                duration=seconds,
                threads=args.threads,
                headers={} if name == "baseline" else auth,
                wrk=wrk,
                cpu=probe,
            )

        for name in names:
            if args.warmup > 0:
                log(f"warm-up {name} {args.warmup:.0f}s")
                load(name, args.warmup)
        for round_no in range(1, args.rounds + 1):
            for name in names:
                log(f"round {round_no}/{args.rounds}: {name} {args.connections} conns x {args.duration:.0f}s")
                result = load(name, args.duration)
                if result.errors:
                    raise RuntimeError(f"{name}: {result.errors} errors/non-2xx responses in {result.requests}")
                results[name].append(result)

        if args.profile is not None:
            for name in names:
                out = args.profile / name
                log(f"profiling {name} with py-spy for {args.duration:.0f}s -> {out}")
                spy = py_spy_profile((base if name == "baseline" else ours).pid, args.duration, out)
                load(name, args.duration)
                profiles[name] = summarise_py_spy(spy, out)

    medians = {name: median_result(runs) for name, runs in results.items()}
    reference = medians["baseline"]
    print_table(
        list(medians.values()),
        reference=reference,
        title=f"org reads vs the baseline PK SELECT: {ORGS} orgs x {MEMBERS_PER_ORG} members, {args.connections} "
        f"connections, {args.duration:.0f}s, {args.rounds} round(s), {reference.tool}, median round",
    )
    if args.rounds > 1:
        for name, runs in results.items():
            print(
                f"  {name:<10} req/s per round: {', '.join(f'{r.rps:.0f}' for r in runs)}"
                f"  -> {spread([r.rps for r in runs])}"
            )
    ratios = {name: medians[name].rps / reference.rps if reference.rps else 0.0 for name in ("get_org", "list_orgs")}
    ok = all(r >= args.goal for r in ratios.values())
    for name, ratio in ratios.items():
        print(
            f"ratio {name}/baseline = {ratio:.2f}  (goal >= {args.goal:.2f}): "
            f"{'PASS' if ratio >= args.goal else 'FAIL'}"
        )
    for name, profile in profiles.items():
        print_profile(profile, f"py-spy profile of {name} under load (not the measured run)")
    if args.json is not None:
        payload: dict[str, Any] = {
            "connections": args.connections,
            "duration_s": args.duration,
            "rounds": args.rounds,
            "orgs": ORGS,
            "members_per_org": MEMBERS_PER_ORG,
            "ratios": ratios,
            "goal": args.goal,
            "pass": ok,
            "runs": {name: [r.as_dict() for r in runs] for name, runs in results.items()},
        }
        args.json.write_text(json.dumps(payload, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    run_script(main)
