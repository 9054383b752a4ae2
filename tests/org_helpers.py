"""Helpers for the org, member and invitation tests (plain functions, no fixtures)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx
from sqlalchemy import Engine

from tests.helpers import bearer, last_mail, register, token_from_mail, unique_email

INVITE_KIND = "org_invitation"


@dataclass
class Person:
    id: str
    email: str
    token: str
    personal_org_id: str

    @property
    def auth(self) -> dict[str, str]:
        return bearer(self.token)


async def person(client: httpx.AsyncClient, prefix: str = "user") -> Person:
    body = await register(client, unique_email(prefix))
    return Person(body["user"]["id"], body["user"]["email"], body["token"], body["org"]["id"])


async def make_org(
    client: httpx.AsyncClient, owner: Person, name: str = "Acme", org_type: str = "team"
) -> dict[str, Any]:
    response = await client.post("/v1/orgs", json={"name": name, "org_type": org_type}, headers=owner.auth)
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


async def invite(
    client: httpx.AsyncClient, inviter: Person, org_id: str, email: str, role: str = "member"
) -> httpx.Response:
    return await client.post(f"/v1/orgs/{org_id}/members", json={"email": email, "role": role}, headers=inviter.auth)


def invitation_token(engine: Engine, email: str) -> str:
    return token_from_mail(last_mail(engine, email, INVITE_KIND), "Invitation token")


async def add_member(
    client: httpx.AsyncClient, engine: Engine, inviter: Person, org_id: str, role: str = "member", prefix: str = "m"
) -> Person:
    """Register a new person, invite them with ``role`` and accept as them."""
    member = await person(client, prefix)
    response = await invite(client, inviter, org_id, member.email, role)
    assert response.status_code == 201, response.text
    accepted = await client.post(
        f"/v1/invitations/{invitation_token(engine, member.email)}/accept", headers=member.auth
    )
    assert accepted.status_code == 200, accepted.text
    return member


@dataclass
class OrgSetup:
    org_id: str
    owner: Person
    admin: Person
    member: Person


async def org_with_roles(client: httpx.AsyncClient, engine: Engine, name: str = "Acme") -> OrgSetup:
    owner = await person(client, "owner")
    org = await make_org(client, owner, name)
    admin = await add_member(client, engine, owner, org["id"], "admin", "admin")
    member = await add_member(client, engine, owner, org["id"], "member", "member")
    return OrgSetup(org["id"], owner, admin, member)
