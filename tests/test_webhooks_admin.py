"""Admin webhook inbox API (Bearer ADMIN_API_KEY) and the `robosystems webhooks` CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, text

from robosystems.config import Settings
from tests.helpers import count
from tests.webhooks_support import (
    ADMIN_KEY,
    SECRET,
    event,
    event_row,
    post_event,
    run_worker,
    subscription_obj,
    wh,
    worker_ctx,
)

__all__ = ["wh", "worker_ctx"]  # fixtures

AUTH = {"Authorization": f"Bearer {ADMIN_KEY}"}


def _evt(i: int, event_type: str = "customer.subscription.updated") -> dict[str, Any]:
    return event(event_type, subscription_obj(f"sub_admin_{i}", "cus_admin", "active"), event_id=f"evt_admin_{i:03d}")


async def test_admin_api_is_503_without_a_key(app_factory: Any) -> None:
    async with app_factory(stripe_webhook_secret=SECRET, admin_api_key="") as (_, client):
        response = await client.get("/admin/v1/webhooks/events", headers=AUTH)
        assert response.status_code == 503
        assert response.json()["code"] == "admin_api_disabled"


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": ADMIN_KEY}])
async def test_wrong_or_missing_key_is_401_and_audited(headers: dict[str, str], wh: Any, sync_engine: Engine) -> None:
    _, client = wh
    for path in ("/admin/v1/webhooks/events", "/admin/v1/webhooks/events/evt_x"):
        response = await client.get(path, headers=headers)
        assert response.status_code == 401
        assert response.json()["code"] == "invalid_admin_key"
    response = await client.post("/admin/v1/webhooks/events/replay-failed", headers=headers)
    assert response.status_code == 401
    assert count(sync_engine, "SELECT count(*) FROM security_audit_events WHERE event_type = 'admin_key_invalid'") == 3


async def test_repeated_wrong_keys_are_rate_limited(app_factory: Any) -> None:
    async with app_factory(admin_api_key=ADMIN_KEY, rate_limit_admin_failures_per_ip="2/minute") as (_, client):
        codes = [
            (await client.get("/admin/v1/webhooks/events", headers={"Authorization": "Bearer x"})).status_code
            for _ in range(3)
        ]
        assert codes == [401, 401, 429]
        # the limit blocks the right key too while it lasts (no oracle for guessing)
        assert (await client.get("/admin/v1/webhooks/events", headers=AUTH)).status_code == 429


async def test_list_filters_and_pages(wh: Any, worker_ctx: Any, sync_engine: Engine) -> None:
    _, client = wh
    for i in range(5):
        assert (await post_event(client, _evt(i))).status_code == 200
    assert (await post_event(client, _evt(9, "plan.created"))).status_code == 200
    run_worker(worker_ctx)  # subscriptions unknown -> ignored; plan.created -> ignored (unhandled)

    everything = (await client.get("/admin/v1/webhooks/events", headers=AUTH)).json()
    assert everything["total"] == 6
    first = everything["events"][0]
    assert set(first) == {"id", "type", "status", "attempts", "last_error", "received_at", "processed_at"}
    assert first["status"] == "ignored" and first["attempts"] == 1 and first["processed_at"]

    page = (await client.get("/admin/v1/webhooks/events", params={"limit": 2, "offset": 4}, headers=AUTH)).json()
    assert page["total"] == 6 and len(page["events"]) == 2
    typed = (await client.get("/admin/v1/webhooks/events", params={"type": "plan.created"}, headers=AUTH)).json()
    assert [e["id"] for e in typed["events"]] == ["evt_admin_009"]
    none = (await client.get("/admin/v1/webhooks/events", params={"status": "failed"}, headers=AUTH)).json()
    assert none == {"events": [], "total": 0}
    for params in ({"status": "bogus"}, {"limit": 0}, {"limit": 101}, {"offset": -1}):
        assert (await client.get("/admin/v1/webhooks/events", params=params, headers=AUTH)).status_code == 422


async def test_get_one_event_and_404(wh: Any, sync_engine: Engine) -> None:
    _, client = wh
    evt = _evt(1)
    await post_event(client, evt)
    detail = (await client.get(f"/admin/v1/webhooks/events/{evt['id']}", headers=AUTH)).json()
    assert detail["id"] == evt["id"] and detail["status"] == "received"
    assert detail["payload"] == evt and detail["subject_id"] == "sub_admin_1"
    missing = await client.get("/admin/v1/webhooks/events/evt_nope", headers=AUTH)
    assert missing.status_code == 404 and missing.json()["code"] == "webhook_event_not_found"
    assert (await client.post("/admin/v1/webhooks/events/evt_nope/replay", headers=AUTH)).status_code == 404


async def test_replay_failed_requeues_every_failed_event(wh: Any, worker_ctx: Any, sync_engine: Engine) -> None:
    _, client = wh
    for i in range(3):
        await post_event(client, _evt(i))
    with sync_engine.begin() as conn:
        conn.execute(
            text("UPDATE webhook_events SET status = 'failed', attempts = 6, last_error = 'boom' WHERE id <> :keep"),
            {"keep": "evt_admin_002"},
        )
        conn.execute(text("UPDATE task_outbox SET status = 'sent'"))
    response = await client.post("/admin/v1/webhooks/events/replay-failed", headers=AUTH)
    assert response.status_code == 200
    assert sorted(response.json()["ids"]) == ["evt_admin_000", "evt_admin_001"]
    assert response.json()["replayed"] == 2
    assert event_row(sync_engine, "evt_admin_000")["attempts"] == 0
    run_worker(worker_ctx)
    assert {event_row(sync_engine, f"evt_admin_00{i}")["status"] for i in range(2)} == {"ignored"}
    again = (await client.post("/admin/v1/webhooks/events/replay-failed", headers=AUTH)).json()
    assert again == {"replayed": 0, "ids": []}


def _cli(database_url: str, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "ENVIRONMENT": "test",
        "ROBOSYSTEMS_DATA_DIR": str(tmp_path),
        "JWT_SECRET_KEY": "cli-test-" + "j" * 40,
        "LOG_JSON": "false",
    }
    return subprocess.run(  # noqa: S603 - our own CLI
        [sys.executable, "-m", "robosystems.cli", *args], capture_output=True, text=True, env=env, timeout=120
    )


async def test_cli_lists_and_replays(wh: Any, database_url: str, sync_engine: Engine, tmp_path: Path) -> None:
    _, client = wh
    await post_event(client, _evt(7))
    with sync_engine.begin() as conn:
        conn.execute(text("UPDATE webhook_events SET status = 'failed', last_error = 'boom'"))
    listed = _cli(database_url, tmp_path, "webhooks", "list", "--status", "failed")
    assert listed.returncode == 0, listed.stderr
    assert "evt_admin_007" in listed.stdout and "total: 1" in listed.stdout
    replayed = _cli(database_url, tmp_path, "webhooks", "replay-failed")
    assert replayed.returncode == 0, replayed.stderr
    assert '"replayed": 1' in replayed.stdout
    assert event_row(sync_engine, "evt_admin_007")["status"] == "received"
    one = _cli(database_url, tmp_path, "webhooks", "replay", "evt_admin_007")
    assert one.returncode == 0 and '"replayed": true' in one.stdout
    missing = _cli(database_url, tmp_path, "webhooks", "replay", "evt_missing")
    assert missing.returncode == 1 and "webhook_event_not_found" in missing.stderr


def test_development_generates_an_admin_key_once(tmp_path: Path) -> None:
    first = Settings(_env_file=None, environment="development", robosystems_data_dir=tmp_path)  # type: ignore[call-arg]
    first.ensure_secrets()
    second = Settings(_env_file=None, environment="development", robosystems_data_dir=tmp_path)  # type: ignore[call-arg]
    second.ensure_secrets()
    assert len(first.admin_api_key) >= 32 and first.admin_api_key == second.admin_api_key
    assert (tmp_path / "admin_api_key").stat().st_mode & 0o777 == 0o600
    test_env = Settings(_env_file=None, environment="test", robosystems_data_dir=tmp_path)  # type: ignore[call-arg]
    test_env.ensure_secrets()
    assert test_env.admin_api_key == ""
