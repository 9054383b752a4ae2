"""Invitations: create (hash-only token, mail with the accept link), preview, accept (existing account
or new person), single use under 20 concurrent accepts, expiry, resend rotation, revoke, rate limits,
member caps, the caller's invitation list, cleanup (+ CLI) and the HTML accept page."""

from __future__ import annotations

import asyncio
import hashlib
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import Engine, text

from robosystems.orgs.invitations import cleanup_invitations
from tests.helpers import PASSWORD, bearer, count, last_mail, register, snapshot, unique_email
from tests.org_helpers import INVITE_KIND, add_member, invitation_token, invite, make_org, org_with_roles, person
from tests.test_orgs import ORG_TABLES, _cli


def expire(engine: Engine, email: str) -> None:
    with engine.begin() as conn:
        conn.execute(
            text("UPDATE org_invitations SET expires_at = now() - interval '1 second' WHERE email = :e"), {"e": email}
        )


async def test_invite_stores_only_a_hash_and_mails_the_link(client: httpx.AsyncClient, sync_engine: Engine) -> None:
    setup = await org_with_roles(client, sync_engine)
    response = await invite(client, setup.admin, setup.org_id, "  Newbie@Example.COM ", "member")
    assert response.status_code == 201
    body = response.json()
    assert body["is_active"] is False and body["email"] == "newbie@example.com"
    mail = last_mail(sync_engine, "newbie@example.com", INVITE_KIND)
    token = invitation_token(sync_engine, "newbie@example.com")
    assert len(token) >= 43  # 32 random bytes, base64url
    assert f"http://127.0.0.1:8000/invitations/{token}" in mail
    assert "Acme" in mail and "as member" in mail
    with sync_engine.connect() as conn:
        row = conn.execute(text("SELECT * FROM org_invitations WHERE email = 'newbie@example.com'")).one()
    assert row.token_hash == hashlib.sha256(token.encode()).hexdigest()
    assert token not in " ".join(str(v) for v in row)
    assert row.status == "pending" and row.invited_by == setup.admin.id and row.id == body["user_id"]
    assert timedelta(hours=167, minutes=59) < row.expires_at - row.created_at <= timedelta(hours=168, seconds=5)


async def test_invite_refusals_change_nothing(client: httpx.AsyncClient, sync_engine: Engine) -> None:
    setup = await org_with_roles(client, sync_engine)
    assert (await invite(client, setup.owner, setup.org_id, "twice@example.com")).status_code == 201
    before = snapshot(sync_engine, ORG_TABLES)
    cases = [
        (setup.member, setup.org_id, "x@example.com", "member", 403, "insufficient_role"),
        (setup.admin, setup.org_id, "x@example.com", "owner", 403, "owner_required"),
        (setup.owner, setup.org_id, setup.member.email.upper(), "member", 409, "already_member"),
        (setup.owner, setup.org_id, "TWICE@example.com", "admin", 409, "already_invited"),
        (setup.owner, setup.owner.personal_org_id, "x@example.com", "member", 409, "personal_org"),
        (setup.owner, setup.org_id, "not-an-email", "member", 422, None),
        (setup.owner, setup.org_id, "x@example.com", "superuser", 422, None),
    ]
    for who, org_id, email, role, status, code in cases:
        response = await invite(client, who, org_id, email, role)
        assert response.status_code == status, (email, role, response.text)
        if code:
            assert response.json()["code"] == code
    assert snapshot(sync_engine, ORG_TABLES) == before


async def test_invitations_disabled(app_factory, sync_engine: Engine) -> None:  # type: ignore[no-untyped-def]
    async with app_factory() as (_, client):
        setup = await org_with_roles(client, sync_engine)
        await invite(client, setup.owner, setup.org_id, "later@example.com")
        token = invitation_token(sync_engine, "later@example.com")
    async with app_factory(org_member_invitations_enabled=False) as (_, client):
        refused = await invite(client, setup.owner, setup.org_id, "x@example.com")
        assert refused.status_code == 503
        assert refused.json()["code"] == "invitations_disabled"
        assert (await client.get(f"/v1/invitations/{token}")).status_code == 503
        assert (
            await client.post(f"/v1/invitations/{token}/accept", json={"name": "L", "password": PASSWORD})
        ).status_code == 503
    assert count(sync_engine, "SELECT count(*) FROM org_invitations") == 3


# --- preview ---------------------------------------------------------------------------------------


async def test_preview_states(client: httpx.AsyncClient, sync_engine: Engine) -> None:
    setup = await org_with_roles(client, sync_engine)
    await invite(client, setup.admin, setup.org_id, "peek@example.com", "admin")
    token = invitation_token(sync_engine, "peek@example.com")
    response = await client.get(f"/v1/invitations/{token}")
    assert response.status_code == 200
    body = response.json()
    assert body["org_name"] == "Acme" and body["role"] == "admin" and body["inviter_name"] == "Test User"
    assert body["email"] == "pe**@example.com"
    assert datetime.fromisoformat(body["expires_at"]) > datetime.now(UTC) + timedelta(days=6)

    unknown = await client.get("/v1/invitations/" + "A" * 43)
    assert unknown.status_code == 404
    expire(sync_engine, "peek@example.com")
    expired = await client.get(f"/v1/invitations/{token}")
    assert expired.status_code == 410
    assert expired.json()["code"] == "invitation_expired"
    with sync_engine.begin() as conn:
        conn.execute(
            text("UPDATE org_invitations SET status = 'revoked', revoked_at = now() WHERE email = 'peek@example.com'")
        )
    revoked = await client.get(f"/v1/invitations/{token}")
    assert revoked.status_code == 404
    assert revoked.json()["detail"] == unknown.json()["detail"]
    assert revoked.json()["code"] == unknown.json()["code"] == "invitation_not_found"
    assert (await client.get("/v1/invitations/" + "x" * 513)).status_code == 422


# --- accept ----------------------------------------------------------------------------------------


async def test_accept_as_logged_in_invitee(client: httpx.AsyncClient, sync_engine: Engine) -> None:
    setup = await org_with_roles(client, sync_engine)
    joiner = await person(client, "joiner")
    await invite(client, setup.admin, setup.org_id, joiner.email.upper(), "admin")
    token = invitation_token(sync_engine, joiner.email)

    stranger = await person(client, "stranger")
    before = snapshot(sync_engine, ORG_TABLES)
    wrong = await client.post(f"/v1/invitations/{token}/accept", headers=stranger.auth)
    assert wrong.status_code == 403
    assert wrong.json()["code"] == "invitation_email_mismatch"
    anonymous = await client.post(f"/v1/invitations/{token}/accept", json={"name": "Hijack", "password": PASSWORD})
    assert anonymous.status_code == 401
    assert anonymous.json()["code"] == "login_required"
    assert (await client.post(f"/v1/invitations/{token}/accept", headers=bearer("garbage"))).status_code == 401
    assert snapshot(sync_engine, ORG_TABLES) == before

    accepted = await client.post(f"/v1/invitations/{token}/accept", headers=joiner.auth)
    assert accepted.status_code == 200
    body = accepted.json()
    assert body["user"]["id"] == joiner.id
    assert body["org"] == {"id": setup.org_id, "name": "Acme", "type": "team", "role": "admin"}
    assert body["token"] and body["expires_in"] == 3600
    me = await client.get("/v1/auth/me", headers=bearer(body["token"]))
    assert me.json()["org"]["id"] == setup.org_id
    assert (await client.get(f"/v1/orgs/{setup.org_id}/invitations", headers=bearer(body["token"]))).status_code == 200
    with sync_engine.connect() as conn:
        inv = conn.execute(
            text("SELECT status, accepted_by, accepted_at FROM org_invitations WHERE email = :e"), {"e": joiner.email}
        ).one()
        event = conn.execute(
            text(
                "SELECT actor_user_id, details FROM org_audit_log WHERE org_id = :o AND "
                "event_type = 'member.joined' AND target_user_id = :u"
            ),
            {"o": setup.org_id, "u": joiner.id},
        ).one()
    assert (inv.status, inv.accepted_by) == ("accepted", joiner.id) and inv.accepted_at is not None
    assert event.actor_user_id == joiner.id
    assert event.details["role"] == "admin" and event.details["invited_by"] == setup.admin.id

    again = await client.post(f"/v1/invitations/{token}/accept", headers=joiner.auth)
    assert again.status_code == 404
    assert (await client.get(f"/v1/invitations/{token}")).status_code == 404


async def test_accept_as_new_person_creates_the_account(client: httpx.AsyncClient, sync_engine: Engine) -> None:
    setup = await org_with_roles(client, sync_engine)
    email = unique_email("fresh")
    await invite(client, setup.owner, setup.org_id, email)
    token = invitation_token(sync_engine, email)
    missing = await client.post(f"/v1/invitations/{token}/accept", json={"name": "Fresh"})
    assert missing.status_code == 422
    assert missing.json()["code"] == "account_details_required"
    weak = await client.post(f"/v1/invitations/{token}/accept", json={"name": "Fresh", "password": "short"})
    assert weak.status_code == 422
    assert weak.json()["code"] == "weak_password"
    assert count(sync_engine, "SELECT count(*) FROM users WHERE email = :e", e=email) == 0

    accepted = await client.post(
        f"/v1/invitations/{token}/accept", json={"name": "Fresh Person", "password": PASSWORD, "email": "x@evil.com"}
    )
    assert accepted.status_code == 200, accepted.text
    body = accepted.json()
    assert body["user"]["email"] == email and body["user"]["name"] == "Fresh Person"
    assert body["org"]["id"] == setup.org_id and body["org"]["role"] == "member"
    user_id = body["user"]["id"]
    assert count(sync_engine, "SELECT count(*) FROM users WHERE id = :u AND email_verified", u=user_id) == 1
    assert count(sync_engine, "SELECT count(*) FROM orgs WHERE personal_user_id = :u", u=user_id) == 1
    assert count(sync_engine, "SELECT count(*) FROM org_users WHERE user_id = :u AND is_active", u=user_id) == 2
    login = await client.post("/v1/auth/login", json={"email": email, "password": PASSWORD})
    assert login.status_code == 200


async def test_registering_an_invited_email_leaves_the_invitation_pending(
    client: httpx.AsyncClient, sync_engine: Engine
) -> None:
    setup = await org_with_roles(client, sync_engine)
    email = unique_email("later")
    await invite(client, setup.owner, setup.org_id, email)
    token = invitation_token(sync_engine, email)
    registered = await register(client, email)
    assert (
        count(sync_engine, "SELECT count(*) FROM org_invitations WHERE email = :e AND status = 'pending'", e=email) == 1
    )
    assert (
        count(
            sync_engine,
            "SELECT count(*) FROM org_users WHERE org_id = :o AND user_id = :u",
            o=setup.org_id,
            u=registered["user"]["id"],
        )
        == 0
    )
    mine = await client.get("/v1/user/invitations", headers=bearer(registered["token"]))
    assert mine.status_code == 200
    listed = mine.json()
    assert listed["total"] == 1
    assert listed["invitations"][0]["org_id"] == setup.org_id
    assert listed["invitations"][0]["org_name"] == "Acme"
    assert listed["invitations"][0]["role"] == "member"
    assert (await client.get("/v1/user/invitations", headers=setup.member.auth)).json() == {
        "invitations": [],
        "total": 0,
    }
    assert (await client.get("/v1/user/invitations")).status_code == 401
    accepted = await client.post(f"/v1/invitations/{token}/accept", headers=bearer(registered["token"]))
    assert accepted.status_code == 200
    assert (await client.get("/v1/user/invitations", headers=bearer(registered["token"]))).json()["total"] == 0


async def test_twenty_concurrent_accepts_make_one_membership(client: httpx.AsyncClient, sync_engine: Engine) -> None:
    setup = await org_with_roles(client, sync_engine)
    joiner = await person(client, "racer")
    await invite(client, setup.owner, setup.org_id, joiner.email)
    token = invitation_token(sync_engine, joiner.email)
    results = await asyncio.gather(
        *(client.post(f"/v1/invitations/{token}/accept", headers=joiner.auth) for _ in range(20))
    )
    assert sorted(r.status_code for r in results) == [200] + [404] * 19
    assert (
        count(
            sync_engine,
            "SELECT count(*) FROM org_users WHERE org_id = :o AND user_id = :u",
            o=setup.org_id,
            u=joiner.id,
        )
        == 1
    )
    assert (
        count(
            sync_engine,
            "SELECT count(*) FROM org_audit_log WHERE org_id = :o AND event_type = 'member.joined' "
            "AND target_user_id = :u",
            o=setup.org_id,
            u=joiner.id,
        )
        == 1
    )
    # one session per successful accept only
    assert (
        count(
            sync_engine,
            "SELECT count(*) FROM auth_sessions WHERE user_id = :u AND org_id = :o",
            u=joiner.id,
            o=setup.org_id,
        )
        == 1
    )


async def test_twenty_concurrent_new_person_accepts_make_one_account(
    client: httpx.AsyncClient, sync_engine: Engine
) -> None:
    setup = await org_with_roles(client, sync_engine)
    email = unique_email("crowd")
    await invite(client, setup.owner, setup.org_id, email)
    token = invitation_token(sync_engine, email)
    results = await asyncio.gather(
        *(
            client.post(f"/v1/invitations/{token}/accept", json={"name": f"P{i}", "password": PASSWORD})
            for i in range(20)
        )
    )
    statuses = sorted(r.status_code for r in results)
    assert statuses.count(200) == 1, statuses
    assert set(statuses) <= {200, 401, 404, 409}
    assert count(sync_engine, "SELECT count(*) FROM users WHERE email = :e", e=email) == 1
    assert (
        count(
            sync_engine,
            "SELECT count(*) FROM org_users ou JOIN users u ON u.id = ou.user_id WHERE ou.org_id = :o AND u.email = :e",
            o=setup.org_id,
            e=email,
        )
        == 1
    )


async def test_expired_invitation_is_410_and_resend_revives_it(client: httpx.AsyncClient, sync_engine: Engine) -> None:
    setup = await org_with_roles(client, sync_engine)
    joiner = await person(client, "late")
    created = (await invite(client, setup.owner, setup.org_id, joiner.email)).json()
    old_token = invitation_token(sync_engine, joiner.email)
    expire(sync_engine, joiner.email)
    before = snapshot(sync_engine, ORG_TABLES)
    late = await client.post(f"/v1/invitations/{old_token}/accept", headers=joiner.auth)
    assert late.status_code == 410
    assert late.json()["code"] == "invitation_expired"
    assert snapshot(sync_engine, ORG_TABLES) == before
    listed = (await client.get(f"/v1/orgs/{setup.org_id}/invitations?status=expired", headers=setup.admin.auth)).json()
    assert [i["id"] for i in listed["invitations"]] == [created["user_id"]]

    resent = await client.post(
        f"/v1/orgs/{setup.org_id}/invitations/{created['user_id']}/resend", headers=setup.admin.auth
    )
    assert resent.status_code == 200
    assert resent.json()["status"] == "pending"
    new_token = invitation_token(sync_engine, joiner.email)
    assert new_token != old_token
    assert (await client.post(f"/v1/invitations/{old_token}/accept", headers=joiner.auth)).status_code == 404
    assert (await client.post(f"/v1/invitations/{new_token}/accept", headers=joiner.auth)).status_code == 200
    assert count(sync_engine, "SELECT send_count FROM org_invitations WHERE id = :i", i=created["user_id"]) == 2


async def test_resend_rotates_and_revoke_kills(client: httpx.AsyncClient, sync_engine: Engine) -> None:
    setup = await org_with_roles(client, sync_engine)
    created = (await invite(client, setup.owner, setup.org_id, "rot@example.com", "admin")).json()
    first = invitation_token(sync_engine, "rot@example.com")
    url = f"/v1/orgs/{setup.org_id}/invitations/{created['user_id']}"
    assert (await client.post(url + "/resend", headers=setup.member.auth)).status_code == 403
    resent = await client.post(url + "/resend", headers=setup.admin.auth)
    assert resent.status_code == 200
    info = resent.json()
    assert set(info) == {"id", "email", "role", "status", "invited_by", "created_at", "expires_at"}
    assert (info["id"], info["role"], info["invited_by"]) == (created["user_id"], "admin", setup.owner.id)
    second = invitation_token(sync_engine, "rot@example.com")
    assert second != first
    assert (await client.get(f"/v1/invitations/{first}")).status_code == 404
    assert (await client.get(f"/v1/invitations/{second}")).status_code == 200

    other = await make_org(client, await person(client), "Other")
    assert (
        await client.delete(f"/v1/orgs/{other['id']}/invitations/{created['user_id']}", headers=setup.owner.auth)
    ).status_code == 404
    revoked = await client.delete(url, headers=setup.admin.auth)
    assert revoked.status_code == 204
    assert (await client.get(f"/v1/invitations/{second}")).status_code == 404
    assert (await client.delete(url, headers=setup.admin.auth)).status_code == 409
    assert (await client.post(url + "/resend", headers=setup.admin.auth)).status_code == 409
    listing = (await client.get(f"/v1/orgs/{setup.org_id}/invitations", headers=setup.admin.auth)).json()
    assert {i["email"]: i["status"] for i in listing["invitations"]}["rot@example.com"] == "revoked"
    assert listing["total"] == 3  # plus the two accepted ones from the setup
    # after a revoke the same email can be invited again
    assert (await invite(client, setup.owner, setup.org_id, "rot@example.com")).status_code == 201


async def test_admin_cannot_resend_an_owner_invitation(client: httpx.AsyncClient, sync_engine: Engine) -> None:
    setup = await org_with_roles(client, sync_engine)
    created = (await invite(client, setup.owner, setup.org_id, "boss@example.com", "owner")).json()
    refused = await client.post(
        f"/v1/orgs/{setup.org_id}/invitations/{created['user_id']}/resend", headers=setup.admin.auth
    )
    assert refused.status_code == 403


async def test_invite_and_resend_are_rate_limited_per_org(app_factory, sync_engine: Engine) -> None:  # type: ignore[no-untyped-def]
    async with app_factory(
        rate_limit_org_invitations_per_org="3/hour", rate_limit_invitation_resend_per_org="2/hour"
    ) as (_, client):
        owner = await person(client)
        org = await make_org(client, owner)
        other = await make_org(client, owner, "Other")
        statuses = [(await invite(client, owner, org["id"], f"r{i}@example.com")).status_code for i in range(4)]
        assert statuses == [201, 201, 201, 429]
        limited = await invite(client, owner, org["id"], "r9@example.com")
        assert limited.status_code == 429
        assert int(limited.headers["retry-after"]) >= 1
        assert (await invite(client, owner, other["id"], "r9@example.com")).status_code == 201  # per org
        inv_id = (await client.get(f"/v1/orgs/{org['id']}/invitations", headers=owner.auth)).json()["invitations"][0][
            "id"
        ]
        resends = [
            (await client.post(f"/v1/orgs/{org['id']}/invitations/{inv_id}/resend", headers=owner.auth)).status_code
            for _ in range(3)
        ]
        assert resends == [200, 200, 429]
    assert count(sync_engine, "SELECT count(*) FROM org_invitations WHERE org_id = :o", o=org["id"]) == 3


async def test_member_cap_at_invite_and_again_at_accept(app_factory, sync_engine: Engine) -> None:  # type: ignore[no-untyped-def]
    async with app_factory(org_max_members=3) as (_, client):
        owner = await person(client)
        org = await make_org(client, owner)
        a, b = await person(client, "a"), await person(client, "b")
        assert (await invite(client, owner, org["id"], a.email)).status_code == 201
        assert (await invite(client, owner, org["id"], b.email)).status_code == 201
        full = await invite(client, owner, org["id"], "c@example.com")
        assert full.status_code == 409
        assert full.json()["code"] == "member_limit_reached"
        tokens = {p.id: invitation_token(sync_engine, p.email) for p in (a, b)}
    async with app_factory(org_max_members=2) as (_, client):
        assert (await client.post(f"/v1/invitations/{tokens[a.id]}/accept", headers=a.auth)).status_code == 200
        refused = await client.post(f"/v1/invitations/{tokens[b.id]}/accept", headers=b.auth)
        assert refused.status_code == 409
        assert refused.json()["code"] == "member_limit_reached"
    assert count(sync_engine, "SELECT count(*) FROM org_users WHERE org_id = :o", o=org["id"]) == 2
    assert count(sync_engine, "SELECT count(*) FROM org_invitations WHERE status = 'pending'") == 1


async def test_accept_into_deleted_org_is_404(client: httpx.AsyncClient, sync_engine: Engine) -> None:
    setup = await org_with_roles(client, sync_engine)
    joiner = await person(client)
    await invite(client, setup.owner, setup.org_id, joiner.email)
    token = invitation_token(sync_engine, joiner.email)
    assert (await client.delete(f"/v1/orgs/{setup.org_id}", headers=setup.owner.auth)).status_code == 202
    assert (await client.get(f"/v1/invitations/{token}")).status_code == 404
    assert (await client.post(f"/v1/invitations/{token}/accept", headers=joiner.auth)).status_code == 404
    assert (await client.get("/v1/user/invitations", headers=joiner.auth)).json()["total"] == 0


# --- cleanup -----------------------------------------------------------------------------------


async def test_cleanup_expires_and_deletes_after_retention(
    app: FastAPI, client: httpx.AsyncClient, sync_engine: Engine, database_url: str, tmp_path: Path
) -> None:
    setup = await org_with_roles(client, sync_engine)
    for email in ("e1@example.com", "e2@example.com", "live@example.com"):
        await invite(client, setup.owner, setup.org_id, email)
    expire(sync_engine, "e1@example.com")
    expire(sync_engine, "e2@example.com")
    async with app.state.sessionmaker() as session, session.begin():
        first = await cleanup_invitations(session, retention_days=30)
    assert first == {"expired": 2, "deleted": 0}
    assert count(sync_engine, "SELECT count(*) FROM org_invitations WHERE status = 'expired'") == 2
    assert count(sync_engine, "SELECT count(*) FROM org_audit_log WHERE event_type = 'invitation.expired'") == 2
    with sync_engine.begin() as conn:
        conn.execute(
            text(
                "UPDATE org_invitations SET updated_at = now() - interval '31 days' "
                "WHERE email IN ('e1@example.com', 'live@example.com')"
            )
        )
    report = _cli(database_url, tmp_path, "cleanup-invitations")
    # e1 (expired, old) and the two accepted setup invitations are not old enough... only e1 goes
    assert report == {"expired": 0, "deleted": 1}
    assert count(sync_engine, "SELECT count(*) FROM org_invitations WHERE email = 'e1@example.com'") == 0
    assert count(sync_engine, "SELECT count(*) FROM org_invitations WHERE email = 'live@example.com'") == 1
    assert _cli(database_url, tmp_path, "cleanup-invitations", "--retention-days", "0")["deleted"] == 3


# --- HTML accept page --------------------------------------------------------------------------


async def test_accept_page_new_person(client: httpx.AsyncClient, sync_engine: Engine) -> None:
    owner = await person(client)
    org = await make_org(client, owner, "<b>Evil & Co</b>")
    email = unique_email("page")
    await invite(client, owner, org["id"], email, "admin")
    token = invitation_token(sync_engine, email)
    page = await client.get(f"/invitations/{token}")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert "&lt;b&gt;Evil &amp; Co&lt;/b&gt;" in page.text and "<b>Evil" not in page.text
    assert "<strong>admin</strong>" in page.text
    assert 'name="name"' in page.text and "<script" not in page.text

    weak = await client.post(f"/invitations/{token}", data={"name": "Page Person", "password": "short"})
    assert weak.status_code == 422
    assert "at least 12" in weak.text
    assert count(sync_engine, "SELECT count(*) FROM users WHERE email = :e", e=email) == 0
    done = await client.post(f"/invitations/{token}", data={"name": "Page Person", "password": PASSWORD})
    assert done.status_code == 200, done.text
    assert "You joined" in done.text
    assert (
        count(
            sync_engine,
            "SELECT count(*) FROM org_users ou JOIN users u ON u.id = ou.user_id "
            "WHERE ou.org_id = :o AND u.email = :e AND ou.role = 'admin'",
            o=org["id"],
            e=email,
        )
        == 1
    )
    assert (
        count(
            sync_engine,
            "SELECT count(*) FROM auth_sessions s JOIN users u ON u.id = s.user_id WHERE u.email = :e",
            e=email,
        )
        == 0
    )
    used = await client.get(f"/invitations/{token}")
    assert used.status_code == 404
    assert "not valid" in used.text


async def test_accept_page_existing_account(client: httpx.AsyncClient, sync_engine: Engine) -> None:
    owner = await person(client)
    org = await make_org(client, owner)
    joiner = await person(client, "existing")
    await invite(client, owner, org["id"], joiner.email)
    token = invitation_token(sync_engine, joiner.email)
    page = await client.get(f"/invitations/{token}")
    assert 'name="name"' not in page.text and 'name="password"' in page.text
    wrong = await client.post(f"/invitations/{token}", data={"password": "wrong password 1234"})
    assert wrong.status_code == 401
    assert (
        count(
            sync_engine, "SELECT count(*) FROM org_users WHERE org_id = :o AND user_id = :u", o=org["id"], u=joiner.id
        )
        == 0
    )
    sessions_before = count(
        sync_engine, "SELECT count(*) FROM auth_sessions WHERE user_id = :u AND revoked_at IS NULL", u=joiner.id
    )
    done = await client.post(f"/invitations/{token}", data={"password": PASSWORD})
    assert done.status_code == 200
    assert (
        count(
            sync_engine,
            "SELECT count(*) FROM org_users WHERE org_id = :o AND user_id = :u AND is_active",
            o=org["id"],
            u=joiner.id,
        )
        == 1
    )
    assert (
        count(sync_engine, "SELECT count(*) FROM auth_sessions WHERE user_id = :u AND revoked_at IS NULL", u=joiner.id)
        == sessions_before
    )


async def test_accept_page_expired(client: httpx.AsyncClient, sync_engine: Engine) -> None:
    owner = await person(client)
    org = await make_org(client, owner)
    await invite(client, owner, org["id"], "gone@example.com")
    token = invitation_token(sync_engine, "gone@example.com")
    expire(sync_engine, "gone@example.com")
    page = await client.get(f"/invitations/{token}")
    assert page.status_code == 410
    assert "expired" in page.text
    posted = await client.post(f"/invitations/{token}", data={"name": "X", "password": PASSWORD})
    assert posted.status_code == 410
    assert count(sync_engine, "SELECT count(*) FROM users WHERE email = 'gone@example.com'") == 0


@pytest.mark.parametrize("token", ["A" * 43, "short"])
async def test_accept_page_unknown_token(client: httpx.AsyncClient, token: str) -> None:
    page = await client.get(f"/invitations/{token}")
    assert page.status_code == 404
    assert "text/html" in page.headers["content-type"]


async def test_add_member_helper_roundtrip(client: httpx.AsyncClient, sync_engine: Engine) -> None:
    """The helper used everywhere: invite + accept yields an active membership with the role."""
    owner = await person(client)
    org = await make_org(client, owner)
    member = await add_member(client, sync_engine, owner, org["id"], "admin")
    assert (
        count(
            sync_engine,
            "SELECT count(*) FROM org_users WHERE org_id = :o AND user_id = :u AND role = 'admin' AND is_active",
            o=org["id"],
            u=member.id,
        )
        == 1
    )
