"""The one policy table: which org role may do what.  Roles rank owner > admin > member.

Every org-scoped route names an :class:`Action`; :mod:`robosystems.orgs.access` resolves the
caller's live role and checks it here.  The README shows this table.
"""

from __future__ import annotations

from enum import StrEnum


class Role(StrEnum):
    OWNER = "owner"
    ADMIN = "admin"
    MEMBER = "member"


ROLE_RANK: dict[str, int] = {Role.MEMBER: 1, Role.ADMIN: 2, Role.OWNER: 3}


class Action(StrEnum):
    VIEW_ORG = "view_org"
    UPDATE_ORG = "update_org"
    CHANGE_ORG_TYPE = "change_org_type"
    DELETE_ORG = "delete_org"
    LEAVE_ORG = "leave_org"
    TRANSFER_OWNERSHIP = "transfer_ownership"
    VIEW_MEMBERS = "view_members"
    INVITE_MEMBER = "invite_member"
    CHANGE_MEMBER_ROLE = "change_member_role"
    REMOVE_MEMBER = "remove_member"
    MANAGE_INVITATIONS = "manage_invitations"
    VIEW_AUDIT = "view_audit"
    VIEW_GRAPHS = "view_graphs"
    CREATE_GRAPH = "create_graph"
    VIEW_LIMITS = "view_limits"
    VIEW_USAGE = "view_usage"
    VIEW_BILLING = "view_billing"
    VIEW_PAYMENT_DETAILS = "view_payment_details"
    MANAGE_BILLING = "manage_billing"
    MANAGE_PAYMENT_METHOD = "manage_payment_method"
    VIEW_INVOICES = "view_invoices"
    MANAGE_WEBHOOKS = "manage_webhooks"


#: Minimum role for each action.  Finer rules (no grant above your own role, only owners touch
#: owners, last owner protected) live in the member service on top of this table.
POLICY: dict[Action, Role] = {
    Action.VIEW_ORG: Role.MEMBER,
    Action.UPDATE_ORG: Role.ADMIN,
    Action.CHANGE_ORG_TYPE: Role.OWNER,
    Action.DELETE_ORG: Role.OWNER,
    Action.LEAVE_ORG: Role.MEMBER,
    Action.TRANSFER_OWNERSHIP: Role.OWNER,
    Action.VIEW_MEMBERS: Role.MEMBER,
    Action.INVITE_MEMBER: Role.ADMIN,
    Action.CHANGE_MEMBER_ROLE: Role.ADMIN,
    Action.REMOVE_MEMBER: Role.ADMIN,
    Action.MANAGE_INVITATIONS: Role.ADMIN,
    Action.VIEW_AUDIT: Role.ADMIN,
    Action.VIEW_GRAPHS: Role.MEMBER,
    Action.CREATE_GRAPH: Role.ADMIN,
    Action.VIEW_LIMITS: Role.MEMBER,
    Action.VIEW_USAGE: Role.MEMBER,
    Action.VIEW_BILLING: Role.MEMBER,
    Action.VIEW_PAYMENT_DETAILS: Role.ADMIN,
    Action.MANAGE_BILLING: Role.ADMIN,
    Action.MANAGE_PAYMENT_METHOD: Role.OWNER,
    Action.VIEW_INVOICES: Role.ADMIN,
    Action.MANAGE_WEBHOOKS: Role.ADMIN,
}


def role_at_least(role: str, minimum: str) -> bool:
    return ROLE_RANK.get(role, 0) >= ROLE_RANK[minimum]


def allowed(role: str, action: Action) -> bool:
    return role_at_least(role, POLICY[action])


def policy_table_markdown() -> str:
    """The policy as a Markdown table (kept in the README; a test checks they agree)."""
    lines = ["| action | member | admin | owner |", "|---|---|---|---|"]
    for action, _minimum in POLICY.items():
        cells = ["yes" if allowed(r, action) else "—" for r in (Role.MEMBER, Role.ADMIN, Role.OWNER)]
        lines.append(f"| `{action.value}` | " + " | ".join(cells) + " |")
    return "\n".join(lines)
