"""The local payment provider: its store, its Stripe-shaped events and their signatures.

The events are checked against the shapes of /work/shared/stripe (fixtures.json, README) and their
``Stripe-Signature`` with the Stripe SDK's own verifier; the page and the full flow through our
webhook endpoint are in test_checkout.py and test_local_checkout_browser.py.
"""

from __future__ import annotations

import asyncio
import json
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import stripe

from robosystems.payments.base import CheckoutRequest, InvalidPaymentMethod, PaymentDeclined, ProviderObjectMissing
from robosystems.payments.local import LocalPaymentProvider, add_month

SECRET = "whsec_local_test_secret"
API_VERSION = "2025-03-31.basil"


@pytest.fixture
def provider(tmp_path: Path) -> LocalPaymentProvider:
    return LocalPaymentProvider(
        data_dir=tmp_path, base_url="http://app.test", signing_secret=SECRET, api_version=API_VERSION
    )


def _request(key: str = "checkout:bsub_1", *, customer: str | None = None, minutes: int = 60) -> CheckoutRequest:
    return CheckoutRequest(
        idempotency_key=key,
        subscription_id="bsub_1",
        org_id="org_1",
        customer_id=customer,
        plan_name="kuzu-standard",
        description="Kuzu Standard graph",
        amount_cents=4900,
        currency="usd",
        interval="month",
        expires_at=datetime.now(UTC) + timedelta(minutes=minutes),
        success_url="http://app.test/billing/checkout/return?session_id={CHECKOUT_SESSION_ID}",
        cancel_url="http://app.test/cancel",
    )


def _checkout(provider: LocalPaymentProvider, **kwargs: Any) -> str:
    customer = provider.create_customer(
        org_id="org_1", name="Org", email="o@example.com", idempotency_key="customer:org_1"
    )
    return provider.create_checkout_session(_request(customer=customer, **kwargs)).id


def test_same_idempotency_key_same_objects(provider: LocalPaymentProvider) -> None:
    c1 = provider.create_customer(org_id="org_1", name=None, email=None, idempotency_key="customer:org_1")
    c2 = provider.create_customer(org_id="org_1", name=None, email=None, idempotency_key="customer:org_1")
    c3 = provider.create_customer(org_id="org_2", name=None, email=None, idempotency_key="customer:org_2")
    assert c1 == c2 != c3 and c1.startswith("cus_local_")
    s1 = provider.create_checkout_session(_request(customer=c1))
    s2 = provider.create_checkout_session(_request(customer=c1))
    s3 = provider.create_checkout_session(_request("checkout:bsub_2", customer=c1))
    assert s1 == s2 and s3.id != s1.id
    assert s1.id.startswith("cs_local_") and s1.url == f"http://app.test/billing/local/checkout/{s1.id}"
    view = provider.view(s1.id)
    assert (view.status, view.amount_cents, view.amount_display) == ("open", 4900, "49.00 USD")
    assert view.success_url == f"http://app.test/billing/checkout/return?session_id={s1.id}"
    with pytest.raises(ProviderObjectMissing):
        provider.view("cs_local_unknown")
    with pytest.raises(ProviderObjectMissing):
        provider.view("../../etc/passwd")


def test_pay_emits_the_four_stripe_shaped_events(provider: LocalPaymentProvider) -> None:
    session_id = _checkout(provider)
    view = provider.pay(session_id, "4242 4242 4242 4242")
    assert view.status == "complete" and view.payment_status == "paid" and view.subscription_id
    events = provider.events_of(session_id)
    assert [e["type"] for e in events] == [
        "checkout.session.completed",
        "customer.subscription.created",
        "invoice.finalized",
        "invoice.paid",
    ]
    for event in events:
        assert event["object"] == "event" and event["id"].startswith("evt_local_")
        assert event["api_version"] == API_VERSION and event["livemode"] is False
        assert isinstance(event["created"], int)
    session, subscription, finalized, paid = (e["data"]["object"] for e in events)

    assert session["object"] == "checkout.session" and session["mode"] == "subscription"
    assert (session["status"], session["payment_status"]) == ("complete", "paid")
    assert session["client_reference_id"] == "bsub_1"
    assert session["metadata"] == {"subscription_id": "bsub_1", "org_id": "org_1", "plan_name": "kuzu-standard"}
    assert session["subscription"] == subscription["id"] and session["customer"] == subscription["customer"]

    assert subscription["object"] == "subscription" and subscription["status"] == "active"
    assert subscription["metadata"]["subscription_id"] == "bsub_1"
    item = subscription["items"]["data"][0]  # the period lives on the items (basil+)
    assert item["current_period_end"] == add_month(item["current_period_start"])
    assert item["price"]["unit_amount"] == 4900 and item["price"]["recurring"]["interval"] == "month"
    assert subscription["latest_invoice"] == paid["id"]

    for invoice in (finalized, paid):
        assert invoice["object"] == "invoice" and invoice["id"] == paid["id"]
        # basil+: the subscription is named under parent.subscription_details, not at the top level
        assert invoice["parent"]["subscription_details"]["subscription"] == subscription["id"]
        assert "subscription" not in invoice
        line = invoice["lines"]["data"][0]
        assert line["amount"] == 4900 and line["period"]["end"] == item["current_period_end"]
    assert (finalized["status"], finalized["amount_paid"]) == ("open", 0)
    assert (paid["status"], paid["amount_paid"], paid["amount_due"]) == ("paid", 4900, 4900)
    assert paid["status_transitions"]["paid_at"] == paid["created"]

    # the provider keeps the objects it created (retrieve works, like Stripe)
    current = provider.retrieve_subscription(subscription["id"])
    assert current.status == "active" and current.current_period_end is not None

    # paying again (double click, second tab) changes nothing
    again = provider.pay(session_id)
    assert again.status == "complete" and again.subscription_id == view.subscription_id
    assert [e["id"] for e in provider.events_of(session_id)] == [e["id"] for e in events]


def test_concurrent_pay_pays_once(provider: LocalPaymentProvider) -> None:
    session_id = _checkout(provider)
    results: list[str | None] = []
    barrier = threading.Barrier(10)

    def pay() -> None:
        barrier.wait()
        results.append(provider.pay(session_id).subscription_id)

    threads = [threading.Thread(target=pay) for _ in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 10 and len(set(results)) == 1 and results[0]
    assert len(provider.events_of(session_id)) == 4
    assert len(list((provider.store.root / "subscriptions").glob("*.json"))) == 1


def test_declined_card_and_bad_input_leave_the_session_open(provider: LocalPaymentProvider) -> None:
    session_id = _checkout(provider)
    declined = provider.pay(session_id, "4000 0000 0000 0002")
    assert declined.status == "open" and declined.error == "Your card was declined."
    bad = provider.pay(session_id, "12")
    assert bad.status == "open" and bad.error and "card number" in bad.error
    assert provider.events_of(session_id) == []
    assert provider.pay(session_id).status == "complete"


def test_cancel_and_expiry_emit_checkout_session_expired(provider: LocalPaymentProvider) -> None:
    session_id = _checkout(provider)
    assert provider.expire(session_id).status == "expired"
    assert provider.expire(session_id).status == "expired"  # idempotent
    events = provider.events_of(session_id)
    assert [e["type"] for e in events] == ["checkout.session.expired"]
    assert events[0]["data"]["object"]["status"] == "expired"
    assert provider.pay(session_id).status == "expired"  # an expired session cannot be paid
    assert len(provider.events_of(session_id)) == 1

    # an open session past its expiry is expired when it is looked at (or paid)
    late = provider.create_checkout_session(_request("checkout:late", customer=None, minutes=-1)).id
    assert provider.view(late).status == "expired"
    assert [e["type"] for e in provider.events_of(late)] == ["checkout.session.expired"]
    late2 = provider.create_checkout_session(_request("checkout:late2", customer=None, minutes=-1)).id
    assert provider.pay(late2).status == "expired"
    assert [e["type"] for e in provider.events_of(late2)] == ["checkout.session.expired"]


def test_deliveries_are_signed_like_stripe_and_retried_until_accepted(provider: LocalPaymentProvider) -> None:
    session_id = _checkout(provider)
    provider.pay(session_id)
    received: list[dict[str, Any]] = []
    answers = iter([200, 500, 200, 200, 200])

    async def send(body: bytes, headers: dict[str, str]) -> int:
        # what our webhook endpoint does: verify the header with the SDK, then parse
        stripe.WebhookSignature.verify_header(body.decode(), headers["Stripe-Signature"], SECRET, tolerance=300)
        with pytest.raises(stripe.SignatureVerificationError):
            stripe.WebhookSignature.verify_header(body.decode(), headers["Stripe-Signature"], "whsec_other", 300)
        status = next(answers)
        if status == 200:
            received.append(json.loads(body))
        return status

    assert asyncio.run(provider.deliver(session_id, send)) is False  # second event refused: stop there
    assert [e["type"] for e in received] == ["checkout.session.completed"]
    assert [e["type"] for e in provider.undelivered_events(session_id)] == [
        "customer.subscription.created",
        "invoice.finalized",
        "invoice.paid",
    ]
    assert asyncio.run(provider.deliver(session_id, send)) is True
    assert [e["type"] for e in received] == [
        "checkout.session.completed",
        "customer.subscription.created",
        "invoice.finalized",
        "invoice.paid",
    ]
    assert provider.undelivered_events(session_id) == []

    async def unreachable(body: bytes, headers: dict[str, str]) -> int:
        raise ConnectionError("down")

    assert asyncio.run(provider.deliver(session_id, unreachable)) is True  # nothing left to send


def test_payment_methods_portal_cancel_and_refund(provider: LocalPaymentProvider) -> None:
    customer = provider.create_customer(org_id="org_1", name=None, email=None, idempotency_key="customer:org_1")
    info = provider.attach_payment_method(
        customer_id=customer, payment_method_id="pm_card_mastercard", idempotency_key="pm:1"
    )
    assert (info.brand, info.last4, info.type) == ("mastercard", "4444", "card") and info.id.startswith("pm_local_")
    assert provider.store.get("customers", customer)["object"]["invoice_settings"]["default_payment_method"] == info.id
    # a method created here (e.g. on the checkout page) can be attached again by id
    assert (
        provider.attach_payment_method(customer_id=customer, payment_method_id=info.id, idempotency_key="pm:2").id
        == info.id
    )
    with pytest.raises(PaymentDeclined):
        provider.attach_payment_method(
            customer_id=customer, payment_method_id="pm_card_chargeDeclined", idempotency_key="pm:3"
        )
    with pytest.raises(InvalidPaymentMethod):
        provider.attach_payment_method(customer_id=customer, payment_method_id="pm_nope", idempotency_key="pm:4")
    with pytest.raises(ProviderObjectMissing):
        provider.attach_payment_method(
            customer_id="cus_local_missing", payment_method_id="pm_card_visa", idempotency_key="pm:5"
        )

    portal = provider.create_portal_session(customer_id=customer, return_url="http://app.test/")
    assert portal.startswith("http://app.test/billing/local/portal/bps_local_")

    session_id = provider.create_checkout_session(_request(customer=customer)).id
    subscription_id = provider.pay(session_id).subscription_id
    assert subscription_id
    canceled = provider.cancel_subscription_at_period_end(subscription_id, idempotency_key="cancel:1")
    assert canceled.cancel_at_period_end and canceled.status == "active"
    invoice_id = provider.events_of(session_id)[-1]["data"]["object"]["id"]
    refund = provider.refund_or_credit_invoice(invoice_id, reason="provisioning failed", idempotency_key="refund:1")
    assert refund == provider.refund_or_credit_invoice(invoice_id, reason="x", idempotency_key="refund:1")
    assert provider.store.get("refunds", refund)["object"]["amount"] == 4900
