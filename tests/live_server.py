"""Run the real service (``robosystems serve``) as a subprocess for black-box tests.

``running_server(database_url, **env)`` starts ``robosystems serve --no-migrate --port <free port>``
against an already migrated database, waits for ``/healthz`` and yields the base URL; on exit
it terminates the process (then kills it if it does not stop in time).  The server runs in a
temporary working directory so a developer's ``.env`` never leaks into the tests; its output
goes to a log file whose tail is shown when it fails to start.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

JWT_SECRET = "live-server-test-secret-" + "y" * 40
STARTUP_TIMEOUT_SECONDS = 60.0
STOP_TIMEOUT_SECONDS = 10.0

# Relaxed so that a test run never trips a limit (Redis counters survive between runs).
RELAXED_RATE_LIMITS = {
    "RATE_LIMIT_LOGIN_PER_IP_EMAIL": "10000/minute",
    "RATE_LIMIT_LOGIN_FAILURES_PER_ACCOUNT": "10000/hour",
    "RATE_LIMIT_REGISTER_PER_IP": "100000/hour",
    "RATE_LIMIT_FORGOT_PASSWORD_PER_EMAIL": "10000/hour",
    "RATE_LIMIT_EMAIL_RESEND_PER_USER": "10000/hour",
}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _serve_command(port: int) -> list[str]:
    script = Path(sys.executable).with_name("robosystems")
    base = [str(script)] if script.exists() else [sys.executable, "-m", "robosystems.cli"]
    return [*base, "serve", "--no-migrate", "--host", "127.0.0.1", "--port", str(port)]


def _server_env(database_url: str, workdir: Path, overrides: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RATE_LIMIT_", "EMAIL_", "USER_REGISTRATION"))}
    env.update(
        {
            "DATABASE_URL": database_url,
            "JWT_SECRET_KEY": JWT_SECRET,
            "ENVIRONMENT": "test",
            "EMBEDDED_WORKER": "false",
            "LOG_JSON": "false",
            "LOG_LEVEL": "WARNING",
            "ROBOSYSTEMS_DATA_DIR": str(workdir / "data"),
            "WORKERS": "1",
            **RELAXED_RATE_LIMITS,
        }
    )
    redis_url = os.environ.get("REDIS_URL", "")
    if redis_url:
        env["REDIS_URL"] = redis_url
    else:
        env.pop("REDIS_URL", None)
    env.update(overrides)
    return env


def _log_tail(log_path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(log_path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "<no log>"


def _wait_healthy(proc: subprocess.Popen[bytes], base_url: str, log_path: Path) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before /healthz answered:\n{_log_tail(log_path)}")
        try:
            if httpx.get(f"{base_url}/healthz", timeout=2.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"server did not answer /healthz within {STARTUP_TIMEOUT_SECONDS}s:\n{_log_tail(log_path)}")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=STOP_TIMEOUT_SECONDS)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=STOP_TIMEOUT_SECONDS)


@contextmanager
def running_server(database_url: str, **env_overrides: str) -> Iterator[str]:
    """Start the service on a free port against ``database_url``; yield its base URL.

    ``env_overrides`` are extra environment variables (e.g. ``EMAIL_VERIFICATION_ENABLED="true"``).
    """
    workdir = Path(tempfile.mkdtemp(prefix="rs-live-"))
    log_path = workdir / "server.log"
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    env = _server_env(database_url, workdir, env_overrides)
    with log_path.open("wb") as log:
        proc = subprocess.Popen(  # noqa: S603 - fixed argv, no shell
            _serve_command(port), cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT
        )
        try:
            _wait_healthy(proc, base_url, log_path)
            yield base_url
        finally:
            _stop(proc)
    shutil.rmtree(workdir, ignore_errors=True)
