"""Shared pieces of the plan change / seats / credits tests: an app whose own after-commit deliveries go nowhere (the
test delivers the local provider's events in process, through our webhook endpoint), buying a graph end to end,
moving a subscription's period into the past (what a Stripe test clock does), and the provider's renewal."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import Engine, text

from robosystems.payments.factory import get_provider
from robosystems.payments.local import LocalPaymentProvider
from robosystems.payments.local_delivery import wait_for_deliveries
from robosystems.worker.context import WorkerContext
from tests.graphs_support import SETTINGS, pay_for_graph, provision_until_settled, run_all, sub_row
from tests.org_helpers import Person

App = tuple[FastAPI, httpx.AsyncClient]
WEBHOOK_PATH = "/admin/v1/webhooks/stripe"
#: the app's own after-commit deliveries (to its base URL) are refused at once there; the hosted pages deliver in
#: process, and the tests deliver the rest in process too
CLOSED_PORT_URL = "http://127.0.0.1:9"
DEPTH_SETTINGS: dict[str, Any] = {**SETTINGS, "app_base_url": CLOSED_PORT_URL}


@pytest.fixture
async def depth_app(app_factory: Callable[..., Any]) -> AsyncIterator[App]:
    async with app_factory(**DEPTH_SETTINGS) as pair:
        yield pair


def local(ctx: WorkerContext) -> LocalPaymentProvider:
    provider = get_provider(ctx.settings)
    assert isinstance(provider, LocalPaymentProvider)
    return provider


async def deliver(app: FastAPI, provider: LocalPaymentProvider, kind: str, object_id: str) -> None:
    """POST the provider's undelivered events of a subscription / customer to our webhook endpoint (in process)."""
    await wait_for_deliveries()  # the app's own attempt (refused) has ended
    transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 0))
    async with httpx.AsyncClient(transport=transport, base_url="http://local-payments") as client:

        async def send(body: bytes, headers: dict[str, str]) -> int:
            return (await client.post(WEBHOOK_PATH, content=body, headers=headers)).status_code

        assert await provider.deliver_object(kind, object_id, send)


async def buy_graph(
    client: httpx.AsyncClient, ctx: WorkerContext, who: Person, org_id: str | None = None, *, tier: str
) -> tuple[str, str]:
    """Pay for a graph on the hosted page and provision it: (subscription id, graph id)."""
    body = await pay_for_graph(client, ctx, who, org_id, tier=tier, key=f"buy-{tier}-{who.id}")
    sub_id = body["subscription_id"]
    assert provision_until_settled(ctx, sub_id) == "active"
    return sub_id, str(sub_row(ctx.engine, sub_id)["resource_id"])


def age(ctx: WorkerContext, sub_id: str, days: int) -> dict[str, Any]:
    """Move the current period ``days`` into the past, at the provider and here (a test clock): a change now
    prorates the rest of the period.  Returns our subscription row."""
    provider = local(ctx)
    provider_id = sub_row(ctx.engine, sub_id)["provider_subscription_id"]
    with provider.store.locked("subscriptions", provider_id):
        record = provider.store.get("subscriptions", provider_id)
        item = record["object"]["items"]["data"][0]
        item["current_period_start"] -= days * 86400
        item["current_period_end"] -= days * 86400
        provider.store.put("subscriptions", provider_id, record)
    with ctx.engine.begin() as conn:
        conn.execute(
            text(
                "UPDATE billing_subscriptions SET current_period_start = current_period_start - :d, "
                "current_period_end = current_period_end - :d WHERE id = :s"
            ),
            {"d": timedelta(days=days), "s": sub_id},
        )
    return sub_row(ctx.engine, sub_id)


async def renew(app: FastAPI, ctx: WorkerContext, sub_id: str) -> int:
    """The provider's clock reaches the period end: renew, deliver, apply.  Returns the renewals made."""
    provider = local(ctx)
    provider_id = sub_row(ctx.engine, sub_id)["provider_subscription_id"]
    end = provider.store.get("subscriptions", provider_id)["object"]["items"]["data"][0]["current_period_end"]
    renewed = provider.renew(provider_id, now=end + 1)
    await deliver(app, provider, "subscriptions", provider_id)
    run_all(ctx)
    return renewed


def scalar(engine: Engine, sql: str, **params: Any) -> Any:
    with engine.connect() as conn:
        return conn.execute(text(sql), params).scalar()


def change_path(org_id: str, sub_id: str, suffix: str = "change") -> str:
    return f"/v1/billing/subscriptions/{org_id}/subscription/{sub_id}/{suffix}"
