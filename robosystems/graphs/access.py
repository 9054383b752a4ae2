"""Who may do what on one graph: the caller's effective graph role, from ONE query.

Sources, best role wins (admin > member > viewer):

* an active membership in the org that owns the graph (org not deleted): owner/admin -> ``admin``,
  member -> ``member``.  Removing the membership ends this access at once (nothing is cached);
* an explicit ``graph_users`` grant (legacy shares): ``admin``/``member`` as stored, any other role string
  (``viewer``, free text from the legacy CLI) -> read-only ``viewer``.  A subgraph also honours grants on
  its parent (legacy access checks used the parent's row);
* for shared repositories (``org_id`` NULL, ``is_repository``) only explicit grants and active, unexpired
  ``user_repository`` rows: ADMIN -> ``admin``, WRITE -> ``member``, READ -> ``viewer`` (NONE: nothing).

``None`` means no access at all (or no such graph): callers answer 404 so existence is not revealed.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

ROLE_RANK = {"viewer": 1, "member": 2, "admin": 3}

_ACCESS_SQL = text(
    """
    SELECT g.graph_id, g.org_id, g.is_repository, g.is_subgraph, g.parent_graph_id,
           CASE ou.role WHEN 'owner' THEN 'admin' WHEN 'admin' THEN 'admin' WHEN 'member' THEN 'member' END
               AS org_role,
           (SELECT max(CASE lower(btrim(gu.role)) WHEN 'admin' THEN 3 WHEN 'member' THEN 2 ELSE 1 END)
              FROM graph_users gu
             WHERE gu.user_id = :user
               AND (gu.graph_id = g.graph_id OR (g.is_subgraph AND gu.graph_id = g.parent_graph_id))) AS grant_rank,
           CASE WHEN g.is_repository THEN
               (SELECT max(CASE ur.access_level::text WHEN 'ADMIN' THEN 3 WHEN 'WRITE' THEN 2 WHEN 'READ' THEN 1 END)
                  FROM user_repository ur
                 WHERE ur.user_id = :user AND ur.repository_name = g.graph_id
                   AND COALESCE(ur.is_active, true) AND (ur.expires_at IS NULL OR ur.expires_at > now()))
           END AS repository_rank
    FROM graphs g
    LEFT JOIN orgs o ON o.id = g.org_id AND o.deleted_at IS NULL
    LEFT JOIN org_users ou ON ou.org_id = o.id AND ou.user_id = :user AND ou.is_active
    WHERE g.graph_id = :graph
    """
)

_RANK_ROLE = {rank: role for role, rank in ROLE_RANK.items()}


@dataclass(frozen=True)
class GraphAccess:
    graph_id: str
    org_id: str | None
    role: str  # admin | member | viewer
    via: str  # org | grant | repository (the source of the winning role)
    is_repository: bool
    is_subgraph: bool
    parent_graph_id: str | None

    @property
    def can_read(self) -> bool:
        return True

    @property
    def can_write(self) -> bool:
        return ROLE_RANK[self.role] >= ROLE_RANK["member"]

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


async def graph_access(session: AsyncSession, user_id: str, graph_id: str) -> GraphAccess | None:
    row = (await session.execute(_ACCESS_SQL, {"user": user_id, "graph": graph_id})).one_or_none()
    if row is None:
        return None
    candidates: list[tuple[int, str]] = []
    if row.org_role is not None:
        candidates.append((ROLE_RANK[row.org_role], "org"))
    if row.grant_rank is not None:
        candidates.append((int(row.grant_rank), "grant"))
    if row.repository_rank is not None:
        candidates.append((int(row.repository_rank), "repository"))
    if not candidates:
        return None
    rank, via = max(candidates, key=lambda c: c[0])
    return GraphAccess(
        graph_id=row.graph_id,
        org_id=row.org_id,
        role=_RANK_ROLE[rank],
        via=via,
        is_repository=bool(row.is_repository),
        is_subgraph=bool(row.is_subgraph),
        parent_graph_id=row.parent_graph_id,
    )
