"""Sending the local provider's events to our webhook endpoint outside its hosted pages: after the transaction of a
request that made the provider act (a plan change, a subscription created without checkout), and from the worker
(renewals).  Like Stripe, over HTTP to ``LOCAL_PAYMENTS_WEBHOOK_URL`` (default: this server's own
``/admin/v1/webhooks/stripe``); what is not accepted is sent again by the next delivery (the inbox keeps one copy)."""

from __future__ import annotations

import asyncio
import logging

import httpx
from sqlalchemy.ext.asyncio import AsyncSession

from robosystems.config import Settings
from robosystems.db import after_commit
from robosystems.payments.base import PaymentProvider
from robosystems.payments.local import LocalPaymentProvider

log = logging.getLogger("robosystems.payments.local_delivery")

WEBHOOK_PATH = "/admin/v1/webhooks/stripe"
TIMEOUT_SECONDS = 30.0
_tasks: set[asyncio.Task[bool]] = set()


def webhook_url(settings: Settings) -> str:
    return settings.local_payments_webhook_url or f"{settings.base_url}{WEBHOOK_PATH}"


def deliver_after_commit(
    session: AsyncSession, settings: Settings, provider: PaymentProvider, kind: str, object_id: str
) -> None:
    """Once ``session`` commits, POST the undelivered events of a local subscription / customer (no-op for Stripe:
    it sends its own events)."""
    if not isinstance(provider, LocalPaymentProvider):
        return
    url = webhook_url(settings)

    async def send(body: bytes, headers: dict[str, str]) -> int:
        async with httpx.AsyncClient(timeout=TIMEOUT_SECONDS) as client:
            return (await client.post(url, content=body, headers=headers)).status_code

    def schedule() -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        task = loop.create_task(provider.deliver_object(kind, object_id, send))
        _tasks.add(task)
        task.add_done_callback(_tasks.discard)

    after_commit(session, schedule)


async def wait_for_deliveries() -> None:
    """Let pending deliveries finish (tests, shutdown)."""
    await asyncio.gather(*list(_tasks), return_exceptions=True)


def deliver_now(settings: Settings, provider: LocalPaymentProvider, kind: str, object_id: str) -> bool:
    """From a worker thread: POST the undelivered events of ``object_id`` now (True when all were accepted)."""
    url = webhook_url(settings)

    async def main() -> bool:
        async with httpx.AsyncClient(timeout=TIMEOUT_SECONDS) as client:

            async def send(body: bytes, headers: dict[str, str]) -> int:
                return (await client.post(url, content=body, headers=headers)).status_code

            return await provider.deliver_object(kind, object_id, send)

    return asyncio.run(main())
