"""Org use cases: list, create, read, update, soft delete, restore and purge.

Functions take the request's unit of work and never commit.  Every change to an org's
membership takes the org row lock first (:func:`lock_and_authorize`), then re-reads the caller's
role in a fresh statement, so concurrent changes of one org are serialized and decided on
committed data (last-owner rules, member caps).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import column, delete, func, insert, select, table, text, update
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from robosystems.auth.deps import Principal
from robosystems.db import StatementPool, compile_for_psycopg
from robosystems.errors import AppError, Conflict, Forbidden, NotFound, Unprocessable
from robosystems.ids import new_id
from robosystems.models import LIVE_SUBSCRIPTION_STATUSES, Org, OrgLimits, OrgUser, User
from robosystems.orgs.access import OrgAccess, authorize
from robosystems.orgs.audit import OrgEvent, record_org_event
from robosystems.orgs.policy import Action, Role, role_at_least
from robosystems.outbound import events as outbound
from robosystems.services import AppServices
from robosystems.sqljson import iso_utc

log = logging.getLogger("robosystems.orgs")

#: The graphs table belongs to the graphs feature; only its org columns are needed here.
GRAPHS = table("graphs", column("graph_id"), column("org_id"), column("is_subgraph"))

#: Subscription states that block deleting the org: awaiting payment, or holding a resource.
BLOCKING_SUBSCRIPTION_STATUSES = ("pending_payment", *LIVE_SUBSCRIPTION_STATUSES)


class OrgLimitReached(AppError):
    status_code, code, detail = 403, "org_limit_reached", "You own the maximum number of organizations"


def personal_org_conflict(what: str) -> Conflict:
    return Conflict(f"A personal organization cannot {what}", code="personal_org")


def check_can_grant(access: OrgAccess, role: str, *, current: str | None = None) -> None:
    """No grant above your own role; only owners grant or revoke ``owner`` (``current`` is the
    role being replaced, if any)."""
    if (role == Role.OWNER or current == Role.OWNER) and access.role != Role.OWNER:
        raise Forbidden("Only an owner can grant or revoke the owner role", code="owner_required")
    if not role_at_least(access.role, role):
        raise Forbidden("You cannot grant a role above your own", code="role_above_own")


# --- locking ---------------------------------------------------------------------------------


async def lock_org_row(session: AsyncSession, org_id: str) -> None:
    """Row lock on the org (also on a deleted one; access is decided afterwards)."""
    await session.execute(select(Org.id).where(Org.id == org_id).with_for_update())


async def lock_and_authorize(session: AsyncSession, principal: Principal, org_id: str, action: Action) -> OrgAccess:
    """Lock the org row, then resolve the caller's live role in a new statement.

    In READ COMMITTED a ``SELECT … FOR UPDATE`` that waited for another transaction returns the
    joined membership row as of its own (older) snapshot; the separate statement afterwards sees
    what that transaction committed.
    """
    await lock_org_row(session, org_id)
    return await authorize(session, principal, org_id, action, fresh=True)


async def count_active_owners(session: AsyncSession, org_id: str) -> int:
    return int(
        (
            await session.execute(
                select(func.count())
                .select_from(OrgUser)
                .where(OrgUser.org_id == org_id, OrgUser.role == Role.OWNER, OrgUser.is_active.is_(True))
            )
        ).scalar_one()
    )


# --- reads -----------------------------------------------------------------------------------


#: ``OrgListResponse`` as JSON text, one statement: the caller's live memberships (one page) with
#: member and graph counts (correlated aggregates over indexed lookups, for the page's rows only)
#: and the total.  Graph counts follow ``usage.org_graph_count``: top-level graphs (subgraphs share
#: their parent's org).  See robosystems.sqljson for why PostgreSQL renders the body.
_LIST_ORGS_JSON = text(
    f"""
    WITH mine AS (
        SELECT o.id, o.name, o.org_type, ou.role, ou.joined_at, o.created_at
        FROM org_users ou JOIN orgs o ON o.id = ou.org_id
        WHERE ou.user_id = :user AND ou.is_active AND o.deleted_at IS NULL
    ), page AS (
        SELECT * FROM mine ORDER BY joined_at, id LIMIT :limit OFFSET :offset
    )
    SELECT json_build_object(
        'orgs', COALESCE((
            SELECT json_agg(json_build_object(
                       'id', p.id, 'name', p.name, 'org_type', p.org_type, 'role', p.role,
                       'member_count', (SELECT count(*) FROM org_users m WHERE m.org_id = p.id AND m.is_active),
                       'graph_count', (SELECT count(*) FROM graphs g WHERE g.org_id = p.id AND NOT g.is_subgraph),
                       'created_at', {iso_utc("p.created_at")}, 'joined_at', {iso_utc("p.joined_at")})
                   ORDER BY p.joined_at, p.id)
            FROM page p
        ), '[]'::json),
        'total', (SELECT count(*) FROM mine)
    )::text
    """  # noqa: S608 - assembled once from constant column names, no input
)


_LIST_ORGS_SQL = compile_for_psycopg(_LIST_ORGS_JSON)


async def list_orgs_json(pool: StatementPool, user_id: str, *, limit: int, offset: int) -> str:
    """``OrgListResponse`` (JSON text) of the caller's active memberships in live orgs."""
    return str(await pool.fetch_value(_LIST_ORGS_SQL, {"user": user_id, "limit": limit, "offset": offset}))


#: ``OrgDetailResponse`` as JSON text, one statement: the org row, its active members and its
#: top-level graphs (same rows and order as ``usage.org_graphs``, without the credit columns the
#: detail doesn't show) and ``limits`` = ``{max_graphs}`` (null without a limits row; usage against
#: the limit is ``GET /v1/orgs/{id}/limits``).  The caller's role comes from the access check.
#: Measured (bench/orgs.py): one statement rendered by PostgreSQL instead of five queries plus
#: Pydantic validation is what brings the detail of a 50-member org near the PK-SELECT baseline.
_ORG_DETAIL_JSON = text(
    f"""
    SELECT json_build_object(
        'id', o.id, 'name', o.name, 'org_type', o.org_type, 'user_role', CAST(:role AS text),
        'members', COALESCE((
            SELECT json_agg(json_build_object('user_id', ou.user_id, 'name', u.name, 'email', u.email,
                                              'role', ou.role, 'joined_at', {iso_utc("ou.joined_at")})
                            ORDER BY ou.joined_at, ou.user_id)
            FROM org_users ou JOIN users u ON u.id = ou.user_id
            WHERE ou.org_id = o.id AND ou.is_active
        ), '[]'::json),
        'graphs', COALESCE((
            SELECT json_agg(json_build_object('graph_id', g.graph_id, 'graph_name', g.graph_name,
                                              'graph_type', g.graph_type, 'graph_tier', g.graph_tier,
                                              'created_at', {iso_utc("g.created_at")})
                            ORDER BY g.created_at, g.graph_id)
            FROM graphs g
            WHERE g.org_id = o.id AND NOT g.is_subgraph
        ), '[]'::json),
        'limits', (SELECT json_build_object('max_graphs', l.max_graphs) FROM org_limits l WHERE l.org_id = o.id),
        'created_at', {iso_utc("o.created_at")},
        'updated_at', {iso_utc("o.updated_at")}
    )::text
    FROM orgs o WHERE o.id = :org
    """  # noqa: S608 - assembled once from constant column names, no input
)


_ORG_DETAIL_SQL = compile_for_psycopg(_ORG_DETAIL_JSON)


async def org_detail(session: AsyncSession, access: OrgAccess) -> str:
    """``OrgDetailResponse`` (JSON text) in the request's unit of work, after a change it made."""
    return str((await session.execute(_ORG_DETAIL_JSON, {"org": access.org_id, "role": access.role})).scalar_one())


async def read_org_detail(pool: StatementPool, access: OrgAccess) -> str:
    """``OrgDetailResponse`` (JSON text) for a plain read, on the statement pool."""
    return str(await pool.fetch_value(_ORG_DETAIL_SQL, {"org": access.org_id, "role": access.role}))


async def reload_access(session: AsyncSession, principal: Principal, org_id: str) -> OrgAccess:
    return await authorize(session, principal, org_id, Action.VIEW_ORG, fresh=True)


# --- create / update ---------------------------------------------------------------------------


async def create_org(
    session: AsyncSession, services: AppServices, principal: Principal, *, name: str, org_type: str
) -> str:
    settings = services.settings
    if org_type == "personal":
        raise Unprocessable("A personal organization is created with the account", code="invalid_org_type")
    # Serialize this user's org creations so the ownership cap holds under concurrency.
    await session.execute(select(User.id).where(User.id == principal.user_id).with_for_update())
    if settings.org_max_owned_orgs >= 0:
        owned = (
            await session.execute(
                select(func.count())
                .select_from(OrgUser)
                .join(Org, Org.id == OrgUser.org_id)
                .where(
                    OrgUser.user_id == principal.user_id,
                    OrgUser.role == Role.OWNER,
                    OrgUser.is_active.is_(True),
                    Org.org_type != "personal",
                    Org.deleted_at.is_(None),
                )
            )
        ).scalar_one()
        if owned >= settings.org_max_owned_orgs:
            raise OrgLimitReached(
                f"You already own {owned} organizations (limit {settings.org_max_owned_orgs})",
                extra={"limit": settings.org_max_owned_orgs},
            )
    org_id = new_id("org")
    await session.execute(insert(Org).values(id=org_id, name=name, org_type=org_type))
    await session.execute(
        insert(OrgUser).values(id=new_id("ou"), org_id=org_id, user_id=principal.user_id, role=Role.OWNER.value)
    )
    await session.execute(
        insert(OrgLimits).values(id=new_id("olim"), org_id=org_id, max_graphs=settings.org_graphs_default_limit)
    )
    await record_org_event(
        session,
        org_id,
        OrgEvent.ORG_CREATED,
        actor_user_id=principal.user_id,
        details={"name": name, "org_type": org_type},
    )
    return await org_detail(session, await reload_access(session, principal, org_id))


async def update_org(
    session: AsyncSession, principal: Principal, org_id: str, *, name: str | None, org_type: str | None
) -> str:
    access = await lock_and_authorize(session, principal, org_id, Action.UPDATE_ORG)
    changes: dict[str, list[str]] = {}
    if org_type is not None and org_type != access.org_type:
        if not access.can(Action.CHANGE_ORG_TYPE):
            raise Forbidden("Only an owner can change the organization type", code="insufficient_role")
        if org_type == "personal":
            raise Unprocessable("An organization cannot become personal", code="invalid_org_type")
        if access.org_type == "personal":
            raise personal_org_conflict("change its type")
        changes["org_type"] = [access.org_type, org_type]
    if name is not None and name != access.org_name:
        changes["name"] = [access.org_name, name]
    if changes:
        values: dict[str, Any] = {key: new for key, (_old, new) in changes.items()}
        await session.execute(update(Org).where(Org.id == org_id).values(**values, updated_at=func.now()))
        await record_org_event(session, org_id, OrgEvent.ORG_UPDATED, actor_user_id=principal.user_id, details=changes)
        await outbound.org_updated(session, org_id, changes)
    return await org_detail(session, await reload_access(session, principal, org_id))


# --- soft delete, restore, purge ---------------------------------------------------------------


async def _has_column(session: AsyncSession, table_name: str, column_name: str) -> bool:
    found = (
        await session.execute(
            text(
                "SELECT 1 FROM information_schema.columns WHERE table_schema = current_schema() "
                "AND table_name = :t AND column_name = :c"
            ),
            {"t": table_name, "c": column_name},
        )
    ).first()
    return found is not None


async def blocking_subscriptions(session: AsyncSession, org_id: str) -> list[str]:
    """Reasons the org can't be deleted: its subscriptions in a live state.

    Returns ``[]`` while ``billing_subscriptions`` has no ``org_id`` column (a database below the
    org billing revision: the legacy schema keys subscriptions by user)."""
    if not await _has_column(session, "billing_subscriptions", "org_id"):
        return []
    rows = (
        await session.execute(
            text(
                "SELECT id, status, resource_type, resource_id FROM billing_subscriptions "
                "WHERE org_id = :org AND status = ANY(:statuses) ORDER BY created_at, id"
            ),
            {"org": org_id, "statuses": list(BLOCKING_SUBSCRIPTION_STATUSES)},
        )
    ).all()
    reasons = []
    for r in rows:
        resource = f" for {r.resource_type} {r.resource_id}" if r.resource_id else f" for a {r.resource_type}"
        reasons.append(f"subscription {r.id}{resource} is {r.status}")
    return reasons


async def delete_org(session: AsyncSession, services: AppServices, principal: Principal, org_id: str) -> dict[str, Any]:
    access = await lock_and_authorize(session, principal, org_id, Action.DELETE_ORG)
    if access.org_type == "personal":
        raise personal_org_conflict("be deleted")
    reasons = await blocking_subscriptions(session, org_id)
    if reasons:
        raise Conflict(
            "Cancel the organization's subscriptions before deleting it",
            code="org_has_active_subscriptions",
            extra={"reasons": reasons},
        )
    deleted_at = (
        await session.execute(
            update(Org)
            .where(Org.id == org_id)
            .values(deleted_at=func.now(), updated_at=func.now())
            .returning(Org.deleted_at)
        )
    ).scalar_one()
    assert deleted_at is not None
    grace = timedelta(days=services.settings.org_deletion_grace_days)
    await record_org_event(
        session,
        org_id,
        OrgEvent.ORG_DELETED,
        actor_user_id=principal.user_id,
        details={"restorable_until": (deleted_at + grace).isoformat()},
    )
    await outbound.org_deleted(session, org_id, deleted_at, deleted_at + grace)
    return {
        "id": org_id,
        "message": "Organization deleted; it can be restored by an operator until restorable_until",
        "deleted_at": deleted_at,
        "restorable_until": deleted_at + grace,
    }


async def list_deleted_orgs(
    session: AsyncSession, *, grace_days: int, limit: int = 50, offset: int = 0
) -> dict[str, Any]:
    """Soft-deleted orgs, newest deletion first, with their restore deadline (operator use)."""
    total = (
        await session.execute(select(func.count()).select_from(Org).where(Org.deleted_at.is_not(None)))
    ).scalar_one()
    rows = (
        await session.execute(
            select(Org.id, Org.name, Org.org_type, Org.deleted_at, Org.created_at)
            .where(Org.deleted_at.is_not(None))
            .order_by(Org.deleted_at.desc(), Org.id)
            .limit(limit)
            .offset(offset)
        )
    ).all()
    grace = timedelta(days=grace_days)
    orgs = [{**dict(r._mapping), "restorable_until": r.deleted_at + grace} for r in rows]
    return {"orgs": orgs, "total": int(total)}


async def restore_org(
    session: AsyncSession,
    org_id: str,
    *,
    grace_days: int,
    actor_user_id: str | None = None,
    reason: str | None = None,
) -> dict[str, Any]:
    """Undo a soft delete within the grace period (operator action: admin API / CLI)."""
    row = (
        await session.execute(select(Org.id, Org.deleted_at).where(Org.id == org_id).with_for_update())
    ).one_or_none()
    if row is None or row.deleted_at is None:
        raise NotFound("No deleted organization with this id", code="org_not_found")
    if row.deleted_at + timedelta(days=grace_days) <= datetime.now(UTC):
        raise Conflict("The restore window of this organization has passed", code="restore_window_passed")
    await session.execute(update(Org).where(Org.id == org_id).values(deleted_at=None, updated_at=func.now()))
    await record_org_event(
        session,
        org_id,
        OrgEvent.ORG_RESTORED,
        actor_user_id=actor_user_id,
        details={"deleted_at": row.deleted_at.isoformat(), "reason": reason or "", "by": "operator"},
    )
    return {"id": org_id, "restored": True, "was_deleted_at": row.deleted_at}


@dataclass
class PurgeReport:
    purged: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)


async def purge_deleted_orgs(
    session: AsyncSession, *, grace_days: int, now: datetime | None = None, dry_run: bool = False, batch: int = 500
) -> PurgeReport:
    """Remove orgs soft-deleted longer than ``grace_days`` ago (memberships, limits and
    invitations go with them by cascade; the org audit log stays).

    An org that still owns graphs, or that another table still references, is skipped and
    reported, never force-deleted: graphs are retired by their own retention task first.
    Each org is purged in its own savepoint; ``SKIP LOCKED`` lets two purgers run at once.
    """
    cutoff = (now or datetime.now(UTC)) - timedelta(days=grace_days)
    report = PurgeReport()
    rows = (
        await session.execute(
            select(Org.id, Org.name, Org.deleted_at)
            .where(Org.deleted_at.is_not(None), Org.deleted_at < cutoff)
            .order_by(Org.deleted_at, Org.id)
            .limit(batch)
            .with_for_update(skip_locked=True)
        )
    ).all()
    has_graph_org = await _has_column(session, "graphs", "org_id")
    for r in rows:
        if has_graph_org:
            graphs = (
                await session.execute(select(func.count()).select_from(GRAPHS).where(GRAPHS.c.org_id == r.id))
            ).scalar_one()
            if graphs:
                report.skipped[r.id] = f"still owns {graphs} graph(s)"
                continue
        if dry_run:
            report.purged.append(r.id)
            continue
        try:
            async with session.begin_nested():
                await record_org_event(
                    session,
                    r.id,
                    OrgEvent.ORG_PURGED,
                    actor_user_id=None,
                    details={"name": r.name, "deleted_at": r.deleted_at.isoformat()},
                )
                await session.execute(delete(Org).where(Org.id == r.id))
        except (IntegrityError, DBAPIError) as exc:
            log.warning("purge of org %s skipped: %s", r.id, type(exc).__name__)
            report.skipped[r.id] = "still referenced by other records"
            continue
        report.purged.append(r.id)
    return report
