"""Query endpoint benchmark: ``POST /v1/graphs/{id}/query`` with a trivial Cypher query against the same-run
baseline (``bench/baseline_app.py``: one PK SELECT per request on the same stack).

One run: a scratch database migrated to head; ``robosystems serve --no-migrate --workers 1`` (BILLING_ENABLED=false,
so the graph is provisioned at once by the in-process worker) and the baseline app on it; a user registers,
creates a ``kuzu-xlarge`` graph (200,000 credits: the run must not exhaust them) and waits until it answers;
then, one target after the other, a warm-up and a measured load of N connections for D seconds on

    (a) baseline  GET  /user/{id}
    (b) query     POST /v1/graphs/{graph}/query  {"query": "RETURN 1 AS one"}

The query path per request: token check, graph access (one query), lifecycle/plan (one query), credit debit in
its own short transaction (one conditional UPDATE + ledger INSERT), the Cypher query on LadybugDB in the thread
pool, the usage event INSERT and the request's commit.  Prints req/s, latency, the ratio and CPU per request.

    .venv/bin/python bench/query.py                  # 32 connections, 10 s
    .venv/bin/python bench/query.py -c 16 -d 20 --rounds 3
    .venv/bin/python bench/query.py --cost 0         # QUERY_CREDIT_COST=0: no debit, no refund path

Exit status: 0 measured, 2 harness error.
"""

from __future__ import annotations

import json
import sys
import time
from contextlib import ExitStack
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    CpuProbe,
    LoadResult,
    admin_url_from_env,
    baseline_server,
    check_get,
    db_backend_pids,
    ensure_wrk,
    free_port,
    install_signal_handlers,
    load_arguments,
    log,
    machine_load,
    median_result,
    print_table,
    register_user,
    robosystems_server,
    run_load,
    run_script,
    scratch_database,
    spread,
)

QUERY = json.dumps({"query": "RETURN 1 AS one"})


def provisioned_graph(base_url: str, auth: dict[str, str], timeout_s: float = 120.0) -> str:
    created = httpx.post(
        f"{base_url}/v1/graphs",
        json={"metadata": {"graph_name": "Bench"}, "instance_tier": "kuzu-xlarge"},
        headers=auth,
        timeout=30,
    )
    if created.status_code != 202:
        raise RuntimeError(f"POST /v1/graphs -> {created.status_code}: {created.text[:300]}")
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = httpx.get(f"{base_url}{created.json()['status_url']}", headers=auth, timeout=10).json()
        if status["status"] == "completed":
            graph_id: str = status["graph_id"]
            return graph_id
        time.sleep(0.05)
    raise RuntimeError("graph was not provisioned in time")


def main() -> int:
    p = load_arguments(__doc__, server=False)
    p.add_argument("--cost", default="1", help="QUERY_CREDIT_COST for the run (default 1)")
    args = p.parse_args()
    install_signal_handlers()
    load_at_start = machine_load()
    log(load_at_start)
    wrk = None if args.python_load else ensure_wrk(install=False)
    results: dict[str, list[LoadResult]] = {"baseline": [], "query": []}
    with ExitStack() as stack:
        url = stack.enter_context(scratch_database(admin_url_from_env(), prefix="bench_query"))
        env = {"BILLING_ENABLED": "false", "QUERY_CREDIT_COST": args.cost, "LOG_LEVEL": "WARNING"}
        ours = stack.enter_context(robosystems_server(url, extra_env=env, ready_path="/healthz"))
        base = stack.enter_context(baseline_server(url, free_port()))
        registered = register_user(ours.base_url)
        auth = {"Authorization": f"Bearer {registered['token']}", "Content-Type": "application/json"}
        graph_id = provisioned_graph(ours.base_url, auth)
        check = httpx.post(f"{ours.base_url}/v1/graphs/{graph_id}/query", content=QUERY, headers=auth, timeout=10)
        if check.status_code != 200 or check.json()["data"] != [{"one": 1}]:
            raise RuntimeError(f"query sanity check failed: {check.status_code} {check.text[:300]}")
        check_get(f"{base.base_url}/user/{registered['user']['id']}")
        targets = {
            "baseline": (f"{base.base_url}/user/{registered['user']['id']}", {}, "GET", None),
            "query": (f"{ours.base_url}/v1/graphs/{graph_id}/query", auth, "POST", QUERY),
        }
        servers = {"baseline": base, "query": ours}

        def load(name: str, seconds: float) -> LoadResult:
            target, headers, method, body = targets[name]
            probe = CpuProbe({"app": lambda: [servers[name].pid], "db": lambda: db_backend_pids(url)})
            return run_load(
                name,
                target,
                connections=args.connections,
                duration=seconds,
                threads=args.threads,
                headers=headers,
                method=method,
                body=body,
                wrk=wrk,
                cpu=probe,
            )

        for name in targets:
            if args.warmup > 0:
                load(name, args.warmup)
        for round_no in range(1, args.rounds + 1):
            for name in targets:
                log(f"round {round_no}/{args.rounds}: {name} {args.connections} conns x {args.duration:.0f}s")
                result = load(name, args.duration)
                if result.errors:
                    log(f"WARNING {name}: {result.errors} errors in {result.requests} requests {result.error_detail}")
                results[name].append(result)
        balance = httpx.get(f"{ours.base_url}/v1/graphs/{graph_id}/credits/summary", headers=auth, timeout=10).json()
    baseline, query = median_result(results["baseline"]), median_result(results["query"])
    ratio = query.rps / baseline.rps if baseline.rps else 0.0
    print_table(
        [baseline, query],
        reference=baseline,
        title=f"POST /v1/graphs/{{id}}/query (RETURN 1) vs baseline PK SELECT: {args.connections} "
        f"connections, {args.duration:.0f}s, {args.rounds} round(s), {query.tool}, QUERY_CREDIT_COST="
        f"{args.cost}",
    )
    if args.rounds > 1:
        for name, runs in results.items():
            print(
                f"  {name:<8} req/s per round: {', '.join(f'{r.rps:.0f}' for r in runs)} -> "
                f"{spread([r.rps for r in runs])}"
            )
    print(f"\nratio query/baseline = {ratio:.2f}; credits left on the graph: {balance.get('current_balance')}")
    print(f"{load_at_start} at start, {machine_load()} at end")
    if args.json is not None:
        args.json.write_text(
            json.dumps({"ratio": ratio, "runs": {k: [r.as_dict() for r in v] for k, v in results.items()}}, indent=2)
        )
    return 0


if __name__ == "__main__":
    run_script(main)
