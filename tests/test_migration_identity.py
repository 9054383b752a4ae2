"""Revision ``b3c1f0e2a9d4`` (org identity) on empty and on seeded legacy databases.

Every test works on its own fresh database from ``make_database()`` (never the shared, truncated one), migrates it
with :mod:`robosystems.migrations` exactly as the CLI does, and inspects the result through plain SQL and the catalogs.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, create_engine, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.pool import NullPool

from robosystems import migrations
from robosystems.app import create_app
from robosystems.db import sync_url
from robosystems.models import Base
from tests import legacy_seed as seed
from tests.conftest import base_settings

BASELINE = "7a89a1bfab0c"
# The revision right before identity: the legacy baseline plus the pre-upgrade snapshot (a1b2c3d4e5f6), which adds its
# own tables but leaves every legacy table as it is.
LEGACY = "a1b2c3d4e5f6"
IDENTITY = "b3c1f0e2a9d4"
DEFAULT_LIMIT = 100
ULID_RE = "[0-9A-HJKMNP-TV-Z]{26}"

# Legacy tables whose rows the identity revision must leave exactly as they are.
UNTOUCHED_TABLES = (
    "graphs",
    "user_graphs",
    "user_repository",
    "graph_usage_tracking",
    "graph_credits",
    "graph_credit_transactions",
    "billing_customers",
    "billing_subscriptions",
    "billing_invoices",
    "billing_invoice_line_items",
    "billing_audit_logs",
)
# Legacy ``timestamp without time zone`` columns that the revision turns into ``timestamptz``.
TZ_COLUMNS = {
    "users": ("created_at", "updated_at"),
    "user_api_keys": ("created_at", "updated_at", "last_used_at", "expires_at"),
    "user_tokens": ("expires_at", "used_at", "created_at"),
}
LEGACY_EXTRA_INDEXES = {
    ("user_api_keys", "idx_user_api_keys_hash_active"),
    ("user_api_keys", "idx_user_api_keys_last_used"),
    ("user_api_keys", "idx_user_api_keys_prefix_active"),
    ("user_tokens", "idx_expired_unused"),
    ("user_tokens", "idx_expires"),
}
NEW_TABLES = ("orgs", "org_users", "org_limits", "auth_sessions", "security_audit_events", "mail_outbox")
IDENTITY_TABLES = (*TZ_COLUMNS, *NEW_TABLES)


# --------------------------------------------------------------------------------------------------------------------
# fixtures and helpers
# --------------------------------------------------------------------------------------------------------------------


@pytest.fixture
def engine_for() -> Iterator[Callable[[str], Engine]]:
    """``engine_for(url)`` -> a NullPool engine on that database, disposed after the test."""
    engines: list[Engine] = []

    def make(url: str) -> Engine:
        engine = create_engine(sync_url(url), poolclass=NullPool)
        engines.append(engine)
        return engine

    yield make
    for engine in engines:
        engine.dispose()


@pytest.fixture
def legacy_url(make_database: Callable[[], str]) -> str:
    """A fresh database at the legacy baseline, no rows."""
    url = make_database()
    migrations.upgrade(LEGACY, url)
    return url


def _version(engine: Engine) -> str | None:
    with engine.connect() as conn:
        if conn.execute(text("SELECT to_regclass('public.alembic_version')")).scalar() is None:
            return None
        return conn.execute(text("SELECT version_num FROM alembic_version")).scalar()


def _exists(engine: Engine, table: str) -> bool:
    with engine.connect() as conn:
        return conn.execute(text("SELECT to_regclass(:t)"), {"t": f"public.{table}"}).scalar() is not None


def _rows(engine: Engine, table: str, key: str = "id") -> dict[str, dict[str, Any]]:
    with engine.connect() as conn:
        return {row[key]: dict(row) for row in conn.execute(text(f"SELECT * FROM {table}")).mappings()}


def _table_content(engine: Engine, tables: tuple[str, ...]) -> dict[str, list[str]]:
    """Every row of each table as JSON text, sorted: equal content <=> equal lists."""
    with engine.connect() as conn:
        return {
            table: sorted(conn.execute(text(f"SELECT row_to_json(t)::text FROM {table} t")).scalars())
            for table in tables
        }


def _column_type(engine: Engine, table: str, column: str) -> str:
    with engine.connect() as conn:
        return str(
            conn.execute(
                text(
                    "SELECT data_type FROM information_schema.columns "
                    "WHERE table_schema = 'public' AND table_name = :t AND column_name = :c"
                ),
                {"t": table, "c": column},
            ).scalar_one()
        )


def schema_fingerprint(engine: Engine) -> dict[str, Any]:
    """Everything a revision can create in ``public`` (alembic_version excluded), as comparable sets."""
    queries = {
        "columns": (
            "SELECT table_name, column_name, data_type, is_nullable, coalesce(column_default, ''), "
            "coalesce(character_maximum_length, -1) FROM information_schema.columns "
            "WHERE table_schema = 'public' AND table_name <> 'alembic_version'"
        ),
        "constraints": (
            "SELECT c.conrelid::regclass::text, c.conname, c.contype::text, pg_get_constraintdef(c.oid) "
            "FROM pg_constraint c WHERE c.connamespace = 'public'::regnamespace "
            "AND c.conrelid::regclass::text <> 'alembic_version'"
        ),
        "indexes": (
            "SELECT tablename, indexname, indexdef FROM pg_indexes "
            "WHERE schemaname = 'public' AND tablename <> 'alembic_version'"
        ),
        "types": (
            "SELECT t.typname, string_agg(e.enumlabel, ',' ORDER BY e.enumsortorder) FROM pg_type t "
            "JOIN pg_enum e ON e.enumtypid = t.oid WHERE t.typnamespace = 'public'::regnamespace GROUP BY t.typname"
        ),
        "functions": "SELECT proname FROM pg_proc WHERE pronamespace = 'public'::regnamespace",
        "triggers": (
            "SELECT tgrelid::regclass::text, tgname, pg_get_triggerdef(oid) FROM pg_trigger WHERE NOT tgisinternal"
        ),
        "sequences": "SELECT sequencename FROM pg_sequences WHERE schemaname = 'public'",
        "views": "SELECT viewname FROM pg_views WHERE schemaname = 'public'",
    }
    with engine.connect() as conn:
        return {name: {tuple(row) for row in conn.execute(text(sql))} for name, sql in queries.items()}


def _seed(conn: Connection) -> dict[str, Any]:
    """``seed_legacy_sample`` plus users/keys/tokens for the identity edge cases."""
    sample = seed.seed_legacy_sample(conn)
    now = seed.utcnow_naive()
    extra_users = {
        # mixed case with stray whitespace (direct SQL inserts were never stripped), no user_limits
        "frank": seed.insert_user(conn, email="  Frank.Padded@Example.COM ", name="Frank Padded"),
        # inactive, unverified, mixed case, no user_limits, microsecond timestamps
        "grace": seed.insert_user(
            conn,
            email="Grace.Inactive@Example.com",
            name="Grace Inactive",
            is_active=False,
            email_verified=False,
            created_at=datetime(2021, 3, 4, 5, 6, 7, 123456),
        ),
        # user_limits 0: a real value that must not fall back to the default
        "heidi": seed.insert_user(
            conn, email="heidi@example.com", name="Heidi Zero", created_at=datetime(2020, 1, 1, 0, 0, 0, 1)
        ),
        # a name longer than an org name may be
        "lenny": seed.insert_user(conn, email="LENNY@EXAMPLE.COM", name="L" * 250),
    }
    seed.insert_user_limits(conn, extra_users["heidi"], 0)
    seed.insert_user_limits(conn, extra_users["lenny"], 7)
    users = sample["users"]
    assert isinstance(users, dict)
    seed.insert_api_key(conn, users["bob"], seed.new_api_key(), name="bob old key", is_active=False)
    seed.insert_api_key(
        conn,
        extra_users["grace"],
        seed.new_api_key(),
        name="grace expired key",
        description="expired",
        expires_at=now - timedelta(days=3),
        last_used_at=now - timedelta(days=4),
    )
    seed.insert_user_token(
        conn,
        extra_users["grace"],
        "email_verification",
        "grace-verify-token",
        now - timedelta(days=1),
        used_at=now - timedelta(days=2),
        user_agent="legacy-agent/1.0",
    )
    sample["extra_users"] = extra_users
    return sample


def _seeded_legacy(engine: Engine) -> dict[str, Any]:
    with engine.begin() as conn:
        return _seed(conn)


def _legacy_state(engine: Engine) -> dict[str, Any]:
    return {
        "users": _rows(engine, "users"),
        "user_limits": _rows(engine, "user_limits", key="user_id"),
        "user_api_keys": _rows(engine, "user_api_keys"),
        "user_tokens": _rows(engine, "user_tokens"),
        "untouched": _table_content(engine, UNTOUCHED_TABLES),
        "schema": schema_fingerprint(engine),
    }


def _as_utc(value: datetime | None) -> datetime | None:
    return None if value is None else value.replace(tzinfo=UTC)


def _assert_tz_converted(table: str, before: dict[str, Any], after: dict[str, Any]) -> None:
    for column in TZ_COLUMNS[table]:
        assert before[column] is None or before[column].tzinfo is None, (table, column)
        assert after[column] is None or after[column].tzinfo is not None, (table, column)
        assert after[column] == _as_utc(before[column]), (table, column, before[column], after[column])


def _limits(engine: Engine) -> dict[str, int]:
    """personal user id -> org_limits.max_graphs of that user's personal org."""
    with engine.connect() as conn:
        rows = conn.execute(
            text("SELECT o.personal_user_id, l.max_graphs FROM org_limits l JOIN orgs o ON o.id = l.org_id")
        ).all()
    return {row.personal_user_id: row.max_graphs for row in rows}


def _personal_orgs(engine: Engine) -> dict[str, dict[str, Any]]:
    return _rows(engine, "orgs", key="personal_user_id")


# --------------------------------------------------------------------------------------------------------------------
# 1. empty database: round trips and stairway
# --------------------------------------------------------------------------------------------------------------------


def test_empty_db_upgrade_downgrade_base_upgrade(
    make_database: Callable[[], str], engine_for: Callable[[str], Engine]
) -> None:
    url = make_database()
    engine = engine_for(url)
    empty = schema_fingerprint(engine)

    head_revision = ScriptDirectory.from_config(migrations.alembic_config(url)).get_current_head()
    migrations.upgrade("head", url)
    head = schema_fingerprint(engine)
    assert _version(engine) == head_revision
    assert all(_exists(engine, table) for table in NEW_TABLES)
    assert not _exists(engine, "user_limits")

    migrations.downgrade("base", url)
    assert _version(engine) is None
    assert schema_fingerprint(engine) == empty

    migrations.upgrade("head", url)
    assert _version(engine) == head_revision
    assert schema_fingerprint(engine) == head


def test_stairway_every_revision_up_down_up(
    make_database: Callable[[], str], engine_for: Callable[[str], Engine]
) -> None:
    """One step up, one step down (back to exactly the previous schema), up again, for every revision in the chain."""
    url = make_database()
    engine = engine_for(url)
    script = ScriptDirectory.from_config(migrations.alembic_config(url))
    revisions = list(reversed(list(script.walk_revisions("base", "heads"))))
    assert [r.revision for r in revisions[:3]] == [BASELINE, LEGACY, IDENTITY]

    previous = schema_fingerprint(engine)
    for rev in revisions:
        migrations.upgrade(rev.revision, url)
        assert _version(engine) == rev.revision
        upgraded = schema_fingerprint(engine)

        down = rev.down_revision
        migrations.downgrade("base" if down is None else down if isinstance(down, str) else "-1", url)
        assert schema_fingerprint(engine) == previous, f"downgrade of {rev.revision} does not restore the schema"

        migrations.upgrade(rev.revision, url)
        assert _version(engine) == rev.revision
        assert schema_fingerprint(engine) == upgraded, f"re-upgrade of {rev.revision} differs from the first"
        previous = upgraded


def test_head_schema_matches_the_models(make_database: Callable[[], str], engine_for: Callable[[str], Engine]) -> None:
    """For the tables this revision creates or reshapes, the migrated schema has the columns, constraints and indexes
    that ``Base.metadata.create_all`` gives (so the naming convention is not applied twice to a constraint name).

    The three legacy tables keep their legacy primary/foreign key names (``users_pkey`` …) and extra legacy indexes;
    for those keys only the definition is compared.
    """
    migrated_url = make_database()
    migrations.upgrade("head", migrated_url)
    migrated = engine_for(migrated_url)
    modelled = engine_for(make_database())
    Base.metadata.create_all(modelled)
    tables = set(IDENTITY_TABLES) & set(Base.metadata.tables)
    assert tables == set(IDENTITY_TABLES)

    def shape(engine: Engine) -> dict[str, set[tuple[Any, ...]]]:
        fingerprint = schema_fingerprint(engine)
        constraints = set()
        for table, name, kind, definition in fingerprint["constraints"]:
            if table in tables:
                legacy_key = table in TZ_COLUMNS and kind in ("p", "f")
                constraints.add((table, "" if legacy_key else name, kind, definition))
        return {
            "columns": {row for row in fingerprint["columns"] if row[0] in tables},
            "constraints": constraints,
            "indexes": {
                (table, name)
                for table, name, _ in fingerprint["indexes"]
                if table in tables and "pkey" not in name and not name.startswith("pk_")
            },
        }

    want, have = shape(modelled), shape(migrated)
    assert have["columns"] == want["columns"]
    assert have["constraints"] == want["constraints"]
    assert want["indexes"] <= have["indexes"]
    assert have["indexes"] - want["indexes"] <= LEGACY_EXTRA_INDEXES


# --------------------------------------------------------------------------------------------------------------------
# 2. seeded legacy database -> head
# --------------------------------------------------------------------------------------------------------------------


def test_upgrade_carries_every_legacy_row_over(legacy_url: str, engine_for: Callable[[str], Engine]) -> None:
    engine = engine_for(legacy_url)
    sample = _seeded_legacy(engine)
    before = _legacy_state(engine)
    assert len(before["users"]) == 9
    assert {"Alice.Admin@Example.com", "  Frank.Padded@Example.COM ", "LENNY@EXAMPLE.COM"} <= {
        u["email"] for u in before["users"].values()
    }

    migrations.upgrade(IDENTITY, legacy_url)
    assert _version(engine) == IDENTITY

    # users: same rows, same values, lower-cased and trimmed emails, timestamps as UTC instants
    users = _rows(engine, "users")
    assert users.keys() == before["users"].keys()
    for user_id, old in before["users"].items():
        new = users[user_id]
        for column in ("name", "password_hash", "is_active", "email_verified"):
            assert new[column] == old[column], (user_id, column)
        assert new["email"] == old["email"].strip().lower()
        _assert_tz_converted("users", old, new)
    assert users[sample["users"]["alice"]]["email"] == "alice.admin@example.com"
    assert users[sample["extra_users"]["frank"]]["email"] == "frank.padded@example.com"
    assert users[sample["extra_users"]["grace"]]["created_at"] == datetime(2021, 3, 4, 5, 6, 7, 123456, tzinfo=UTC)
    assert users[sample["extra_users"]["grace"]]["is_active"] is False

    # exactly one personal org per user (inactive users and users without graphs included), nothing else
    orgs = _rows(engine, "orgs")
    assert len(orgs) == len(users)
    personal = _personal_orgs(engine)
    assert personal.keys() == users.keys()
    for user_id, org in personal.items():
        assert org["org_type"] == "personal"
        assert org["deleted_at"] is None
        assert re.fullmatch(f"org_{ULID_RE}", org["id"]), org["id"]
        assert org["name"] == users[user_id]["name"][:190] + "'s org"
        assert len(org["name"]) <= 200
    assert personal[sample["users"]["alice"]]["name"] == "Alice Admin's org"
    assert personal[sample["extra_users"]["lenny"]]["name"] == "L" * 190 + "'s org"

    # one active owner membership per user, in the user's own org, and no other membership
    with engine.connect() as conn:
        memberships = conn.execute(text("SELECT id, org_id, user_id, role, is_active FROM org_users")).all()
    assert len(memberships) == len(users)
    for membership in memberships:
        assert membership.org_id == personal[membership.user_id]["id"]
        assert membership.role == "owner"
        assert membership.is_active is True
        assert re.fullmatch(f"ou_{ULID_RE}", membership.id)

    # org limits: the legacy value, else the default
    limits = _limits(engine)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM org_limits")).scalar_one() == len(users)
    for user_id in users:
        legacy = before["user_limits"].get(user_id)
        assert limits[user_id] == (legacy["max_user_graphs"] if legacy else DEFAULT_LIMIT), user_id
    assert limits[sample["users"]["alice"]] == 5
    assert limits[sample["users"]["carol"]] == DEFAULT_LIMIT
    assert limits[sample["users"]["erin"]] == DEFAULT_LIMIT
    assert limits[sample["extra_users"]["heidi"]] == 0
    assert not _exists(engine, "user_limits")

    # API keys: every row kept, still bcrypt (converted on first use), timestamps as UTC instants
    keys = _rows(engine, "user_api_keys")
    assert keys.keys() == before["user_api_keys"].keys()
    for key_id, old in before["user_api_keys"].items():
        new = keys[key_id]
        for column in ("user_id", "name", "key_hash", "prefix", "is_active", "description"):
            assert new[column] == old[column], (key_id, column)
        assert new["hash_algo"] == "bcrypt"
        assert new["revoked_at"] is None
        _assert_tz_converted("user_api_keys", old, new)

    # user tokens: every row kept
    tokens = _rows(engine, "user_tokens")
    assert tokens.keys() == before["user_tokens"].keys()
    for token_id, old in before["user_tokens"].items():
        new = tokens[token_id]
        for column in ("user_id", "token_hash", "token_type", "ip_address", "user_agent"):
            assert new[column] == old[column], (token_id, column)
        _assert_tz_converted("user_tokens", old, new)

    # everything else is untouched, row for row
    assert _table_content(engine, UNTOUCHED_TABLES) == before["untouched"]
    assert all(before["untouched"][table] for table in ("graphs", "graph_credits", "billing_subscriptions"))


def test_upgrade_default_limit_comes_from_env(
    legacy_url: str, engine_for: Callable[[str], Engine], monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = engine_for(legacy_url)
    sample = _seeded_legacy(engine)
    monkeypatch.setenv("ORG_GRAPHS_DEFAULT_LIMIT", "5")
    migrations.upgrade(IDENTITY, legacy_url)
    limits = _limits(engine)
    users, extra = sample["users"], sample["extra_users"]
    # users without a legacy row get the configured default ...
    for user_id in (users["carol"], users["erin"], extra["frank"], extra["grace"]):
        assert limits[user_id] == 5
    # ... the others keep their own value
    assert limits[users["bob"]] == 100
    assert limits[extra["heidi"]] == 0
    assert limits[extra["lenny"]] == 7


@pytest.mark.parametrize("value", ["five", "-2", ""])
def test_upgrade_refuses_an_invalid_default_limit(
    legacy_url: str, engine_for: Callable[[str], Engine], monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    """A typo in the configured default must not silently give every user the code default."""
    engine = engine_for(legacy_url)
    _seeded_legacy(engine)
    monkeypatch.setenv("ORG_GRAPHS_DEFAULT_LIMIT", value)
    with pytest.raises(RuntimeError, match="ORG_GRAPHS_DEFAULT_LIMIT"):
        migrations.upgrade(IDENTITY, legacy_url)
    assert _version(engine) == LEGACY
    assert not _exists(engine, "orgs")


# --------------------------------------------------------------------------------------------------------------------
# 3. legacy credentials keep working over HTTP and are upgraded on use
# --------------------------------------------------------------------------------------------------------------------


async def test_legacy_password_and_api_key_work_after_upgrade(
    legacy_url: str, engine_for: Callable[[str], Engine]
) -> None:
    engine = engine_for(legacy_url)
    sample = _seeded_legacy(engine)
    migrations.upgrade("head", legacy_url)  # the app runs on the latest schema
    alice = sample["users"]["alice"]
    password = sample["passwords"]["alice"]
    api_key = sample["api_key"]
    with engine.connect() as conn:
        assert (
            conn.execute(text("SELECT password_hash FROM users WHERE id = :u"), {"u": alice})
            .scalar_one()
            .startswith("$2b$")
        )

    app = create_app(base_settings(legacy_url))
    async with app.router.lifespan_context(app):
        await app.state.services.limiter.reset()
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            # the legacy mixed-case address, typed as it was stored, finds the lower-cased row
            response = await client.post(
                "/v1/auth/login", json={"email": sample["emails"]["alice"], "password": password}
            )
            assert response.status_code == 200, response.text
            body = response.json()
            assert body["user"]["id"] == alice
            assert body["user"]["email"] == "alice.admin@example.com"
            assert body["org"]["id"] == _personal_orgs(engine)[alice]["id"]
            with engine.connect() as conn:
                stored = conn.execute(text("SELECT password_hash FROM users WHERE id = :u"), {"u": alice}).scalar_one()
            assert stored.startswith("$argon2id$")

            # the re-hashed password still logs in; a wrong one does not
            again = await client.post("/v1/auth/login", json={"email": "alice.admin@example.com", "password": password})
            assert again.status_code == 200, again.text
            wrong = await client.post("/v1/auth/login", json={"email": "alice.admin@example.com", "password": "nope"})
            assert wrong.status_code == 401

            # an inactive legacy user still can't log in
            dave = await client.post(
                "/v1/auth/login", json={"email": sample["emails"]["dave"], "password": sample["passwords"]["dave"]}
            )
            assert dave.status_code == 401

            # the legacy bcrypt API key works and is converted to SHA-256 on that first use
            me = await client.get("/v1/user", headers={"X-API-Key": api_key["plain"]})
            assert me.status_code == 200, me.text
            assert me.json()["id"] == alice
            assert me.json()["email"] == "alice.admin@example.com"
            with engine.connect() as conn:
                key = conn.execute(
                    text("SELECT key_hash, hash_algo, prefix FROM user_api_keys WHERE id = :k"), {"k": api_key["id"]}
                ).one()
            assert key.hash_algo == "sha256"
            assert key.key_hash == seed.sha256_hex(api_key["plain"])
            assert key.prefix == api_key["prefix"]

            # ... and keeps working through the SHA-256 lookup
            me_again = await client.get("/v1/user", headers={"X-API-Key": api_key["plain"]})
            assert me_again.status_code == 200, me_again.text
            assert me_again.json()["id"] == alice


# --------------------------------------------------------------------------------------------------------------------
# 4. emails that differ only by case stop the upgrade before anything changes
# --------------------------------------------------------------------------------------------------------------------


def test_case_duplicate_emails_stop_the_upgrade_and_change_nothing(
    legacy_url: str, engine_for: Callable[[str], Engine]
) -> None:
    engine = engine_for(legacy_url)
    with engine.begin() as conn:
        upper = seed.insert_user(conn, email="Bob@x.com", name="Bob Upper")
        lower = seed.insert_user(conn, email="bob@x.com", name="Bob Lower")
        zed = seed.insert_user(conn, email="Zed@X.com", name="Zed")
        seed.insert_user_limits(conn, zed, 3)
    before_rows = _table_content(engine, ("users", "user_limits", "user_api_keys", "user_tokens"))
    before_schema = schema_fingerprint(engine)

    with pytest.raises(RuntimeError) as excinfo:
        migrations.upgrade(IDENTITY, legacy_url)
    message = str(excinfo.value)
    for fragment in (upper, lower, "Bob@x.com", "bob@x.com", "nothing was changed"):
        assert fragment in message
    assert zed not in message

    assert _version(engine) == LEGACY
    assert not _exists(engine, "orgs")
    assert _table_content(engine, ("users", "user_limits", "user_api_keys", "user_tokens")) == before_rows
    assert schema_fingerprint(engine) == before_schema
    with engine.connect() as conn:
        emails = set(conn.execute(text("SELECT email FROM users")).scalars())
    assert emails == {"Bob@x.com", "bob@x.com", "Zed@X.com"}


def test_case_duplicates_with_whitespace_are_found_too(legacy_url: str, engine_for: Callable[[str], Engine]) -> None:
    engine = engine_for(legacy_url)
    with engine.begin() as conn:
        first = seed.insert_user(conn, email=" Carol@x.com", name="Carol 1")
        second = seed.insert_user(conn, email="CAROL@X.COM", name="Carol 2")
    with pytest.raises(RuntimeError) as excinfo:
        migrations.upgrade(IDENTITY, legacy_url)
    assert first in str(excinfo.value) and second in str(excinfo.value)
    assert _version(engine) == LEGACY


# --------------------------------------------------------------------------------------------------------------------
# 5. downgrade restores the legacy shape, and refuses to lose data unless told
# --------------------------------------------------------------------------------------------------------------------


def test_downgrade_restores_the_legacy_rows_and_schema(legacy_url: str, engine_for: Callable[[str], Engine]) -> None:
    engine = engine_for(legacy_url)
    sample = _seeded_legacy(engine)
    before = _legacy_state(engine)

    migrations.upgrade(IDENTITY, legacy_url)
    migrations.downgrade(LEGACY, legacy_url)
    assert _version(engine) == LEGACY

    # same schema as the baseline created (types, defaults, constraints, indexes; no leftover functions)
    assert schema_fingerprint(engine) == before["schema"]
    assert _column_type(engine, "users", "created_at") == "timestamp without time zone"

    # users, keys and tokens: identical rows (original mixed-case emails, naive UTC timestamps)
    assert _rows(engine, "users") == before["users"]
    assert _rows(engine, "users")[sample["extra_users"]["frank"]]["email"] == "  Frank.Padded@Example.COM "
    assert _rows(engine, "user_api_keys") == before["user_api_keys"]
    assert _rows(engine, "user_tokens") == before["user_tokens"]
    assert _table_content(engine, UNTOUCHED_TABLES) == before["untouched"]

    # user_limits: the legacy values and timestamps; users that had no row get the default (what the legacy code
    # would have created lazily)
    limits = _rows(engine, "user_limits", key="user_id")
    assert limits.keys() == before["users"].keys()
    for user_id, row in limits.items():
        assert re.fullmatch(f"ul_{ULID_RE}", row["id"])
        legacy = before["user_limits"].get(user_id)
        if legacy is None:
            assert row["max_user_graphs"] == DEFAULT_LIMIT
        else:
            assert row["max_user_graphs"] == legacy["max_user_graphs"]
            assert (row["created_at"], row["updated_at"]) == (legacy["created_at"], legacy["updated_at"])
            assert row["created_at"].tzinfo is None

    # and the legacy revision upgrades again cleanly
    migrations.upgrade(IDENTITY, legacy_url)
    assert _version(engine) == IDENTITY
    assert len(_personal_orgs(engine)) == len(before["users"])


def test_downgrade_keeps_an_email_changed_after_the_upgrade(
    legacy_url: str, engine_for: Callable[[str], Engine]
) -> None:
    """The saved original spelling is only restored while it is still the same address."""
    engine = engine_for(legacy_url)
    sample = _seeded_legacy(engine)
    alice, carol = sample["users"]["alice"], sample["users"]["carol"]
    migrations.upgrade(IDENTITY, legacy_url)
    with engine.begin() as conn:  # what PUT /v1/user {"email": ...} does
        conn.execute(text("UPDATE users SET email = 'alice.new@example.org' WHERE id = :u"), {"u": alice})
    migrations.downgrade(LEGACY, legacy_url)
    users = _rows(engine, "users")
    assert users[alice]["email"] == "alice.new@example.org"
    assert users[carol]["email"] == "Carol.Member@Example.ORG"


def _insert_team_org(conn: Connection, user_id: str) -> str:
    conn.execute(
        text("INSERT INTO orgs (id, name, org_type) VALUES ('org_team', 'Team', 'team')"),
    )
    conn.execute(
        text("INSERT INTO org_users (id, org_id, user_id, role) VALUES ('ou_team', 'org_team', :u, 'admin')"),
        {"u": user_id},
    )
    return "team/enterprise organizations"


def _insert_sha256_key(conn: Connection, user_id: str) -> str:
    plain = seed.new_api_key()
    conn.execute(
        text(
            "INSERT INTO user_api_keys (id, user_id, name, key_hash, prefix, hash_algo) "
            "VALUES ('uak_new', :u, 'new key', :h, :p, 'sha256')"
        ),
        {"u": user_id, "h": seed.sha256_hex(plain), "p": plain[:8]},
    )
    return "API keys stored as SHA-256"


def _rehash_password_argon2(conn: Connection, user_id: str) -> str:
    conn.execute(
        text("UPDATE users SET password_hash = '$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2g' WHERE id = :u"),
        {"u": user_id},
    )
    return "passwords hashed with Argon2id"


@pytest.mark.parametrize("make_loss", [_insert_team_org, _insert_sha256_key, _rehash_password_argon2])
def test_downgrade_refuses_to_lose_data_unless_allowed(
    legacy_url: str, engine_for: Callable[[str], Engine], make_loss: Callable[[Connection, str], str]
) -> None:
    engine = engine_for(legacy_url)
    with engine.begin() as conn:
        user_id = seed.insert_user(conn, email="Owner@Example.com", name="Owner")
    migrations.upgrade(IDENTITY, legacy_url)
    with engine.begin() as conn:
        what = make_loss(conn, user_id)
    before = _table_content(engine, ("users", "orgs", "org_users", "org_limits", "user_api_keys"))
    before_schema = schema_fingerprint(engine)

    with pytest.raises(RuntimeError) as excinfo:
        migrations.downgrade(LEGACY, legacy_url)
    assert what in str(excinfo.value)
    assert "allow_data_loss" in str(excinfo.value)
    assert _version(engine) == IDENTITY
    assert _table_content(engine, ("users", "orgs", "org_users", "org_limits", "user_api_keys")) == before
    assert schema_fingerprint(engine) == before_schema

    migrations.downgrade(LEGACY, legacy_url, allow_data_loss=True)
    assert _version(engine) == LEGACY
    assert not _exists(engine, "orgs")
    assert _rows(engine, "users")[user_id]["email"] == "Owner@Example.com"


def test_downgrade_without_losses_needs_no_flag(legacy_url: str, engine_for: Callable[[str], Engine]) -> None:
    """Personal orgs, owner memberships and bcrypt keys are exactly what the legacy schema can hold again."""
    engine = engine_for(legacy_url)
    _seeded_legacy(engine)
    migrations.upgrade(IDENTITY, legacy_url)
    migrations.downgrade(LEGACY, legacy_url)
    assert _version(engine) == LEGACY


# --------------------------------------------------------------------------------------------------------------------
# 6. an interrupted upgrade leaves nothing behind; the rerun creates each personal org once
# --------------------------------------------------------------------------------------------------------------------


BLOCKERS = {
    # fails at DROP TABLE user_limits, right after orgs, memberships and limits were inserted
    "after_data_steps": (
        "CREATE VIEW block_upgrade AS SELECT * FROM user_limits",
        "DROP VIEW block_upgrade",
    ),
    # fails at the very last table the revision creates
    "at_the_end": ("CREATE TABLE mail_outbox (id integer)", "DROP TABLE mail_outbox"),
}


@pytest.mark.parametrize("blocker", sorted(BLOCKERS))
def test_interrupted_upgrade_rolls_back_and_reruns_cleanly(
    legacy_url: str, engine_for: Callable[[str], Engine], blocker: str
) -> None:
    engine = engine_for(legacy_url)
    _seeded_legacy(engine)
    create_blocker, drop_blocker = BLOCKERS[blocker]
    with engine.begin() as conn:
        conn.execute(text(create_blocker))
    before = _legacy_state(engine)

    with pytest.raises(DBAPIError):
        migrations.upgrade(IDENTITY, legacy_url)

    # nothing of the revision survived: same version, rows, types and objects as before
    assert _version(engine) == LEGACY
    assert _legacy_state(engine) == before
    for table in (*NEW_TABLES[:3], "legacy_email_case"):
        assert not _exists(engine, table)

    with engine.begin() as conn:
        conn.execute(text(drop_blocker))
    migrations.upgrade(IDENTITY, legacy_url)
    assert _version(engine) == IDENTITY
    with engine.connect() as conn:
        per_user = conn.execute(
            text(
                "SELECT u.id, count(DISTINCT o.id) AS orgs, count(DISTINCT ou.id) AS memberships, "
                "count(DISTINCT l.id) AS limits FROM users u "
                "LEFT JOIN orgs o ON o.personal_user_id = u.id "
                "LEFT JOIN org_users ou ON ou.org_id = o.id "
                "LEFT JOIN org_limits l ON l.org_id = o.id GROUP BY u.id"
            )
        ).all()
        totals = conn.execute(
            text(
                "SELECT (SELECT count(*) FROM orgs), (SELECT count(*) FROM org_users), "
                "(SELECT count(*) FROM org_limits)"
            )
        ).one()
    assert len(per_user) == len(before["users"])
    assert all((row.orgs, row.memberships, row.limits) == (1, 1, 1) for row in per_user)
    assert tuple(totals) == (len(before["users"]),) * 3
