"""The local provider's customer portal in a real browser (headless Chromium through Playwright, JavaScript OFF),
against a real ``robosystems serve`` with its in-process worker: ``POST /v1/billing/portal/{org_id}`` gives the URL;
the page shows the payment method, the invoices with PDF links (a real PDF) and the subscription; replacing the
card and canceling the subscription go through the provider's signed events, our webhook inbox and the worker, and
show up in the API.  Skipped without Chromium or playwright (see tests/test_local_checkout_browser.py)."""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from tests.helpers import PASSWORD, unique_email
from tests.live_server import running_server
from tests.test_local_checkout_browser import CHROMIUM, CHROMIUM_ARGS

SECRET = "whsec_portal_test_" + "p" * 24
DEADLINE_SECONDS = 60.0

sync_api = pytest.importorskip("playwright.sync_api")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not shutil.which("chromium") and not shutil.which("/usr/bin/chromium"),
        reason="chromium is not installed",
    ),
]


@pytest.fixture(scope="module")
def server(database_url: str) -> Iterator[str]:
    with running_server(database_url, EMBEDDED_WORKER="true", REDIS_URL="", STRIPE_WEBHOOK_SECRET=SECRET) as url:
        yield url


@pytest.fixture(scope="module")
def page() -> Iterator[Any]:
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        context = chromium.new_context(java_script_enabled=False)
        try:
            yield context.new_page()
        finally:
            context.close()
            chromium.close()


def _wait(check: Callable[[], bool]) -> bool:
    deadline = time.monotonic() + DEADLINE_SECONDS
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.2)
    return False


def test_portal_shows_card_invoices_and_cancels(server: str, page: Any) -> None:
    registered = httpx.post(
        f"{server}/v1/auth/register",
        json={"name": "Portal User", "email": unique_email("portal"), "password": PASSWORD},
    ).json()
    auth = {"Authorization": f"Bearer {registered['token']}"}
    org = registered["org"]["id"]
    bought = httpx.post(
        f"{server}/v1/billing/checkout",
        json={"plan_name": "kuzu-standard", "resource_type": "graph", "resource_config": {"graph_name": "Portal"}},
        headers=auth,
    ).json()
    page.goto(bought["checkout_url"])
    page.click("#pay")
    page.wait_for_url("**/billing/checkout/return?*")

    def status() -> dict[str, Any]:
        body: dict[str, Any] = httpx.get(
            f"{server}/v1/billing/checkout/{bought['session_id']}/status", headers=auth
        ).json()
        return body

    assert _wait(lambda: status()["status"] == "active"), status()

    portal = httpx.post(f"{server}/v1/billing/portal/{org}", headers=auth)
    assert portal.status_code == 200, portal.text
    url = portal.json()["url"]
    assert url.startswith(f"{server}/billing/local/portal/bps_")
    page.goto(url)
    assert page.title() == "Billing portal" and page.locator("script").count() == 0
    assert "visa •••• 4242" in page.inner_text("#payment-method")
    assert page.locator("#invoices tr.invoice").count() == 1
    pdf_href = page.get_attribute("#invoices a.pdf", "href")
    pdf = page.request.get(pdf_href)
    assert pdf.status == 200 and pdf.headers["content-type"] == "application/pdf"
    assert pdf.body().startswith(b"%PDF-1.4") and b"49.00 USD" in pdf.body()

    page.fill("#card_number", "5555 5555 5555 4444")
    page.click("#update-card")
    page.wait_for_url(url)
    assert "mastercard •••• 4444" in page.inner_text("#payment-method")

    def last4() -> str | None:
        methods = httpx.get(f"{server}/v1/billing/customer/{org}", headers=auth).json()["payment_methods"]
        return methods[0]["last4"] if methods else None

    assert _wait(lambda: last4() == "4444"), last4()

    page.click("#subscriptions button.cancel")
    page.wait_for_url(url)
    assert "cancels at period end" in page.inner_text("#subscriptions")
    sub_url = f"{server}/v1/billing/subscriptions/{org}/subscription/{bought['subscription_id']}"
    assert _wait(lambda: httpx.get(sub_url, headers=auth).json()["cancel_at_period_end"] is True)
    assert page.locator("#subscriptions button.cancel").count() == 0
