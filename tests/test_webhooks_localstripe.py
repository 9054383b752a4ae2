"""End to end against a fake Stripe server (localstripe, run as its own process).

localstripe keeps Stripe objects in memory, answers the Stripe SDK over HTTP and *sends its own signed
webhooks* (``t=<created>,v1=<hmac>``, its own implementation) to a registered URL.  Here it talks to a real
``robosystems serve`` process (in-process worker, no broker): customer + card + plan + subscription are created
with the Stripe SDK, localstripe posts ``invoice.payment_succeeded`` (before ``customer.subscription.created``)
and later ``customer.subscription.deleted``; the service verifies, stores and applies them, and the reconciliation
reads the subscription back through ``StripeProvider.retrieve_subscription``.

Needs the ``localstripe`` command (``pip install localstripe``, e.g. in a tool venv; set ``LOCALSTRIPE`` to its
path if it is not on PATH); skipped otherwise.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
import stripe
from sqlalchemy import Engine

from robosystems.billing.plans import get_catalog
from robosystems.payments.stripe_provider import StripeProvider
from robosystems.webhooks import reconcile
from robosystems.worker.context import WorkerContext
from tests.helpers import count
from tests.webhooks_support import SECRET, Billing, scalar, wait_for, worker_ctx

__all__ = ["worker_ctx"]  # fixtures

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent


def _localstripe_bin() -> str | None:
    candidates = [
        os.environ.get("LOCALSTRIPE", ""),
        shutil.which("localstripe") or "",
        str(ROOT / ".venv/bin/localstripe"),
    ]
    return next((c for c in candidates if c and Path(c).exists()), None)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _stop(proc: subprocess.Popen[bytes]) -> str:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        out, _ = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
    return out.decode(errors="replace")[-4000:]


def _wait_http(url: str, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    def up() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"{url}: process exited early:\n{_stop(proc)}")
        try:
            return httpx.get(url, timeout=2).status_code < 500
        except httpx.HTTPError:
            return False

    assert wait_for(up, timeout=timeout, interval=0.2), f"{url} never answered"


@pytest.fixture
def localstripe() -> Iterator[str]:
    binary = _localstripe_bin()
    if binary is None:
        pytest.skip("localstripe is not installed (pip install localstripe; or set LOCALSTRIPE)")
    port = _free_port()
    proc = subprocess.Popen(  # noqa: S603 - a test tool
        [binary, "--port", str(port)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True
    )
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_http(f"{base}/v1/customers", proc)
        yield base
    finally:
        _stop(proc)


@pytest.fixture
def service_url(localstripe: str, database_url: str, tmp_path: Path) -> Iterator[str]:
    port = _free_port()
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "ENVIRONMENT": "test",
        "ROBOSYSTEMS_DATA_DIR": str(tmp_path),
        "JWT_SECRET_KEY": "localstripe-test-" + "j" * 40,
        "STRIPE_SECRET_KEY": "sk_test_localstripe",
        "STRIPE_API_BASE": localstripe,
        "STRIPE_WEBHOOK_SECRET": SECRET,
        "REDIS_URL": "",
        "CELERY_BROKER_URL": "",
        "EMBEDDED_WORKER": "true",
        "OUTBOX_POLL_INTERVAL_SECONDS": "0.2",
        "LOG_JSON": "false",
    }
    proc = subprocess.Popen(  # noqa: S603 - our own CLI
        [sys.executable, "-m", "robosystems.cli", "serve", "--no-migrate", "--port", str(port), "--workers", "1"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        cwd=tmp_path,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_http(f"{url}/healthz", proc)
        yield url
    finally:
        log = _stop(proc)
        if os.environ.get("SHOW_SERVICE_LOG"):
            print(log)  # noqa: T201


def _statuses(engine: Engine) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    with engine.connect() as conn:
        for event_type, status in conn.exec_driver_sql("SELECT type, status FROM webhook_events").all():
            out.setdefault(event_type, set()).add(status)
    return out


def test_subscription_lifecycle_through_localstripe(
    localstripe: str, service_url: str, worker_ctx: WorkerContext, sync_engine: Engine
) -> None:
    httpx.post(
        f"{localstripe}/_config/webhooks/robosystems",
        data={"url": f"{service_url}/admin/v1/webhooks/stripe", "secret": SECRET},
        timeout=10,
    ).raise_for_status()
    client = stripe.StripeClient(
        "sk_test_localstripe",
        base_addresses={"api": localstripe},
        stripe_version=worker_ctx.settings.stripe_api_version,
        max_network_retries=0,
    )
    customer = client.v1.customers.create(params={"email": f"ls-{secrets.token_hex(3)}@example.com"})
    billing = Billing(worker_ctx, status="active", linked=False, with_graph=True, customer=customer.id)
    card = client.v1.payment_methods.create(
        params={"type": "card", "card": {"number": "4242424242424242", "exp_month": 12, "exp_year": 2030, "cvc": "123"}}
    )
    client.v1.payment_methods.attach(card.id, params={"customer": customer.id})
    client.v1.customers.update(customer.id, params={"invoice_settings": {"default_payment_method": card.id}})
    product = client.v1.products.create(params={"name": "kuzu-standard"})
    plan = client.v1.plans.create(
        params={"amount": 4999, "currency": "usd", "interval": "month", "product": product.id}
    )
    sub = client.v1.subscriptions.create(
        params={"customer": customer.id, "items": [{"plan": plan.id}], "metadata": {"subscription_id": billing.sub_id}}
    )
    assert sub.status == "active"

    def applied() -> bool:
        statuses = _statuses(sync_engine)
        return statuses.get("customer.subscription.created") == {"processed"} and statuses.get(
            "invoice.payment_succeeded"
        ) == {"processed"}

    assert wait_for(applied, timeout=60), _statuses(sync_engine)
    local = billing.sub()
    assert local["provider_subscription_id"] == sub.id
    assert local["provider_customer_id"] == customer.id
    assert local["status"] == "active"
    assert local["current_period_end"] is not None
    # localstripe's own signatures verified: nothing refused
    assert (
        count(sync_engine, "SELECT count(*) FROM security_audit_events WHERE event_type = 'webhook_signature_invalid'")
        == 0
    )
    # the paid invoice is ours (numbered, linked) and its credits were granted exactly once
    assert (
        scalar(sync_engine, "SELECT count(*) FROM billing_invoices WHERE subscription_id = :s", s=billing.sub_id) == 1
    )
    expected = Decimal(get_catalog(worker_ctx.settings.billing_plans_file).plan("kuzu-standard").monthly_credits)
    assert (
        scalar(sync_engine, "SELECT current_balance FROM graph_credits WHERE graph_id = :g", g=billing.graph_id)
        == expected
    )
    # other event types (customer.created, plan.created, …) are stored and ignored
    assert _statuses(sync_engine).get("plan.created") == {"ignored"}

    # reconciliation reads the provider through the StripeProvider (SDK -> localstripe): in sync
    provider: Any = StripeProvider(
        secret_key="sk_test_localstripe",
        api_version=worker_ctx.settings.stripe_api_version,
        api_base=localstripe,
        max_network_retries=0,
        timeout_seconds=10,
    )
    counts = reconcile.reconcile(worker_ctx, provider)
    assert counts["checked"] == 1 and counts["errors"] == 0

    client.v1.subscriptions.cancel(sub.id)
    assert wait_for(lambda: billing.status() == "canceled", timeout=60), _statuses(sync_engine)
    assert _statuses(sync_engine).get("customer.subscription.deleted") == {"processed"}
