"""The local provider's hosted checkout page in a real browser (headless Chromium, JavaScript OFF).

A real server (``robosystems serve`` with its in-process worker, no broker) is started; the test asks
for a checkout over HTTP, opens the ``checkout_url`` in Chromium driven through the DevTools protocol
(playwright, Debian's ``chromium`` binary), clicks Pay, lands on the return page, and watches the
subscription leave ``pending_payment`` once the signed events went through our webhook endpoint, the
inbox and the worker: the provisioning task builds the graph and the subscription becomes ``active``
with the graph id as ``resource_id`` (were the task not deployed, it would stay ``provisioning``).

Skipped when Chromium or playwright is missing (``apt-get install chromium``; ``pip install playwright``,
no ``playwright install``: the system browser is used).
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from robosystems.worker.celery_app import registered_task_names
from tests.helpers import PASSWORD, unique_email
from tests.live_server import running_server

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
SECRET = "whsec_browser_test_" + "w" * 24
PAID_STATES = ("provisioning", "active")
PROVISION_TASK = "robosystems.graphs.provision_graph"
STATUS_DEADLINE_SECONDS = 60.0

sync_api = pytest.importorskip("playwright.sync_api")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not shutil.which("chromium") and not shutil.which("/usr/bin/chromium"), reason="chromium is not installed"
    ),
]


@pytest.fixture(scope="module")
def server(database_url: str) -> Iterator[str]:
    # no broker: the in-process worker drains the outbox (webhook events, provisioning) inside `serve`
    with running_server(database_url, EMBEDDED_WORKER="true", REDIS_URL="", STRIPE_WEBHOOK_SECRET=SECRET) as url:
        yield url


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(java_script_enabled=False)  # the page must work without JavaScript
    try:
        yield context.new_page()
    finally:
        context.close()


def _token(base: str) -> str:
    response = httpx.post(
        f"{base}/v1/auth/register",
        json={"name": "Browser Buyer", "email": unique_email("browser"), "password": PASSWORD},
    )
    assert response.status_code == 201, response.text
    return str(response.json()["token"])


def _checkout(base: str, token: str, name: str) -> dict[str, Any]:
    response = httpx.post(
        f"{base}/v1/billing/checkout",
        json={"plan_name": "kuzu-standard", "resource_type": "graph", "resource_config": {"graph_name": name}},
        headers={"Authorization": f"Bearer {token}"},
    )
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    assert body["checkout_url"].startswith(f"{base}/billing/local/checkout/cs_local_")
    return body


def _status(base: str, token: str, session_id: str) -> dict[str, Any]:
    response = httpx.get(
        f"{base}/v1/billing/checkout/{session_id}/status", headers={"Authorization": f"Bearer {token}"}
    )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def _wait_for_status(base: str, token: str, session_id: str, accepted: tuple[str, ...]) -> dict[str, Any]:
    """Poll until the worker applied the events (a deadline, not a timing assertion)."""
    deadline = time.monotonic() + STATUS_DEADLINE_SECONDS
    status = _status(base, token, session_id)
    while status["status"] not in accepted and time.monotonic() < deadline:
        time.sleep(0.2)
        status = _status(base, token, session_id)
    return status


def test_pay_in_the_browser_makes_the_subscription_paid(server: str, page: Any) -> None:
    token = _token(server)
    created = _checkout(server, token, "Browser graph")

    page.goto(created["checkout_url"])
    assert page.title() == "Checkout"
    assert "49.00 USD" in page.inner_text("#amount")
    assert "Browser graph" in page.inner_text("#description")
    assert page.locator("script").count() == 0

    page.click("#pay")  # a plain form POST; the server answers 303 to the return page
    page.wait_for_url("**/billing/checkout/return?*")
    assert f"session_id={created['session_id']}" in page.url and "result=success" in page.url
    assert "Payment received" in page.inner_text("h1")

    if PROVISION_TASK in registered_task_names():
        # the whole way: payment confirmed by webhook -> provisioning task -> graph built -> active
        status = _wait_for_status(server, token, created["session_id"], ("active", "failed"))
        assert status["status"] == "active", status
        assert status["resource_id"] and status["resource_id"].startswith("kg")
    else:  # without the provisioning task it stays provisioning: paid, not built yet
        status = _wait_for_status(server, token, created["session_id"], PAID_STATES)
        assert status["status"] == "provisioning", status
    assert status["subscription_id"] == created["subscription_id"] and status["error"] is None

    page.reload()
    assert page.inner_text("#subscription-status") in PAID_STATES
    # the checkout page of a paid session no longer offers Pay
    page.goto(created["checkout_url"])
    assert page.locator("#pay").count() == 0
    assert page.get_attribute("#status", "data-status") == "paid"


def test_declined_card_then_cancel_in_the_browser(server: str, page: Any) -> None:
    token = _token(server)
    created = _checkout(server, token, "Canceled graph")
    page.goto(created["checkout_url"])
    page.fill("#card_number", "4000 0000 0000 0002")
    page.click("#pay")
    assert "declined" in page.inner_text("#error")
    assert _status(server, token, created["session_id"])["status"] == "pending_payment"

    page.click("#cancel")
    page.wait_for_url("**/billing/checkout/return?*")
    assert "result=canceled" in page.url and "Checkout canceled" in page.inner_text("h1")
    status = _wait_for_status(server, token, created["session_id"], ("expired",))
    assert status["status"] == "expired" and status["error"]
