"""POST /admin/v1/webhooks/stripe: verification, persistence before 2xx, duplicates, limits, outages."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from sqlalchemy import Engine
from sqlalchemy.engine import make_url

from robosystems.webhooks import verify
from robosystems.worker.context import WorkerContext
from tests.helpers import count
from tests.webhooks_support import (
    SECRET,
    Billing,
    ToggleProxy,
    checkout_obj,
    event,
    event_row,
    post_event,
    run_worker,
    sign,
    subscription_obj,
    wh,
    worker_ctx,
)

__all__ = ["wh", "worker_ctx"]  # fixtures


def _sample_event() -> dict[str, Any]:
    return event("customer.subscription.updated", subscription_obj("sub_sample", "cus_sample", "active"))


def _rows(engine: Engine) -> int:
    return count(engine, "SELECT count(*) FROM webhook_events")


async def test_valid_event_is_stored_with_its_outbox_row_before_2xx(wh: Any, sync_engine: Engine) -> None:
    _, client = wh
    evt = _sample_event()
    response = await post_event(client, evt)
    assert response.status_code == 200, response.text
    assert response.json() == {"received": True, "id": evt["id"], "duplicate": False}
    row = event_row(sync_engine, evt["id"])
    assert row["status"] == "received"
    assert row["type"] == "customer.subscription.updated"
    assert row["object_id"] == "sub_sample"
    assert row["subject_id"] == "sub_sample"
    assert int(row["created"].timestamp()) == evt["created"]
    assert row["payload"] == evt
    assert row["attempts"] == 0
    assert (
        count(
            sync_engine,
            "SELECT count(*) FROM task_outbox WHERE task_name = 'robosystems.webhooks.process_event' "
            "AND args = jsonb_build_array(CAST(:id AS text)) AND status = 'pending'",
            id=evt["id"],
        )
        == 1
    )


def _tamper(body: str) -> str:
    index = body.index('"active"') + 1
    return body[:index] + ("b" if body[index] != "b" else "c") + body[index + 1 :]


BAD_SIGNATURES: dict[str, Callable[[str], tuple[str, str]]] = {
    # name -> (body sent, Stripe-Signature header) given the correctly serialized body
    "missing": lambda body: (body, ""),
    "forged": lambda body: (body, f"t={int(time.time())},v1={'0' * 64}"),
    "tampered_one_byte": lambda body: (_tamper(body), sign(body)),
    "reserialized": lambda body: (json.dumps(json.loads(body), indent=2), sign(body)),
    "wrong_secret": lambda body: (body, sign(body, "whsec_someone_else_" + "x" * 20)),
    "v0_only": lambda body: (body, sign(body).replace("v1=", "v0=")),
    "stale_301s": lambda body: (body, sign(body, timestamp=int(time.time()) - 301)),
    "future_3600s": lambda body: (body, sign(body, timestamp=int(time.time()) + 3600)),
    "garbage_header": lambda body: (body, "not a signature"),
}


@pytest.mark.parametrize("case", sorted(BAD_SIGNATURES))
async def test_bad_signature_is_refused_with_400_no_row_and_a_security_event(
    case: str, wh: Any, sync_engine: Engine
) -> None:
    _, client = wh
    good = json.dumps(_sample_event(), separators=(",", ":"))
    body, header = BAD_SIGNATURES[case](good)
    response = await post_event(client, body=body, header=header)
    assert response.status_code == 400, response.text
    assert response.json()["code"] == "invalid_signature"
    assert "whsec" not in response.text
    assert _rows(sync_engine) == 0
    assert count(sync_engine, "SELECT count(*) FROM task_outbox") == 0
    assert (
        count(sync_engine, "SELECT count(*) FROM security_audit_events WHERE event_type = 'webhook_signature_invalid'")
        == 1
    )


async def test_several_v1_signatures_during_a_secret_rotation(app_factory: Any, sync_engine: Engine) -> None:
    old, new = "whsec_old_" + "o" * 30, "whsec_new_" + "n" * 30
    async with app_factory(stripe_webhook_secret=f"{new},{old}") as (_, client):
        evt = _sample_event()
        body = json.dumps(evt)
        ts = int(time.time())
        header = sign(body, "whsec_unrelated_" + "u" * 24, ts) + "," + sign(body, old, ts).split(",", 1)[1]
        response = await post_event(client, body=body, header=header)
        assert response.status_code == 200, response.text
    assert _rows(sync_engine) == 1


async def test_stripe_mode_without_a_webhook_secret_answers_503(app_factory: Any, sync_engine: Engine) -> None:
    async with app_factory(stripe_webhook_secret="", stripe_secret_key="sk_test_" + "x" * 24) as (_, client):
        response = await post_event(client, _sample_event(), secret="")
        assert response.status_code == 503
        assert response.json()["code"] == "webhook_not_configured"
    assert _rows(sync_engine) == 0


async def test_local_mode_without_a_secret_uses_the_generated_one(app_factory: Any, sync_engine: Engine) -> None:
    async with app_factory(stripe_webhook_secret="", stripe_secret_key="") as (app, client):
        secret = verify.signing_secret(app.state.services.settings)
        assert secret and secret == verify.signing_secret(app.state.services.settings)  # generated once, kept
        assert (await post_event(client, _sample_event(), secret=secret)).status_code == 200
        bad = await post_event(client, _sample_event(), secret="")
        assert bad.status_code == 400
    assert _rows(sync_engine) == 1


async def test_oversized_body_is_413_declared_or_streamed(app_factory: Any, sync_engine: Engine) -> None:
    async with app_factory(stripe_webhook_secret=SECRET, webhook_max_body_bytes=4096) as (_, client):
        evt = _sample_event()
        evt["data"]["object"]["metadata"] = {"pad": "x" * 5000}
        body = json.dumps(evt)
        response = await post_event(client, body=body)
        assert response.status_code == 413
        assert response.json()["code"] == "payload_too_large"

        async def chunks() -> AsyncIterator[bytes]:
            for i in range(0, len(body), 1000):
                yield body[i : i + 1000].encode()

        streamed = await client.post(
            "/admin/v1/webhooks/stripe",
            content=chunks(),
            headers={"Stripe-Signature": sign(body), "Content-Type": "application/json"},
        )
        assert streamed.status_code == 413
        # the global 1 MiB cap does not apply here: a 1.5 MiB event is fine under the default 2 MiB
    async with app_factory(stripe_webhook_secret=SECRET) as (_, client):
        evt = _sample_event()
        evt["data"]["object"]["metadata"] = {"pad": "x" * 1_500_000}
        assert (await post_event(client, evt)).status_code == 200
    assert _rows(sync_engine) == 1


@pytest.mark.parametrize(
    "payload",
    [
        "not json",
        "[1, 2]",
        '{"id": "evt_1", "type": "invoice.paid", "created": "yesterday", "data": {"object": {}}}',
        '{"id": "", "type": "invoice.paid", "created": 1, "data": {"object": {}}}',
        '{"id": "evt_1", "type": "invoice.paid", "created": 1, "data": {}}',
        '{"id": "evt_1", "type": "invoice.paid", "created": 1, "data": {"object": {"id": "in_1\\u0000"}}}',
    ],
)
async def test_signed_but_malformed_payload_is_400(payload: str, wh: Any, sync_engine: Engine) -> None:
    _, client = wh
    response = await post_event(client, body=payload)
    assert response.status_code == 400, response.text
    assert response.json()["code"] == "invalid_payload"
    assert _rows(sync_engine) == 0


async def test_twenty_concurrent_duplicates_store_one_row_and_apply_once(
    wh: Any, sync_engine: Engine, worker_ctx: WorkerContext
) -> None:
    _, client = wh
    billing = Billing(worker_ctx, linked=False)
    evt = event(
        "checkout.session.completed",
        checkout_obj(
            billing.checkout_session,
            subscription=billing.provider_sub,
            customer=billing.customer,
            payment_status="paid",
            reference=billing.sub_id,
        ),
    )
    body = json.dumps(evt)
    header = sign(body)
    responses = await asyncio.gather(*(post_event(client, body=body, header=header) for _ in range(20)))
    assert [r.status_code for r in responses] == [200] * 20
    assert sorted(r.json()["duplicate"] for r in responses) == [False] + [True] * 19
    assert _rows(sync_engine) == 1
    assert count(sync_engine, "SELECT count(*) FROM task_outbox") == 1
    run_worker(worker_ctx)
    assert event_row(sync_engine, evt["id"])["status"] == "processed"
    assert billing.status() == "provisioning"
    # one application: one transition audit row, one provisioning request
    assert (
        count(
            sync_engine,
            "SELECT count(*) FROM billing_audit_logs WHERE subscription_id = :s "
            "AND event_type = 'subscription_provisioning'",
            s=billing.sub_id,
        )
        == 1
    )
    assert (
        count(sync_engine, "SELECT count(*) FROM task_outbox WHERE task_name = 'robosystems.graphs.provision_graph'")
        == 1
    )
    # and a later redelivery still changes nothing
    again = await post_event(client, body=body, header=sign(body))
    assert again.status_code == 200 and again.json()["duplicate"] is True
    assert count(sync_engine, "SELECT count(*) FROM task_outbox") == 2  # process_event (sent) + provision_graph


async def test_rate_limited_per_source_ip(app_factory: Any, sync_engine: Engine) -> None:
    async with app_factory(stripe_webhook_secret=SECRET, webhook_rate_limit_per_ip="3/minute") as (_, client):
        statuses = [(await post_event(client, _sample_event() | {"id": f"evt_rl_{i}"})).status_code for i in range(4)]
    assert statuses == [200, 200, 200, 429]
    assert _rows(sync_engine) == 3


async def test_database_down_answers_5xx_then_the_redelivery_is_applied_once(
    app_factory: Any, database_url: str, sync_engine: Engine, worker_ctx: WorkerContext
) -> None:
    url = make_url(database_url)
    proxy = ToggleProxy(url.host or "127.0.0.1", url.port or 5432)
    proxied = url.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
    billing = Billing(worker_ctx, linked=False)
    evt = event(
        "checkout.session.completed",
        checkout_obj(
            billing.checkout_session,
            subscription=billing.provider_sub,
            customer=billing.customer,
            payment_status="paid",
            reference=billing.sub_id,
        ),
    )
    try:
        async with app_factory(stripe_webhook_secret=SECRET, database_url=proxied, db_pool_timeout_seconds=2) as (
            _,
            client,
        ):
            down = await post_event(client, evt)
            assert down.status_code == 503, down.text
            assert down.json()["code"] == "database_unavailable"
            assert "psycopg" not in down.text.lower() and "select" not in down.text.lower()
            assert _rows(sync_engine) == 0
            proxy.up()
            redelivered = await post_event(client, evt)
            assert redelivered.status_code == 200, redelivered.text
            assert (await post_event(client, evt)).json()["duplicate"] is True
    finally:
        proxy.close()
    run_worker(worker_ctx)
    assert event_row(sync_engine, evt["id"])["status"] == "processed"
    assert event_row(sync_engine, evt["id"])["attempts"] == 1
    assert billing.status() == "provisioning"
    assert (
        count(sync_engine, "SELECT count(*) FROM task_outbox WHERE task_name = 'robosystems.graphs.provision_graph'")
        == 1
    )


async def test_endpoint_is_not_in_the_public_openapi(wh: Any) -> None:
    _, client = wh
    paths = (await client.get("/openapi.json")).json()["paths"]
    assert not any(p.startswith("/admin") for p in paths)


def test_signing_header_matches_stripes_scheme() -> None:
    """The test helper is the SDK's own: t=<ts>,v1=hmac_sha256(secret, "<ts>.<payload>")."""
    import hashlib
    import hmac

    ts = int(time.time())
    header = sign('{"a":1}', SECRET, ts)
    expected = hmac.new(SECRET.encode(), f'{ts}.{{"a":1}}'.encode(), hashlib.sha256).hexdigest()
    assert header == f"t={ts},v1={expected}"
    verify.verify(b'{"a":1}', header, [SECRET], 300)
    with pytest.raises(verify.SignatureInvalid):
        verify.verify(b'{"a":2}', header, [SECRET], 300)
