"""Members: list (with pending invitations), role changes, removal, leave, the last-owner rules
under concurrency, and the published client's org_members operations."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import httpx
import pytest
from sqlalchemy import Engine, text

from tests.helpers import count, snapshot
from tests.org_helpers import add_member, invite, make_org, org_with_roles, person
from tests.test_orgs import ORG_TABLES, insert_graph

TABLES = (*ORG_TABLES, "graph_users")


def owners(engine: Engine, org_id: str) -> int:
    return count(engine, "SELECT count(*) FROM org_users WHERE org_id = :o AND role = 'owner' AND is_active", o=org_id)


def role_of(engine: Engine, org_id: str, user_id: str) -> str | None:
    with engine.connect() as conn:
        return conn.execute(
            text("SELECT role FROM org_users WHERE org_id = :o AND user_id = :u"), {"o": org_id, "u": user_id}
        ).scalar_one_or_none()


def grant_graph(engine: Engine, graph_id: str, user_id: str, role: str = "member") -> None:
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO graph_users (id, user_id, graph_id, role, is_selected, created_at, updated_at) "
                "VALUES (:id, :u, :g, :r, false, now(), now())"
            ),
            {"id": f"gu_{user_id[-10:]}_{graph_id[-4:]}", "u": user_id, "g": graph_id, "r": role},
        )


# --- list ------------------------------------------------------------------------------------------


async def test_list_members_shows_pending_invitations_inactive(client: httpx.AsyncClient, sync_engine: Engine) -> None:
    setup = await org_with_roles(client, sync_engine)
    invited = await invite(client, setup.admin, setup.org_id, "New.Person@Example.com", "admin")
    assert invited.status_code == 201
    pending = invited.json()
    assert pending["user_id"].startswith("inv_")
    assert pending["is_active"] is False
    assert pending["email"] == "new.person@example.com"
    assert pending["role"] == "admin"

    response = await client.get(f"/v1/orgs/{setup.org_id}/members", headers=setup.member.auth)
    assert response.status_code == 200
    body = response.json()
    assert body["org_id"] == setup.org_id
    assert body["total"] == 4
    assert [(m["user_id"], m["role"], m["is_active"]) for m in body["members"]] == [
        (setup.owner.id, "owner", True),
        (setup.admin.id, "admin", True),
        (setup.member.id, "member", True),
        (pending["user_id"], "admin", False),
    ]
    page = (await client.get(f"/v1/orgs/{setup.org_id}/members?limit=2&offset=2", headers=setup.member.auth)).json()
    assert page["total"] == 4
    assert [m["user_id"] for m in page["members"]] == [setup.member.id, pending["user_id"]]
    assert (
        await client.get(f"/v1/orgs/{setup.org_id}/members?limit=101", headers=setup.member.auth)
    ).status_code == 422

    # an expired invitation is no longer a pending member
    with sync_engine.begin() as conn:
        conn.execute(text("UPDATE org_invitations SET expires_at = now() - interval '1 minute'"))
    after = (await client.get(f"/v1/orgs/{setup.org_id}/members", headers=setup.member.auth)).json()
    assert after["total"] == 3


# --- role changes --------------------------------------------------------------------------------


async def test_role_change_rules(client: httpx.AsyncClient, sync_engine: Engine) -> None:
    setup = await org_with_roles(client, sync_engine)
    other_admin = await add_member(client, sync_engine, setup.owner, setup.org_id, "admin", "admin2")
    url = f"/v1/orgs/{setup.org_id}/members"

    def put(who_auth: dict[str, str], user_id: str, role: str):  # type: ignore[no-untyped-def]
        return client.put(f"{url}/{user_id}", json={"role": role}, headers=who_auth)

    before = snapshot(sync_engine, TABLES)
    refusals = [
        (setup.member, setup.member.id, "admin", "insufficient_role"),  # escalate self
        (setup.member, setup.admin.id, "member", "insufficient_role"),
        (setup.admin, setup.admin.id, "owner", "owner_required"),  # escalate self above own role
        (setup.admin, setup.member.id, "owner", "owner_required"),  # grant owner
        (setup.admin, setup.owner.id, "member", "owner_required"),  # demote an owner
        (setup.admin, setup.owner.id, "admin", "owner_required"),
    ]
    for who, target, role, code in refusals:
        response = await put(who.auth, target, role)
        assert response.status_code == 403, (who, target, role, response.text)
        assert response.json()["code"] == code
    last = await put(setup.owner.auth, setup.owner.id, "admin")
    assert last.status_code == 409
    assert last.json()["code"] == "last_owner"
    assert (await put(setup.owner.auth, "user_nobody", "admin")).status_code == 404
    assert (await put(setup.owner.auth, setup.member.id, "superuser")).status_code == 422
    assert snapshot(sync_engine, TABLES) == before

    promoted = await put(setup.admin.auth, setup.member.id, "admin")
    assert promoted.status_code == 200
    assert promoted.json() == {**promoted.json(), "user_id": setup.member.id, "role": "admin", "is_active": True}
    assert (await put(setup.admin.auth, other_admin.id, "member")).status_code == 200  # admins manage admins
    assert (await put(setup.admin.auth, setup.admin.id, "member")).status_code == 200  # self-demotion
    assert role_of(sync_engine, setup.org_id, setup.admin.id) == "member"
    # the demoted admin's very next request sees the new role
    assert (await put(setup.admin.auth, setup.member.id, "member")).status_code == 403

    assert (await put(setup.owner.auth, other_admin.id, "owner")).status_code == 200
    assert owners(sync_engine, setup.org_id) == 2
    assert (await put(setup.owner.auth, setup.owner.id, "member")).status_code == 200  # not the last owner now
    assert (await put(other_admin.auth, other_admin.id, "admin")).status_code == 409
    with sync_engine.connect() as conn:
        changes = (
            conn.execute(
                text(
                    "SELECT details FROM org_audit_log WHERE org_id = :o AND event_type = 'member.role_changed' "
                    "ORDER BY created_at, id"
                ),
                {"o": setup.org_id},
            )
            .scalars()
            .all()
        )
    assert {"from": "member", "to": "admin"} in changes
    assert len(changes) == 5


async def test_change_role_of_pending_invitation(client: httpx.AsyncClient, sync_engine: Engine) -> None:
    setup = await org_with_roles(client, sync_engine)
    pending = (await invite(client, setup.admin, setup.org_id, "p@example.com")).json()
    url = f"/v1/orgs/{setup.org_id}/members/{pending['user_id']}"
    assert (await client.put(url, json={"role": "owner"}, headers=setup.admin.auth)).status_code == 403
    changed = await client.put(url, json={"role": "admin"}, headers=setup.admin.auth)
    assert changed.status_code == 200
    assert (changed.json()["role"], changed.json()["is_active"]) == ("admin", False)
    assert (
        count(sync_engine, "SELECT count(*) FROM org_invitations WHERE role = 'admin' AND email = 'p@example.com'") == 1
    )


# --- removal and leave ---------------------------------------------------------------------------


async def test_remove_member_rules_and_graph_access_ends(client: httpx.AsyncClient, sync_engine: Engine) -> None:
    setup = await org_with_roles(client, sync_engine)
    second_owner = await add_member(client, sync_engine, setup.owner, setup.org_id, "owner", "owner2")
    insert_graph(sync_engine, setup.org_id, "kg00000000000000d1")
    other = await make_org(client, setup.member, "Member's own")
    insert_graph(sync_engine, other["id"], "kg00000000000000d2")
    grant_graph(sync_engine, "kg00000000000000d1", setup.member.id)
    grant_graph(sync_engine, "kg00000000000000d2", setup.member.id, "admin")
    url = f"/v1/orgs/{setup.org_id}/members"

    before = snapshot(sync_engine, TABLES)
    assert (await client.delete(f"{url}/{setup.admin.id}", headers=setup.member.auth)).status_code == 403
    refused = await client.delete(f"{url}/{setup.owner.id}", headers=setup.admin.auth)
    assert refused.status_code == 403
    assert refused.json()["code"] == "owner_required"
    assert (await client.delete(f"{url}/user_nobody", headers=setup.owner.auth)).status_code == 404
    assert snapshot(sync_engine, TABLES) == before

    removed = await client.delete(f"{url}/{setup.member.id}", headers=setup.admin.auth)
    assert removed.status_code == 204
    assert removed.content == b""
    assert role_of(sync_engine, setup.org_id, setup.member.id) is None
    # explicit grants on this org's graphs are gone, grants elsewhere stay
    assert count(sync_engine, "SELECT count(*) FROM graph_users WHERE user_id = :u", u=setup.member.id) == 1
    # access ends on the next request, whatever the token says
    assert (await client.get(f"/v1/orgs/{setup.org_id}", headers=setup.member.auth)).status_code == 404
    assert (await client.get(f"/v1/orgs/{setup.org_id}/graphs", headers=setup.member.auth)).status_code == 404

    assert (await client.delete(f"{url}/{second_owner.id}", headers=setup.owner.auth)).status_code == 204
    last = await client.delete(f"{url}/{setup.owner.id}", headers=setup.owner.auth)
    assert last.status_code == 409
    assert last.json()["code"] == "last_owner"
    with sync_engine.connect() as conn:
        events = conn.execute(
            text(
                "SELECT actor_user_id, target_user_id FROM org_audit_log WHERE org_id = :o "
                "AND event_type = 'member.removed' ORDER BY created_at, id"
            ),
            {"o": setup.org_id},
        ).all()
    assert [(e.actor_user_id, e.target_user_id) for e in events] == [
        (setup.admin.id, setup.member.id),
        (setup.owner.id, second_owner.id),
    ]


async def test_remove_pending_invitation_via_members(client: httpx.AsyncClient, sync_engine: Engine) -> None:
    setup = await org_with_roles(client, sync_engine)
    pending = (await invite(client, setup.owner, setup.org_id, "p@example.com")).json()
    url = f"/v1/orgs/{setup.org_id}/members/{pending['user_id']}"
    assert (await client.delete(url, headers=setup.member.auth)).status_code == 403
    assert (await client.delete(url, headers=setup.admin.auth)).status_code == 204
    assert count(sync_engine, "SELECT count(*) FROM org_invitations WHERE status = 'revoked'") == 1


async def test_leave(client: httpx.AsyncClient, sync_engine: Engine) -> None:
    setup = await org_with_roles(client, sync_engine)
    assert (await client.post(f"/v1/orgs/{setup.org_id}/leave", headers=setup.member.auth)).status_code == 204
    assert (await client.get(f"/v1/orgs/{setup.org_id}", headers=setup.member.auth)).status_code == 404
    assert (await client.post(f"/v1/orgs/{setup.org_id}/leave", headers=setup.member.auth)).status_code == 404
    # self-removal through DELETE /members/{own id} is leaving too
    assert (
        await client.delete(f"/v1/orgs/{setup.org_id}/members/{setup.admin.id}", headers=setup.admin.auth)
    ).status_code == 204
    before = snapshot(sync_engine, TABLES)
    refused = await client.post(f"/v1/orgs/{setup.org_id}/leave", headers=setup.owner.auth)
    assert refused.status_code == 409
    assert refused.json()["code"] == "last_owner"
    assert snapshot(sync_engine, TABLES) == before
    types = count(
        sync_engine,
        "SELECT count(*) FROM org_audit_log WHERE org_id = :o AND event_type = 'member.left'",
        o=setup.org_id,
    )
    assert types == 2


# --- last-owner races ------------------------------------------------------------------------------


ITERATIONS = 15


async def _two_owner_org(client: httpx.AsyncClient, engine: Engine):  # type: ignore[no-untyped-def]
    a = await person(client, "a")
    org = await make_org(client, a)
    b = await add_member(client, engine, a, org["id"], "owner", "b")
    return org["id"], a, b


async def test_two_owners_demoting_each_other_concurrently_keep_an_owner(
    client: httpx.AsyncClient, sync_engine: Engine
) -> None:
    outcomes: set[tuple[int, int]] = set()
    for _ in range(ITERATIONS):
        org_id, a, b = await _two_owner_org(client, sync_engine)
        results = await asyncio.gather(
            client.put(f"/v1/orgs/{org_id}/members/{b.id}", json={"role": "member"}, headers=a.auth),
            client.put(f"/v1/orgs/{org_id}/members/{a.id}", json={"role": "member"}, headers=b.auth),
        )
        statuses = tuple(sorted(r.status_code for r in results))
        outcomes.add(statuses)  # type: ignore[arg-type]
        assert statuses == (200, 403), [r.text for r in results]  # the loser was demoted first
        assert owners(sync_engine, org_id) == 1
    assert outcomes == {(200, 403)}


async def test_two_owners_self_demoting_concurrently_keep_an_owner(
    client: httpx.AsyncClient, sync_engine: Engine
) -> None:
    for _ in range(ITERATIONS):
        org_id, a, b = await _two_owner_org(client, sync_engine)
        results = await asyncio.gather(
            client.put(f"/v1/orgs/{org_id}/members/{a.id}", json={"role": "admin"}, headers=a.auth),
            client.put(f"/v1/orgs/{org_id}/members/{b.id}", json={"role": "admin"}, headers=b.auth),
            client.post(f"/v1/orgs/{org_id}/leave", headers=a.auth),
            client.post(f"/v1/orgs/{org_id}/leave", headers=b.auth),
        )
        assert all(r.status_code in (200, 204, 403, 404, 409) for r in results), [r.text for r in results]
        assert owners(sync_engine, org_id) == 1


async def test_two_owners_removing_each_other_concurrently_keep_an_owner(
    client: httpx.AsyncClient, sync_engine: Engine
) -> None:
    for _ in range(ITERATIONS):
        org_id, a, b = await _two_owner_org(client, sync_engine)
        results = await asyncio.gather(
            client.delete(f"/v1/orgs/{org_id}/members/{b.id}", headers=a.auth),
            client.delete(f"/v1/orgs/{org_id}/members/{a.id}", headers=b.auth),
        )
        assert sorted(r.status_code for r in results) == [204, 404]  # the loser is no longer a member
        assert owners(sync_engine, org_id) == 1


# --- the published client ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def live_server(database_url: str) -> Iterator[str]:
    from tests.live_server import running_server

    with running_server(database_url) as base_url:
        yield base_url


async def test_client_org_members_operations(live_server: str, sync_engine: Engine) -> None:
    from robosystems_client import AuthenticatedClient
    from robosystems_client.api.org_members import (
        invite_org_member,
        list_org_members,
        remove_org_member,
        update_org_member_role,
    )
    from robosystems_client.models import (
        InviteMemberRequest,
        OrgMemberListResponse,
        OrgMemberResponse,
        UpdateMemberRoleRequest,
    )
    from robosystems_client.models.org_role import OrgRole

    async with httpx.AsyncClient(base_url=live_server, timeout=30) as raw:
        owner = await person(raw, "owner")
        org = await make_org(raw, owner)
        joiner = await add_member(raw, sync_engine, owner, org["id"], "member", "joiner")
    client = AuthenticatedClient(base_url=live_server, token=owner.token, timeout=httpx.Timeout(30.0))
    try:
        invited = invite_org_member.sync_detailed(
            org["id"], client=client, body=InviteMemberRequest(email="Client.Invitee@example.com", role=OrgRole.ADMIN)
        )
        assert invited.status_code == 201
        assert isinstance(invited.parsed, OrgMemberResponse)
        assert invited.parsed.is_active is False
        assert invited.parsed.role == OrgRole.ADMIN
        assert invited.parsed.email == "client.invitee@example.com"
        default_role = invite_org_member.sync_detailed(
            org["id"], client=client, body=InviteMemberRequest(email="second@example.com")
        )
        assert default_role.status_code == 201
        assert isinstance(default_role.parsed, OrgMemberResponse)
        assert default_role.parsed.role == OrgRole.MEMBER

        listed = list_org_members.sync_detailed(org["id"], client=client)
        assert listed.status_code == 200
        assert isinstance(listed.parsed, OrgMemberListResponse)
        assert listed.parsed.org_id == org["id"]
        assert listed.parsed.total == 4
        assert [m.is_active for m in listed.parsed.members] == [True, True, False, False]

        updated = update_org_member_role.sync_detailed(
            org["id"], joiner.id, client=client, body=UpdateMemberRoleRequest(role=OrgRole.ADMIN)
        )
        assert updated.status_code == 200
        assert isinstance(updated.parsed, OrgMemberResponse)
        assert updated.parsed.role == OrgRole.ADMIN
        assert updated.parsed.user_id == joiner.id

        removed = remove_org_member.sync_detailed(org["id"], joiner.id, client=client)
        assert removed.status_code == 204
        assert (
            count(
                sync_engine,
                "SELECT count(*) FROM org_users WHERE org_id = :o AND user_id = :u",
                o=org["id"],
                u=joiner.id,
            )
            == 0
        )
    finally:
        client.get_httpx_client().close()
