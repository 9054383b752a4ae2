"""``robosystems migrate preflight``: a read-only report on a legacy database before the upgrade.

It runs in one READ ONLY transaction (it cannot change anything) on a database at the legacy baseline
``7a89a1bfab0c`` or the snapshot revision ``a1b2c3d4e5f6``; on a partly upgraded database it runs the checks of the
revisions that are still to come.  It reports:

* **blockers** -- what makes a revision stop (it then changes nothing): emails differing only by case (E5), user
  graphs with no ownership signal at all (E2) unless an owner for them is given, billing values outside the org
  schema's vocabulary, a graph held by two live subscriptions, negative credit pools (unless clamping is requested),
  unusable migration settings;
* **warnings** -- what the upgrade resolves by rule but an operator should review: graphs whose ownership signals
  disagree (E1), owners taken from a mere member grant (E2), subgraphs whose parent is gone, billing audit rows that
  reference nothing, other sessions connected to the database;
* **info** -- what the upgrade will do with each legacy edge case (E1–E11), orphaned references, row counts.

Exit status (CLI): 0 = the upgrade can run unattended, 1 = at least one blocker, 2 = the preflight could not run.
The blocking rules mirror the revisions' own checks (tests compare them), so a clean preflight means the upgrade
will not stop on data.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from robosystems.migrate_tools import checksums, runtime
from robosystems.migrate_tools.report import Finding, render, table

ORPHAN_OWNER_ENV = "ROBOSYSTEMS_ORPHAN_GRAPHS_OWNER"
EXAMPLES = 5

# The org billing revision's vocabulary (e6f7a8b9c0d1; tests assert these equal the revision's constants).
SUBSCRIPTION_STATUSES = (
    "pending_payment",
    "provisioning",
    "active",
    "past_due",
    "unpaid",
    "paused",
    "canceled",
    "failed",
    "refunded",
    "expired",
)
LIVE_STATUSES = ("provisioning", "active", "past_due", "unpaid", "paused")
INVOICE_STATUSES = ("draft", "open", "paid", "void", "uncollectible")
TRANSACTION_TYPES = ("allocation", "consumption", "refund", "adjustment", "bonus", "expiration")
STATUS_MAP_SQL = (
    "CASE lower(btrim(status)) WHEN 'pending' THEN 'pending_payment' WHEN 'cancelled' THEN 'canceled' "
    "ELSE lower(btrim(status)) END"
)
LEGACY_TIERS = ("standard", "enterprise", "premium", "professional")
KNOWN_ROLES = ("admin", "member", "viewer")

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


def _in(values: Sequence[str]) -> str:
    return ", ".join(f"'{v}'" for v in values)


@dataclass
class Options:
    orphan_graphs_owner: str | None = None  # user id (or, once orgs exist, org id); default: env
    clamp_negative_credit_balances: bool = False

    def orphan_owner(self) -> str | None:
        value = self.orphan_graphs_owner if self.orphan_graphs_owner is not None else os.environ.get(ORPHAN_OWNER_ENV)
        value = (value or "").strip()
        return value or None


@dataclass
class PreflightReport:
    database: str
    revision: str | None
    head: str
    state: str  # empty | legacy | snapshot | partial | head
    findings: list[Finding] = field(default_factory=list)
    row_counts: dict[str, int] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    error: str | None = None

    @property
    def blockers(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "blocker"]

    @property
    def ready(self) -> bool:
        return self.error is None and not self.blockers

    @property
    def exit_code(self) -> int:
        if self.error is not None:
            return 2
        return 0 if self.ready else 1

    def finding(self, finding_id: str) -> Finding | None:
        return next((f for f in self.findings if f.id == finding_id), None)

    def count(self, finding_id: str) -> int:
        f = self.finding(finding_id)
        return f.count if f is not None else 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "database": self.database,
            "revision": self.revision,
            "head": self.head,
            "state": self.state,
            "ready": self.ready,
            "exit_code": self.exit_code,
            "error": self.error,
            "blockers": len(self.blockers),
            "warnings": len([f for f in self.findings if f.severity == "warning"]),
            "findings": [f.as_dict() for f in self.findings],
            "row_counts": self.row_counts,
            "settings": self.settings,
            "seconds": round(self.seconds, 2),
        }

    def render_text(self) -> str:
        lines = [
            f"RoboSystems upgrade preflight: database {self.database}",
            f"  revision {self.revision or '(none)'} [{self.state}] -> head {self.head}",
        ]
        if self.error:
            lines += ["", f"ERROR: {self.error}", "", "Result: preflight could not run (exit 2)"]
            return "\n".join(lines)
        if self.row_counts:
            lines += ["", "Row counts"]
            lines += ["  " + x for x in table([(t, f"{n:,}") for t, n in self.row_counts.items()], ("table", "rows"))]
        if self.settings:
            lines += ["", "Migration settings: " + ", ".join(f"{k}={v}" for k, v in self.settings.items())]
        lines += render(self.findings)
        lines.append("")
        if self.ready:
            lines.append(f"Result: READY, the upgrade can run unattended (exit 0; {self.seconds:.1f}s)")
        else:
            lines.append(
                f"Result: NOT READY, {len(self.blockers)} blocker(s) (exit 1; {self.seconds:.1f}s). "
                "Resolve them, then run the preflight again."
            )
        return "\n".join(lines)


class _Context:
    def __init__(self, conn: sa.Connection, revision: str, options: Options) -> None:
        self.conn = conn
        self.revision = revision
        self.options = options
        self.order = checksums.revision_order()
        self.findings: list[Finding] = []

    def pending(self, revision: str) -> bool:
        """True while ``revision`` has not run yet (its preconditions still matter)."""
        return self.order[self.revision] < self.order[revision]

    def one(self, sql: str, **params: Any) -> Any:
        return self.conn.execute(sa.text(sql), params).one()

    def scalar(self, sql: str, **params: Any) -> int:
        return int(self.conn.execute(sa.text(sql), params).scalar_one() or 0)

    def add(self, finding: Finding) -> None:
        self.findings.append(finding)

    def counted(
        self,
        finding_id: str,
        severity: Any,
        title: str,
        sql: str,
        *,
        edge_case: str | None = None,
        detail: str = "",
        remedy: str = "",
        keep_zero: bool = False,
        **params: Any,
    ) -> int:
        """``sql`` returns (count, examples text[])."""
        raw_count, examples = self.one(sql, **params)
        count = int(raw_count or 0)
        if count or keep_zero:
            self.add(
                Finding(
                    finding_id,
                    severity if count else "info",
                    title,
                    count,
                    edge_case,
                    detail,
                    [str(e) for e in (examples or [])][:EXAMPLES],
                    remedy if count else "",
                )
            )
        return count


def _ex(expr: str, order: str | None = None, where: str | None = None) -> str:
    """First EXAMPLES values of ``expr`` (an aggregate, optionally FILTERed)."""
    flt = f" FILTER (WHERE {where})" if where else ""
    return f"(array_agg({expr} ORDER BY {order or expr}){flt})[1:{EXAMPLES}]"


_ID_STATUS = "id || ' (' || status || ')'"
_ID_TYPE = "id || ' (' || transaction_type || ')'"
_GRAPH_BALANCE = "graph_id || ' (' || current_balance || ')'"
_GRAPH_TIER = "g.graph_id || '=' || g.graph_tier"


# ------------------------------------------------------------------------------------------------------------------
# identity (b3c1f0e2a9d4)
# ------------------------------------------------------------------------------------------------------------------


def _identity(ctx: _Context) -> None:
    ctx.counted(
        "case_duplicate_emails",
        "blocker",
        "email addresses shared by users that differ only by case or surrounding spaces",
        f"SELECT count(*), {_ex('x.e || chr(58) || chr(32) || x.who', 'x.e')} FROM ("
        "  SELECT lower(btrim(email)) AS e, string_agg(id || ' <' || email || '>', ', ' ORDER BY id) AS who "
        "  FROM users GROUP BY 1 HAVING count(*) > 1) x",
        edge_case="E5",
        detail="the identity revision stops on them: emails become unique case-insensitively (lower-cased)",
        remedy="merge the accounts (move user_graphs, graph_credits, billing rows, API keys and tokens to one user, "
        "then delete the other) or give one of them another address (UPDATE users SET email = …); rerun the "
        "preflight",
    )
    ctx.counted(
        "mixed_case_emails",
        "info",
        "addresses with upper-case letters or surrounding spaces: lower-cased, originals kept in legacy_email_case",
        f"SELECT count(*), {_ex('email')} FROM users WHERE email <> lower(btrim(email))",
        edge_case="E5",
    )
    limit_raw = os.environ.get("ORG_GRAPHS_DEFAULT_LIMIT")
    limit_ok = True
    if limit_raw is not None:
        try:
            limit_ok = int(limit_raw.strip()) >= -1
        except ValueError:
            limit_ok = False
    default_limit = limit_raw.strip() if limit_raw is not None else "100"
    without_limits = ctx.scalar(
        "SELECT count(*) FROM users u WHERE NOT EXISTS (SELECT 1 FROM user_limits l WHERE l.user_id = u.id)"
    )
    if not limit_ok:
        ctx.add(
            Finding(
                "org_graphs_default_limit",
                "blocker",
                f"ORG_GRAPHS_DEFAULT_LIMIT={limit_raw!r} is not a whole number >= -1",
                1,
                "E4",
                remedy="set ORG_GRAPHS_DEFAULT_LIMIT to the graph limit for users without user_limits (e.g. 5)",
            )
        )
    ctx.add(
        Finding(
            "users_without_limits",
            "info",
            f"users without user_limits: their personal org gets max_graphs = ORG_GRAPHS_DEFAULT_LIMIT "
            f"({default_limit}); the others keep max_user_graphs",
            without_limits,
            "E4",
            detail="semantics change: legacy counted every graph the user could see, the org limit counts the "
            "graphs the org owns",
        )
    )
    ctx.counted(
        "users_without_graphs",
        "info",
        "users with no graph: they still get a personal org, an owner membership and org_limits",
        f"SELECT count(*), {_ex('u.id')} FROM users u WHERE NOT EXISTS "
        "(SELECT 1 FROM user_graphs ug WHERE ug.user_id = u.id)",
        edge_case="E4",
    )
    ctx.counted(
        "inactive_users",
        "info",
        "inactive users: kept inactive, personal org and billing moved like any other user",
        f"SELECT count(*), {_ex('id')} FROM users WHERE NOT is_active",
        edge_case="E6",
    )
    ctx.counted(
        "orphan_user_tokens",
        "info",
        "user_tokens whose user no longer exists (no FK in legacy): kept as they are, unusable",
        f"SELECT count(*), {_ex('t.id')} FROM user_tokens t WHERE NOT EXISTS (SELECT 1 FROM users u "
        "WHERE u.id = t.user_id)",
    )


# ------------------------------------------------------------------------------------------------------------------
# graph ownership (c4d5e6f7a8b9)
# ------------------------------------------------------------------------------------------------------------------

_OWNERSHIP_SQL = f"""
WITH RECURSIVE claims AS (
    SELECT bs.resource_id AS graph_id, bs.billing_customer_user_id AS user_id, 1 AS rank
    FROM billing_subscriptions bs
    WHERE bs.resource_type = 'graph' AND bs.resource_id IS NOT NULL AND bs.status <> 'canceled'
  UNION ALL
    SELECT gc.graph_id, gc.billing_admin_id, 2 FROM graph_credits gc
  UNION ALL
    SELECT g.graph_id, g.graph_metadata ->> 'created_by', 3 FROM graphs g
    WHERE jsonb_typeof(g.graph_metadata) = 'object' AND g.graph_metadata ->> 'created_by' IS NOT NULL
  UNION ALL
    SELECT m.graph_id, m.user_id, CASE WHEN lower(btrim(m.role)) = 'admin' THEN 4 ELSE 5 END
    FROM user_graphs m WHERE lower(btrim(m.role)) IN ('admin', 'member')
), per_graph AS (
    SELECT c.graph_id, min(c.rank) AS best_rank,
           count(DISTINCT c.user_id) FILTER (WHERE c.rank <= 4) AS strong_users
    FROM claims c JOIN users u ON u.id = c.user_id GROUP BY c.graph_id
), ug AS (
    SELECT g.graph_id, g.is_subgraph, g.parent_graph_id, pg.best_rank, COALESCE(pg.strong_users, 0) AS strong_users
    FROM graphs g LEFT JOIN per_graph pg ON pg.graph_id = g.graph_id WHERE NOT g.is_repository
), resolved(graph_id) AS (
    SELECT graph_id FROM ug WHERE best_rank IS NOT NULL
  UNION
    SELECT s.graph_id FROM ug s JOIN resolved r ON r.graph_id = s.parent_graph_id WHERE s.is_subgraph
)
SELECT
  count(*) FILTER (WHERE r.graph_id IS NULL) AS orphans,
  {_ex("ug.graph_id", where="r.graph_id IS NULL")} AS orphan_examples,
  count(*) FILTER (WHERE ug.strong_users > 1) AS disagree,
  {_ex("ug.graph_id", where="ug.strong_users > 1")} AS disagree_examples,
  count(*) FILTER (WHERE ug.best_rank = 5 AND (NOT ug.is_subgraph OR rp.graph_id IS NULL)) AS member_owner,
  {_ex("ug.graph_id", where="ug.best_rank = 5 AND (NOT ug.is_subgraph OR rp.graph_id IS NULL)")}
      AS member_owner_examples
FROM ug LEFT JOIN resolved r ON r.graph_id = ug.graph_id
LEFT JOIN resolved rp ON rp.graph_id = ug.parent_graph_id
"""


def _orphan_owner_target(ctx: _Context) -> tuple[str | None, str | None]:
    """(the owner value, a problem with it)."""
    value = ctx.options.orphan_owner()
    if value is None:
        return None, None
    if ctx.pending(checksums.IDENTITY):
        found = ctx.scalar("SELECT count(*) FROM users WHERE id = :v", v=value)
    else:
        found = ctx.scalar(
            "SELECT count(*) FROM orgs WHERE deleted_at IS NULL AND (id = :v OR personal_user_id = :v)", v=value
        )
    if not found:
        return value, f"orphan_graphs_owner={value!r} names no existing user (or org)"
    return value, None


def _ownership(ctx: _Context) -> None:
    row = ctx.one(_OWNERSHIP_SQL)
    owner, problem = _orphan_owner_target(ctx)
    if problem:
        ctx.add(Finding("orphan_graphs_owner", "blocker", problem, 1, "E2", remedy="give an existing user id"))
    if row.orphans:
        if owner and not problem:
            ctx.add(
                Finding(
                    "orphan_graphs",
                    "warning",
                    f"user graphs with no ownership signal at all: they will go to the personal org of {owner} "
                    "(recorded in graph_ownership_conflicts as orphan_assigned)",
                    int(row.orphans),
                    "E2",
                    examples=list(row.orphan_examples or []),
                )
            )
        else:
            ctx.add(
                Finding(
                    "orphan_graphs",
                    "blocker",
                    "user graphs with no ownership signal at all (no non-canceled graph subscription, no credits "
                    "pool, no existing created_by user, no admin or member grant): no org can be chosen",
                    int(row.orphans),
                    "E2",
                    detail="the graph ownership revision stops on them",
                    examples=list(row.orphan_examples or []),
                    remedy="give each graph an owner in the legacy data (an admin user_graphs row or a graph_credits "
                    "row), delete it, or name the user whose personal org takes them all: "
                    f"`--orphan-graphs-owner <user_id>` (or {ORPHAN_OWNER_ENV}=<user_id>) on preflight and upgrade",
                )
            )
    if row.disagree:
        ctx.add(
            Finding(
                "graphs_ownership_disagreement",
                "warning",
                "graphs whose ownership signals (payer, billing admin, creator, admins) name more than one user: the "
                "strongest wins (payer > billing admin > creator > earliest admin); each is logged and listed in "
                "graph_ownership_conflicts",
                int(row.disagree),
                "E1",
                examples=list(row.disagree_examples or []),
                remedy="after the upgrade, review graph_ownership_conflicts and move graphs between orgs if needed",
            )
        )
    if row.member_owner:
        ctx.add(
            Finding(
                "graphs_owner_from_member_grant",
                "warning",
                "graphs whose only ownership signal left is a member grant: the earliest member's personal org "
                "gets them (listed in graph_ownership_conflicts as owner_from_member_grant)",
                int(row.member_owner),
                "E2",
                examples=list(row.member_owner_examples or []),
            )
        )
    # Hash joins against per-graph aggregates (no correlated sub-plans: a 150k-graph database takes seconds).
    top = "NOT g.is_repository AND NOT g.is_subgraph"
    no_admin = f"{top} AND NOT COALESCE(m.has_admin, false)"
    lost = "g.is_subgraph AND p.graph_id IS NULL"
    legacy_tier = f"g.graph_tier IN ({_in(LEGACY_TIERS)})"
    stats = ctx.one(
        f"""
        WITH m AS (
            SELECT graph_id, bool_or(lower(btrim(role)) = 'admin') AS has_admin FROM user_graphs GROUP BY graph_id
        ), c AS (SELECT DISTINCT graph_id FROM graph_credits),
        s AS (
            SELECT DISTINCT resource_id AS graph_id FROM billing_subscriptions
            WHERE resource_type = 'graph' AND resource_id IS NOT NULL
        )
        SELECT
          count(*) FILTER (WHERE {no_admin}) AS no_admin,
          {_ex("g.graph_id", where=no_admin)} AS no_admin_ex,
          count(*) FILTER (WHERE {top} AND m.graph_id IS NULL) AS no_grants,
          count(*) FILTER (WHERE {top} AND c.graph_id IS NULL) AS no_credits,
          count(*) FILTER (WHERE {top} AND s.graph_id IS NULL) AS no_subscription,
          count(*) FILTER (WHERE g.is_subgraph) AS subgraphs,
          count(*) FILTER (WHERE {lost}) AS lost_subgraphs,
          {_ex("g.graph_id", where=lost)} AS lost_subgraphs_ex,
          count(*) FILTER (WHERE g.is_repository) AS repositories,
          {_ex("g.graph_id", where="g.is_repository")} AS repositories_ex,
          count(*) FILTER (WHERE {legacy_tier}) AS legacy_tiers,
          {_ex(_GRAPH_TIER, "g.graph_id", where=legacy_tier)} AS legacy_tiers_ex,
          count(*) FILTER (WHERE {top} AND jsonb_typeof(g.graph_metadata) = 'object'
              AND g.graph_metadata ->> 'created_by' IS NOT NULL AND u.id IS NULL) AS gone_creator
        FROM graphs g
        LEFT JOIN m ON m.graph_id = g.graph_id
        LEFT JOIN c ON c.graph_id = g.graph_id
        LEFT JOIN s ON s.graph_id = g.graph_id
        LEFT JOIN graphs p ON p.graph_id = g.parent_graph_id
        LEFT JOIN users u ON u.id = g.graph_metadata ->> 'created_by'
        """
    )
    ctx.counted(
        "graphs_multiple_admins",
        "info",
        "graphs with several admin grants: one owning org (see E1 precedence); the other admins keep role admin "
        "in graph_users",
        f"SELECT count(*), {_ex('graph_id')} FROM (SELECT graph_id FROM user_graphs "
        "WHERE lower(btrim(role)) = 'admin' GROUP BY graph_id HAVING count(*) > 1) x",
        edge_case="E1",
    )
    infos: list[tuple[str, str, int, str, list[str]]] = [
        (
            "graphs_without_admin",
            "user graphs with no admin grant: owner from payer -> billing admin -> creator -> earliest member",
            int(stats.no_admin),
            "E2",
            list(stats.no_admin_ex or []),
        ),
        ("subgraphs", "subgraphs: they take their parent's org", int(stats.subgraphs), "E2", []),
        (
            "repositories",
            "shared repositories: they belong to no org (org_id NULL); access stays in user_repository",
            int(stats.repositories),
            "E8",
            list(stats.repositories_ex or []),
        ),
        (
            "graphs_without_grants",
            "user graphs with no user_graphs row at all: owner from the other signals",
            int(stats.no_grants),
            "E3",
            [],
        ),
        (
            "graphs_without_credits",
            "user graphs with no credit pool (nothing required)",
            int(stats.no_credits),
            "E3",
            [],
        ),
        (
            "graphs_without_subscription",
            "user graphs with no graph subscription (nothing required)",
            int(stats.no_subscription),
            "E3",
            [],
        ),
        (
            "legacy_tier_graphs",
            "graphs with a pre-2025-10 tier string (standard/enterprise/premium/professional): kept as they are",
            int(stats.legacy_tiers),
            "E9",
            list(stats.legacy_tiers_ex or []),
        ),
        (
            "graphs_creator_gone",
            "user graphs whose graph_metadata.created_by names a user that no longer exists (not a signal)",
            int(stats.gone_creator),
            "E2",
            [],
        ),
    ]
    for finding_id, title, count, edge, examples in infos:
        if count:
            ctx.add(Finding(finding_id, "info", title, count, edge, examples=examples))
    if stats.lost_subgraphs:
        ctx.add(
            Finding(
                "subgraphs_parent_missing",
                "warning",
                "subgraphs whose parent_graph_id points to no graph (no FK): their own signals decide the org",
                int(stats.lost_subgraphs),
                "E2",
                examples=list(stats.lost_subgraphs_ex or []),
            )
        )
    ctx.counted(
        "odd_role_grants",
        "info",
        f"grants with a role other than {', '.join(KNOWN_ROLES)}: kept verbatim in graph_users (read access only)",
        f"SELECT count(*), {_ex('id || chr(61) || role', 'id')} FROM user_graphs "
        f"WHERE role NOT IN ({_in(KNOWN_ROLES)})",
    )
    ctx.counted(
        "users_with_several_selected_graphs",
        "info",
        "users with more than one selected graph (app-enforced only): kept as they are",
        f"SELECT count(*), {_ex('user_id')} FROM (SELECT user_id FROM user_graphs WHERE is_selected "
        "GROUP BY user_id HAVING count(*) > 1) x",
    )
    usage = ctx.one(
        f"""
        SELECT
          (SELECT COALESCE(sum(n - 1), 0) FROM (
              SELECT count(*) AS n FROM graph_usage_tracking WHERE event_type = 'storage_snapshot'
              GROUP BY graph_id, date_trunc('hour', recorded_at) HAVING count(*) > 1) s) AS dup_snapshots,
          (SELECT count(*) FROM graph_usage_tracking WHERE graph_tier IN ({_in(LEGACY_TIERS)})) AS legacy_tier_rows,
          (SELECT count(*) FROM graph_usage_tracking t WHERE NOT EXISTS (SELECT 1 FROM users u
              WHERE u.id = t.user_id)) AS unknown_user,
          (SELECT count(*) FROM graph_usage_tracking t WHERE NOT EXISTS (SELECT 1 FROM graphs g
              WHERE g.graph_id = t.graph_id)) AS unknown_graph
        """
    )
    if usage.dup_snapshots:
        ctx.add(
            Finding(
                "duplicate_storage_snapshots",
                "info",
                "extra storage_snapshot rows of shared graphs (one per member and hour): rows kept; org usage is "
                "aggregated per graph and hour, so storage is not counted once per member",
                int(usage.dup_snapshots),
                "E7",
            )
        )
    if usage.legacy_tier_rows:
        ctx.add(
            Finding(
                "legacy_tier_usage_rows",
                "info",
                "usage rows with a pre-2025-10 tier string: kept as they are",
                int(usage.legacy_tier_rows),
                "E9",
            )
        )
    for key, title in (
        ("unknown_user", "usage rows whose user no longer exists (no FK): kept"),
        ("unknown_graph", "usage rows whose graph no longer exists (no FK): kept"),
    ):
        value = int(getattr(usage, key))
        if value:
            ctx.add(Finding(f"usage_rows_{key}", "info", title, value))


# ------------------------------------------------------------------------------------------------------------------
# org billing (e6f7a8b9c0d1)
# ------------------------------------------------------------------------------------------------------------------


def _billing(ctx: _Context) -> None:
    ctx.counted(
        "subscription_status_unknown",
        "blocker",
        f"subscriptions whose status is outside {', '.join(SUBSCRIPTION_STATUSES)} (legacy 'pending' is mapped)",
        f"SELECT count(*), {_ex(_ID_STATUS, 'id')} FROM billing_subscriptions "
        f"WHERE {STATUS_MAP_SQL} NOT IN ({_in(SUBSCRIPTION_STATUSES)})",
        remedy="UPDATE billing_subscriptions SET status = <one of the listed values> for these rows",
    )
    ctx.counted(
        "invoice_status_unknown",
        "blocker",
        f"invoices whose status is outside {', '.join(INVOICE_STATUSES)}",
        f"SELECT count(*), {_ex(_ID_STATUS, 'id')} FROM billing_invoices WHERE status NOT IN ({_in(INVOICE_STATUSES)})",
        remedy="UPDATE billing_invoices SET status = <one of the listed values> for these rows",
    )
    ctx.counted(
        "graphs_with_several_live_subscriptions",
        "blocker",
        f"graphs held by more than one live subscription ({', '.join(LIVE_STATUSES)})",
        f"SELECT count(*), {_ex('resource_id')} FROM (SELECT resource_id FROM billing_subscriptions "
        f"WHERE resource_type = 'graph' AND resource_id IS NOT NULL AND {STATUS_MAP_SQL} IN ({_in(LIVE_STATUSES)}) "
        "GROUP BY resource_id HAVING count(*) > 1) x",
        edge_case="E1",
        remedy="cancel all but one of each graph's live subscriptions (status 'canceled', canceled_at set)",
    )
    ctx.counted(
        "credit_transaction_type_unknown",
        "blocker",
        f"credit transactions whose type is outside {', '.join(TRANSACTION_TYPES)}",
        f"SELECT count(*), {_ex(_ID_TYPE, 'id')} FROM graph_credit_transactions "
        f"WHERE transaction_type NOT IN ({_in(TRANSACTION_TYPES)})",
        remedy="UPDATE graph_credit_transactions SET transaction_type = 'adjustment' for these rows",
    )
    negative = ctx.one(
        f"SELECT count(*), {_ex(_GRAPH_BALANCE, 'graph_id')} FROM graph_credits WHERE current_balance < 0"
    )
    if negative[0]:
        clamp = ctx.options.clamp_negative_credit_balances
        ctx.add(
            Finding(
                "negative_credit_pools",
                "warning" if clamp else "blocker",
                "credit pools with a negative balance (the org schema requires >= 0)"
                + (
                    ": cleared to 0 with an audited adjustment row each (--clamp-negative-credit-balances)"
                    if clamp
                    else ""
                ),
                int(negative[0]),
                examples=list(negative[1] or []),
                remedy=""
                if clamp
                else "top the pools up in the legacy data, or upgrade with --clamp-negative-credit-balances "
                "(each pool is set to 0 and gets an 'adjustment' row 'legacy negative balance cleared')",
            )
        )
    ctx.counted(
        "audit_logs_without_reference",
        "warning",
        "billing audit rows that name no user, subscription or invoice: kept; the new has-reference CHECK stays "
        "NOT VALID for them (new rows are checked)",
        f"SELECT count(*), {_ex('id')} FROM billing_audit_logs WHERE billing_customer_user_id IS NULL "
        "AND subscription_id IS NULL AND invoice_id IS NULL AND actor_user_id IS NULL",
    )
    row = ctx.one(
        """
        SELECT
          count(*) FILTER (WHERE resource_id IS NULL) AS pending_checkouts,
          count(*) FILTER (WHERE starts_with(provider_subscription_id, 'cs_')) AS checkout_ids,
          count(*) FILTER (WHERE lower(btrim(status)) IN ('pending', 'cancelled')) AS legacy_status,
          count(*) FILTER (WHERE resource_type = 'repository') AS repository_subs,
          count(DISTINCT billing_customer_user_id) FILTER (WHERE resource_type = 'repository') AS repository_payers,
          count(*) FILTER (WHERE resource_type = 'graph' AND resource_id IS NOT NULL AND NOT EXISTS (
              SELECT 1 FROM graphs g WHERE g.graph_id = billing_subscriptions.resource_id)) AS unknown_graph
        FROM billing_subscriptions
        """
    )
    infos = [
        (
            "pending_checkout_subscriptions",
            "subscriptions with resource_id NULL (checkout not finished): moved to the payer's personal org",
            int(row.pending_checkouts),
            None,
        ),
        (
            "checkout_session_ids",
            "Stripe checkout session ids (cs_…) held in provider_subscription_id: moved to "
            "provider_checkout_session_id",
            int(row.checkout_ids),
            None,
        ),
        (
            "legacy_subscription_status",
            "subscriptions with status 'pending'/'cancelled': become 'pending_payment'/'canceled', original kept in "
            "legacy_status",
            int(row.legacy_status),
            None,
        ),
        (
            "repository_subscriptions",
            f"repository subscriptions ({int(row.repository_payers)} subscribers): each moves to its subscriber's "
            "personal org; the repository itself stays without org",
            int(row.repository_subs),
            "E8",
        ),
        (
            "subscriptions_unknown_graph",
            "graph subscriptions whose graph no longer exists (no FK): moved like the others",
            int(row.unknown_graph),
            None,
        ),
    ]
    for finding_id, title, count, edge in infos:
        if count:
            ctx.add(Finding(finding_id, "info", title, count, edge))
    ctx.counted(
        "credit_pools_ledger_mismatch",
        "info",
        "credit pools whose balance differs from the sum of their transactions: each gets one 'adjustment' row "
        "'legacy opening balance' with the difference (balances unchanged; sum(ledger) == balance afterwards)",
        f"SELECT count(*), {_ex('gc.graph_id')} FROM graph_credits gc LEFT JOIN (SELECT graph_credits_id, "
        "sum(amount) AS total FROM graph_credit_transactions GROUP BY 1) t ON t.graph_credits_id = gc.id "
        "WHERE gc.current_balance <> COALESCE(t.total, 0)",
    )
    ctx.counted(
        "credit_transactions_unknown_user",
        "info",
        "credit transactions whose acting user no longer exists (no FK): kept",
        f"SELECT count(*), {_ex('t.id')} FROM graph_credit_transactions t WHERE t.user_id IS NOT NULL AND "
        "NOT EXISTS (SELECT 1 FROM users u WHERE u.id = t.user_id)",
    )


# ------------------------------------------------------------------------------------------------------------------
# always
# ------------------------------------------------------------------------------------------------------------------


def _general(ctx: _Context) -> None:
    enum_row = ctx.one(
        "SELECT count(*), (SELECT count(*) FROM information_schema.columns WHERE udt_name = 'subscriptionstatus') "
        "FROM pg_type WHERE typname = 'subscriptionstatus' AND typnamespace = 'public'::regnamespace"
    )
    if enum_row[0] and not enum_row[1]:
        ctx.add(
            Finding(
                "orphan_enum_subscriptionstatus",
                "info",
                "PostgreSQL enum type subscriptionstatus used by no column (left by upstream's dropped "
                "graph_subscriptions): left alone; no revision creates a type with that name",
                1,
                "E11",
            )
        )
    if ctx.scalar("SELECT count(*) FROM information_schema.tables WHERE table_name = 'user_repository'"):
        ctx.counted(
            "user_repository_enum_rows",
            "info",
            "user_repository rows (PG enums store upper-case member names, e.g. 'SEC'): kept, still keyed by user",
            "SELECT count(*), array_agg(DISTINCT repository_type::text) FROM user_repository",
            edge_case="E10",
        )
    others = ctx.one(
        "SELECT count(*), (array_agg(DISTINCT COALESCE(NULLIF(application_name, ''), '(no name)') || ' from ' "
        "|| COALESCE(client_addr::text, 'local socket')))[1:5] FROM pg_stat_activity "
        "WHERE datname = current_database() AND pid <> pg_backend_pid() AND backend_type = 'client backend'"
    )
    if others[0]:
        ctx.add(
            Finding(
                "other_sessions",
                "warning",
                "other sessions are connected to this database: stop the application (and workers) before the "
                "upgrade, or its sessions will wait behind the migration's table locks and the migration may hit "
                "lock_timeout behind theirs",
                int(others[0]),
                examples=list(others[1] or []),
            )
        )


def _row_counts(ctx: _Context) -> dict[str, int]:
    present = set(ctx.conn.execute(sa.text("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")).scalars())
    counts: dict[str, int] = {}
    for name in LEGACY_TABLES + ("graph_users", "graph_usage", "orgs"):
        if name in present:
            counts[name] = ctx.scalar(f'SELECT count(*) FROM "{name}"')
    return counts


def run(conn: sa.Connection, *, database: str = "", options: Options | None = None) -> PreflightReport:
    """Run the preflight on an open connection (inside a read-only transaction it opens itself)."""
    options = options or Options()
    started = time.perf_counter()
    head = checksums.head()
    report = PreflightReport(database=database, revision=None, head=head, state="empty")
    try:
        report.settings = runtime.settings()
    except RuntimeError as exc:
        report.findings.append(Finding("migration_settings", "blocker", str(exc), 1))
    with conn.begin():
        conn.execute(sa.text("SET TRANSACTION READ ONLY"))
        conn.execute(sa.text("SET LOCAL statement_timeout = 0"))
        conn.execute(sa.text("SET LOCAL lock_timeout = '5s'"))
        if conn.execute(sa.text("SELECT to_regclass('public.alembic_version')")).scalar() is None:
            if conn.execute(sa.text("SELECT to_regclass('public.users')")).scalar() is not None:
                report.error = (
                    "the database has a users table but no alembic_version: not a database this chain knows. "
                    "A legacy RoboSystems database has alembic_version 7a89a1bfab0c"
                )
            else:
                report.findings.append(
                    Finding("fresh_database", "info", "empty database: `migrate upgrade` creates the schema", 0)
                )
            report.seconds = time.perf_counter() - started
            return report
        revision = conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar()
        report.revision = revision
        order = checksums.revision_order()
        if revision is None or revision not in order:
            report.error = f"unknown revision {revision!r}: this chain is {' -> '.join(order)}"
            report.seconds = time.perf_counter() - started
            return report
        report.state = (
            "head"
            if revision == head
            else "legacy"
            if revision == checksums.LEGACY
            else "snapshot"
            if revision == checksums.SNAPSHOT
            else "partial"
        )
        ctx = _Context(conn, revision, options)
        ctx.findings.extend(report.findings)
        if report.state == "head":
            ctx.add(Finding("already_upgraded", "info", "the database is at head: nothing to upgrade", 0))
        if report.state == "partial":
            ctx.add(
                Finding(
                    "partial_upgrade",
                    "warning",
                    f"the upgrade stopped after revision {revision}: the checks of the remaining revisions follow. "
                    "Legacy data you change now to clear a blocker is picked up by the snapshot automatically "
                    "(verify reports it); after editing a table an earlier revision already reshaped, run "
                    "`robosystems migrate snapshot` before `migrate upgrade`",
                    1,
                )
            )
        sections: list[tuple[str, Callable[[_Context], None]]] = [
            (checksums.IDENTITY, _identity),
            (checksums.GRAPH_OWNERSHIP, _ownership),
            (checksums.ORG_BILLING, _billing),
        ]
        for before, section in sections:
            if ctx.pending(before):
                section(ctx)
        _general(ctx)
        report.findings = ctx.findings
        report.row_counts = _row_counts(ctx)
    report.seconds = time.perf_counter() - started
    return report


def run_url(url: str, options: Options | None = None) -> PreflightReport:
    from robosystems.db import sync_url

    engine = sa.create_engine(sync_url(url), poolclass=NullPool)
    parsed = make_url(sync_url(url))
    name = f"{parsed.database} on {parsed.host or 'local socket'}:{parsed.port or 5432}"
    try:
        with engine.connect() as conn:
            return run(conn, database=name, options=options)
    except sa.exc.SQLAlchemyError as exc:
        report = PreflightReport(database=name, revision=None, head=checksums.head(), state="unknown")
        report.error = f"{type(exc).__name__}: {str(exc).splitlines()[0]}"
        return report
    finally:
        engine.dispose()
