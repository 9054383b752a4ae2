"""Runtime helpers for data-moving revisions: bounded lock waits, statement timeouts, batching, progress logs.

Every revision runs in its own transaction (``transaction_per_migration``), so an interruption (crash, kill,
lock timeout, statement timeout) rolls the revision back entirely and leaves the database at the previous
revision; a rerun starts the revision again.  On top of that the data-moving inserts are keyed by natural unique
keys (``ON CONFLICT DO NOTHING``), so a rerun never duplicates a row even after an operator's manual partial fix.

What these helpers add inside that transaction:

* :func:`begin` sets, for the revision's transaction only (``set_config(…, true)``):

  - ``lock_timeout`` (``MIGRATION_LOCK_TIMEOUT``, default ``10s``): a statement that waits longer than this for a
    lock (e.g. behind an application session that was not stopped) fails the revision at once instead of queueing
    every other session behind its ACCESS EXCLUSIVE request;
  - ``statement_timeout`` (``MIGRATION_STATEMENT_TIMEOUT``, default ``10min``): a bound on any single statement;
  - ``application_name`` = ``robosystems-migrate <revision>`` so the migration is recognisable in
    ``pg_stat_activity`` / ``pg_locks`` (the benchmark samples lock waits that way).

* :func:`key_ranges` + :meth:`Progress.batched` split a set-based statement into key ranges of
  ``MIGRATION_BATCH_SIZE`` rows (default 25,000) and log progress (rows, elapsed, rate) per batch, so one
  statement never runs for long and an operator sees how far the upgrade got.

The values come from the environment first, then from Settings (``MIGRATION_*`` in robosystems/config.py, so a
``.env`` works too); the revisions run under Alembic, also from ``alembic upgrade``, so nothing here needs the
application's secrets.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

log = logging.getLogger("robosystems.migrate")

LOCK_TIMEOUT_ENV = "MIGRATION_LOCK_TIMEOUT"
STATEMENT_TIMEOUT_ENV = "MIGRATION_STATEMENT_TIMEOUT"
BATCH_SIZE_ENV = "MIGRATION_BATCH_SIZE"
DEFAULT_LOCK_TIMEOUT = "10s"
DEFAULT_STATEMENT_TIMEOUT = "10min"
DEFAULT_BATCH_SIZE = 25_000
APPLICATION_NAME_PREFIX = "robosystems-migrate"

_DURATION = re.compile(r"^\s*\d+\s*(us|ms|s|min|h|d)?\s*$")


def _configured(env: str, default: str) -> str:
    """The environment variable, else the same setting from Settings (which also reads ``.env``), else default."""
    value = os.environ.get(env, "").strip()
    if value:
        return value
    try:
        from robosystems.config import Settings

        configured = getattr(Settings(), env.lower())
    except Exception:  # noqa: BLE001 - an unrelated invalid setting must not hide the default here
        return default
    return str(configured).strip() or default


def _duration(env: str, default: str) -> str:
    value = _configured(env, default)
    if not _DURATION.match(value):
        raise RuntimeError(
            f"{env}={value!r} is not a PostgreSQL duration such as '10s', '500ms' or '5min' (nothing was changed)"
        )
    return value.replace(" ", "")


def batch_size() -> int:
    raw = _configured(BATCH_SIZE_ENV, str(DEFAULT_BATCH_SIZE))
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise RuntimeError(f"{BATCH_SIZE_ENV}={raw!r} is not a positive whole number (nothing was changed)")
    return value


def settings() -> dict[str, str]:
    """The effective values (validated), e.g. for the preflight report."""
    return {
        "lock_timeout": _duration(LOCK_TIMEOUT_ENV, DEFAULT_LOCK_TIMEOUT),
        "statement_timeout": _duration(STATEMENT_TIMEOUT_ENV, DEFAULT_STATEMENT_TIMEOUT),
        "batch_size": str(batch_size()),
    }


@dataclass
class Progress:
    """Progress logging for one revision; ``batched`` runs a statement over key ranges."""

    conn: sa.Connection
    revision: str
    started: float = field(default_factory=time.perf_counter)

    def info(self, message: str, *args: Any) -> None:
        log.info("[%s %.1fs] " + message, self.revision, time.perf_counter() - self.started, *args)

    def step(self, label: str, sql: str, params: Mapping[str, Any] | None = None) -> int:
        """One statement with a timing line; returns its rowcount."""
        t0 = time.perf_counter()
        rows = self.conn.execute(sa.text(sql), dict(params or {})).rowcount
        self.info("%s: %s row(s) in %.2fs", label, rows if rows >= 0 else "-", time.perf_counter() - t0)
        return rows

    def batched(
        self,
        label: str,
        sql: str,
        ranges: Sequence[tuple[str | None, str | None]],
        key: str,
        params: Mapping[str, Any] | None = None,
    ) -> int:
        """Run ``sql`` once per key range.  ``sql`` holds ``{range}``, replaced by a condition on ``key``
        (``key > :lo AND key <= :hi``, open at either end)."""
        total = 0
        t0 = time.perf_counter()
        for number, (lo, hi) in enumerate(ranges, start=1):
            condition = range_condition(key, lo, hi)
            values = dict(params or {})
            values.update({k: v for k, v in (("lo", lo), ("hi", hi)) if v is not None})
            rows = self.conn.execute(sa.text(sql.replace("{range}", condition)), values).rowcount
            total += max(rows, 0)
            elapsed = time.perf_counter() - t0
            self.info(
                "%s: batch %d/%d, %d row(s) (total %d, %.1fs, %.0f rows/s)",
                label,
                number,
                len(ranges),
                rows,
                total,
                elapsed,
                total / elapsed if elapsed > 0 else 0.0,
            )
        return total


def range_condition(key: str, lo: str | None, hi: str | None) -> str:
    parts = []
    if lo is not None:
        parts.append(f"{key} > :lo")
    if hi is not None:
        parts.append(f"{key} <= :hi")
    return " AND ".join(parts) or "true"


def key_ranges(
    conn: sa.Connection, table: str, key: str, *, size: int | None = None, where: str = "true"
) -> list[tuple[str | None, str | None]]:
    """Split ``table`` into consecutive ranges of ``key`` holding about ``size`` rows each.

    The ranges cover the whole key space (first open below, last open above), so rows inserted meanwhile are not
    missed.  One index-only pass over the key column computes the boundaries.
    """
    size = size or batch_size()
    bounds = [
        str(v)
        for v in conn.execute(
            sa.text(
                f"SELECT k FROM (SELECT {key} AS k, row_number() OVER (ORDER BY {key}) AS rn FROM {table} "
                f"WHERE {where}) x WHERE rn % :size = 0 ORDER BY k"
            ),
            {"size": size},
        ).scalars()
    ]
    edges: list[str | None] = [None, *bounds, None]
    return [(edges[i], edges[i + 1]) for i in range(len(edges) - 1)]


def begin(conn: sa.Connection, revision: str) -> Progress:
    """Bound lock waits and statement time for this revision's transaction; name the session; start the clock."""
    values = settings()
    conn.execute(
        sa.text(
            "SELECT set_config('lock_timeout', :lock, true), set_config('statement_timeout', :stmt, true), "
            "set_config('application_name', :app, true)"
        ),
        {"lock": values["lock_timeout"], "stmt": values["statement_timeout"], "app": application_name(revision)},
    )
    progress = Progress(conn, revision)
    progress.info(
        "started (lock_timeout=%s, statement_timeout=%s, batch_size=%s)",
        values["lock_timeout"],
        values["statement_timeout"],
        values["batch_size"],
    )
    return progress


def application_name(revision: str) -> str:
    return f"{APPLICATION_NAME_PREFIX} {revision}"
