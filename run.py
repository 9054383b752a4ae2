#!/usr/bin/env python3
"""Fresh-machine bootstrap: needs only Python 3.11+.

    python3 run.py serve [robosystems serve options]   # embedded PostgreSQL, no servers needed
    python3 run.py test  [pytest options]              # the test suite
    python3 run.py <any robosystems subcommand>        # e.g. migrate current, worker

Creates ./.venv on first use, installs the locked dependencies (requirements-dev.lock) and the
package in editable mode, and re-installs only when the lock file changes.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
LOCK = ROOT / "requirements-dev.lock"
STAMP = VENV / ".robosystems-lock.sha256"


def _bin(name: str) -> Path:
    return VENV / ("Scripts" if os.name == "nt" else "bin") / name


def _lock_digest() -> str:
    digest = hashlib.sha256(LOCK.read_bytes())
    digest.update((ROOT / "pyproject.toml").read_bytes())
    return digest.hexdigest()


def ensure_environment() -> None:
    if sys.version_info < (3, 11):
        sys.exit(f"Python 3.11+ is required (this is {sys.version.split()[0]})")
    if not _bin("python").exists():
        print("[run.py] creating .venv", file=sys.stderr)
        venv.EnvBuilder(with_pip=True, clear=False).create(VENV)
    wanted = _lock_digest()
    if STAMP.exists() and STAMP.read_text().strip() == wanted:
        return
    print("[run.py] installing locked dependencies (first run or lock changed)", file=sys.stderr)
    pip = [str(_bin("python")), "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.check_call([*pip, "install", "-r", str(LOCK)])
    subprocess.check_call([*pip, "install", "--no-deps", "-e", str(ROOT)])
    STAMP.write_text(wanted)


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    ensure_environment()
    os.chdir(ROOT)
    command, rest = argv[0], argv[1:]
    if command == "test":
        args = [str(_bin("python")), "-m", "pytest", *rest]
    else:
        args = [str(_bin("robosystems")), command, *rest]
    if os.name == "nt":  # pragma: no cover - no exec semantics there
        return subprocess.call(args)
    os.execv(args[0], args)  # replace this process: signals (Ctrl-C, SIGTERM) reach the service directly
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
