"""The Stripe provider through the official SDK, over HTTP, against localstripe on 127.0.0.1.

No mocks: a real HTTP server (``tests/localstripe_server.py``: the PyPI ``localstripe`` package plus
Checkout/portal endpoints and Stripe's idempotent replay) receives what ``stripe.StripeClient``
sends.  Its request log proves the pinned API version and the idempotency keys reach the wire.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, text

from robosystems.config import Settings
from robosystems.payments.base import (
    CheckoutRequest,
    InvalidPaymentMethod,
    PaymentDeclined,
    PaymentProvider,
    ProviderObjectMissing,
    ProviderUnavailable,
)
from robosystems.payments.factory import build_provider, check_configuration, provider_name
from robosystems.payments.local import LocalPaymentProvider
from robosystems.payments.stripe_provider import StripeProvider
from robosystems.webhooks.verify import signing_secret
from tests.helpers import count
from tests.org_helpers import make_org, person

# the SDK's httpx client posts form bodies with data=bytes (its own code, not ours)
pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=<...>' to upload raw bytes:DeprecationWarning")

API_VERSION = "2025-03-31.basil"
SERVER = Path(__file__).resolve().parent / "localstripe_server.py"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def localstripe() -> Iterator[str]:
    port = _free_port()
    proc = subprocess.Popen(  # noqa: S603 - our own test server
        [sys.executable, str(SERVER), "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(200):
            try:
                httpx.get(f"{url}/_config/requests", timeout=0.5)
                break
            except httpx.HTTPError:
                if proc.poll() is not None:
                    raise RuntimeError(proc.stderr.read().decode() if proc.stderr else "localstripe died") from None
                time.sleep(0.05)
        else:
            raise RuntimeError("localstripe did not start")
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture
def stripe_provider(localstripe: str) -> StripeProvider:
    httpx.delete(f"{localstripe}/_config/requests")
    return StripeProvider(secret_key="sk_test_robosystems", api_version=API_VERSION, api_base=localstripe)


def _requests(url: str) -> list[dict[str, Any]]:
    data: list[dict[str, Any]] = httpx.get(f"{url}/_config/requests").json()
    return data


def _card(provider: StripeProvider, number: str = "4242424242424242") -> str:
    pm = provider.client.v1.payment_methods.create(
        {"type": "card", "card": {"number": number, "exp_month": 12, "exp_year": 2031, "cvc": "123"}}
    )
    return str(pm.id)


def _checkout_request(customer_id: str | None, key: str = "checkout:bsub_1") -> CheckoutRequest:
    return CheckoutRequest(
        idempotency_key=key,
        subscription_id="bsub_1",
        org_id="org_1",
        customer_id=customer_id,
        plan_name="kuzu-standard",
        description="Kuzu Standard graph",
        amount_cents=4900,
        currency="usd",
        interval="month",
        expires_at=datetime.now(UTC) + timedelta(minutes=60),
        success_url="http://app.test/return?session_id={CHECKOUT_SESSION_ID}",
        cancel_url="http://app.test/cancel",
    )


def test_stripe_provider_satisfies_the_protocol(stripe_provider: StripeProvider) -> None:
    assert isinstance(stripe_provider, PaymentProvider)
    assert isinstance(
        LocalPaymentProvider(
            data_dir=Path("/tmp"), base_url="http://x", signing_secret="whsec_x", api_version=API_VERSION
        ),
        PaymentProvider,
    )


def test_customer_create_is_idempotent_and_pins_the_api_version(
    stripe_provider: StripeProvider, localstripe: str
) -> None:
    first = stripe_provider.create_customer(
        org_id="org_a", name="Acme", email="billing@acme.test", idempotency_key="customer:org_a"
    )
    again = stripe_provider.create_customer(
        org_id="org_a", name="Acme", email="billing@acme.test", idempotency_key="customer:org_a"
    )
    other = stripe_provider.create_customer(org_id="org_b", name=None, email=None, idempotency_key="customer:org_b")
    assert first.startswith("cus_") and first == again and other != first
    customer = stripe_provider.client.v1.customers.retrieve(first)
    assert customer.metadata["org_id"] == "org_a"
    log = _requests(localstripe)
    creates = [r for r in log if r["method"] == "POST" and r["path"] == "/v1/customers"]
    assert [r["idempotency_key"] for r in creates] == ["customer:org_a", "customer:org_a", "customer:org_b"]
    assert log and all(r["stripe_version"] == API_VERSION for r in log)


def test_attach_payment_method_sets_the_default(stripe_provider: StripeProvider, localstripe: str) -> None:
    customer = stripe_provider.create_customer(org_id="org_pm", name=None, email=None, idempotency_key="customer:pm")
    pm_id = _card(stripe_provider)
    info = stripe_provider.attach_payment_method(customer_id=customer, payment_method_id=pm_id, idempotency_key="pm:1")
    assert (info.id, info.type, info.brand, info.last4, info.exp_month, info.exp_year) == (
        pm_id,
        "card",
        "visa",
        "4242",
        12,
        2031,
    )
    assert info.summary()["last4"] == "4242"
    stored = stripe_provider.client.v1.customers.retrieve(customer)
    assert stored.invoice_settings.default_payment_method == pm_id
    keys = {r["path"]: r["idempotency_key"] for r in _requests(localstripe) if r["method"] == "POST"}
    assert keys[f"/v1/payment_methods/{pm_id}/attach"] == "pm:1:attach"
    assert keys[f"/v1/customers/{customer}"] == "pm:1:default"


def test_attach_errors_are_mapped_to_stable_codes(stripe_provider: StripeProvider) -> None:
    customer = stripe_provider.create_customer(org_id="org_err", name=None, email=None, idempotency_key="customer:err")
    declined = _card(stripe_provider, "4000000000000002")
    with pytest.raises(PaymentDeclined) as exc_info:
        stripe_provider.attach_payment_method(customer_id=customer, payment_method_id=declined, idempotency_key="pm:d")
    assert (exc_info.value.status_code, exc_info.value.code) == (402, "card_declined")
    assert exc_info.value.detail == PaymentDeclined.detail  # fixed text, not the SDK's message
    with pytest.raises(InvalidPaymentMethod) as missing:
        stripe_provider.attach_payment_method(
            customer_id=customer, payment_method_id="pm_doesnotexist", idempotency_key="pm:x"
        )
    assert (missing.value.status_code, missing.value.code) == (422, "invalid_payment_method")


def test_checkout_session_same_key_same_session(stripe_provider: StripeProvider, localstripe: str) -> None:
    customer = stripe_provider.create_customer(org_id="org_1", name=None, email=None, idempotency_key="customer:cs")
    first = stripe_provider.create_checkout_session(_checkout_request(customer))
    again = stripe_provider.create_checkout_session(_checkout_request(customer))
    other = stripe_provider.create_checkout_session(_checkout_request(customer, key="checkout:bsub_2"))
    assert first == again and first.id.startswith("cs_") and other.id != first.id
    assert first.url.startswith("https://") and first.expires_at > datetime.now(UTC)
    session = stripe_provider.client.v1.checkout.sessions.retrieve(first.id).to_dict()
    assert session["mode"] == "subscription" and session["customer"] == customer
    assert session["client_reference_id"] == "bsub_1"
    assert session["metadata"] == {"subscription_id": "bsub_1", "org_id": "org_1", "plan_name": "kuzu-standard"}
    assert session["success_url"] == f"http://app.test/return?session_id={first.id}"
    creates = [r for r in _requests(localstripe) if r["path"] == "/v1/checkout/sessions" and r["method"] == "POST"]
    assert [r["idempotency_key"] for r in creates] == ["checkout:bsub_1", "checkout:bsub_1", "checkout:bsub_2"]

    stripe_provider.expire_checkout_session(first.id)
    assert stripe_provider.client.v1.checkout.sessions.retrieve(first.id).status == "expired"
    stripe_provider.expire_checkout_session(first.id)  # not open any more: a no-op, not an error


def test_checkout_with_unknown_customer_is_a_provider_error(stripe_provider: StripeProvider) -> None:
    with pytest.raises(ProviderObjectMissing) as exc_info:
        stripe_provider.create_checkout_session(_checkout_request("cus_missing", key="checkout:missing"))
    assert exc_info.value.code == "provider_object_missing"


def test_subscription_retrieve_cancel_and_refund(stripe_provider: StripeProvider, localstripe: str) -> None:
    customer = stripe_provider.create_customer(org_id="org_s", name=None, email=None, idempotency_key="customer:s")
    stripe_provider.attach_payment_method(
        customer_id=customer, payment_method_id=_card(stripe_provider), idempotency_key="pm:s"
    )
    stripe_provider.client.v1.plans.create(
        {"id": "plan-test-sub", "amount": 4900, "currency": "usd", "interval": "month", "product": {"name": "Kuzu"}}
    )
    sub = stripe_provider.client.v1.subscriptions.create({"customer": customer, "items": [{"plan": "plan-test-sub"}]})

    current = stripe_provider.retrieve_subscription(sub.id)
    assert current.status == "active" and current.customer_id == customer and not current.cancel_at_period_end
    assert current.current_period_start is not None and current.current_period_end is not None
    assert current.current_period_end > current.current_period_start

    canceled = stripe_provider.cancel_subscription_at_period_end(sub.id, idempotency_key=f"cancel:{sub.id}")
    assert canceled.cancel_at_period_end and canceled.status == "active"
    assert stripe_provider.retrieve_subscription(sub.id).cancel_at_period_end

    invoice_id = str(sub.latest_invoice)
    refund_id = stripe_provider.refund_or_credit_invoice(
        invoice_id, reason="provisioning failed", idempotency_key=f"refund:{invoice_id}"
    )
    again = stripe_provider.refund_or_credit_invoice(
        invoice_id, reason="provisioning failed", idempotency_key=f"refund:{invoice_id}"
    )
    assert refund_id.startswith("re_") and again == refund_id
    refund = stripe_provider.client.v1.refunds.retrieve(refund_id)
    assert refund.amount == 4900 and refund.metadata["invoice"] == invoice_id

    with pytest.raises(ProviderObjectMissing):
        stripe_provider.retrieve_subscription("sub_missing")


def test_invoice_lines_lists_the_invoice_lines(stripe_provider: StripeProvider) -> None:
    """The line listing used when an event's invoice says ``lines.has_more`` (localstripe implements neither
    multi-item subscriptions nor ``starting_after``, so one page here; the loop stops on a page adding nothing)."""
    customer = stripe_provider.create_customer(org_id="org_l", name=None, email=None, idempotency_key="customer:l")
    stripe_provider.attach_payment_method(
        customer_id=customer, payment_method_id=_card(stripe_provider), idempotency_key="pm:l"
    )
    stripe_provider.client.v1.plans.create(
        {"id": "plan-lines", "amount": 4900, "currency": "usd", "interval": "month", "product": {"name": "Kuzu"}}
    )
    sub = stripe_provider.client.v1.subscriptions.create({"customer": customer, "items": [{"plan": "plan-lines"}]})
    invoice = stripe_provider.client.v1.invoices.retrieve(str(sub.latest_invoice)).to_dict()
    lines = stripe_provider.invoice_lines(str(invoice["id"]))
    assert [(line["id"], line["amount"]) for line in lines] == [
        (line["id"], line["amount"]) for line in invoice["lines"]["data"]
    ]
    assert [line["amount"] for line in lines] == [4900]


def test_portal_session(stripe_provider: StripeProvider) -> None:
    customer = stripe_provider.create_customer(org_id="org_p", name=None, email=None, idempotency_key="customer:p")
    url = stripe_provider.create_portal_session(customer_id=customer, return_url="http://app.test/")
    assert url.startswith("https://")


def test_unreachable_stripe_is_503_without_details() -> None:
    port = _free_port()  # nothing listens there
    provider = StripeProvider(
        secret_key="sk_test_x",
        api_version=API_VERSION,
        api_base=f"http://127.0.0.1:{port}",
        max_network_retries=0,
        timeout_seconds=2,
    )
    with pytest.raises(ProviderUnavailable) as exc_info:
        provider.create_customer(org_id="org_x", name=None, email=None, idempotency_key="customer:x")
    assert exc_info.value.status_code == 503 and exc_info.value.code == "payment_provider_unavailable"
    assert "127.0.0.1" not in exc_info.value.detail


def test_factory_picks_the_provider(tmp_path: Path, localstripe: str) -> None:
    def settings(**values: Any) -> Settings:
        base: dict[str, Any] = {"environment": "test", "robosystems_data_dir": tmp_path, "jwt_secret_key": "k" * 40}
        return Settings(_env_file=None, **{**base, **values})  # type: ignore[call-arg]

    assert provider_name(settings()) == "local"
    assert isinstance(build_provider(settings()), LocalPaymentProvider)
    stripe_settings = settings(stripe_secret_key="sk_test_123", stripe_api_base=localstripe)
    assert provider_name(stripe_settings) == "stripe"
    provider = build_provider(stripe_settings)
    assert isinstance(provider, StripeProvider) and provider.api_version == stripe_settings.stripe_api_version
    assert provider.create_customer(org_id="org_f", name=None, email=None, idempotency_key="customer:f").startswith(
        "cus_"
    )
    assert provider_name(settings(stripe_secret_key="sk_test_123", payment_provider="local")) == "local"
    from robosystems.config import ConfigError

    with pytest.raises(ConfigError):
        build_provider(settings(payment_provider="stripe"))
    # production never falls back to the local provider by itself
    with pytest.raises(ConfigError, match="STRIPE_SECRET_KEY"):
        check_configuration(settings(environment="production"))
    check_configuration(settings(environment="production", payment_provider="local", stripe_webhook_secret="whsec_p"))
    check_configuration(settings(environment="production", billing_enabled=False))
    check_configuration(settings(environment="production", stripe_secret_key="sk_live_x", stripe_api_base=localstripe))
    # the local provider signs with the secret the webhook endpoint verifies
    local_settings = settings(stripe_webhook_secret="whsec_shared")
    local = build_provider(local_settings)
    assert isinstance(local, LocalPaymentProvider)
    assert local.signing_secret == signing_secret(local_settings) == "whsec_shared"
    generated = settings()
    assert build_provider(generated).signing_secret == signing_secret(generated)  # type: ignore[attr-defined]


# --- the billing API with PAYMENT_PROVIDER=stripe, against localstripe ---------------------------------------------


async def test_billing_api_through_stripe(app_factory: Any, localstripe: str, sync_engine: Engine) -> None:
    httpx.delete(f"{localstripe}/_config/requests")
    async with app_factory(
        stripe_secret_key="sk_test_api", stripe_api_base=localstripe, stripe_webhook_secret="whsec_api_test"
    ) as (app, client):
        owner = await person(client)
        org = await make_org(client, owner, "Stripe Co")
        body = {
            "plan_name": "kuzu-large",
            "resource_type": "graph",
            "resource_config": {"graph_name": "S"},
            "org_id": org["id"],
        }
        headers = {**owner.auth, "Idempotency-Key": "stripe-order-1"}
        first = await client.post("/v1/billing/checkout", json=body, headers=headers)
        again = await client.post("/v1/billing/checkout", json=body, headers=headers)
        assert first.status_code == again.status_code == 201, first.text
        created = first.json()
        assert again.json() == created
        assert created["session_id"].startswith("cs_test_") and created["checkout_url"].startswith("https://")

        provider = StripeProvider(secret_key="sk_test_api", api_version=API_VERSION, api_base=localstripe)
        session = provider.client.v1.checkout.sessions.retrieve(created["session_id"]).to_dict()
        assert session["client_reference_id"] == created["subscription_id"]
        assert session["metadata"]["org_id"] == org["id"]
        price = session["amount_total"]
        assert price == 19900  # the catalog's price, sent inline (no provider price id configured)
        customer_id = session["customer"]
        assert provider.client.v1.customers.retrieve(customer_id).metadata["org_id"] == org["id"]
        with sync_engine.connect() as conn:
            row = conn.execute(
                text("SELECT provider, stripe_customer_id FROM billing_customers WHERE org_id = :o"), {"o": org["id"]}
            ).one()
        assert tuple(row) == ("stripe", customer_id)
        assert count(sync_engine, "SELECT count(*) FROM billing_subscriptions WHERE org_id = :o", o=org["id"]) == 1

        pm_id = _card(provider)
        attached = await client.post(
            f"/v1/billing/customer/{org['id']}/payment-method", json={"payment_method_id": pm_id}, headers=owner.auth
        )
        assert attached.status_code == 200, attached.text
        assert attached.json()["payment_method"]["last4"] == "4242"
        assert provider.client.v1.customers.retrieve(customer_id).invoice_settings.default_payment_method == pm_id
        declined = await client.post(
            f"/v1/billing/customer/{org['id']}/payment-method",
            json={"payment_method_id": _card(provider, "4000000000000002")},
            headers=owner.auth,
        )
        assert declined.status_code == 402 and declined.json()["code"] == "card_declined"
        assert declined.json()["detail"] == PaymentDeclined.detail

        portal = await client.post(f"/v1/billing/customer/{org['id']}/portal", headers=owner.auth)
        assert portal.status_code == 200 and portal.json()["portal_url"].startswith("https://")

        canceled = await client.post(
            f"/v1/billing/subscriptions/{org['id']}/subscription/{created['subscription_id']}/cancel",
            headers=owner.auth,
        )
        assert canceled.status_code == 200 and canceled.json()["status"] == "canceled"
        assert provider.client.v1.checkout.sessions.retrieve(created["session_id"]).status == "expired"

    log = _requests(localstripe)
    posts = [r for r in log if r["method"] == "POST"]
    assert all(r["stripe_version"] == app.state.services.settings.stripe_api_version for r in log)
    keys = {r["path"]: r["idempotency_key"] for r in posts}
    assert keys["/v1/customers"] == f"customer:{org['id']}"
    assert keys["/v1/checkout/sessions"].startswith(f"checkout:{org['id']}:")
    assert sum(1 for r in posts if r["path"] == "/v1/checkout/sessions") == 1  # the replay made no second call
