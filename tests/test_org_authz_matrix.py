"""Authorization matrix: every org-scoped endpoint x {anonymous, non-member, member, admin, owner} x
{own org, another org}, asserting the exact status, that refusals change nothing (row checksums of
every table an org action can touch) and that allowed mutations do change something."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine

from tests.helpers import snapshot
from tests.org_helpers import Person, add_member, invite, make_org, person

TABLES = (
    "users",
    "orgs",
    "org_users",
    "org_limits",
    "org_invitations",
    "org_audit_log",
    "auth_sessions",
    "mail_outbox",
    "graph_users",
    "user_api_keys",
    "user_tokens",
)
ROLES = ("member", "admin", "owner")
PERSONAS = ("anonymous", "nonmember", *ROLES)


@dataclass
class OrgWorld:
    org_id: str
    target_id: str  # a plain member everyone may act on
    invitation_id: str  # a pending invitation


@dataclass
class World:
    people: dict[str, Person]
    own: OrgWorld
    other: OrgWorld


async def build_world(client: httpx.AsyncClient, engine: Engine) -> World:
    owner = await person(client, "owner")
    org = await make_org(client, owner, "Own")
    admin = await add_member(client, engine, owner, org["id"], "admin", "admin")
    member = await add_member(client, engine, owner, org["id"], "member", "member")
    target = await add_member(client, engine, owner, org["id"], "member", "target")
    inv = (await invite(client, owner, org["id"], "pending-own@example.com")).json()
    other_owner = await person(client, "other")
    other = await make_org(client, other_owner, "Other")
    other_target = await add_member(client, engine, other_owner, other["id"], "member", "othertarget")
    other_inv = (await invite(client, other_owner, other["id"], "pending-other@example.com")).json()
    nonmember = await person(client, "nonmember")
    return World(
        people={"owner": owner, "admin": admin, "member": member, "nonmember": nonmember},
        own=OrgWorld(org["id"], target.id, inv["user_id"]),
        other=OrgWorld(other["id"], other_target.id, other_inv["user_id"]),
    )


@dataclass(frozen=True)
class Endpoint:
    name: str
    method: str
    path: str
    expected: tuple[int, int, int]  # own org as member, admin, owner
    body: dict[str, Any] | None = None

    def url(self, org: OrgWorld) -> str:
        return self.path.format(org=org.org_id, target=org.target_id, inv=org.invitation_id)

    def payload(self, org: OrgWorld) -> dict[str, Any] | None:
        if self.body is None:
            return None
        return {k: (v.format(target=org.target_id) if isinstance(v, str) else v) for k, v in self.body.items()}


ENDPOINTS = [
    Endpoint("get_org", "GET", "/v1/orgs/{org}", (200, 200, 200)),
    Endpoint("update_org", "PUT", "/v1/orgs/{org}", (403, 200, 200), {"name": "Changed"}),
    Endpoint("delete_org", "DELETE", "/v1/orgs/{org}", (403, 403, 202)),
    Endpoint("leave_org", "POST", "/v1/orgs/{org}/leave", (204, 204, 409)),
    Endpoint(
        "transfer_ownership", "POST", "/v1/orgs/{org}/transfer-ownership", (403, 403, 200), {"user_id": "{target}"}
    ),
    Endpoint("list_members", "GET", "/v1/orgs/{org}/members", (200, 200, 200)),
    Endpoint(
        "invite_member",
        "POST",
        "/v1/orgs/{org}/members",
        (403, 201, 201),
        {"email": "brand-new@example.com", "role": "member"},
    ),
    Endpoint("change_member_role", "PUT", "/v1/orgs/{org}/members/{target}", (403, 200, 200), {"role": "admin"}),
    Endpoint("remove_member", "DELETE", "/v1/orgs/{org}/members/{target}", (403, 204, 204)),
    Endpoint("list_invitations", "GET", "/v1/orgs/{org}/invitations", (403, 200, 200)),
    Endpoint("resend_invitation", "POST", "/v1/orgs/{org}/invitations/{inv}/resend", (403, 200, 200)),
    Endpoint("revoke_invitation", "DELETE", "/v1/orgs/{org}/invitations/{inv}", (403, 204, 204)),
    Endpoint("org_audit", "GET", "/v1/orgs/{org}/audit", (403, 200, 200)),
    Endpoint("org_graphs", "GET", "/v1/orgs/{org}/graphs", (200, 200, 200)),
    Endpoint("org_limits", "GET", "/v1/orgs/{org}/limits", (200, 200, 200)),
    Endpoint("org_usage", "GET", "/v1/orgs/{org}/usage", (200, 200, 200)),
]


def expected_status(endpoint: Endpoint, persona: str, which: str) -> int:
    if persona == "anonymous":
        return 401
    if persona == "nonmember" or which == "other":
        return 404
    return endpoint.expected[ROLES.index(persona)]


async def call(client: httpx.AsyncClient, world: World, endpoint: Endpoint, persona: str, which: str) -> httpx.Response:
    org = world.own if which == "own" else world.other
    headers = {} if persona == "anonymous" else world.people[persona].auth
    return await client.request(endpoint.method, endpoint.url(org), json=endpoint.payload(org), headers=headers)


@pytest.mark.parametrize("endpoint", ENDPOINTS, ids=[e.name for e in ENDPOINTS])
async def test_matrix(client: httpx.AsyncClient, sync_engine: Engine, endpoint: Endpoint) -> None:
    world = await build_world(client, sync_engine)
    successes: list[str] = []
    seen: dict[tuple[str, str], int] = {}
    for persona in PERSONAS:
        for which in ("own", "other"):
            want = expected_status(endpoint, persona, which)
            if want < 300 and endpoint.method != "GET":
                successes.append(persona)  # run each allowed mutation on a fresh world below
                continue
            before = snapshot(sync_engine, TABLES)
            response = await call(client, world, endpoint, persona, which)
            seen[(persona, which)] = response.status_code
            assert response.status_code == want, (persona, which, response.text)
            if want >= 400:
                body = response.json()
                assert set(body) >= {"detail", "code", "request_id"}
                if want == 404:
                    assert body["code"] == "org_not_found"  # existence is not revealed
            assert snapshot(sync_engine, TABLES) == before, (persona, which)
    for persona in successes:
        fresh = await build_world(client, sync_engine)
        before = snapshot(sync_engine, TABLES)
        response = await call(client, fresh, endpoint, persona, "own")
        assert response.status_code == expected_status(endpoint, persona, "own"), (persona, response.text)
        assert snapshot(sync_engine, TABLES) != before, persona
        # and the same caller is still refused on the org they don't belong to
        other_before = snapshot(sync_engine, TABLES)
        refused = await call(client, fresh, endpoint, persona, "other")
        assert refused.status_code == 404
        assert snapshot(sync_engine, TABLES) == other_before


async def test_role_escalation_attempts_are_refused(client: httpx.AsyncClient, sync_engine: Engine) -> None:
    world = await build_world(client, sync_engine)
    owner, admin, member = (world.people[r] for r in ("owner", "admin", "member"))
    org = world.own.org_id
    attempts = [
        (member, "PUT", f"/v1/orgs/{org}/members/{member.id}", {"role": "admin"}, 403),
        (member, "POST", f"/v1/orgs/{org}/members", {"email": member.email, "role": "owner"}, 403),
        (admin, "PUT", f"/v1/orgs/{org}/members/{admin.id}", {"role": "owner"}, 403),
        (admin, "POST", f"/v1/orgs/{org}/members", {"email": "x@example.com", "role": "owner"}, 403),
        (admin, "PUT", f"/v1/orgs/{org}/members/{owner.id}", {"role": "member"}, 403),
        (admin, "DELETE", f"/v1/orgs/{org}/members/{owner.id}", None, 403),
        (admin, "POST", f"/v1/orgs/{org}/transfer-ownership", {"user_id": admin.id}, 403),
        (admin, "PUT", f"/v1/orgs/{org}", {"org_type": "enterprise"}, 403),
        (admin, "DELETE", f"/v1/orgs/{org}", None, 403),
        # body fields a caller may not set are ignored, never applied
        (member, "POST", "/v1/orgs/" + org + "/leave", {"role": "owner", "user_id": owner.id}, 204),
    ]
    before = snapshot(sync_engine, TABLES)
    for who, method, url, body, status in attempts[:-1]:
        response = await client.request(method, url, json=body, headers=who.auth)
        assert response.status_code == status, (method, url, body, response.text)
    assert snapshot(sync_engine, TABLES) == before
    who, method, url, body, status = attempts[-1]
    assert (await client.request(method, url, json=body, headers=who.auth)).status_code == status
    roles = (await client.get(f"/v1/orgs/{org}/members", headers=owner.auth)).json()["members"]
    assert {m["user_id"]: m["role"] for m in roles if m["is_active"]}[owner.id] == "owner"
    assert member.id not in {m["user_id"] for m in roles}


async def test_token_org_claim_grants_nothing(client: httpx.AsyncClient, sync_engine: Engine) -> None:
    """A token scoped to org A (switch-org) still gets 404 on org B, and a removed member's token
    scoped to the org loses access at once."""
    world = await build_world(client, sync_engine)
    member = world.people["member"]
    switched = await client.post("/v1/auth/switch-org", json={"org_id": world.own.org_id}, headers=member.auth)
    assert switched.status_code == 200
    scoped = {"Authorization": f"Bearer {switched.json()['token']}"}
    assert (await client.get(f"/v1/orgs/{world.other.org_id}", headers=scoped)).status_code == 404
    assert (await client.get(f"/v1/orgs/{world.own.org_id}", headers=scoped)).status_code == 200
    removed = await client.delete(
        f"/v1/orgs/{world.own.org_id}/members/{member.id}", headers=world.people["owner"].auth
    )
    assert removed.status_code == 204
    assert (await client.get(f"/v1/orgs/{world.own.org_id}", headers=scoped)).status_code == 404


async def test_api_key_caller_has_the_same_rights(client: httpx.AsyncClient, sync_engine: Engine) -> None:
    world = await build_world(client, sync_engine)
    created = await client.post("/v1/user/api-keys", json={"name": "ci"}, headers=world.people["member"].auth)
    assert created.status_code == 201
    key = {"X-API-Key": created.json()["key"]}
    assert (await client.get(f"/v1/orgs/{world.own.org_id}", headers=key)).status_code == 200
    assert (await client.get(f"/v1/orgs/{world.own.org_id}/audit", headers=key)).status_code == 403
    assert (await client.get(f"/v1/orgs/{world.other.org_id}", headers=key)).status_code == 404
