"""Outbound webhooks end to end: the endpoint API, events written with the change, signed delivery to a real HTTP
receiver in this process (verified with the ``standardwebhooks`` package), retries, rotation, SSRF refusals,
disabling after the retry window, and the per-endpoint cap."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import Engine, text
from standardwebhooks import Webhook, WebhookVerificationError

from robosystems.outbound.catalogue import SUBSCRIBABLE, catalogue_markdown
from robosystems.outbound.guard import Policy, UrlRefused, classify, parse_url
from robosystems.worker import context
from robosystems.worker.context import WorkerContext
from tests.conftest import ROOT
from tests.helpers import count
from tests.org_helpers import Person, add_member, make_org, person
from tests.outbound_support import (
    FAST,
    Receiver,
    deliver,
    deliver_until,
    event_data,
    event_types,
    outbound_ctx,
    outbound_worker,
    receiver,
    rows,
)

__all__ = ["outbound_worker", "receiver"]  # fixtures

App = tuple[FastAPI, httpx.AsyncClient]
ALL_ORG_EVENTS = [t for t in SUBSCRIBABLE if t.startswith(("org.", "member.", "invitation."))]


@pytest.fixture
async def dev_app(app_factory: Callable[..., Any]) -> AsyncIterator[App]:
    """OUTBOUND_WEBHOOKS_ALLOW_PRIVATE=true (the receiver is on loopback)."""
    async with app_factory(**FAST) as pair:
        yield pair


@pytest.fixture
async def strict_app(app_factory: Callable[..., Any]) -> AsyncIterator[App]:
    async with app_factory(outbound_webhooks_allow_private=False, org_max_webhook_endpoints=2) as pair:
        yield pair


def hooks(org_id: str, rest: str = "") -> str:
    return f"/v1/orgs/{org_id}/webhook-endpoints{rest}"


async def register_endpoint(
    client: httpx.AsyncClient, owner: Person, org_id: str, url: str, events: list[str] | None = None
) -> dict[str, Any]:
    created = await client.post(
        hooks(org_id), json={"url": url, "events": events or ["org.updated"]}, headers=owner.auth
    )
    assert created.status_code == 201, created.text
    body: dict[str, Any] = created.json()
    return body


async def team(client: httpx.AsyncClient, name: str = "Acme") -> tuple[Person, str]:
    """A new person and a team org they own."""
    owner = await person(client, "owner")
    return owner, (await make_org(client, owner, name=name))["id"]


def verify(secret: str, received: Any) -> Any:
    return Webhook(secret).verify(received.body, received.headers)


# --- the endpoint API ------------------------------------------------------------------------------------------------


async def test_endpoint_api_secret_once_roles_and_limits(strict_app: App, sync_engine: Engine) -> None:
    _, client = strict_app
    owner = await person(client, "owner")
    org = await make_org(client, owner)
    org_id = org["id"]
    admin = await add_member(client, sync_engine, owner, org_id, "admin", "adm")
    member = await add_member(client, sync_engine, owner, org_id, "member", "mem")
    stranger = await person(client, "stranger")

    created = await client.post(
        hooks(org_id),
        json={
            "url": "https://hooks.example.com/in",
            "events": ["graph.provisioned", "invoice.payment_failed", "graph.provisioned"],
            "description": "ops",
        },
        headers=admin.auth,
    )
    assert created.status_code == 201, created.text
    endpoint = created.json()
    assert endpoint["secret"].startswith("whsec_") and len(endpoint["secret"]) > 40
    assert endpoint["events"] == ["graph.provisioned", "invoice.payment_failed"] and endpoint["enabled"] is True
    ep = endpoint["id"]
    listed = (await client.get(hooks(org_id), headers=owner.auth)).json()
    assert listed["total"] == 1 and "secret" not in listed["endpoints"][0]
    one = (await client.get(hooks(org_id, f"/{ep}"), headers=owner.auth)).json()
    assert "secret" not in one and one["url"] == "https://hooks.example.com/in"
    assert endpoint["secret"] not in json.dumps([listed, one])

    patched = await client.patch(
        hooks(org_id, f"/{ep}"), json={"events": ["credits.low"], "description": None}, headers=owner.auth
    )
    assert patched.status_code == 200 and patched.json()["events"] == ["credits.low"]
    assert patched.json()["description"] is None

    # roles: members 403, strangers and other orgs' ids 404
    assert (await client.get(hooks(org_id), headers=member.auth)).status_code == 403
    assert (await client.get(hooks(org_id), headers=stranger.auth)).status_code == 404
    assert (await client.get(hooks(org_id, f"/{ep}"), headers=stranger.auth)).status_code == 404
    other = await make_org(client, stranger, name="Other")
    assert (await client.get(hooks(other["id"], f"/{ep}"), headers=stranger.auth)).status_code == 404
    assert (await client.delete(hooks(other["id"], f"/{ep}"), headers=stranger.auth)).status_code == 404

    # unknown event types: FastAPI's 422 shape, nothing created
    bad = await client.post(
        hooks(org_id), json={"url": "https://x.example.com", "events": ["org.exploded"]}, headers=owner.auth
    )
    assert bad.status_code == 422 and isinstance(bad.json()["detail"], list)
    assert "org.exploded" in bad.text
    assert (
        await client.post(hooks(org_id), json={"url": "https://x.example.com", "events": []}, headers=owner.auth)
    ).status_code == 422
    assert (
        await client.post(hooks(org_id), json={"url": "https://x.example.com", "events": ["ping"]}, headers=owner.auth)
    ).status_code == 422

    # the per-org limit (2 here), counted under the org lock
    second = await client.post(
        hooks(org_id), json={"url": "https://b.example.com", "events": ["org.updated"]}, headers=owner.auth
    )
    assert second.status_code == 201
    third = await client.post(
        hooks(org_id), json={"url": "https://c.example.com", "events": ["org.updated"]}, headers=owner.auth
    )
    assert third.status_code == 403 and third.json()["code"] == "webhook_endpoint_limit_reached"

    assert (await client.delete(hooks(org_id, f"/{ep}"), headers=owner.auth)).status_code == 204
    assert (await client.get(hooks(org_id, f"/{ep}"), headers=owner.auth)).status_code == 404
    audited = count(
        sync_engine, "SELECT count(*) FROM org_audit_log WHERE org_id = :o AND event_type LIKE 'webhook.%'", o=org_id
    )
    assert audited == 4  # two created, one updated, one deleted


async def test_ssrf_refusals_at_registration(strict_app: App, dev_app: App, receiver: Receiver) -> None:
    _, client = strict_app
    owner, org_id = await team(client)

    async def refused(url: str, c: httpx.AsyncClient = client) -> str:
        response = await c.post(hooks(org_id), json={"url": url, "events": ["org.updated"]}, headers=owner.auth)
        assert response.status_code == 422, (url, response.text)
        code: str = response.json()["code"]
        return code

    # metadata and link-local: always refused
    for url in (
        "http://169.254.169.254/latest/meta-data/",
        "http://[fd00:ec2::254]/",
        "http://169.254.1.1:8080/",
        "http://[::ffff:169.254.169.254]/",
        "http://[fe80::1]/",
        "http://0.0.0.0/",
    ):
        assert await refused(url) == "webhook_url_forbidden", url
    # loopback / private without OUTBOUND_WEBHOOKS_ALLOW_PRIVATE, also behind a DNS name
    for url in (
        receiver.url(),
        receiver.url(host="localhost"),
        "http://10.1.2.3/",
        "http://[fc00::1]/",
        "http://2130706433/",
    ):
        assert await refused(url) == "webhook_url_private", url
    assert await refused("https://user:pw@hooks.example.com/") == "webhook_url_invalid"
    assert await refused("ftp://hooks.example.com/") == "webhook_url_invalid"

    # with the flag, private targets are accepted, metadata still is not
    _, dev = dev_app
    dev_owner = await person(dev, "dev")
    dev_org = (await make_org(dev, dev_owner))["id"]
    ok = await dev.post(
        hooks(dev_org), json={"url": receiver.url(host="localhost"), "events": ["org.updated"]}, headers=dev_owner.auth
    )
    assert ok.status_code == 201, ok.text
    meta = await dev.post(
        hooks(dev_org), json={"url": "http://169.254.169.254/", "events": ["org.updated"]}, headers=dev_owner.auth
    )
    assert meta.status_code == 422 and meta.json()["code"] == "webhook_url_forbidden"


def test_address_policy_and_https_rule() -> None:
    from ipaddress import ip_address

    assert classify(ip_address("93.184.216.34")) == "public"
    assert classify(ip_address("2606:4700::1111")) == "public"
    assert classify(ip_address("127.0.0.1")) == "private"
    assert classify(ip_address("::1")) == "private"
    assert classify(ip_address("100.64.0.1")) == "private"  # carrier-grade NAT
    for forbidden in (
        "169.254.169.254",
        "fd00:ec2::254",
        "100.100.100.200",
        "::ffff:169.254.169.254",
        "224.0.0.1",
        "255.255.255.255",
        "2002:a9fe:a9fe::",
    ):
        assert classify(ip_address(forbidden)) == "forbidden", forbidden
    production = Policy(allow_private=False, allow_http=False, resolve_timeout=1.0)
    with pytest.raises(UrlRefused) as refused:
        parse_url("http://hooks.example.com/", production)
    assert refused.value.code == "webhook_url_insecure"
    assert parse_url("https://hooks.example.com:8443/x?y=1", production).port == 8443


# --- delivery ---------------------------------------------------------------------------------------------------


async def test_org_update_is_delivered_signed_and_listed(
    dev_app: App, outbound_worker: WorkerContext, receiver: Receiver, sync_engine: Engine
) -> None:
    _, client = dev_app
    owner, org_id = await team(client, "Acme")
    receiver.response_body = b"x" * 5000  # kept up to OUTBOUND_WEBHOOKS_RESPONSE_MAX_BYTES
    endpoint = await register_endpoint(client, owner, org_id, receiver.url())

    refused = await client.put(f"/v1/orgs/{org_id}", json={"org_type": "personal"}, headers=owner.auth)
    assert refused.status_code == 422
    assert event_types(sync_engine, org_id) == []  # a refused change emits nothing

    patched = await client.patch(f"/v1/orgs/{org_id}", json={"name": "Acme Analytics"}, headers=owner.auth)
    assert patched.status_code == 200, patched.text
    # written with the change: event, delivery and the outbox row are already committed
    assert event_types(sync_engine, org_id) == ["org.updated"]
    assert count(sync_engine, "SELECT count(*) FROM task_outbox WHERE task_name = 'robosystems.outbound.deliver'") == 1

    await deliver(outbound_worker)
    [got] = receiver.on("/hooks")
    payload = verify(endpoint["secret"], got)
    assert payload["type"] == "org.updated" and payload["timestamp"].endswith("Z")
    assert payload["data"]["id"] == org_id and payload["data"]["name"] == "Acme Analytics"
    assert payload["data"]["previous_attributes"] == {"name": "Acme"}
    event_id = rows(sync_engine, "SELECT id FROM outbound_events WHERE org_id = :o", o=org_id)[0]["id"]
    assert got.headers["webhook-id"] == event_id and got.headers["content-type"] == "application/json"
    with pytest.raises(WebhookVerificationError):
        Webhook(endpoint["secret"]).verify(got.body.replace(b"Acme Analytics", b"Acme Evil Inc"), got.headers)
    with pytest.raises(WebhookVerificationError):
        Webhook("whsec_" + "A" * 43 + "=").verify(got.body, got.headers)

    listed = (await client.get(hooks(org_id, f"/{endpoint['id']}/deliveries"), headers=owner.auth)).json()
    assert listed["total"] == 1
    [d] = listed["deliveries"]
    assert (d["event_id"], d["event_type"], d["status"], d["last_status_code"]) == (
        event_id,
        "org.updated",
        "delivered",
        200,
    )
    assert d["next_attempt_at"] is None and d["attempt_count"] == 1
    [attempt] = d["attempts"]
    assert attempt["status_code"] == 200 and attempt["duration_ms"] >= 0 and attempt["error"] is None
    assert attempt["response_body"] == "x" * 2048
    # a second run delivers nothing twice
    await deliver(outbound_worker)
    assert len(receiver.on("/hooks")) == 1


async def test_receiver_down_then_retried_and_delivered_later(
    dev_app: App, outbound_worker: WorkerContext, sync_engine: Engine
) -> None:
    _, client = dev_app
    down = Receiver()  # its port is reserved, nothing listens yet: connection refused
    owner, org_id = await team(client)
    endpoint = await register_endpoint(client, owner, org_id, down.url())
    assert (await client.put(f"/v1/orgs/{org_id}", json={"name": "Renamed"}, headers=owner.auth)).status_code == 200
    await deliver(outbound_worker)
    [d] = rows(sync_engine, "SELECT * FROM outbound_deliveries")
    assert d["status"] == "pending" and d["attempt_count"] == 1 and d["next_attempt_at"] is not None
    [a] = rows(sync_engine, "SELECT * FROM outbound_attempts")
    assert a["status_code"] is None and a["error"] == "connection failed"

    down.statuses["/hooks"] = [503]  # up, but failing once more, then fine
    down.start()
    try:
        assert await deliver_until(outbound_worker, lambda: len(down.on("/hooks")) == 2)
        first, second = down.on("/hooks")
        assert first.headers["webhook-id"] == second.headers["webhook-id"]  # the same event id on every retry
        assert first.body == second.body
        verify(endpoint["secret"], first)
        verify(endpoint["secret"], second)
        [d] = rows(sync_engine, "SELECT * FROM outbound_deliveries")
        assert d["status"] == "delivered" and d["attempt_count"] == 3 and d["last_status_code"] == 200
        codes = [
            r["status_code"]
            for r in rows(sync_engine, "SELECT status_code FROM outbound_attempts ORDER BY attempted_at")
        ]
        assert codes == [None, 503, 200]
    finally:
        down.stop()


async def test_rotation_signs_with_both_secrets_during_the_overlap(
    dev_app: App, outbound_worker: WorkerContext, receiver: Receiver, sync_engine: Engine
) -> None:
    _, client = dev_app
    owner, org_id = await team(client)
    endpoint = await register_endpoint(client, owner, org_id, receiver.url())
    old = endpoint["secret"]
    rotated = await client.post(hooks(org_id, f"/{endpoint['id']}/rotate-secret"), headers=owner.auth)
    assert rotated.status_code == 200, rotated.text
    new = rotated.json()["secret"]
    assert new != old and new.startswith("whsec_")
    expires = datetime.fromisoformat(rotated.json()["previous_secret_expires_at"])
    assert timedelta(hours=23) < expires - datetime.now(UTC) <= timedelta(hours=24)

    test = await client.post(hooks(org_id, f"/{endpoint['id']}/test"), headers=owner.auth)
    assert test.status_code == 202
    await deliver(outbound_worker)
    [got] = receiver.on("/hooks")
    signatures = got.headers["webhook-signature"].split(" ")
    assert len(signatures) == 2 and all(s.startswith("v1,") for s in signatures)
    assert verify(new, got)["type"] == "ping"
    assert verify(old, got)["data"]["endpoint_id"] == endpoint["id"]  # a receiver not yet updated keeps working

    with sync_engine.begin() as conn:  # the overlap has run out
        conn.execute(text("UPDATE outbound_endpoints SET previous_secret_expires_at = now() - interval '1 second'"))
    await client.post(hooks(org_id, f"/{endpoint['id']}/test"), headers=owner.auth)
    await deliver(outbound_worker)
    latest = receiver.on("/hooks")[-1]
    assert len(latest.headers["webhook-signature"].split(" ")) == 1
    verify(new, latest)
    with pytest.raises(WebhookVerificationError):
        verify(old, latest)


async def test_addresses_are_checked_again_at_connect_time(
    dev_app: App, database_url: str, receiver: Receiver, sync_engine: Engine
) -> None:
    """Registered while private targets were allowed; the worker runs without the flag: its own resolution of the
    name (``localhost`` -> loopback) at connection time refuses, and nothing reaches the receiver."""
    _, client = dev_app
    owner, org_id = await team(client)
    await register_endpoint(client, owner, org_id, receiver.url(host="localhost"))
    assert (await client.put(f"/v1/orgs/{org_id}", json={"name": "Rebound"}, headers=owner.auth)).status_code == 200
    strict = outbound_ctx(database_url, sync_engine, outbound_webhooks_allow_private=False)
    try:
        await deliver(strict)
    finally:
        context.reset()
    assert receiver.requests == []
    [a] = rows(sync_engine, "SELECT status_code, error FROM outbound_attempts")
    assert a["status_code"] is None and a["error"].startswith("refused:") and "private" in a["error"]


async def test_endpoint_disabled_after_the_last_retry_owners_mailed_then_replayed(
    app_factory: Callable[..., Any], database_url: str, receiver: Receiver, sync_engine: Engine
) -> None:
    window = {"outbound_webhooks_retry_window_seconds": 1.0}
    async with app_factory(**FAST, **window) as (_, client):
        ctx = outbound_ctx(database_url, sync_engine, **window)
        try:
            owner, org_id = await team(client, "Flaky Co")
            admin = await add_member(client, sync_engine, owner, org_id, "admin", "adm")
            endpoint = await register_endpoint(client, owner, org_id, receiver.url("/broken"))
            ep = endpoint["id"]
            receiver.statuses["/broken"] = [500] * 1000
            assert (
                await client.put(f"/v1/orgs/{org_id}", json={"name": "Flaky"}, headers=owner.auth)
            ).status_code == 200

            def disabled() -> bool:
                return not rows(sync_engine, "SELECT enabled FROM outbound_endpoints WHERE id = :e", e=ep)[0]["enabled"]

            assert await deliver_until(ctx, disabled)
            [d] = rows(sync_engine, "SELECT status, attempt_count FROM outbound_deliveries")
            assert d["status"] == "failed" and d["attempt_count"] >= 3  # backoff 0.05, 0.1, 0.2, 0.2 … within 1 s
            tries = len(receiver.on("/broken"))
            assert tries == d["attempt_count"]
            shown = (await client.get(hooks(org_id, f"/{ep}"), headers=owner.auth)).json()
            assert shown["enabled"] is False and "HTTP 500" in shown["disabled_reason"]
            mails = rows(
                sync_engine, "SELECT to_email, body_text FROM mail_outbox WHERE kind = 'webhook_endpoint_disabled'"
            )
            assert [m["to_email"] for m in mails] == [owner.email]  # owners only, not the admin
            assert admin.email not in json.dumps(mails) and ep in mails[0]["body_text"]

            # while disabled: nothing is sent, test/replay are refused
            await client.put(f"/v1/orgs/{org_id}", json={"name": "Flaky again"}, headers=owner.auth)
            await deliver(ctx)
            assert len(receiver.on("/broken")) == tries
            assert (await client.post(hooks(org_id, f"/{ep}/test"), headers=owner.auth)).status_code == 409

            # fixed, re-enabled, replayed: both events arrive
            receiver.statuses["/broken"] = []
            enabled = await client.patch(hooks(org_id, f"/{ep}"), json={"enabled": True}, headers=owner.auth)
            assert enabled.status_code == 200 and enabled.json()["disabled_reason"] is None
            since = (datetime.now(UTC) - timedelta(minutes=5)).isoformat()
            replayed = await client.post(hooks(org_id, f"/{ep}/replay"), json={"since": since}, headers=owner.auth)
            assert replayed.status_code == 202 and replayed.json() == {"replayed": 2}
            assert await deliver_until(ctx, lambda: len(receiver.on("/broken")) == tries + 2)
            names = {verify(endpoint["secret"], r)["data"]["name"] for r in receiver.on("/broken")[tries:]}
            assert names == {"Flaky", "Flaky again"}
            statuses = {r["status"] for r in rows(sync_engine, "SELECT status FROM outbound_deliveries")}
            assert statuses == {"delivered"}
        finally:
            context.reset()


async def test_retry_one_delivery(
    dev_app: App, outbound_worker: WorkerContext, receiver: Receiver, sync_engine: Engine
) -> None:
    _, client = dev_app
    owner, org_id = await team(client)
    endpoint = await register_endpoint(client, owner, org_id, receiver.url())
    sent = (await client.post(hooks(org_id, f"/{endpoint['id']}/test"), headers=owner.auth)).json()
    await deliver(outbound_worker)
    retried = await client.post(
        hooks(org_id, f"/{endpoint['id']}/deliveries/{sent['delivery_id']}/retry"), headers=owner.auth
    )
    assert retried.status_code == 202 and retried.json()["status"] == "pending"
    await deliver(outbound_worker)
    first, second = receiver.on("/hooks")
    assert first.headers["webhook-id"] == second.headers["webhook-id"] == sent["event_id"]
    listed = (
        await client.get(hooks(org_id, f"/{endpoint['id']}/deliveries?status=delivered"), headers=owner.auth)
    ).json()
    assert listed["deliveries"][0]["attempt_count"] == 2 and len(listed["deliveries"][0]["attempts"]) == 2
    missing = await client.post(hooks(org_id, f"/{endpoint['id']}/deliveries/whd_nope/retry"), headers=owner.auth)
    assert missing.status_code == 404


async def test_a_slow_endpoint_does_not_delay_another(
    app_factory: Callable[..., Any], database_url: str, receiver: Receiver, sync_engine: Engine
) -> None:
    """Endpoint A answers after 0.6 s; B at once.  With a cap of 2 per endpoint A never has more than 2 requests in
    flight, and every delivery to B is done while A is still working through its backlog."""
    cap = {"outbound_webhooks_endpoint_concurrency": 2}
    async with app_factory(**FAST, **cap) as (_, client):
        ctx = outbound_ctx(database_url, sync_engine, **cap)
        try:
            receiver.delays["/slow"] = 0.6
            owner, org_id = await team(client)
            await register_endpoint(client, owner, org_id, receiver.url("/slow"))
            await register_endpoint(client, owner, org_id, receiver.url("/fast"))
            for i in range(6):
                r = await client.put(f"/v1/orgs/{org_id}", json={"name": f"Name {i}"}, headers=owner.auth)
                assert r.status_code == 200
            await deliver(ctx)
            slow, fast = receiver.on("/slow"), receiver.on("/fast")
            assert len(slow) == 6 and len(fast) == 6
            assert receiver.max_in_flight["/slow"] <= 2
            done = rows(
                sync_engine,
                "SELECT e.url, d.delivered_at FROM outbound_deliveries d "
                "JOIN outbound_endpoints e ON e.id = d.endpoint_id",
            )
            last_fast = max(r["delivered_at"] for r in done if r["url"].endswith("/fast"))
            last_slow = max(r["delivered_at"] for r in done if r["url"].endswith("/slow"))
            assert last_slow - last_fast > timedelta(seconds=1)  # B finished long before A's backlog
        finally:
            context.reset()


# --- the org events --------------------------------------------------------------------------------------------------


async def test_org_member_and_invitation_events(
    dev_app: App, outbound_worker: WorkerContext, receiver: Receiver, sync_engine: Engine
) -> None:
    _, client = dev_app
    owner, org_id = await team(client, "Team")
    endpoint = await register_endpoint(client, owner, org_id, receiver.url(), ALL_ORG_EVENTS)
    member = await add_member(client, sync_engine, owner, org_id, "member", "joiner")
    changed = await client.put(f"/v1/orgs/{org_id}/members/{member.id}", json={"role": "admin"}, headers=owner.auth)
    assert changed.status_code == 200
    transfer = await client.post(
        f"/v1/orgs/{org_id}/transfer-ownership", json={"user_id": member.id}, headers=owner.auth
    )
    assert transfer.status_code == 200
    assert (await client.delete(f"/v1/orgs/{org_id}/members/{owner.id}", headers=member.auth)).status_code == 204
    assert (await client.delete(f"/v1/orgs/{org_id}", headers=member.auth)).status_code == 202

    assert event_types(sync_engine, org_id) == [
        "invitation.created",
        "invitation.accepted",
        "member.added",
        "member.role_changed",
        "member.role_changed",
        "member.role_changed",
        "member.removed",
        "org.deleted",
    ]
    [invited] = event_data(sync_engine, org_id, "invitation.created")
    assert invited["email"] == member.email and invited["role"] == "member" and invited["invited_by"] == owner.id
    assert "token" not in json.dumps(invited)
    [added] = event_data(sync_engine, org_id, "member.added")
    assert (added["user_id"], added["role"], added["email"]) == (member.id, "member", member.email)
    roles = [
        (d["user_id"], d["previous_attributes"]["role"], d["role"])
        for d in event_data(sync_engine, org_id, "member.role_changed")
    ]
    assert roles == [(member.id, "member", "admin"), (member.id, "admin", "owner"), (owner.id, "owner", "admin")]
    [removed] = event_data(sync_engine, org_id, "member.removed")
    assert (removed["user_id"], removed["role"], removed["reason"]) == (owner.id, "admin", "removed")
    [deleted] = event_data(sync_engine, org_id, "org.deleted")
    assert deleted["id"] == org_id and deleted["restorable_until"]

    await deliver(outbound_worker)  # the deleted org's endpoint still hears about it
    delivered = [verify(endpoint["secret"], r)["type"] for r in receiver.on("/hooks")]
    assert sorted(delivered) == sorted(event_types(sync_engine, org_id))


def test_readme_lists_the_event_catalogue() -> None:
    assert catalogue_markdown() in (ROOT / "README.md").read_text()


async def test_concurrent_registrations_respect_the_limit(strict_app: App) -> None:
    _, client = strict_app
    owner, org_id = await team(client)
    results = await asyncio.gather(
        *(
            client.post(
                hooks(org_id), json={"url": f"https://h{i}.example.com", "events": ["org.updated"]}, headers=owner.auth
            )
            for i in range(6)
        )
    )
    assert sorted(r.status_code for r in results) == [201, 201, 403, 403, 403, 403]


async def test_a_run_hands_its_thread_back_after_its_time(
    app_factory: Callable[..., Any], database_url: str, receiver: Receiver, sync_engine: Engine
) -> None:
    """A backlog at a slow endpoint never holds a worker thread for long: the run stops claiming after
    OUTBOUND_WEBHOOKS_PUMP_SECONDS, finishes what is in flight (bounded by the request deadline) and re-enqueues
    itself for the rest, so the worker's other tasks (provisioning, the Stripe inbox) get their turn."""
    from robosystems.outbound import delivery

    budget = {"outbound_webhooks_pump_seconds": 0.2}
    async with app_factory(**FAST) as (_, client):
        ctx = outbound_ctx(database_url, sync_engine, **budget)
        try:
            receiver.delays["/slow"] = 0.4
            owner, org_id = await team(client)
            await register_endpoint(client, owner, org_id, receiver.url("/slow"))
            for i in range(12):
                assert (await client.put(f"/v1/orgs/{org_id}", json={"name": f"N{i}"}, headers=owner.auth)).is_success
            with sync_engine.begin() as conn:
                conn.execute(text("DELETE FROM task_outbox"))
            started = asyncio.get_running_loop().time()
            stats = await asyncio.to_thread(delivery.deliver, ctx)
            took = asyncio.get_running_loop().time() - started
            assert 0 < stats["delivered"] < 12 and took < 2.0  # 4 at a time (the cap), then it stopped claiming
            queued = count(
                sync_engine, "SELECT count(*) FROM task_outbox WHERE task_name = 'robosystems.outbound.deliver'"
            )
            assert queued == 1  # the rest is picked up by the next run
            assert await deliver_until(ctx, lambda: len(receiver.on("/slow")) == 12)
        finally:
            context.reset()
