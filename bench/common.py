"""Reusable benchmark harness: scratch databases, server subprocesses, load generation, result tables.

Used by ``bench/auth_me.py`` (and the org/billing benchmarks after it).  Everything here is
plain stdlib + psycopg + httpx (already dependencies of the service or its dev extra).

* :func:`scratch_database` - create ``bench_<random>`` on a PostgreSQL server, migrate it to
  head (optional) and drop it afterwards (``WITH (FORCE)``), even on failure.
* :class:`Server` - start a command as a subprocess in its own process group, wait until a URL
  answers 200, stop it (SIGTERM, then SIGKILL) on exit; :func:`start_robosystems` builds the
  ``robosystems serve --no-migrate --workers 1`` command with an isolated data directory.
* :func:`run_load` - ``wrk`` with a generated Lua script (percentiles + non-2xx count as JSON),
  or an asyncio+httpx fallback when wrk can't be had; :func:`ensure_wrk` installs it via apt.
* :func:`py_spy_profile` - sample a server with py-spy during a load run and summarise the hottest
  frames (self and inclusive).
* :func:`print_table` - one row per target, with an optional ratio column against a reference.

Signals: :func:`install_signal_handlers` turns SIGTERM/SIGHUP into ``SystemExit`` so every
``with`` block (servers, databases) unwinds and cleans up.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg
from psycopg import sql

REPO_ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
DEFAULT_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
BENCH_PASSWORD = "bench horse battery staple 42"


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def run_script(main: Callable[[], int]) -> None:
    """Entry point of every benchmark script: exit with main()'s status, 130 on Ctrl-C, and 2 with one
    readable line (no traceback) when the harness itself fails."""
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as exc:  # noqa: BLE001 - one readable line for a harness failure
        print(f"bench error: {exc}", file=sys.stderr)
        sys.exit(2)


def load_arguments(description: str | None, *, server: bool = True) -> argparse.ArgumentParser:
    """The options every load benchmark shares (connections, duration, wrk threads, warm-up, rounds, load
    generator, JSON output; with ``server``: scratch-DB server, port, wrk install, py-spy profile).  Each script
    adds its own (``--goal`` …) to the parser it gets back."""
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-c", "--connections", type=int, default=32, help="concurrent connections (default 32)")
    p.add_argument("-d", "--duration", type=float, default=10.0, help="measured seconds per target (default 10)")
    p.add_argument("-t", "--threads", type=int, default=1, help="wrk threads (default 1: 2-core machine)")
    p.add_argument("--warmup", type=float, default=3.0, help="warm-up seconds per target before measuring")
    p.add_argument("--rounds", type=int, default=1, help="cycle through the targets this many times; median reported")
    p.add_argument("--python-load", action="store_true", help="use the asyncio+httpx generator instead of wrk")
    p.add_argument("--json", type=Path, default=None, metavar="FILE", help="also write the results as JSON")
    if server:
        p.add_argument(
            "--admin-url",
            default=None,
            help="PostgreSQL server for the scratch DB (default: BENCH_ADMIN_URL, DATABASE_URL or local postgres)",
        )
        p.add_argument("--port", type=int, default=0, help="port for robosystems (default: a free one)")
        p.add_argument("--no-install", action="store_true", help="don't apt-get install wrk when missing")
        p.add_argument(
            "--profile",
            type=Path,
            default=None,
            metavar="DIR",
            help="after measuring, profile each target with py-spy under load (DIR/<target>/profile.collapsed)",
        )
    return p


def install_signal_handlers() -> None:
    """Make SIGTERM/SIGHUP unwind like Ctrl-C so context managers clean up."""

    def _exit(signum: int, _frame: Any) -> None:
        raise SystemExit(128 + signum)

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _exit)


def admin_url_from_env() -> str:
    """The server to create scratch databases on: ``BENCH_ADMIN_URL``, ``DATABASE_URL`` or the local default."""
    return os.environ.get("BENCH_ADMIN_URL") or os.environ.get("DATABASE_URL") or DEFAULT_ADMIN_URL


def machine_load() -> str:
    """'load 1.2/0.9/0.5 on 2 CPUs' - printed with results: other work on the machine moves req/s."""
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.1f}/{five:.1f}/{fifteen:.1f} on {os.cpu_count()} CPUs"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --- scratch database ----------------------------------------------------------------------------


def _plain_conninfo(url: str) -> str:
    """psycopg wants ``postgresql://``; accept SQLAlchemy-style ``postgresql+psycopg://`` too."""
    scheme, sep, rest = url.partition("://")
    return f"{scheme.split('+')[0]}{sep}{rest}" if sep else url


def _with_dbname(url: str, dbname: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(_plain_conninfo(url)).set(database=dbname).render_as_string(hide_password=False)


@contextmanager
def scratch_database(admin_url: str | None = None, *, migrate: bool = True, prefix: str = "bench") -> Iterator[str]:
    """Create a throwaway database (migrated to head unless ``migrate=False``); yield its URL; drop it."""
    admin = _plain_conninfo(admin_url or admin_url_from_env())
    name = f"{prefix}_{secrets.token_hex(5)}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    log(f"created scratch database {name}")
    url = _with_dbname(admin, name)
    try:
        if migrate:
            from robosystems import migrations

            started = time.perf_counter()
            migrations.upgrade("head", url)
            log(f"migrated {name} to head in {time.perf_counter() - started:.1f}s")
        yield url
    finally:
        close_probe_connections()
        try:
            with psycopg.connect(admin, autocommit=True) as conn:
                conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
            log(f"dropped scratch database {name}")
        except Exception as exc:  # noqa: BLE001 - report, don't mask the original error
            log(f"WARNING: could not drop scratch database {name}: {exc!r}")


# --- server subprocesses -------------------------------------------------------------------------


class ServerError(RuntimeError):
    """A server did not come up (its log tail is in the message)."""


@dataclass
class Server:
    """A server subprocess in its own process group; use as a context manager."""

    name: str
    argv: Sequence[str]
    base_url: str
    env: Mapping[str, str] | None = None
    cwd: str | Path | None = None
    ready_path: str = "/healthz"
    ready_timeout: float = 60.0
    proc: subprocess.Popen[bytes] | None = field(default=None, init=False)
    log_path: Path | None = field(default=None, init=False)
    _log_file: Any = field(default=None, init=False)

    @property
    def pid(self) -> int:
        assert self.proc is not None, "server not started"
        return self.proc.pid

    def start(self) -> Server:
        fd, path = tempfile.mkstemp(prefix=f"bench-{self.name}-", suffix=".log")
        self.log_path = Path(path)
        self._log_file = os.fdopen(fd, "wb")
        log(f"starting {self.name}: {' '.join(self.argv)} (log {self.log_path})")
        self.proc = subprocess.Popen(
            list(self.argv),
            env=dict(self.env) if self.env is not None else None,
            cwd=self.cwd,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        self.wait_ready()
        return self

    def wait_ready(self) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + self.ready_timeout
        url = self.base_url + self.ready_path
        last = "no answer"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ServerError(f"{self.name} exited with {self.proc.returncode}\n{self.log_tail()}")
            try:
                response = httpx.get(url, timeout=2.0)
                if response.status_code == 200:
                    log(f"{self.name} ready at {self.base_url} (pid {self.proc.pid})")
                    return
                last = f"HTTP {response.status_code}"
            except httpx.HTTPError as exc:
                last = type(exc).__name__
            time.sleep(0.2)
        raise ServerError(f"{self.name} not ready at {url} after {self.ready_timeout}s ({last})\n{self.log_tail()}")

    def log_tail(self, lines: int = 40) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self, timeout: float = 15.0, *, keep_log: bool = False) -> None:
        proc = self.proc
        if proc is None:
            return
        died_early = proc.poll() is not None
        if died_early:
            log(f"{self.name} had already exited ({proc.returncode})")
        else:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                log(f"{self.name} did not stop within {timeout}s; killing")
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait(timeout=5)
            log(f"stopped {self.name} (exit {proc.returncode})")
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        if self.log_path is not None and not os.environ.get("BENCH_KEEP_LOGS"):
            if died_early or keep_log:
                log(f"{self.name} log kept at {self.log_path}")
            else:
                self.log_path.unlink(missing_ok=True)
        self.proc = None

    def __enter__(self) -> Server:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, exc_type: type[BaseException] | None, *_exc: object) -> None:
        self.stop(keep_log=exc_type is not None)


@contextmanager
def robosystems_server(
    database_url: str,
    *,
    port: int | None = None,
    extra_env: Mapping[str, str] | None = None,
    ready_path: str = "/readyz",
) -> Iterator[Server]:
    """``robosystems serve --no-migrate --workers 1`` on ``database_url``, with a throwaway data dir.

    The server runs in a temporary working directory (no stray ``.env`` is read) with
    ``ENVIRONMENT=development`` (a JWT secret is generated in the data directory) and no
    ``REDIS_URL`` unless ``extra_env`` sets one (register's per-IP limit then lives in process
    memory and doesn't accumulate across runs).
    """
    port = port or free_port()
    data_dir = Path(tempfile.mkdtemp(prefix="bench-robosystems-"))
    env = dict(os.environ)
    for key in ("REDIS_URL", "JWT_SECRET_KEY", "APP_BASE_URL", "HOST", "PORT", "WORKERS"):
        env.pop(key, None)
    env.update(
        DATABASE_URL=database_url,
        ROBOSYSTEMS_DATA_DIR=str(data_dir),
        ENVIRONMENT="development",
        PYTHONUNBUFFERED="1",
    )
    env.update(extra_env or {})
    argv = [
        str(VENV_BIN / "robosystems"),
        "serve",
        "--no-migrate",
        "--workers",
        "1",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    server = Server("robosystems", argv, f"http://127.0.0.1:{port}", env=env, cwd=data_dir, ready_path=ready_path)
    try:
        with server:
            yield server
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)


def baseline_server(database_url: str, port: int | None = None, env: dict[str, str] | None = None) -> Server:
    """``bench/baseline_app.py`` (one PK SELECT per request, same stack and pool settings) on ``database_url``."""
    port = port or free_port()
    argv = [
        str(VENV_BIN / "python"),
        str(REPO_ROOT / "bench" / "baseline_app.py"),
        "--database-url",
        database_url,
        "--port",
        str(port),
    ]
    # Like robosystems_server: run outside the repo so no stray .env changes the pool settings of one side only.
    return Server(
        "baseline", argv, f"http://127.0.0.1:{port}", env=env, cwd=tempfile.gettempdir(), ready_path="/healthz"
    )


def register_user(base_url: str, *, email: str | None = None, name: str = "Bench User") -> dict[str, Any]:
    """Register a user on a running service; return the response body (``user``, ``org``, ``token``…)."""
    email = email or f"bench-{secrets.token_hex(4)}@example.com"
    response = httpx.post(
        f"{base_url}/v1/auth/register", json={"name": name, "email": email, "password": BENCH_PASSWORD}, timeout=30
    )
    if response.status_code != 201:
        raise RuntimeError(f"register failed: HTTP {response.status_code} {response.text[:500]}")
    body: dict[str, Any] = response.json()
    if not body.get("token"):
        raise RuntimeError(f"register returned no token: {body}")
    return body


def check_get(url: str, headers: Mapping[str, str] | None = None) -> dict[str, Any]:
    """One GET that must answer 200 with JSON (sanity check before loading a target)."""
    response = httpx.get(url, headers=dict(headers or {}), timeout=10)
    if response.status_code != 200:
        raise RuntimeError(f"GET {url} -> HTTP {response.status_code}: {response.text[:500]}")
    body: dict[str, Any] = response.json()
    return body


# --- CPU accounting ------------------------------------------------------------------------------
# Throughput on a shared 2-core machine moves with whatever else runs; CPU time per request of the
# server process and of its PostgreSQL backends is a steadier figure (it is what caps throughput).

_CLK_TCK = os.sysconf("SC_CLK_TCK")


def proc_cpu_seconds(pid: int) -> float | None:
    """user + system CPU seconds of a process (all its threads), None when it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK  # utime, stime (fields 14, 15 of stat)


def warn_if_few_connections(database_url: str, needed: int) -> None:
    """Log a warning when the server has fewer than ``needed`` free connection slots right now."""
    with psycopg.connect(_plain_conninfo(database_url), autocommit=True) as conn:
        row = conn.execute(
            "SELECT current_setting('max_connections')::int - current_setting('superuser_reserved_connections')::int,"
            " (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend')"
        ).fetchone()
    if row is not None and row[0] - row[1] < needed:
        log(
            f"WARNING: PostgreSQL has {row[0] - row[1]} free connection slots of {row[0]} and this run may need "
            f"{needed}: expect 'too many clients' errors if other work keeps its connections"
        )


_probe_conns: dict[str, psycopg.Connection[Any]] = {}
_probe_lock = threading.Lock()


def db_backend_pids(database_url: str) -> list[int]:
    """PIDs of the PostgreSQL backends connected to ``database_url``'s database (local server only).

    Uses one cached connection per URL (its own backend is excluded); reconnects once if it broke.
    """
    from sqlalchemy.engine import make_url

    conninfo = _plain_conninfo(database_url)
    dbname = make_url(conninfo).database
    with _probe_lock:
        for attempt in (1, 2):
            conn = _probe_conns.get(conninfo)
            try:
                if conn is None or conn.closed:
                    conn = _probe_conns[conninfo] = psycopg.connect(conninfo, autocommit=True)
                rows = conn.execute(
                    "SELECT pid FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()", (dbname,)
                ).fetchall()
                return [int(r[0]) for r in rows]
            except psycopg.Error:
                _probe_conns.pop(conninfo, None)
                if conn is not None:
                    conn.close()
                if attempt == 2:
                    raise
    return []


def close_probe_connections() -> None:
    with _probe_lock:
        while _probe_conns:
            _probe_conns.popitem()[1].close()


PidSource = Callable[[], Sequence[int]]


@dataclass
class CpuProbe:
    """CPU seconds used by named groups of processes between :meth:`start` and :meth:`stop`.

    e.g. ``CpuProbe({"app": lambda: [server.pid], "db": lambda: db_backend_pids(url)})``.
    The groups are re-read every ``poll_s`` seconds in a thread, so a process that exits during the
    window (e.g. a pool connection closed and replaced under load) still counts up to its last
    sample; a process that appears during the window counts from zero (its start-up included).
    """

    groups: Mapping[str, PidSource]
    poll_s: float = 0.25
    _before: dict[str, dict[int, float]] = field(default_factory=dict, init=False)
    _last: dict[str, dict[int, float]] = field(default_factory=dict, init=False)
    _stop: threading.Event = field(default_factory=threading.Event, init=False)
    _thread: threading.Thread | None = field(default=None, init=False)

    def _read(self) -> dict[str, dict[int, float]]:
        out: dict[str, dict[int, float]] = {}
        for name, source in self.groups.items():
            out[name] = {pid: cpu for pid in source() if (cpu := proc_cpu_seconds(pid)) is not None}
        return out

    def _merge(self, reading: dict[str, dict[int, float]]) -> None:
        for name, pids in reading.items():
            last = self._last.setdefault(name, {})
            for pid, cpu in pids.items():
                last[pid] = max(cpu, last.get(pid, 0.0))

    def _poll(self) -> None:
        while not self._stop.wait(self.poll_s):
            try:
                self._merge(self._read())
            except Exception as exc:  # noqa: BLE001 - a missed sample only loses precision
                log(f"cpu probe sample failed: {exc!r}")

    def start(self) -> None:
        self._before = self._read()
        self._last = {}
        self._stop.clear()
        self._thread = threading.Thread(target=self._poll, name="cpu-probe", daemon=True)
        self._thread.start()

    def stop(self) -> dict[str, float]:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self._merge(self._read())
        used: dict[str, float] = {}
        for name, pids in self._last.items():
            before = self._before.get(name, {})
            used[name] = sum(max(0.0, cpu - before.get(pid, 0.0)) for pid, cpu in pids.items())
        return used


# --- load generation -----------------------------------------------------------------------------


@dataclass
class LoadResult:
    target: str
    requests: int
    duration_s: float
    rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    errors: int  # socket errors + timeouts + non-2xx/3xx responses
    tool: str
    cpu_ms_per_req: dict[str, float] = field(default_factory=dict)  # per CpuProbe group
    error_detail: dict[str, int] = field(default_factory=dict)  # connect/read/write/status/timeout

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else (1.0 if self.errors else 0.0)

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


_WRK_LUA = r"""
wrk.method = {method}
wrk.body = {body}
{headers}
{extra}
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {{"requests":%d,"duration_us":%d,"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d,' ..
    '"p50":%d,"p90":%d,"p99":%d,"max":%d,"mean":%f}}\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, latency.mean))
end
"""


def _lua_str(value: str | None) -> str:
    return "nil" if value is None else json.dumps(value)  # a JSON string literal is a valid Lua literal here


def wrk_path() -> str | None:
    return shutil.which("wrk")


def ensure_wrk(install: bool = True) -> str | None:
    """Path to ``wrk``; install the Debian package when missing (root only), else None."""
    found = wrk_path()
    if found or not install:
        return found
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        return None
    log("wrk not found: apt-get update && apt-get install -y wrk")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "wrk"]):
        if subprocess.run(cmd, env=env, capture_output=True).returncode != 0:
            log(f"'{' '.join(cmd)}' failed; falling back to the Python load generator")
            return None
    return wrk_path()


def run_wrk(
    target: str,
    url: str,
    *,
    connections: int,
    duration: float,
    threads: int = 1,
    headers: Mapping[str, str] | None = None,
    method: str = "GET",
    body: str | None = None,
    lua_extra: str = "",
    timeout_s: float = 10.0,
    wrk: str = "wrk",
) -> LoadResult:
    """One wrk run; ``lua_extra`` may define ``request``/``response`` (e.g. to vary ids per request)."""
    header_lines = "\n".join(f"wrk.headers[{_lua_str(k)}] = {_lua_str(v)}" for k, v in (headers or {}).items())
    script = _WRK_LUA.format(method=_lua_str(method), body=_lua_str(body), headers=header_lines, extra=lua_extra)
    with tempfile.NamedTemporaryFile("w", suffix=".lua", prefix="bench-", delete=False) as fh:
        fh.write(script)
        script_path = fh.name
    try:
        threads = max(1, min(threads, connections))
        argv = [
            wrk,
            f"-t{threads}",
            f"-c{connections}",
            f"-d{max(1, round(duration))}s",
            f"--timeout={max(1, round(timeout_s))}s",
            "-s",
            script_path,
            url,
        ]
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=duration + timeout_s + 60)
    finally:
        os.unlink(script_path)
    if proc.returncode != 0:
        raise RuntimeError(f"wrk failed ({proc.returncode}): {proc.stderr or proc.stdout}")
    return parse_wrk_output(target, proc.stdout)


def parse_wrk_output(target: str, stdout: str) -> LoadResult:
    """Parse the ``WRK_JSON`` line written by the generated Lua ``done`` hook."""
    for line in stdout.splitlines():
        if line.startswith("WRK_JSON "):
            data = json.loads(line[len("WRK_JSON ") :])
            break
    else:
        raise RuntimeError(f"no WRK_JSON line in wrk output:\n{stdout}")
    duration_s = data["duration_us"] / 1e6
    errors = data["connect"] + data["read"] + data["write"] + data["status"] + data["timeout"]
    return LoadResult(
        target=target,
        requests=data["requests"],
        duration_s=duration_s,
        rps=data["requests"] / duration_s if duration_s else 0.0,
        p50_ms=data["p50"] / 1000,
        p90_ms=data["p90"] / 1000,
        p99_ms=data["p99"] / 1000,
        max_ms=data["max"] / 1000,
        errors=errors,
        tool="wrk",
        error_detail={k: data[k] for k in ("connect", "read", "write", "status", "timeout") if data[k]},
    )


async def _python_load(
    url: str,
    connections: int,
    duration: float,
    headers: Mapping[str, str],
    method: str,
    body: str | None,
    timeout_s: float,
) -> tuple[list[float], int, dict[str, int], float]:
    latencies: list[float] = []
    errors = 0
    detail: Counter[str] = Counter()
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    content = body.encode() if body is not None else None
    async with httpx.AsyncClient(limits=limits, timeout=timeout_s, headers=dict(headers)) as client:
        started = time.perf_counter()
        deadline = started + duration

        async def worker() -> None:
            nonlocal errors
            while time.perf_counter() < deadline:
                t0 = time.perf_counter()
                try:
                    response = await client.request(method, url, content=content)
                    await response.aread()
                    if response.status_code >= 400:
                        errors += 1
                        detail["status"] += 1
                except httpx.TimeoutException:
                    errors += 1
                    detail["timeout"] += 1
                except httpx.HTTPError:
                    errors += 1
                    detail["connect"] += 1
                latencies.append(time.perf_counter() - t0)

        await asyncio.gather(*(worker() for _ in range(connections)))
        elapsed = time.perf_counter() - started
    return latencies, errors, dict(detail), elapsed


def run_python_load(
    target: str,
    url: str,
    *,
    connections: int,
    duration: float,
    headers: Mapping[str, str] | None = None,
    method: str = "GET",
    body: str | None = None,
    timeout_s: float = 10.0,
) -> LoadResult:
    """Fallback load generator (asyncio + httpx). Much more CPU per request than wrk: compare like with like."""
    latencies, errors, detail, elapsed = asyncio.run(
        _python_load(url, connections, duration, headers or {}, method, body, timeout_s)
    )
    latencies.sort()

    def pct(p: float) -> float:
        if not latencies:
            return 0.0
        return latencies[min(len(latencies) - 1, int(p / 100 * len(latencies)))] * 1000

    return LoadResult(
        target=target,
        requests=len(latencies),
        duration_s=elapsed,
        rps=len(latencies) / elapsed if elapsed else 0.0,
        p50_ms=pct(50),
        p90_ms=pct(90),
        p99_ms=pct(99),
        max_ms=latencies[-1] * 1000 if latencies else 0.0,
        errors=errors,
        tool="python",
        error_detail=detail,
    )


def run_load(
    target: str,
    url: str,
    *,
    connections: int,
    duration: float,
    threads: int = 1,
    headers: Mapping[str, str] | None = None,
    method: str = "GET",
    body: str | None = None,
    lua_extra: str = "",
    wrk: str | None = None,
    cpu: CpuProbe | None = None,
) -> LoadResult:
    """wrk when a path is given, else the Python generator; with ``cpu``, CPU ms per request per group."""
    if cpu is not None:
        cpu.start()
    if wrk:
        result = run_wrk(
            target,
            url,
            connections=connections,
            duration=duration,
            threads=threads,
            headers=headers,
            method=method,
            body=body,
            lua_extra=lua_extra,
            wrk=wrk,
        )
    else:
        result = run_python_load(
            target, url, connections=connections, duration=duration, headers=headers, method=method, body=body
        )
    if cpu is not None and result.requests:
        result.cpu_ms_per_req = {k: 1000 * v / result.requests for k, v in cpu.stop().items()}
    return result


def median_result(results: Sequence[LoadResult]) -> LoadResult:
    """The run with the median requests/s (for several rounds of the same target)."""
    ordered = sorted(results, key=lambda r: r.rps)
    return ordered[(len(ordered) - 1) // 2]


# --- profiling -----------------------------------------------------------------------------------


def ensure_py_spy() -> str | None:
    candidate = VENV_BIN / "py-spy"
    if candidate.exists():
        return str(candidate)
    return shutil.which("py-spy")


@dataclass
class Profile:
    samples: int
    self_top: list[tuple[str, int]]
    inclusive_top: list[tuple[str, int]]
    collapsed_path: Path
    svg_path: Path | None


def py_spy_profile(pid: int, seconds: float, out_dir: Path, *, rate: int = 200) -> subprocess.Popen[str]:
    """Start ``py-spy record`` on ``pid`` in the background (collapsed stacks); finish with :func:`summarise_py_spy`."""
    py_spy = ensure_py_spy()
    if py_spy is None:
        raise RuntimeError("py-spy not installed (uv pip install py-spy)")
    out_dir.mkdir(parents=True, exist_ok=True)
    argv = [
        py_spy,
        "record",
        "--pid",
        str(pid),
        "--duration",
        str(max(1, round(seconds))),
        "--rate",
        str(rate),
        "--format",
        "raw",
        "--output",
        str(out_dir / "profile.collapsed"),
        "--nonblocking",
    ]
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def summarise_py_spy(proc: subprocess.Popen[str], out_dir: Path, *, top: int = 25) -> Profile:
    output, _ = proc.communicate(timeout=120)
    collapsed = out_dir / "profile.collapsed"
    if proc.returncode != 0 or not collapsed.exists():
        raise RuntimeError(f"py-spy failed ({proc.returncode}): {output}")
    self_counts: Counter[str] = Counter()
    incl_counts: Counter[str] = Counter()
    total = 0
    for line in collapsed.read_text().splitlines():
        stack, _, count_s = line.rpartition(" ")
        if not stack or not count_s.isdigit():
            continue  # a frame name of generated code (e.g. SQLAlchemy's) can span lines
        count = int(count_s)
        total += count
        frames = stack.split(";")
        self_counts[frames[-1]] += count
        for frame in set(frames):
            incl_counts[frame] += count
    svg = _flamegraph_svg(collapsed, out_dir)
    return Profile(total, self_counts.most_common(top), incl_counts.most_common(top), collapsed, svg)


def _flamegraph_svg(collapsed: Path, out_dir: Path) -> Path | None:
    """Render an SVG if ``flamegraph.pl``/``inferno-flamegraph`` is around (optional)."""
    for tool in ("inferno-flamegraph", "flamegraph.pl"):
        exe = shutil.which(tool)
        if exe:
            svg = out_dir / "profile.svg"
            with collapsed.open() as src, svg.open("w") as dst:
                if subprocess.run([exe], stdin=src, stdout=dst).returncode == 0:
                    return svg
    return None


def print_profile(profile: Profile, title: str) -> None:
    print(f"\n{title}: {profile.samples} samples (collapsed stacks: {profile.collapsed_path})")
    for label, rows in (("self", profile.self_top), ("inclusive", profile.inclusive_top)):
        print(f"  top frames by {label} time:")
        for frame, count in rows:
            print(f"    {100 * count / max(1, profile.samples):5.1f}%  {frame}")


# --- output ----------------------------------------------------------------------------------------


def print_table(results: Sequence[LoadResult], reference: LoadResult | None = None, title: str = "") -> None:
    """A fixed-width results table; with ``reference``, a column of rps ratios against it."""
    if title:
        print(f"\n{title}")
    head = (
        f"{'target':<28} {'tool':<6} {'req/s':>9} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'max ms':>8} "
        f"{'requests':>9} {'errors':>6}"
    )
    cpu_groups = sorted({g for r in results for g in r.cpu_ms_per_req})
    for group in cpu_groups:
        head += f" {group + ' cpu':>8}"
    if reference is not None:
        head += f" {'x ref':>6}"
    print(head)
    print("-" * len(head))
    for r in results:
        row = (
            f"{r.target:<28} {r.tool:<6} {r.rps:>9.0f} {r.p50_ms:>8.2f} {r.p90_ms:>8.2f} {r.p99_ms:>8.2f} "
            f"{r.max_ms:>8.1f} {r.requests:>9} {r.errors:>6}"
        )
        for group in cpu_groups:
            value = r.cpu_ms_per_req.get(group)
            row += f" {value:>8.3f}" if value is not None else f" {'-':>8}"
        if reference is not None:
            row += f" {r.rps / reference.rps if reference.rps else 0.0:>6.2f}"
        print(row)
    if cpu_groups:
        print("(<group> cpu = CPU milliseconds per request used by that group of processes, user + system)")


def spread(values: Sequence[float]) -> str:
    """'median (min-max)' for a list of numbers."""
    if not values:
        return "-"
    return f"{statistics.median(values):.0f} ({min(values):.0f}-{max(values):.0f})"
