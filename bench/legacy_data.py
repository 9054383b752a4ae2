"""Production-like LEGACY database generator (schema of revision ``7a89a1bfab0c``), edge cases E1–E11 included.

Builds, with server-side SQL only (``INSERT … SELECT … FROM generate_series``), a legacy RoboSystems database of
a chosen size.  Default (``--scale 1``): 100,000 users, 150,000 graphs, 400,000 ``user_graphs``, 60,000
``billing_subscriptions``, 120,000 invoices, 1,000,000 ``graph_usage_tracking`` rows, plus API keys, tokens, limits,
credit pools and their ledger, billing customers, line items, audit logs and ``user_repository`` rows.

* Reproducible: every pseudo-random choice is ``md5(seed:tag:index)``, so the same ``--seed`` and ``--scale`` give the
  same rows, ids included (no ``random()``, no dependence on row order).
* Legacy id formats (legacy-schema.md §0): ``prefix_`` + 22 base64url chars (``user_``, ``uak_``, ``tok_``, ``ug_``,
  ``ul_``, ``bsub_``, ``binv_``, ``bli_``, ``baud_``; they contain ``-`` and ``_``), ``prefix_<ULID>`` for
  ``crd_``/``txn_``/``usg_``, ``kg`` + 16 hex for user graphs, plain names for the shared repositories.
* Only ORM-side defaults existed in legacy, so every id, boolean and timestamp is written explicitly.
* Edge cases are planted at KNOWN counts (``Plan``); the manifest printed at the end (``--manifest`` to save it) gives
  the design count of every case next to the table row counts.  The blockers (E5 case-duplicate emails, E2 graphs
  with no owner signal at all) can be left out with ``--no-blockers``.
* Fast: secondary indexes and foreign keys of the legacy tables are dropped while loading and re-created afterwards
  with their exact definitions (so unique indexes and FKs are validated once, in bulk), then ``ANALYZE``.

    .venv/bin/python bench/legacy_data.py --create                  # new database bench_legacy_<hex>, scale 1
    .venv/bin/python bench/legacy_data.py --scale 0.01 --url postgresql://postgres@127.0.0.1/mydb
    .venv/bin/python bench/legacy_data.py --create --manifest out/legacy.json --seed 7

The database must be empty (it is migrated to ``7a89a1bfab0c`` here) or already at ``7a89a1bfab0c`` with no rows.
Not part of the shipped package.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import secrets
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql as pgsql

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

LEGACY_REVISION = "7a89a1bfab0c"
DEFAULT_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"

# Real bcrypt hashes (cost 4) of these passwords: users log in with ``PASSWORDS[i % 4]``.
PASSWORDS = ("Legacy-Passw0rd-0!", "Legacy-Passw0rd-1!", "Legacy-Passw0rd-2!", "Legacy-Passw0rd-3!")

LEGACY_TABLES = (
    "users",
    "user_limits",
    "user_api_keys",
    "user_tokens",
    "graphs",
    "user_graphs",
    "user_repository",
    "graph_credits",
    "graph_credit_transactions",
    "graph_usage_tracking",
    "billing_customers",
    "billing_subscriptions",
    "billing_invoices",
    "billing_invoice_line_items",
    "billing_audit_logs",
)


def _log(message: str) -> None:
    print(f"[legacy-data {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _n(base: float, scale: float, minimum: int) -> int:
    return max(minimum, int(round(base * scale)))


@dataclass(frozen=True)
class Plan:
    """Every count the generator produces, derived from ``scale`` (edge cases have a floor so that a 1,000-user
    database still holds each of them)."""

    scale: float
    seed: int
    blockers: bool = True
    # main tables
    users: int = 0
    graphs: int = 0
    user_graphs: int = 0
    subscriptions: int = 0
    invoices: int = 0
    usage_rows: int = 0
    api_keys: int = 0
    tokens: int = 0
    # E5: pairs of users whose emails differ only by case (BLOCKER)
    case_dup_pairs: int = 0
    # E2: user graphs with no ownership signal at all (BLOCKER); half of them keep a viewer-only grant
    orphan_graphs: int = 0
    orphans_with_viewer: int = 0
    # E1: graphs paid for by a later admin / billed to another user than the creator
    payer_differs: int = 0
    billing_admin_differs: int = 0
    # E2: graphs whose creator's grant was demoted to member (credits still name the creator)
    demoted_admin: int = 0
    # E2: only member grants left (creator deleted, no credits, no billing): the earliest member wins
    member_only: int = 0
    # E3: graphs with no user_graphs rows (credits name the owner) / with no credit pool
    no_user_graphs: int = 0
    no_credits: int = 0
    # E2b: subgraphs (parent exists) and subgraphs whose parent_graph_id points nowhere (own credits pool)
    subgraphs: int = 0
    subgraphs_parent_missing: int = 0
    # E4 / E6
    users_without_limits: int = 0
    # E7: shared graphs given hourly storage snapshots, one per member, for this many hours
    snapshot_graphs: int = 0
    snapshot_hours: int = 3
    # E8: user_repository rows and repository subscriptions
    user_repository_rows: int = 0
    repository_subscriptions: int = 0
    # E9: graphs with a pre-2025-10 tier string (standard / enterprise / premium)
    legacy_tier_graphs: int = 0
    # billing shapes
    pending_checkouts: int = 0  # resource_id NULL, provider_subscription_id 'cs_…'
    legacy_pending_status: int = 0  # status 'pending' (-> pending_payment)
    canceled_replaced: int = 0  # a canceled subscription of another user next to the live one
    extra_customers: int = 0  # billing customers with no subscription
    audit_without_reference: int = 0
    admin_override_audits: int = 0
    # ledger
    ledger_mismatch_pools: int = 0  # current_balance != sum(transactions)
    ghost_user_transactions: int = 0  # credit transactions whose user_id no longer exists (no FK)
    # orphaned references (no FK in legacy)
    orphan_tokens: int = 0
    usage_unknown_refs: int = 0
    # ≤1 is_selected per user is app-enforced only
    multi_selected_users: int = 0
    # odd free-text roles ('editor') kept verbatim
    odd_role_grants: int = 0

    @classmethod
    def for_scale(cls, scale: float, seed: int = 42, *, blockers: bool = True) -> Plan:
        if scale <= 0:
            raise ValueError("scale must be > 0")
        s = scale
        return cls(
            scale=scale,
            seed=seed,
            blockers=blockers,
            users=_n(100_000, s, 200),
            graphs=_n(150_000, s, 300),
            user_graphs=_n(400_000, s, 800),
            subscriptions=_n(60_000, s, 150),
            invoices=_n(120_000, s, 300),
            usage_rows=_n(1_000_000, s, 2_000),
            api_keys=_n(50_000, s, 100),
            tokens=_n(30_000, s, 60),
            case_dup_pairs=_n(20, s, 2) if blockers else 0,
            orphan_graphs=_n(10, s, 2) if blockers else 0,
            orphans_with_viewer=(_n(10, s, 2) // 2) if blockers else 0,
            payer_differs=_n(500, s, 5),
            billing_admin_differs=_n(400, s, 5),
            demoted_admin=_n(700, s, 5),
            member_only=_n(50, s, 3),
            no_user_graphs=_n(300, s, 5),
            no_credits=_n(1_500, s, 5),
            subgraphs=_n(450, s, 5),
            subgraphs_parent_missing=_n(20, s, 2),
            users_without_limits=_n(5_000, s, 10),
            snapshot_graphs=_n(10_000, s, 20),
            user_repository_rows=_n(2_000, s, 15),
            repository_subscriptions=_n(1_500, s, 10),
            legacy_tier_graphs=_n(1_500, s, 6),
            pending_checkouts=_n(300, s, 3),
            legacy_pending_status=_n(600, s, 3),
            canceled_replaced=_n(600, s, 3),
            extra_customers=_n(2_000, s, 5),
            audit_without_reference=_n(5, s, 1),
            admin_override_audits=_n(50, s, 2),
            ledger_mismatch_pools=_n(7_500, s, 10),
            ghost_user_transactions=_n(200, s, 2),
            orphan_tokens=_n(25, s, 2),
            usage_unknown_refs=_n(100, s, 2),
            multi_selected_users=_n(200, s, 2),
            odd_role_grants=_n(30, s, 2),
        )

    # --- derived layout of the user-graph index space 1..user_graph_count -------------------------------------------
    # [normal][payer_differs][billing_admin_differs][no_credits][demoted] | [no_user_graphs][member_only][orphans]
    # The first five groups are "shareable" (members are added to them).
    @property
    def repositories(self) -> int:
        return 3

    @property
    def user_graph_count(self) -> int:
        return self.graphs - self.repositories - self.subgraphs - self.subgraphs_parent_missing

    @property
    def special_tail(self) -> int:
        return self.no_user_graphs + self.member_only + self.orphan_graphs

    @property
    def shareable(self) -> int:
        return self.user_graph_count - self.special_tail

    @property
    def normal(self) -> int:
        return self.shareable - self.payer_differs - self.billing_admin_differs - self.no_credits - self.demoted_admin

    def ranges(self) -> dict[str, tuple[int, int]]:
        """kind -> (first, last) graph index (inclusive)."""
        out: dict[str, tuple[int, int]] = {}
        start = 1
        for kind, size in (
            ("normal", self.normal),
            ("payer_differs", self.payer_differs),
            ("billing_admin_differs", self.billing_admin_differs),
            ("no_credits", self.no_credits),
            ("demoted", self.demoted_admin),
            ("no_user_graphs", self.no_user_graphs),
            ("member_only", self.member_only),
            ("orphan", self.orphan_graphs),
        ):
            out[kind] = (start, start + size - 1)
            start += size
        return out

    @property
    def graph_subscriptions(self) -> int:
        """Live/ended graph subscriptions on 'normal' graphs (the payer_differs graphs get their own)."""
        return (
            self.subscriptions
            - self.repository_subscriptions
            - self.pending_checkouts
            - self.canceled_replaced
            - self.payer_differs
        )

    def validate(self) -> None:
        if self.normal < max(self.legacy_tier_graphs, self.snapshot_graphs, 10):
            raise ValueError(f"scale {self.scale}: too few normal graphs ({self.normal})")
        if self.graph_subscriptions <= self.canceled_replaced or self.graph_subscriptions > self.normal:
            raise ValueError(f"scale {self.scale}: graph subscriptions ({self.graph_subscriptions}) don't fit")
        if self.repository_subscriptions > self.user_repository_rows:
            raise ValueError("more repository subscriptions than user_repository rows")
        if self.user_repository_rows > self.users // 2:
            raise ValueError("too many user_repository rows for the users")
        if 2 * self.case_dup_pairs >= self.users // 10:
            raise ValueError("too many case-duplicate pairs")


@dataclass
class Result:
    plan: Plan
    database_url: str
    seconds: dict[str, float] = field(default_factory=dict)
    manifest: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "database_url": self.database_url,
            "plan": asdict(self.plan),
            "seconds": self.seconds,
            "manifest": self.manifest,
        }


def _bcrypt_hashes() -> list[str]:
    import bcrypt

    return [bcrypt.hashpw(p.encode(), bcrypt.gensalt(rounds=4)).decode() for p in PASSWORDS]


def _lit(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _coprime_step(n: int, start: int) -> int:
    step = start
    while math.gcd(step, n) != 1:
        step += 1
    return step


class Generator:
    def __init__(self, conn: psycopg.Connection[Any], plan: Plan) -> None:
        self.conn = conn
        self.plan = plan
        self.seconds: dict[str, float] = {}

    # ---- plumbing -------------------------------------------------------------------------------------------------

    def run(self, sql: str) -> int:
        cur = self.conn.execute(sql.encode())  # bytes: no %-placeholder processing
        return cur.rowcount

    def step(self, name: str, fn: Callable[[], None]) -> None:
        started = time.perf_counter()
        fn()
        self.conn.commit()
        self.seconds[name] = round(time.perf_counter() - started, 2)
        _log(f"{name}: {self.seconds[name]:.2f}s")

    def helpers(self) -> None:
        """Session-local (pg_temp) deterministic pseudo-random helpers keyed by the seed.

        Declared STABLE, not IMMUTABLE: ``text || bigint`` is only stable, and an IMMUTABLE SQL function whose body
        is not would not be inlined (a function call per row costs ~2x the md5 itself).
        """
        seed = int(self.plan.seed)
        p = self.plan
        statements = [
            # 60-bit pseudo-random integer for (tag, index)
            f"""CREATE FUNCTION pg_temp.h(t text, i bigint) RETURNS bigint LANGUAGE sql STABLE PARALLEL SAFE AS
            $$ SELECT ('x' || substr(md5('{seed}:' || t || ':' || i), 1, 15))::bit(60)::bigint $$""",
            # 22 base64url chars, like secrets.token_urlsafe(16)
            f"""CREATE FUNCTION pg_temp.b64(t text, i bigint) RETURNS text LANGUAGE sql STABLE PARALLEL SAFE AS
            $$ SELECT translate(rtrim(encode(decode(md5('{seed}:' || t || ':' || i), 'hex'), 'base64'), '='),
                                '+/', '-_') $$""",
            f"""CREATE FUNCTION pg_temp.ulid(t text, i bigint) RETURNS text LANGUAGE sql STABLE PARALLEL SAFE AS
            $$ SELECT '01J' || upper(substr(md5('{seed}:ulid:' || t || ':' || i), 1, 23)) $$""",
            f"""CREATE FUNCTION pg_temp.hex64(t text, i bigint) RETURNS text LANGUAGE sql STABLE PARALLEL SAFE AS
            $$ SELECT md5('{seed}:a:' || t || ':' || i) || md5('{seed}:b:' || t || ':' || i) $$""",
            """CREATE FUNCTION pg_temp.uid(i bigint) RETURNS text LANGUAGE sql STABLE PARALLEL SAFE AS
            $$ SELECT 'user_' || pg_temp.b64('user', i) $$""",
            f"""CREATE FUNCTION pg_temp.gid(g bigint) RETURNS text LANGUAGE sql STABLE PARALLEL SAFE AS
            $$ SELECT 'kg' || substr(md5('{seed}:graph:' || g), 1, 16) $$""",
            # a timestamp between `base` and base + `days`
            """CREATE FUNCTION pg_temp.ts(t text, i bigint, base timestamp, days int) RETURNS timestamp
            LANGUAGE sql STABLE PARALLEL SAFE AS
            $$ SELECT base + (pg_temp.h(t, i) % (days::bigint * 86400)) * interval '1 second' $$""",
            # mixed-case addresses for every 97th user (lower-cased by the upgrade)
            """CREATE FUNCTION pg_temp.email(i bigint) RETURNS text LANGUAGE sql STABLE PARALLEL SAFE AS
            $$ SELECT CASE WHEN i % 97 = 0 THEN 'User.' || i || '@Example.com' ELSE 'user' || i || '@example.com' END
            $$""",
            f"""CREATE FUNCTION pg_temp.inactive(i bigint) RETURNS boolean LANGUAGE sql STABLE PARALLEL SAFE AS
            $$ SELECT pg_temp.h('inactive', i) % 50 = 0 AND i <= {p.users - 2 * p.case_dup_pairs} $$""",
        ]
        for statement in statements:
            self.run(statement)

    # ---- indexes and foreign keys off while loading ---------------------------------------------------------------

    def drop_secondary_objects(self) -> list[str]:
        tables = "ARRAY[" + ", ".join(_lit(t) for t in LEGACY_TABLES) + "]"
        recreate: list[str] = []
        fks = self.conn.execute(
            f"SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid) FROM pg_constraint "
            f"WHERE contype = 'f' AND connamespace = 'public'::regnamespace "
            f"AND conrelid::regclass::text = ANY({tables}) ORDER BY 1, 2".encode()
        ).fetchall()
        indexes = self.conn.execute(
            f"SELECT i.indexname, i.indexdef FROM pg_indexes i WHERE i.schemaname = 'public' "
            f"AND i.tablename = ANY({tables}) AND NOT EXISTS (SELECT 1 FROM pg_constraint c "
            f"WHERE c.conname = i.indexname AND c.connamespace = 'public'::regnamespace) ORDER BY 1".encode()
        ).fetchall()
        for table, name, definition in fks:
            self.run(f'ALTER TABLE {table} DROP CONSTRAINT "{name}"')
            recreate.append(f'ALTER TABLE {table} ADD CONSTRAINT "{name}" {definition}')
        for name, definition in indexes:
            self.run(f'DROP INDEX "{name}"')
            recreate.insert(0, definition)  # indexes first: FK validation uses them
        return recreate

    # ---- design tables (temp) -------------------------------------------------------------------------------------

    def design(self) -> None:
        p = self.plan
        r = p.ranges()
        owners = max(1, (p.users - 2 * p.case_dup_pairs) * 7 // 10)  # E4: the other 30% own nothing
        step = p.users // 7 + 1  # share offsets (r+1)*step are distinct and never the owner
        legacy_first = r["normal"][1] - p.legacy_tier_graphs + 1
        kind_case = " ".join(f"WHEN g BETWEEN {a} AND {b} THEN '{k}'" for k, (a, b) in r.items())
        self.run(
            f"""
            CREATE TEMP TABLE _g AS
            SELECT g, pg_temp.gid(g) AS graph_id, CASE {kind_case} END AS kind,
                   1 + pg_temp.h('owner', g) % {owners} AS owner_i,
                   CASE WHEN pg_temp.h('type', g) % 10 < 7 THEN 'entity' ELSE 'generic' END AS graph_type,
                   pg_temp.ts('gcreated', g, '2023-01-01', 1000) AS created_at
            FROM generate_series(1, {p.user_graph_count}) g
            """
        )
        self.run("ALTER TABLE _g ADD PRIMARY KEY (g)")
        self.run(
            f"""
            ALTER TABLE _g ADD COLUMN share_i int, ADD COLUMN tier text, ADD COLUMN plan text;
            UPDATE _g SET share_i = 1 + (owner_i - 1 + {step}) % {p.users},
              tier = CASE
                WHEN g BETWEEN {legacy_first} AND {r["normal"][1]}
                  THEN (ARRAY['standard', 'enterprise', 'premium'])[1 + g % 3]
                WHEN graph_type = 'generic' THEN 'kuzu-standard'
                WHEN pg_temp.h('tier', g) % 100 < 80 THEN 'kuzu-standard'
                WHEN pg_temp.h('tier', g) % 100 < 95 THEN 'kuzu-large' ELSE 'kuzu-xlarge' END;
            UPDATE _g SET plan = CASE
                WHEN tier IN ('standard') THEN 'kuzu-standard' WHEN tier IN ('enterprise', 'premium') THEN 'kuzu-xlarge'
                WHEN graph_type = 'generic' AND pg_temp.h('plan', g) % 10 = 0 THEN 'kuzu-large'
                ELSE tier END;
            ANALYZE _g
            """
        )
        # grants: owner rows, shares, member-only pairs, viewer-only orphans
        total_fixed = self.scalar(
            "SELECT count(*) FILTER (WHERE kind IN ('normal','payer_differs','billing_admin_differs','no_credits',"
            "'demoted')) + 2 * count(*) FILTER (WHERE kind = 'member_only') FROM _g"
        )
        total_fixed += p.orphans_with_viewer
        shares = p.user_graphs - total_fixed
        if shares < p.shareable or shares > 6 * p.shareable:
            raise ValueError(f"user_graphs={p.user_graphs} does not fit {p.shareable} shareable graphs")
        self.shares = shares
        orphan_first = r["orphan"][0]
        self.run(
            f"""
            CREATE TEMP TABLE _ug AS
            SELECT 'o' || g AS tag, owner_i AS user_i, g,
                   CASE WHEN kind = 'demoted' THEN 'member' ELSE 'admin' END AS role,
                   created_at AS created_at
            FROM _g WHERE kind IN ('normal', 'payer_differs', 'billing_admin_differs', 'no_credits', 'demoted')
            UNION ALL
            SELECT 'm' || g || '.' || n, 1 + (owner_i - 1 + n * {step}) % {p.users}, g, 'member',
                   created_at + n * interval '1 day'
            FROM _g CROSS JOIN generate_series(0, 1) n WHERE kind = 'member_only'
            UNION ALL
            SELECT 'v' || g, owner_i, g, 'viewer', created_at + interval '2 days'
            FROM _g WHERE g BETWEEN {orphan_first} AND {orphan_first + p.orphans_with_viewer - 1}
            UNION ALL
            SELECT 's' || k, 1 + (x.owner_i - 1 + (1 + (k - 1) / {p.shareable}) * {step}) % {p.users}, x.g,
                   CASE WHEN x.kind = 'payer_differs' AND (k - 1) / {p.shareable} = 0 THEN 'admin'
                        WHEN k <= {p.odd_role_grants} THEN 'editor'
                        WHEN x.kind = 'demoted' THEN 'member'
                        WHEN pg_temp.h('role', k) % 100 < 4 THEN 'admin'
                        WHEN pg_temp.h('role', k) % 100 < 60 THEN 'member' ELSE 'viewer' END,
                   x.created_at + (1 + pg_temp.h('share', k) % 300) * interval '1 day'
            FROM generate_series(1, {shares}) k JOIN _g x ON x.g = 1 + (k - 1) % {p.shareable}
            """
        )
        self.run("ANALYZE _ug")

    def scalar(self, sql: str) -> int:
        row = self.conn.execute(sql.encode()).fetchone()
        assert row is not None
        return int(row[0] or 0)

    # ---- identity -------------------------------------------------------------------------------------------------

    def users(self) -> None:
        p = self.plan
        hashes = "ARRAY[" + ", ".join(_lit(h) for h in _bcrypt_hashes()) + "]"
        dup_first = p.users - p.case_dup_pairs + 1
        self.run(
            f"""
            INSERT INTO users (id, email, name, password_hash, is_active, email_verified, created_at, updated_at)
            SELECT pg_temp.uid(i),
                   CASE WHEN i >= {dup_first} THEN upper(pg_temp.email(i - {p.case_dup_pairs}))
                        ELSE pg_temp.email(i) END,
                   'User ' || i, ({hashes})[1 + i % 4], NOT pg_temp.inactive(i), pg_temp.h('verified', i) % 10 <> 0,
                   c, c + (pg_temp.h('uupd', i) % 400) * interval '1 day'
            FROM generate_series(1, {p.users}) i, LATERAL (SELECT pg_temp.ts('ucreated', i, '2022-01-01', 700) AS c) cx
            """
        )
        # E4: users_without_limits users (every 1/k-th) have no user_limits row
        every = max(2, p.users // max(1, p.users_without_limits))
        self.no_limits_every = every
        self.run(
            f"""
            INSERT INTO user_limits (id, user_id, max_user_graphs, created_at, updated_at)
            SELECT 'ul_' || pg_temp.b64('ul', i), pg_temp.uid(i),
                   CASE WHEN i % 10 = 3 THEN 5 WHEN i % 50 = 7 THEN 25 ELSE 100 END,
                   pg_temp.ts('ucreated', i, '2022-01-01', 700), pg_temp.ts('ucreated', i, '2022-01-01', 700)
            FROM generate_series(1, {p.users}) i
            WHERE NOT (i % {every} = 0 AND i / {every} <= {p.users_without_limits})
            """
        )
        self.run(
            f"""
            INSERT INTO user_api_keys (id, user_id, name, key_hash, prefix, is_active, description, last_used_at,
                                       created_at, updated_at, expires_at)
            SELECT 'uak_' || pg_temp.b64('uak', k), pg_temp.uid(u), 'key ' || k,
                   '$2b$12$' || substr(pg_temp.b64('khash', k) || pg_temp.b64('khash2', k)
                                       || pg_temp.b64('k3', k), 1, 53),
                   'rfs' || substr(md5('prefix' || k), 1, 5), pg_temp.h('kact', k) % 10 <> 0,
                   CASE WHEN k % 3 = 0 THEN 'integration key' END,
                   CASE WHEN k % 2 = 0 THEN pg_temp.ts('kused', k, '2025-01-01', 300) END,
                   '2024-06-01 12:00:00', '2024-06-01 12:00:00',
                   CASE WHEN k % 20 = 0 THEN pg_temp.ts('kexp', k, '2025-06-01', 400) END
            FROM generate_series(1, {p.api_keys}) k, LATERAL (SELECT 1 + pg_temp.h('kuser', k) % {p.users} AS u) x
            """
        )
        self.run(
            f"""
            INSERT INTO user_tokens (id, user_id, token_hash, token_type, expires_at, used_at, created_at, ip_address,
                                     user_agent)
            SELECT 'tok_' || pg_temp.b64('tok', k),
                   CASE WHEN k <= {p.orphan_tokens} THEN 'user_' || pg_temp.b64('deleted-user', k)
                        ELSE pg_temp.uid(1 + pg_temp.h('tuser', k) % {p.users}) END,
                   pg_temp.hex64('thash', k),
                   CASE WHEN k % 2 = 0 THEN 'email_verification' ELSE 'password_reset' END,
                   c + interval '1 day', CASE WHEN k % 3 = 0 THEN c + interval '1 hour' END, c,
                   '10.0.' || (k % 250) || '.' || (k % 200), 'legacy-agent/' || (k % 7)
            FROM generate_series(1, {p.tokens}) k, LATERAL (SELECT pg_temp.ts('tcreated', k, '2024-01-01', 600) AS c) cx
            """
        )

    # ---- graphs ---------------------------------------------------------------------------------------------------

    def graphs(self) -> None:
        p = self.plan
        self.run(
            """
            INSERT INTO graphs (graph_id, graph_name, graph_type, base_schema, schema_extensions, graph_instance_id,
                                graph_tier, created_at, updated_at, graph_metadata, is_subgraph, is_repository)
            SELECT graph_id, 'Graph ' || g, graph_type, CASE WHEN graph_type = 'entity' THEN 'base' END,
                   CASE WHEN g % 5 = 0 THEN '["roboledger"]'::jsonb ELSE '[]'::jsonb END,
                   CASE WHEN g % 4 = 0 THEN 'kuzu-writer-' || (g % 16) ELSE 'default' END,
                   tier, created_at, created_at + interval '3 days',
                   jsonb_build_object('created_by',
                     CASE WHEN kind IN ('orphan', 'member_only') THEN 'user_' || pg_temp.b64('deleted-creator', g)
                          ELSE pg_temp.uid(owner_i) END,
                     'description', 'generated'),
                   false, false
            FROM _g
            """
        )
        self.run(
            """
            INSERT INTO graphs (graph_id, graph_name, graph_type, schema_extensions, graph_instance_id, graph_tier,
                                created_at, updated_at, graph_metadata, is_subgraph, is_repository, repository_type,
                                data_source_type, sync_status)
            VALUES
              ('sec', 'SEC XBRL filings', 'repository', '[]', 'shared-1', 'kuzu-shared', '2023-01-01', '2025-01-01',
               NULL, false, true, 'sec', 'sec_edgar', 'completed'),
              ('industry', 'Industry data', 'repository', '[]', 'shared-1', 'kuzu-shared', '2023-01-01',
               '2025-01-01', NULL, false, true, 'industry', 'api', 'completed'),
              ('economic', 'Economic data', 'repository', '[]', 'shared-1', 'kuzu-shared', '2023-01-01',
               '2025-01-01', NULL, false, true, 'economic', 'api', 'pending')
            """
        )
        # E2b: subgraphs of normal graphs (no grants, no credits of their own) …
        self.run(
            f"""
            INSERT INTO graphs (graph_id, graph_name, graph_type, schema_extensions, graph_instance_id, graph_tier,
                                created_at, updated_at, graph_metadata, is_subgraph, parent_graph_id, subgraph_index,
                                subgraph_name, subgraph_metadata, is_repository)
            SELECT x.graph_id || '_sub' || j, 'Subgraph ' || j, x.graph_type, '[]', 'default', x.tier,
                   x.created_at + interval '5 days', x.created_at + interval '5 days',
                   jsonb_build_object('created_by', pg_temp.uid(x.owner_i)), true, x.graph_id, j, 'sub' || j,
                   '{{"purpose": "analysis"}}', false
            FROM generate_series(1, {p.subgraphs}) j
            JOIN _g x ON x.g = 1 + pg_temp.h('subparent', j) % {p.normal}
            """
        )
        # … and subgraphs whose parent row is gone (parent_graph_id has no FK); they keep a credits pool
        self.run(
            f"""
            INSERT INTO graphs (graph_id, graph_name, graph_type, schema_extensions, graph_instance_id, graph_tier,
                                created_at, updated_at, graph_metadata, is_subgraph, parent_graph_id, subgraph_index,
                                subgraph_name, is_repository)
            SELECT 'kg' || substr(md5('{p.seed}:lostparent:' || j), 1, 16) || '_lost' || j, 'Lost subgraph ' || j,
                   'entity', '[]', 'default', 'kuzu-standard', '2024-02-02', '2024-02-02',
                   jsonb_build_object('created_by', pg_temp.uid(1 + pg_temp.h('lostowner', j) % {p.users // 2})),
                   true, 'kg' || substr(md5('{p.seed}:lostparent:' || j), 1, 16), 1, 'lost' || j, false
            FROM generate_series(1, {p.subgraphs_parent_missing}) j
            """
        )
        self.run(
            """
            INSERT INTO user_graphs (id, user_id, graph_id, role, is_selected, created_at, updated_at)
            SELECT 'ug_' || pg_temp.b64('ug' || u.tag, 0),
                   pg_temp.uid(u.user_i), x.graph_id, u.role, false, u.created_at, u.created_at
            FROM _ug u JOIN _g x ON x.g = u.g
            """
        )
        # E8: user_repository (uppercase PG enum labels, E10)
        step = _coprime_step(p.users, p.users // 3 + 1)
        self.run(
            f"""
            INSERT INTO user_repository (id, user_id, repository_type, repository_name, access_level, repository_plan,
                                         is_active, activated_at, monthly_price_cents, monthly_credit_allocation,
                                         granted_at, created_at, updated_at)
            SELECT 'urepo_' || pg_temp.b64('urepo', j), pg_temp.uid(1 + (j * {step}) % {p.users}),
                   (ARRAY['SEC', 'INDUSTRY', 'ECONOMIC'])[1 + j % 3]::repositorytype,
                   (ARRAY['sec', 'industry', 'economic'])[1 + j % 3],
                   (ARRAY['READ', 'READ', 'WRITE', 'ADMIN'])[1 + j % 4]::repositoryaccesslevel,
                   (ARRAY['STARTER', 'ADVANCED', 'UNLIMITED'])[1 + j % 3]::repositoryplan,
                   j % 10 <> 0, '2024-03-01 00:00:00+00', (ARRAY[2900, 9900, 29900])[1 + j % 3],
                   (ARRAY[1000, 5000, 20000])[1 + j % 3], '2024-03-01 00:00:00+00',
                   '2024-03-01 00:00:00+00', '2024-03-01 00:00:00+00'
            FROM generate_series(1, {p.user_repository_rows}) j
            """
        )
        self.repo_user_step = step

    # ---- credits --------------------------------------------------------------------------------------------------

    def credits(self) -> None:
        p = self.plan
        # pools: every shareable graph except no_credits, plus no_user_graphs graphs and lost subgraphs
        self.run(
            """
            CREATE TEMP TABLE _pool AS
            SELECT row_number() OVER (ORDER BY x.g) AS n, x.graph_id, x.owner_i,
                   CASE WHEN x.kind = 'billing_admin_differs' THEN x.share_i ELSE x.owner_i END AS admin_i,
                   x.plan, x.created_at
            FROM _g x WHERE x.kind IN ('normal', 'payer_differs', 'billing_admin_differs', 'demoted', 'no_user_graphs')
            UNION ALL
            SELECT NULL, g.graph_id, NULL, NULL, 'kuzu-standard', g.created_at FROM graphs g
            WHERE g.is_subgraph AND g.graph_name LIKE 'Lost subgraph %'
            """
        )
        self.run(
            """
            UPDATE _pool p SET n = s.n FROM (
                SELECT graph_id, row_number() OVER (ORDER BY graph_id) + (SELECT count(n) FROM _pool) AS n
                FROM _pool WHERE n IS NULL) s WHERE s.graph_id = p.graph_id;
            ALTER TABLE _pool ADD PRIMARY KEY (n);
            ANALYZE _pool
            """
        )
        # lost subgraphs (owner_i NULL): credits user = billing admin = the graph's created_by user
        self.run(
            """
            CREATE TEMP TABLE _alloc AS SELECT * FROM (VALUES
              ('kuzu-standard', 10000.00, 100), ('kuzu-large', 50000.00, 500), ('kuzu-xlarge', 200000.00, 2000))
              v(plan, monthly, storage)
            """
        )
        self.run(
            """
            INSERT INTO graph_credits (id, graph_id, user_id, current_balance, monthly_allocation, storage_limit_gb,
                                       storage_override_gb, auto_expand_enabled, storage_warning_threshold,
                                       billing_admin_id, last_allocation_date, created_at, updated_at)
            SELECT 'crd_' || pg_temp.ulid('crd', p.n), p.graph_id,
                   COALESCE(pg_temp.uid(p.owner_i), g.graph_metadata ->> 'created_by'), 0, a.monthly, a.storage,
                   CASE WHEN p.n % 40 = 0 THEN a.storage * 2 END, p.n % 25 = 0, 0.80,
                   COALESCE(pg_temp.uid(p.admin_i), g.graph_metadata ->> 'created_by'),
                   '2025-10-01 00:00:00+00', '2024-06-01 00:00:00+00', '2024-06-01 00:00:00+00'
            FROM _pool p JOIN _alloc a ON a.plan = p.plan JOIN graphs g ON g.graph_id = p.graph_id
            """
        )
        self.run(
            f"""
            INSERT INTO graph_credit_transactions (id, graph_credits_id, graph_id, transaction_type, amount,
                                                   description, idempotency_key, request_id, operation_id, user_id,
                                                   metadata, created_at)
            SELECT 'txn_' || pg_temp.ulid('txa', p.n), 'crd_' || pg_temp.ulid('crd', p.n), p.graph_id, 'allocation',
                   a.monthly, 'Initial credit allocation', 'initial_allocation_' || p.graph_id, NULL, NULL,
                   CASE WHEN p.n <= {p.ghost_user_transactions}
                        THEN 'user_' || pg_temp.b64('ghost-actor', p.n) ELSE gc.user_id END,
                   '{{"source": "graph_creation"}}', p.created_at AT TIME ZONE 'UTC'
            FROM _pool p JOIN _alloc a ON a.plan = p.plan JOIN graph_credits gc ON gc.graph_id = p.graph_id
            UNION ALL
            SELECT 'txn_' || pg_temp.ulid('txc', p.n * 10 + c), 'crd_' || pg_temp.ulid('crd', p.n), p.graph_id,
                   CASE WHEN c = 3 AND p.n % 7 = 0 THEN 'bonus' WHEN c = 3 AND p.n % 11 = 0 THEN 'refund'
                        ELSE 'consumption' END,
                   CASE WHEN c = 3 AND (p.n % 7 = 0 OR p.n % 11 = 0) THEN 25.00
                        ELSE -((1 + pg_temp.h('amt', p.n * 10 + c) % 5000) / 100.0)::numeric(10, 2) END,
                   'Query credits', NULL, 'req_' || (p.n * 10 + c), 'op_' || (p.n * 10 + c),
                   gc.user_id, NULL, (p.created_at AT TIME ZONE 'UTC') + c * interval '1 day'
            FROM _pool p JOIN graph_credits gc ON gc.graph_id = p.graph_id
            CROSS JOIN LATERAL generate_series(1, (pg_temp.h('ntx', p.n) % 4)::int) c
            """
        )

    # ---- updates, after the indexes exist ------------------------------------------------------------------------
    # (An UPDATE before CREATE INDEX leaves HOT chains that make PostgreSQL mark the new index ``indcheckxmin``:
    # unusable for any snapshot older than its creation, i.e. for a long time on a busy server.)

    def selections_and_balances(self) -> None:
        p = self.plan
        self.run(
            """
            UPDATE user_graphs ug SET is_selected = true FROM (
                SELECT DISTINCT ON (user_id) id FROM user_graphs ORDER BY user_id, created_at DESC, id
            ) s WHERE s.id = ug.id
            """
        )
        # ≤1 selected graph per user is app-enforced only: some users have two
        self.run(
            f"""
            UPDATE user_graphs ug SET is_selected = true FROM (
                SELECT DISTINCT ON (user_id) id, user_id FROM user_graphs
                WHERE NOT is_selected AND user_id IN (
                    SELECT user_id FROM user_graphs GROUP BY user_id HAVING count(*) >= 2
                    ORDER BY md5(user_id) LIMIT {p.multi_selected_users})
                ORDER BY user_id, id
            ) s WHERE s.id = ug.id
            """
        )
        # balance = Σ ledger, except for ledger_mismatch_pools pools (every k-th) where it is higher
        every = max(2, self.scalar("SELECT count(*) FROM _pool") // max(1, p.ledger_mismatch_pools))
        self.run(
            f"""
            UPDATE graph_credits gc SET current_balance = greatest(t.total, 0)
                + CASE WHEN p.n % {every} = 0 AND p.n / {every} <= {p.ledger_mismatch_pools} THEN 12.34 ELSE 0 END
            FROM (SELECT graph_credits_id, sum(amount) AS total FROM graph_credit_transactions GROUP BY 1) t, _pool p
            WHERE t.graph_credits_id = gc.id AND p.graph_id = gc.graph_id
            """
        )

    # ---- billing --------------------------------------------------------------------------------------------------

    def billing(self) -> None:
        p = self.plan
        gs = p.graph_subscriptions
        mult = _coprime_step(p.normal, 7919 % p.normal or 1)
        ur_step = self.repo_user_step
        # one row per subscription: kind, payer user index, resource, plan, status, created_at
        self.run(
            f"""
            CREATE TEMP TABLE _sub AS
            SELECT 'g' || j AS tag, x.owner_i AS payer_i, 'graph' AS resource_type, x.graph_id AS resource_id,
                   x.plan AS plan_name,
                   CASE WHEN j <= {p.canceled_replaced} THEN 'active'
                        WHEN j <= {p.canceled_replaced + p.legacy_pending_status} THEN 'pending'
                        WHEN pg_temp.h('sstatus', j) % 100 < 85 THEN 'active'
                        WHEN pg_temp.h('sstatus', j) % 100 < 91 THEN 'canceled'
                        WHEN pg_temp.h('sstatus', j) % 100 < 94 THEN 'past_due'
                        WHEN pg_temp.h('sstatus', j) % 100 < 96 THEN 'unpaid'
                        WHEN pg_temp.h('sstatus', j) % 100 < 98 THEN 'paused'
                        ELSE 'provisioning' END AS status,
                   x.created_at + interval '1 hour' AS created_at
            FROM generate_series(1, {gs}) j JOIN _g x ON x.g = 1 + ((j - 1)::bigint * {mult}) % {p.normal}
            UNION ALL
            SELECT 'p' || x.g, x.share_i, 'graph', x.graph_id, x.plan, 'active', x.created_at + interval '2 hours'
            FROM _g x WHERE x.kind = 'payer_differs'
            UNION ALL
            SELECT 'c' || j, x.share_i, 'graph', x.graph_id, x.plan, 'canceled', x.created_at - interval '30 days'
            FROM generate_series(1, {p.canceled_replaced}) j
            JOIN _g x ON x.g = 1 + ((j - 1)::bigint * {mult}) % {p.normal}
            UNION ALL
            SELECT 'r' || j, 1 + (j * {ur_step}) % {p.users}, 'repository',
                   (ARRAY['sec', 'industry', 'economic'])[1 + j % 3],
                   (ARRAY['starter', 'advanced', 'unlimited'])[1 + j % 3],
                   CASE WHEN j % 9 = 0 THEN 'canceled' ELSE 'active' END, timestamp '2024-03-01 00:00:00'
            FROM generate_series(1, {p.repository_subscriptions}) j
            UNION ALL
            SELECT 'k' || j, 1 + pg_temp.h('ckpayer', j) % {p.users}, 'graph', NULL, 'kuzu-standard',
                   CASE WHEN j % 2 = 0 THEN 'pending' ELSE 'pending_payment' END,
                   pg_temp.ts('ckcreated', j, '2025-11-01', 20)
            FROM generate_series(1, {p.pending_checkouts}) j
            """
        )
        self.run(
            """
            ALTER TABLE _sub ADD COLUMN n bigint;
            UPDATE _sub s SET n = o.n FROM (SELECT tag, row_number() OVER (ORDER BY tag) AS n FROM _sub) o
            WHERE o.tag = s.tag;
            ALTER TABLE _sub ADD PRIMARY KEY (n);
            ANALYZE _sub
            """
        )
        prices = (
            "CASE s.plan_name WHEN 'kuzu-standard' THEN 4900 WHEN 'kuzu-large' THEN 19900 WHEN 'kuzu-xlarge' "
            "THEN 49900 WHEN 'starter' THEN 2900 WHEN 'advanced' THEN 9900 ELSE 29900 END"
        )
        self.run(
            f"""
            INSERT INTO billing_subscriptions (id, billing_customer_user_id, resource_type, resource_id, plan_name,
                billing_interval, base_price_cents, stripe_subscription_id, stripe_product_id, stripe_price_id, status,
                started_at, current_period_start, current_period_end, canceled_at, ends_at, created_at, updated_at,
                payment_provider, provider_subscription_id, provider_customer_id, subscription_metadata)
            SELECT 'bsub_' || pg_temp.b64('bsub', s.n), pg_temp.uid(s.payer_i), s.resource_type, s.resource_id,
                   s.plan_name, 'monthly', {prices},
                   CASE WHEN s.resource_id IS NOT NULL AND s.n % 5 < 3 THEN 'sub_' || pg_temp.b64('stripesub', s.n) END,
                   CASE WHEN s.n % 5 < 3 THEN 'prod_' || s.plan_name END,
                   CASE WHEN s.n % 5 < 3 THEN 'price_' || s.plan_name END,
                   s.status,
                   CASE WHEN s.status NOT IN ('pending', 'pending_payment') THEN s.created_at END,
                   CASE WHEN s.status NOT IN ('pending', 'pending_payment') THEN timestamp '2025-11-01' END,
                   CASE WHEN s.status NOT IN ('pending', 'pending_payment') THEN timestamp '2025-12-01' END,
                   CASE WHEN s.status = 'canceled' THEN s.created_at + interval '60 days' END,
                   CASE WHEN s.status = 'canceled' THEN s.created_at + interval '60 days' END,
                   s.created_at, s.created_at + interval '1 day',
                   CASE WHEN s.resource_id IS NULL OR s.n % 5 < 3 THEN 'stripe' ELSE 'invoice' END,
                   CASE WHEN s.resource_id IS NULL THEN 'cs_' || pg_temp.b64('checkout', s.n)
                        WHEN s.n % 5 < 3 THEN 'sub_' || pg_temp.b64('stripesub', s.n) END,
                   CASE WHEN s.resource_id IS NULL OR s.n % 5 < 3 THEN 'cus_' || pg_temp.b64('cus', s.payer_i) END,
                   CASE WHEN s.resource_id IS NULL
                        THEN jsonb_build_object('resource_config', jsonb_build_object('graph_name', 'Pending ' || s.n,
                                                                                       'graph_tier', s.plan_name))
                        ELSE '{{}}'::jsonb END
            FROM _sub s
            """
        )
        # customers: every payer, plus extra users that never subscribed
        self.run(
            f"""
            INSERT INTO billing_customers (user_id, stripe_customer_id, has_payment_method, default_payment_method_id,
                invoice_billing_enabled, billing_email, billing_contact_name, payment_terms, created_at, updated_at)
            SELECT pg_temp.uid(u), CASE WHEN u % 7 <> 0 THEN 'cus_' || pg_temp.b64('cus', u) END, u % 7 <> 0,
                   CASE WHEN u % 7 <> 0 THEN 'pm_' || pg_temp.b64('pm', u) END, u % 7 = 0,
                   CASE WHEN u % 3 = 0 THEN 'billing' || u || '@example.com' END,
                   CASE WHEN u % 3 = 0 THEN 'Billing ' || u END,
                   (ARRAY['net_30', 'net_30', 'net_15', 'net_60'])[1 + u % 4], '2024-01-01', '2024-01-01'
            FROM (SELECT DISTINCT payer_i AS u FROM _sub
                  UNION SELECT {p.users // 2} + j FROM generate_series(1, {p.extra_customers}) j) x
            """
        )
        # invoices: over the invoiceable subscriptions, numbered INV-YYYY-MM-NNNN per month
        self.run(
            f"""
            CREATE TEMP TABLE _inv AS
            WITH subs AS (
                SELECT row_number() OVER (ORDER BY n) AS k, n, payer_i, resource_type, resource_id, plan_name
                FROM _sub WHERE status NOT IN ('pending', 'pending_payment', 'provisioning')
            ), cnt AS (SELECT count(*) AS c FROM subs)
            SELECT i, s.n AS sub_n, s.payer_i, s.resource_type, s.resource_id, s.plan_name,
                   date_trunc('month', timestamp '2025-11-01' - ((i - 1) / cnt.c) * interval '1 month'
                                       - (pg_temp.h('invmonth', i) % 3) * interval '1 month') AS period_start
            FROM generate_series(1, {p.invoices}) i CROSS JOIN cnt JOIN subs s ON s.k = 1 + (i - 1) % cnt.c
            """
        )
        self.run(
            """
            INSERT INTO billing_invoices (id, billing_customer_user_id, invoice_number, period_start, period_end,
                subtotal_cents, tax_cents, discount_cents, total_cents, status, stripe_invoice_id, sent_at, due_date,
                paid_at, payment_method, payment_reference, notes, created_at, updated_at)
            SELECT 'binv_' || pg_temp.b64('binv', v.i), pg_temp.uid(v.payer_i),
                   'INV-' || to_char(v.period_start, 'YYYY-MM') || '-' ||
                     lpad(v.seq::text, greatest(4, length(v.seq::text)), '0'),
                   v.period_start, v.period_start + interval '1 month', v.amount, 0,
                   CASE WHEN v.i % 50 = 0 THEN 500 ELSE 0 END,
                   v.amount - CASE WHEN v.i % 50 = 0 THEN 500 ELSE 0 END, v.status,
                   CASE WHEN v.i % 10 < 7 THEN 'in_' || pg_temp.b64('stripeinv', v.i) END,
                   v.period_start + interval '1 month', v.period_start + interval '1 month 30 days',
                   CASE WHEN v.status = 'paid' THEN v.period_start + interval '1 month 2 days' END,
                   CASE WHEN v.status = 'paid' THEN (ARRAY['card', 'ach'])[1 + v.i % 2] END,
                   CASE WHEN v.status = 'paid' THEN 'ch_' || pg_temp.b64('charge', v.i) END,
                   CASE WHEN v.i % 97 = 0 THEN 'manual adjustment' END,
                   v.period_start + interval '1 month', v.period_start + interval '1 month 2 days'
            FROM (
                SELECT x.*, row_number() OVER (PARTITION BY x.period_start ORDER BY x.i) AS seq,
                       CASE x.plan_name WHEN 'kuzu-standard' THEN 4900 WHEN 'kuzu-large' THEN 19900
                            WHEN 'kuzu-xlarge' THEN 49900 WHEN 'starter' THEN 2900 WHEN 'advanced' THEN 9900
                            ELSE 29900 END AS amount,
                       CASE WHEN pg_temp.h('istatus', x.i) % 100 < 85 THEN 'paid'
                            WHEN pg_temp.h('istatus', x.i) % 100 < 92 THEN 'open'
                            WHEN pg_temp.h('istatus', x.i) % 100 < 95 THEN 'draft'
                            WHEN pg_temp.h('istatus', x.i) % 100 < 98 THEN 'void' ELSE 'uncollectible' END AS status
                FROM _inv x
            ) v
            """
        )
        self.run(
            """
            INSERT INTO billing_invoice_line_items (id, invoice_id, subscription_id, resource_type, resource_id,
                description, quantity, unit_price_cents, amount_cents, period_start, period_end, line_metadata,
                created_at)
            SELECT 'bli_' || pg_temp.b64('bli', v.i), 'binv_' || pg_temp.b64('binv', v.i),
                   'bsub_' || pg_temp.b64('bsub', v.sub_n), v.resource_type, v.resource_id,
                   v.plan_name || ' subscription', 1, bi.subtotal_cents, bi.subtotal_cents, bi.period_start,
                   bi.period_end, json_build_object('plan', v.plan_name), bi.created_at
            FROM _inv v JOIN billing_invoices bi ON bi.id = 'binv_' || pg_temp.b64('binv', v.i)
            UNION ALL
            SELECT 'bli_' || pg_temp.b64('bli2', v.i), 'binv_' || pg_temp.b64('binv', v.i), NULL, v.resource_type,
                   v.resource_id, 'Storage overage', 3, 100, 300, bi.period_start, bi.period_end, NULL, bi.created_at
            FROM _inv v JOIN billing_invoices bi ON bi.id = 'binv_' || pg_temp.b64('binv', v.i)
            WHERE v.i % 10 = 0 AND v.resource_type = 'graph'
            """
        )
        self.run(
            f"""
            INSERT INTO billing_audit_logs (id, event_type, event_timestamp, billing_customer_user_id, subscription_id,
                invoice_id, event_data, description, actor_user_id, actor_type, actor_ip, created_at)
            SELECT 'baud_' || pg_temp.b64('baud-s', s.n), 'subscription_created', s.created_at, pg_temp.uid(s.payer_i),
                   'bsub_' || pg_temp.b64('bsub', s.n), NULL, json_build_object('plan', s.plan_name),
                   'Subscription created', pg_temp.uid(s.payer_i), 'user', '10.1.0.' || (s.n % 200), s.created_at
            FROM _sub s
            UNION ALL
            SELECT 'baud_' || pg_temp.b64('baud-i', v.i), 'invoice_paid', bi.paid_at, bi.billing_customer_user_id,
                   NULL, bi.id, json_build_object('amount', bi.total_cents), 'Invoice paid', NULL, 'system', NULL,
                   bi.paid_at
            FROM _inv v JOIN billing_invoices bi ON bi.id = 'binv_' || pg_temp.b64('binv', v.i)
            WHERE bi.status = 'paid' AND v.i % 3 = 0
            UNION ALL
            SELECT 'baud_' || pg_temp.b64('baud-a', j), 'admin_override', timestamp '2025-05-05 05:05:05', NULL, NULL,
                   NULL, json_build_object('note', 'manual credit'), 'Admin override',
                   pg_temp.uid(1 + pg_temp.h('admin', j) % {p.users}), 'admin', '10.9.9.9',
                   timestamp '2025-05-05 05:05:05'
            FROM generate_series(1, {p.admin_override_audits}) j
            UNION ALL
            SELECT 'baud_' || pg_temp.b64('baud-w', j), 'webhook_received', timestamp '2025-04-04 04:04:04', NULL, NULL,
                   NULL, json_build_object('event', 'evt_' || j), 'Webhook received (unmatched)', NULL, 'system', NULL,
                   timestamp '2025-04-04 04:04:04'
            FROM generate_series(1, {p.audit_without_reference}) j
            """
        )

    # ---- usage ----------------------------------------------------------------------------------------------------

    def usage(self) -> None:
        p = self.plan
        hours = p.snapshot_hours
        # E7: hourly storage snapshots on shared graphs, one per member and hour
        self.run(
            f"""
            CREATE TEMP TABLE _snap AS
            SELECT ug.user_id, ug.graph_id, g.graph_tier, h
            FROM (SELECT graph_id FROM user_graphs GROUP BY graph_id HAVING count(*) >= 2
                  ORDER BY md5(graph_id) LIMIT {p.snapshot_graphs}) sg
            JOIN user_graphs ug ON ug.graph_id = sg.graph_id JOIN graphs g ON g.graph_id = sg.graph_id
            CROSS JOIN generate_series(1, {hours}) h
            """
        )
        snaps = self.scalar("SELECT count(*) FROM _snap")
        others = p.usage_rows - snaps
        if others < p.usage_unknown_refs:
            raise ValueError(f"usage_rows={p.usage_rows} is smaller than the {snaps} storage snapshots")
        cols = (
            "id, user_id, graph_id, event_type, operation_type, graph_tier, instance_id, region, storage_bytes, "
            "storage_gb, storage_delta_gb, credits_consumed, base_credit_cost, duration_ms, memory_mb, cpu_percent, "
            "request_size_kb, response_size_kb, status_code, cached_operation, storage_overage_gb, "
            "estimated_cost_cents, error_type, error_message, metadata, user_agent, ip_address, recorded_at, "
            "billing_year, billing_month, billing_day, billing_hour, files_storage_gb, tables_storage_gb, "
            "graphs_storage_gb, subgraphs_storage_gb"
        )
        # storage snapshot rows (the collector falls back to 'standard' when it finds no tier: every 50th row)
        self.run(
            f"""
            INSERT INTO graph_usage_tracking ({cols})
            SELECT 'usg_' || pg_temp.ulid('usnap', n), s.user_id, s.graph_id, 'storage_snapshot', NULL,
                   CASE WHEN n % 50 = 0 THEN 'standard' ELSE s.graph_tier END, 'default', 'us-east-1',
                   (1 + pg_temp.h('sbytes', n) % 1000) * 1048576, (1 + pg_temp.h('sbytes', n) % 1000) / 1024.0, 0,
                   NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, 0, 0, NULL, NULL, NULL, 'collector', NULL,
                   t, extract(year FROM t)::int, extract(month FROM t)::int, extract(day FROM t)::int,
                   extract(hour FROM t)::int, 0.1, 0.2, 0.3, 0
            FROM (SELECT row_number() OVER (ORDER BY graph_id, user_id, h) AS n, * FROM _snap) s,
                 LATERAL (SELECT timestamp '2025-11-20 00:00:00' + s.h * interval '1 hour') tt(t)
            """
        )
        normal_last = p.ranges()["demoted"][1]
        self.run(
            f"""
            INSERT INTO graph_usage_tracking ({cols})
            SELECT 'usg_' || pg_temp.ulid('use', n),
                   CASE WHEN n <= {p.usage_unknown_refs} THEN 'user_' || pg_temp.b64('gone-user', n)
                        ELSE pg_temp.uid(x.owner_i) END,
                   CASE WHEN n <= {p.usage_unknown_refs} AND n % 2 = 0 THEN 'kg' || substr(md5('gone' || n), 1, 16)
                        ELSE x.graph_id END,
                   e.event_type, e.operation_type, x.tier, 'default', 'us-east-1', NULL, NULL, NULL,
                   CASE WHEN e.event_type IN ('query_execution', 'credit_consumption', 'agent_call', 'mcp_call')
                        THEN ((1 + n % 400) / 100.0)::numeric(10, 2) END,
                   CASE WHEN e.event_type = 'query_execution' THEN 1.00 END,
                   (5 + pg_temp.h('dur', n) % 2000)::int, NULL, NULL, 1.5, 12.25,
                   CASE WHEN n % 100 = 0 THEN 500 ELSE 200 END,
                   n % 3 = 0, NULL, NULL, CASE WHEN n % 100 = 0 THEN 'timeout' END,
                   CASE WHEN n % 100 = 0 THEN 'query timed out' END,
                   CASE WHEN n % 4 = 0 THEN '{{"endpoint": "/v1/graphs/query"}}' END, 'robosystems-client/0.2', NULL,
                   t, extract(year FROM t)::int, extract(month FROM t)::int, extract(day FROM t)::int,
                   extract(hour FROM t)::int, NULL, NULL, NULL, NULL
            FROM generate_series(1, {others}) n
            JOIN _g x ON x.g = 1 + pg_temp.h('ugraph', n) % {normal_last}
            CROSS JOIN LATERAL (SELECT (ARRAY['api_call', 'query_execution', 'query_execution', 'mcp_call',
                                              'agent_call', 'credit_consumption', 'import_operation'])
                                       [1 + pg_temp.h('uevent', n) % 7] AS event_type,
                                       (ARRAY['read', 'write', 'read', 'read', 'agent', 'read', 'import'])
                                       [1 + pg_temp.h('uevent', n) % 7] AS operation_type) e
            CROSS JOIN LATERAL (SELECT pg_temp.ts('urec', n, '2025-05-01', 200) AS t) tx
            """
        )

    # ---- manifest -------------------------------------------------------------------------------------------------

    def manifest(self) -> dict[str, Any]:
        p = self.plan
        counts = {t: self.scalar(f"SELECT count(*) FROM {t}") for t in LEGACY_TABLES}
        design = {
            # blockers
            "case_duplicate_emails": p.case_dup_pairs,
            "orphan_graphs": p.orphan_graphs,
            # E1
            "graphs_multiple_admins": self.scalar(
                "SELECT count(*) FROM (SELECT g FROM _ug WHERE role = 'admin' GROUP BY g HAVING count(*) > 1) x"
            ),
            "graphs_ownership_disagreement": self.scalar(
                "SELECT count(*) FROM (SELECT g FROM _ug WHERE role = 'admin' GROUP BY g HAVING count(*) > 1 "
                "UNION SELECT g FROM _g WHERE kind IN ('payer_differs', 'billing_admin_differs')) x"
            ),
            "payer_differs": p.payer_differs,
            "billing_admin_differs": p.billing_admin_differs,
            # E2
            "graphs_without_admin": p.demoted_admin + p.no_user_graphs + p.member_only + p.orphan_graphs,
            "graphs_owner_from_member_grant": p.member_only,
            "demoted_admin": p.demoted_admin,
            "subgraphs": p.subgraphs + p.subgraphs_parent_missing,
            "subgraphs_parent_missing": p.subgraphs_parent_missing,
            "repositories": p.repositories,
            # E3
            "graphs_without_grants": p.no_user_graphs + p.orphan_graphs - p.orphans_with_viewer,
            "graphs_without_credits": p.no_credits + p.member_only + p.orphan_graphs,
            "graphs_without_subscription": self.scalar(
                "SELECT count(*) FROM _g x WHERE NOT EXISTS (SELECT 1 FROM _sub s WHERE s.resource_id = x.graph_id)"
            ),
            # E4
            "users_without_graphs": self.scalar(f"SELECT {p.users} - count(DISTINCT user_i) FROM _ug"),
            "users_without_limits": p.users_without_limits,
            # E5 (besides the blocker): every address with an upper-case letter is lower-cased
            "mixed_case_emails": self.scalar(
                f"SELECT count(*) FROM generate_series(1, {p.users - p.case_dup_pairs}) i WHERE i % 97 = 0"
            )
            + p.case_dup_pairs,
            # E6
            "inactive_users": self.scalar(
                f"SELECT count(*) FROM generate_series(1, {p.users}) i WHERE pg_temp.inactive(i)"
            ),
            "inactive_users_with_graphs": self.scalar(
                "SELECT count(DISTINCT user_i) FROM _ug WHERE pg_temp.inactive(user_i)"
            ),
            # E7
            "shared_graph_storage_snapshot_hours": p.snapshot_graphs * p.snapshot_hours,
            "duplicate_storage_snapshots": self.scalar("SELECT count(*) FROM _snap")
            - p.snapshot_graphs * p.snapshot_hours,
            # E8
            "repository_subscriptions": p.repository_subscriptions,
            "user_repository_rows": p.user_repository_rows,
            # E9
            "legacy_tier_graphs": p.legacy_tier_graphs,
            "legacy_tier_usage_rows": self.scalar(
                "SELECT count(*) FROM graph_usage_tracking WHERE graph_tier IN ('standard', 'enterprise', 'premium', "
                "'professional')"
            ),
            "generic_graphs_with_larger_plan": self.scalar(
                "SELECT count(*) FROM _g WHERE graph_type = 'generic' AND plan <> tier"
            ),
            # E10 / E11
            "user_repository_uppercase_enum_rows": p.user_repository_rows,
            "orphan_enum_subscriptionstatus": 1,
            # billing / ledger shapes
            "pending_checkouts": p.pending_checkouts,
            "legacy_pending_status": p.legacy_pending_status + p.pending_checkouts // 2,
            "canceled_replaced": p.canceled_replaced,
            "credit_pools_ledger_mismatch": self.scalar(
                "SELECT count(*) FROM graph_credits gc LEFT JOIN (SELECT graph_credits_id, sum(amount) s FROM "
                "graph_credit_transactions GROUP BY 1) t ON t.graph_credits_id = gc.id "
                "WHERE gc.current_balance <> COALESCE(t.s, 0)"
            ),
            "credit_pools_planted_mismatch": p.ledger_mismatch_pools,
            "audit_logs_without_reference": p.audit_without_reference,
            # orphaned references
            "orphan_user_tokens": p.orphan_tokens,
            "usage_rows_unknown_user": p.usage_unknown_refs,
            "usage_rows_unknown_graph": p.usage_unknown_refs // 2,
            "credit_transactions_unknown_user": p.ghost_user_transactions,
            "users_with_several_selected_graphs": p.multi_selected_users,
            "odd_role_grants": p.odd_role_grants,
        }
        return {"row_counts": counts, "edge_cases": design}


def generate(url: str, plan: Plan, *, migrate: bool = True) -> Result:
    """Migrate ``url`` to the legacy baseline (when ``migrate``) and fill it according to ``plan``."""
    plan.validate()
    result = Result(plan=plan, database_url=url)
    if migrate:
        from robosystems import migrations

        started = time.perf_counter()
        migrations.upgrade(LEGACY_REVISION, url)
        result.seconds["baseline_schema"] = round(time.perf_counter() - started, 2)
    conninfo = _plain(url)
    with psycopg.connect(conninfo, autocommit=False) as conn:
        conn.execute(b"SET synchronous_commit = off")
        conn.execute(b"SET maintenance_work_mem = '256MB'")
        conn.execute(b"SET work_mem = '64MB'")
        conn.execute(b"SET timezone = 'UTC'")
        version = conn.execute(b"SELECT version_num FROM alembic_version").fetchone()
        if version is None or version[0] != LEGACY_REVISION:
            raise RuntimeError(f"database is at {version}, not at the legacy baseline {LEGACY_REVISION}")
        if conn.execute(b"SELECT count(*) FROM users").fetchone() != (0,):
            raise RuntimeError("the legacy database is not empty")
        gen = Generator(conn, plan)
        total = time.perf_counter()
        gen.helpers()
        recreate: list[str] = []

        def drop() -> None:
            recreate.extend(gen.drop_secondary_objects())

        gen.step("drop_indexes_and_fks", drop)
        gen.step("design", gen.design)
        gen.step("users_keys_tokens_limits", gen.users)
        gen.step("graphs_grants_repositories", gen.graphs)
        gen.step("credits_and_ledger", gen.credits)
        gen.step("billing", gen.billing)
        gen.step("usage", gen.usage)

        def rebuild() -> None:
            for statement in recreate:
                gen.run(statement)

        gen.step("recreate_indexes_and_fks", rebuild)
        gen.step("selections_and_balances", gen.selections_and_balances)
        conn.commit()
        conn.autocommit = True
        started = time.perf_counter()
        conn.execute(b"ANALYZE")
        gen.seconds["analyze"] = round(time.perf_counter() - started, 2)
        conn.autocommit = False
        result.manifest = gen.manifest()
        conn.rollback()
        gen.seconds["total"] = round(time.perf_counter() - total, 2)
        result.seconds.update(gen.seconds)
    return result


def _plain(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    return f"{scheme.split('+')[0]}{sep}{rest}" if sep else url


def create_database(admin_url: str, name: str | None = None) -> str:
    from sqlalchemy.engine import make_url

    name = name or f"bench_legacy_{secrets.token_hex(4)}"
    with psycopg.connect(_plain(admin_url), autocommit=True) as conn:
        conn.execute(pgsql.SQL("CREATE DATABASE {}").format(pgsql.Identifier(name)))
    return make_url(_plain(admin_url)).set(database=name).render_as_string(hide_password=False)


def drop_database(admin_url: str, url: str) -> None:
    from sqlalchemy.engine import make_url

    name = make_url(_plain(url)).database
    with psycopg.connect(_plain(admin_url), autocommit=True) as conn:
        conn.execute(pgsql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(pgsql.Identifier(str(name))))


def print_manifest(result: Result) -> None:
    manifest = result.manifest
    print(f"\nlegacy database: {result.database_url}")
    print(f"plan: scale={result.plan.scale} seed={result.plan.seed} blockers={result.plan.blockers}")
    print("\nrow counts")
    for table, n in manifest["row_counts"].items():
        print(f"  {table:<30} {n:>12,}")
    print("\nplanted edge cases (design counts)")
    for case, n in manifest["edge_cases"].items():
        print(f"  {case:<40} {n:>10,}")
    print("\ntimings (s)")
    for step, secs in result.seconds.items():
        print(f"  {step:<30} {secs:>8.2f}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    target = ap.add_mutually_exclusive_group(required=True)
    target.add_argument("--url", help="an EMPTY database (migrated to the legacy baseline here)")
    target.add_argument("--create", nargs="?", const="", metavar="NAME", help="create a new database (default name)")
    ap.add_argument("--admin-url", default=os.environ.get("BENCH_ADMIN_URL", DEFAULT_ADMIN_URL))
    ap.add_argument("--scale", type=float, default=1.0, help="1.0 = 100k users, 150k graphs … (default 1.0)")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--no-blockers", action="store_true", help="no case-duplicate emails, no ownerless graphs")
    ap.add_argument("--manifest", type=Path, help="also write the manifest (JSON) here")
    ap.add_argument("--json", action="store_true", help="print the manifest as JSON instead of tables")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    plan = Plan.for_scale(args.scale, args.seed, blockers=not args.no_blockers)
    url = args.url or create_database(args.admin_url, args.create or None)
    _log(f"generating into {url} (scale {args.scale}, seed {args.seed})")
    result = generate(url, plan)
    if args.manifest:
        args.manifest.parent.mkdir(parents=True, exist_ok=True)
        args.manifest.write_text(json.dumps(result.as_dict(), indent=2))
    if args.json:
        print(json.dumps(result.as_dict(), indent=2))
    else:
        print_manifest(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
