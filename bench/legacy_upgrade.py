"""Benchmark: preflight + upgrade + verify of a production-sized legacy database.

One run:

1. a legacy database from ``bench/legacy_data.py`` (default scale 1: 100k users, 150k graphs, 400k user_graphs,
   60k subscriptions, 120k invoices, 1M usage rows, edge cases E1–E11 planted), generated into a scratch database or
   copied from a template generated earlier (``--template``);
2. ``preflight`` (timed) -> it reports the two planted blockers -> the operator guide's fixes are applied (case twins
   renamed; the orphan graphs' owner named) -> ``preflight`` again, which must say READY;
3. the upgrade, ONE REVISION AT A TIME, each in its own process (``migrations.upgrade(rev)``), timing each one and
   reading the process's peak RSS from ``wait4()``;
4. meanwhile a sampler (every ``--sample-ms``) records lock waits from ``pg_locks``/``pg_stat_activity``:

   * the migration's own waits (its backend waiting for a lock; ``lock_timeout`` bounds them), and
   * how long a probe reader (``SELECT … FROM users``/``graphs``, one query every 20 ms on its own connection, like
     an application that was not stopped) was blocked behind the migration's table locks;

5. ``verify`` (timed), which must be CLEAN; then the edge-case counts before (preflight) and after (upgraded data).

Prints one table per phase and the goal check: whole upgrade < ``--goal-seconds`` (default 180) and verify clean.
Exit status: 0 goal met, 1 goal missed, 2 harness error.

    .venv/bin/python bench/legacy_upgrade.py                          # generate at scale 1, run, drop
    .venv/bin/python bench/legacy_upgrade.py --template bench_legacy_full --keep
    .venv/bin/python bench/legacy_upgrade.py --scale 0.1 --json out/upgrade.json

Not part of the shipped package.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql as pgsql

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import legacy_data  # noqa: E402 - sibling script

from robosystems.migrate_tools import checksums, preflight, verify  # noqa: E402

APPNAME = "robosystems-migrate-bench"
RENAME_CASE_TWINS = """
UPDATE users u SET email = 'dup+' || lower(u.id) || '@example.invalid'
WHERE EXISTS (SELECT 1 FROM users v WHERE v.id < u.id AND lower(btrim(v.email)) = lower(btrim(u.email)))
"""


def log(message: str) -> None:
    print(f"[upgrade-bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _plain(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    return f"{scheme.split('+')[0]}{sep}{rest}" if sep else url


def _with_db(url: str, name: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(_plain(url)).set(database=name).render_as_string(hide_password=False)


# --------------------------------------------------------------------------------------------------------------------
# lock-wait sampling
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class Wait:
    who: str  # "migration" | "reader"
    relation: str
    mode: str
    first: float
    last: float

    @property
    def seconds(self) -> float:
        return self.last - self.first


@dataclass
class LockSampler:
    """Samples ungranted locks in one database; a wait is (pid, relation, mode, query start) seen in consecutive
    samples.  Resolution = the sampling interval (reported)."""

    admin_url: str
    dbname: str
    interval: float = 0.05
    waits: dict[tuple[Any, ...], Wait] = field(default_factory=dict)
    samples: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    revision: str = ""
    per_revision: dict[str, dict[str, float]] = field(default_factory=dict)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _run(self) -> None:
        with psycopg.connect(_plain(self.admin_url), autocommit=True) as conn:
            while not self._stop.is_set():
                now = time.perf_counter()
                rows = conn.execute(
                    "SELECT a.pid, a.application_name, COALESCE(l.relation::regclass::text, l.locktype), l.mode, "
                    "a.query_start FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
                    "WHERE NOT l.granted AND a.datname = %s",
                    (self.dbname,),
                ).fetchall()
                self.samples += 1
                for pid, app, relation, mode, query_start in rows:
                    app = app or ""
                    who = (
                        "reader"
                        if app == "bench-probe-reader"
                        else "migration"
                        if app.startswith("robosystems-migrate")
                        else "other"
                    )
                    key = (pid, relation, mode, query_start)
                    wait = self.waits.get(key)
                    if wait is None:
                        self.waits[key] = Wait(who, str(relation), str(mode), now, now)
                    else:
                        wait.last = now
                    bucket = self.per_revision.setdefault(self.revision, {"migration": 0.0, "reader": 0.0})
                    current = self.waits[key].seconds
                    if who in bucket and current > bucket[who]:
                        bucket[who] = current
                self._stop.wait(self.interval)

    def longest(self, who: str) -> Wait | None:
        candidates = [w for w in self.waits.values() if w.who == who]
        return max(candidates, key=lambda w: w.seconds, default=None)


@dataclass
class ProbeReader:
    """An application-like reader that was not stopped: short reads on users and graphs, latency recorded."""

    url: str
    pause: float = 0.02
    latencies: list[tuple[float, float]] = field(default_factory=list)  # (start, seconds)
    errors: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=600)

    def _run(self) -> None:
        n = 0
        with psycopg.connect(_plain(self.url), autocommit=True, application_name="bench-probe-reader") as conn:
            while not self._stop.is_set():
                table = "users" if n % 2 == 0 else "graphs"
                started = time.perf_counter()
                try:
                    conn.execute(f"SELECT count(*) FROM (SELECT 1 FROM {table} LIMIT 5) x").fetchone()
                except psycopg.Error:
                    self.errors += 1
                self.latencies.append((started, time.perf_counter() - started))
                n += 1
                self._stop.wait(self.pause)

    def max_latency(self, start: float | None = None, end: float | None = None) -> float:
        values = [s for t, s in self.latencies if (start is None or t + s >= start) and (end is None or t <= end)]
        return max(values, default=0.0)


# --------------------------------------------------------------------------------------------------------------------
# one revision in its own process
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class Step:
    revision: str
    description: str
    seconds: float  # inside migrations.upgrade(rev)
    process_seconds: float  # including interpreter start and imports
    peak_rss_mb: float
    exit_code: int
    longest_migration_lock_wait_s: float = 0.0
    longest_reader_block_s: float = 0.0


def run_revision(url: str, revision: str, env: dict[str, str], log_file: Any) -> tuple[float, float, float, int]:
    """(seconds inside migrations.upgrade, process wall seconds, peak RSS MB, exit code)."""
    fd, timing_path = tempfile.mkstemp(prefix="rev-", suffix=".txt")
    os.close(fd)
    code = (
        "import logging, sys, time; logging.basicConfig(level=logging.INFO, stream=sys.stderr, "
        "format='%(asctime)s %(levelname)s %(name)s: %(message)s'); "
        "from robosystems import migrations; "
        "t = time.perf_counter(); "
        f"migrations.upgrade({revision!r}, {url!r}); "
        f"open({timing_path!r}, 'w').write(str(time.perf_counter() - t))"
    )
    started = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-c", code], env=env, cwd=REPO_ROOT, stdout=log_file, stderr=subprocess.STDOUT
    )
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    text = Path(timing_path).read_text().strip()
    os.unlink(timing_path)
    inner = float(text) if text else wall
    return inner, wall, usage.ru_maxrss / 1024.0, proc.returncode  # ru_maxrss: KiB on Linux


# --------------------------------------------------------------------------------------------------------------------
# edge cases after the upgrade
# --------------------------------------------------------------------------------------------------------------------

AFTER_SQL = {
    "personal_orgs": "SELECT count(*) FROM orgs WHERE org_type = 'personal'",
    "owner_memberships": "SELECT count(*) FROM org_users WHERE role = 'owner'",
    "graph_users_rows": "SELECT count(*) FROM graph_users",
    "graphs_with_org": "SELECT count(*) FROM graphs WHERE org_id IS NOT NULL",
    "repositories_without_org (E8)": "SELECT count(*) FROM graphs WHERE is_repository AND org_id IS NULL",
    "conflicts: signals_disagree (E1)": (
        "SELECT count(*) FROM graph_ownership_conflicts WHERE 'signals_disagree' = ANY(reasons)"
    ),
    "conflicts: owner_from_member_grant (E2)": (
        "SELECT count(*) FROM graph_ownership_conflicts WHERE 'owner_from_member_grant' = ANY(reasons)"
    ),
    "conflicts: orphan_assigned (E2)": (
        "SELECT count(*) FROM graph_ownership_conflicts WHERE 'orphan_assigned' = ANY(reasons)"
    ),
    "conflicts: subgraph_parent_missing (E2)": (
        "SELECT count(*) FROM graph_ownership_conflicts WHERE 'subgraph_parent_missing' = ANY(reasons)"
    ),
    "lower-cased emails kept in legacy_email_case (E5)": "SELECT count(*) FROM legacy_email_case",
    "inactive users with a personal org (E6)": (
        "SELECT count(*) FROM users u JOIN orgs o ON o.personal_user_id = u.id WHERE NOT u.is_active"
    ),
    "repository subscriptions in the subscriber's org (E8)": (
        "SELECT count(*) FROM billing_subscriptions s JOIN orgs o ON o.id = s.org_id "
        "WHERE s.resource_type = 'repository' AND o.personal_user_id = s.billing_customer_user_id"
    ),
    "legacy tier strings kept (E9)": (
        "SELECT count(*) FROM graphs WHERE graph_tier IN ('standard', 'enterprise', 'premium', 'professional')"
    ),
    "subscriptions with legacy_status (pending -> pending_payment)": (
        "SELECT count(*) FROM billing_subscriptions WHERE legacy_status IS NOT NULL"
    ),
    "checkout session ids moved": (
        "SELECT count(*) FROM billing_subscriptions WHERE provider_checkout_session_id IS NOT NULL"
    ),
    "legacy opening balance adjustments": (
        "SELECT count(*) FROM graph_credit_transactions WHERE starts_with(idempotency_key, 'legacy_opening_')"
    ),
    "orphan enum subscriptionstatus still present (E11)": (
        "SELECT count(*) FROM pg_type WHERE typname = 'subscriptionstatus'"
    ),
}


# --------------------------------------------------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--admin-url", default=os.environ.get("BENCH_ADMIN_URL", legacy_data.DEFAULT_ADMIN_URL))
    ap.add_argument("--scale", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--template", help="copy this already generated legacy database instead of generating")
    ap.add_argument("--keep", action="store_true", help="keep the upgraded database")
    ap.add_argument("--goal-seconds", type=float, default=180.0)
    ap.add_argument("--sample-ms", type=float, default=50.0, help="lock sampling interval")
    ap.add_argument("--no-probe", action="store_true", help="no concurrent probe reader")
    ap.add_argument("--json", type=Path, help="write the results as JSON")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:  # noqa: C901 - a linear script
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    admin = _plain(args.admin_url)
    name = f"bench_upgrade_{secrets.token_hex(4)}"
    results: dict[str, Any] = {"database": name, "scale": args.scale, "seed": args.seed}
    with psycopg.connect(admin, autocommit=True) as conn:
        if args.template:
            conn.execute(
                pgsql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                    pgsql.Identifier(name), pgsql.Identifier(args.template)
                )
            )
        else:
            conn.execute(pgsql.SQL("CREATE DATABASE {}").format(pgsql.Identifier(name)))
    url = _with_db(admin, name)
    log_path = Path(tempfile.mkstemp(prefix="legacy-upgrade-", suffix=".log")[1])
    try:
        if args.template:
            log(f"copied template {args.template} -> {name}")
            results["generation"] = {"template": args.template}
        else:
            log(f"generating the legacy database {name} at scale {args.scale}")
            generated = legacy_data.generate(url, legacy_data.Plan.for_scale(args.scale, args.seed))
            results["generation"] = {"seconds": generated.seconds, "manifest": generated.manifest}
            legacy_data.print_manifest(generated)

        # ---- preflight, operator fixes, preflight ---------------------------------------------------------------
        first = preflight.run_url(url)
        log(f"preflight #1: exit {first.exit_code}, {len(first.blockers)} blocker(s), {first.seconds:.1f}s")
        with psycopg.connect(url, autocommit=True) as conn:
            renamed = conn.execute(RENAME_CASE_TWINS.encode()).rowcount
            row = conn.execute(b"SELECT id FROM users WHERE is_active ORDER BY id LIMIT 1").fetchone()
            assert row is not None
            owner = str(row[0])
        log(f"operator fixes: {renamed} case twin(s) renamed; orphan graphs go to the personal org of {owner}")
        second = preflight.run_url(url, preflight.Options(orphan_graphs_owner=owner))
        log(f"preflight #2: exit {second.exit_code}, {second.seconds:.1f}s")
        if second.exit_code != 0:
            print(second.render_text())
            return 2

        # ---- upgrade, one revision at a time ------------------------------------------------------------------------
        chain = checksums.chain()
        pending = chain[chain.index(checksums.LEGACY) + 1 :]
        env = {**os.environ, "PGAPPNAME": APPNAME, "ROBOSYSTEMS_ORPHAN_GRAPHS_OWNER": owner}
        env.pop("DATABASE_URL", None)
        sampler = LockSampler(admin, name, interval=args.sample_ms / 1000.0)
        probe = None if args.no_probe else ProbeReader(url)
        sampler.start()
        if probe:
            probe.start()
        steps: list[Step] = []
        descriptions = _descriptions()
        with open(log_path, "w") as log_file:
            for rev in pending:
                sampler.revision = rev
                started = time.perf_counter()
                seconds, wall, rss, code = run_revision(url, rev, env, log_file)
                log_file.flush()
                step = Step(rev, descriptions.get(rev, ""), round(seconds, 2), round(wall, 2), round(rss, 1), code)
                bucket = sampler.per_revision.get(rev, {})
                step.longest_migration_lock_wait_s = round(bucket.get("migration", 0.0), 2)
                step.longest_reader_block_s = round(probe.max_latency(started, started + wall) if probe else 0.0, 2)
                steps.append(step)
                log(f"{rev}: {seconds:.1f}s, peak RSS {rss:.0f} MB, exit {code}")
                if code != 0:
                    break
        if probe:
            probe.stop()
        sampler.stop()
        results["upgrade_log"] = str(log_path)
        results["steps"] = [asdict(s) for s in steps]
        upgrade_seconds = sum(s.seconds for s in steps)
        results["upgrade_process_seconds"] = round(sum(s.process_seconds for s in steps), 2)
        if any(s.exit_code for s in steps):
            log(f"upgrade FAILED, see {log_path}")
            print(Path(log_path).read_text()[-4000:])
            return 2

        # ---- verify ------------------------------------------------------------------------------------------------
        checked = verify.run_url(url)
        log(f"verify: exit {checked.exit_code}, {checked.seconds:.1f}s")
        with psycopg.connect(url, autocommit=True) as conn:
            after = {k: int(conn.execute(v.encode()).fetchone()[0]) for k, v in AFTER_SQL.items()}  # type: ignore[index]

        longest_migration = sampler.longest("migration")
        results.update(
            {
                "preflight_blocked": {"exit": first.exit_code, "seconds": round(first.seconds, 2)},
                "preflight_ready": {"exit": second.exit_code, "seconds": round(second.seconds, 2)},
                "upgrade_seconds": round(upgrade_seconds, 2),
                "peak_rss_mb": max(s.peak_rss_mb for s in steps),
                "longest_migration_lock_wait_s": round(longest_migration.seconds, 3) if longest_migration else 0.0,
                "longest_migration_lock_wait_on": (
                    f"{longest_migration.relation} ({longest_migration.mode})" if longest_migration else None
                ),
                "longest_reader_block_s": round(probe.max_latency(), 2) if probe else None,
                "probe_queries": len(probe.latencies) if probe else 0,
                "lock_samples": sampler.samples,
                "verify": {"exit": checked.exit_code, "seconds": round(checked.seconds, 2)},
                "edge_cases_before": {
                    f.id: {"severity": f.severity, "count": f.count, "edge_case": f.edge_case} for f in first.findings
                },
                "edge_cases_after": after,
            }
        )
        goal = upgrade_seconds < args.goal_seconds and checked.exit_code == 0
        results["goal_met"] = goal
        _print(results, steps, first, checked, after, args)
        if not checked.ok:
            print(checked.render_text())
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(results, indent=2, default=str))
        return 0 if goal else 1
    finally:
        if not args.keep:
            with psycopg.connect(admin, autocommit=True) as conn:
                conn.execute(pgsql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(pgsql.Identifier(name)))
            log(f"dropped {name}")
        else:
            log(f"kept {name}: {url}")


def _terminate(signum: int, _frame: Any) -> None:
    raise SystemExit(128 + signum)


def _descriptions() -> dict[str, str]:
    from alembic.script import ScriptDirectory

    from robosystems.migrations import alembic_config

    script = ScriptDirectory.from_config(alembic_config("postgresql://unused@localhost/unused"))
    out = {}
    for rev in script.walk_revisions("base", "heads"):
        out[rev.revision] = (rev.doc or "").split("\n")[0][:60]
    return out


def _print(
    results: dict[str, Any],
    steps: list[Step],
    first: preflight.PreflightReport,
    checked: verify.VerifyReport,
    after: dict[str, int],
    args: argparse.Namespace,
) -> None:
    print()
    print(f"Legacy upgrade benchmark: scale {args.scale} (database {results['database']})")
    print()
    header = (
        f"{'revision':<14}{'seconds':>9}{'process s':>11}{'peak RSS MB':>13}{'mig. lock wait s':>18}"
        f"{'reader blocked s':>18}  what"
    )
    print(header)
    print("-" * len(header))
    for s in steps:
        print(
            f"{s.revision:<14}{s.seconds:>9.2f}{s.process_seconds:>11.2f}{s.peak_rss_mb:>13.1f}"
            f"{s.longest_migration_lock_wait_s:>18.2f}"
            f"{s.longest_reader_block_s:>18.2f}  {s.description}"
        )
    print("-" * len(header))
    print(
        f"{'upgrade total':<14}{results['upgrade_seconds']:>9.2f}{results['upgrade_process_seconds']:>11.2f}"
        f"{results['peak_rss_mb']:>13.1f}"
    )
    print()
    print(f"preflight (blocked)   {results['preflight_blocked']['seconds']:>7.2f}s  exit {first.exit_code}")
    print(f"preflight (ready)     {results['preflight_ready']['seconds']:>7.2f}s  exit 0")
    print(f"verify                {results['verify']['seconds']:>7.2f}s  exit {checked.exit_code}")
    print(
        f"longest lock wait of the migration: {results['longest_migration_lock_wait_s']:.3f}s "
        f"({results['longest_migration_lock_wait_on'] or 'none seen'}); sampling every {args.sample_ms:.0f} ms, "
        f"{results['lock_samples']} samples"
    )
    if results.get("longest_reader_block_s") is not None:
        print(
            f"longest a concurrent reader was blocked: {results['longest_reader_block_s']:.2f}s "
            f"({results['probe_queries']} probe queries) -> stop the application during the upgrade"
        )
    print()
    print("edge cases before (preflight)")
    for f in first.findings:
        if f.severity in ("blocker", "warning", "info") and f.count:
            tag = f"[{f.edge_case}]" if f.edge_case else ""
            print(f"  {f.severity:<8}{tag:<6}{f.id:<42}{f.count:>10,}")
    print()
    print("after the upgrade")
    for key, value in after.items():
        print(f"  {key:<56}{value:>10,}")
    print()
    verdict = "MET" if results["goal_met"] else "MISSED"
    print(
        f"goal (upgrade < {args.goal_seconds:.0f}s and verify clean): {verdict} "
        f"(upgrade {results['upgrade_seconds']:.1f}s, verify exit {checked.exit_code})"
    )


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)
