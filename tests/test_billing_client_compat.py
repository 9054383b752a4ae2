"""robosystems-client 0.2.13, unmodified, against a real server: the [client] billing and offering ops.

``robosystems serve`` runs as a subprocess with its in-process worker (no broker) and the local payment
provider; a checkout is paid by posting the hosted page's Pay form (what a browser does), the signed
events go through our webhook endpoint, the worker and the provisioning task.  Every call goes through
the client's ``sync_detailed``: its request building, status handling and parsing.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest
from robosystems_client import AuthenticatedClient, Client
from robosystems_client.api.billing import (
    cancel_org_subscription,
    create_checkout_session,
    get_checkout_status,
    get_org_billing_customer,
    get_org_subscription,
    get_org_upcoming_invoice,
    list_org_invoices,
    list_org_subscriptions,
    update_org_payment_method,
)
from robosystems_client.api.graphs import get_available_graph_tiers
from robosystems_client.api.service_offerings import get_service_offerings
from robosystems_client.models import (
    AvailableGraphTiersResponse,
    BillingCustomer,
    CheckoutResponse,
    CheckoutStatusResponse,
    CreateCheckoutRequest,
    GraphSubscriptionResponse,
    HTTPValidationError,
    Invoice,
    InvoicesResponse,
    PaymentMethod,
    ServiceOfferingsResponse,
    UpdatePaymentMethodRequest,
    UpdatePaymentMethodResponse,
)
from robosystems_client.models.create_checkout_request_resource_config import CreateCheckoutRequestResourceConfig
from robosystems_client.models.upcoming_invoice import UpcomingInvoice

from tests.helpers import PASSWORD, unique_email
from tests.live_server import running_server

SECRET = "whsec_client_compat_" + "z" * 24
TIMEOUT = httpx.Timeout(30.0)
DEADLINE_SECONDS = 60.0


@pytest.fixture(scope="module")
def server(database_url: str) -> Iterator[str]:
    with running_server(database_url, EMBEDDED_WORKER="true", REDIS_URL="", STRIPE_WEBHOOK_SECRET=SECRET) as url:
        yield url


@pytest.fixture
def buyer(server: str) -> Iterator[tuple[AuthenticatedClient, str]]:
    response = httpx.post(
        f"{server}/v1/auth/register", json={"name": "Client Buyer", "email": unique_email("cc"), "password": PASSWORD}
    )
    assert response.status_code == 201, response.text
    body = response.json()
    client = AuthenticatedClient(base_url=server, token=body["token"], timeout=TIMEOUT)
    yield client, body["org"]["id"]
    client.get_httpx_client().close()


def _checkout(client: AuthenticatedClient, name: str) -> CheckoutResponse:
    config = CreateCheckoutRequestResourceConfig.from_dict({"graph_name": name, "description": "via the client"})
    body = CreateCheckoutRequest(plan_name="kuzu-standard", resource_type="graph", resource_config=config)
    response = create_checkout_session.sync_detailed(client=client, body=body)
    assert response.status_code == 201, response.content
    assert isinstance(response.parsed, CheckoutResponse)
    return response.parsed


def _pay(checkout_url: str) -> None:
    response = httpx.post(f"{checkout_url}/pay", data={"card_number": "4242 4242 4242 4242"})
    assert response.status_code == 303, response.text


def _wait(client: AuthenticatedClient, session_id: str, states: tuple[str, ...]) -> CheckoutStatusResponse:
    deadline = time.monotonic() + DEADLINE_SECONDS
    while True:
        response = get_checkout_status.sync_detailed(session_id, client=client)
        assert response.status_code == 200 and isinstance(response.parsed, CheckoutStatusResponse)
        if response.parsed.status in states or time.monotonic() > deadline:
            return response.parsed
        time.sleep(0.2)


def test_offering_and_tiers(server: str, buyer: tuple[AuthenticatedClient, str]) -> None:
    anonymous = Client(base_url=server, timeout=TIMEOUT)
    try:
        response = get_service_offerings.sync_detailed(client=anonymous)
    finally:
        anonymous.get_httpx_client().close()
    assert response.status_code == 200 and isinstance(response.parsed, ServiceOfferingsResponse)
    offering = response.parsed
    assert offering.billing_enabled is True
    names = [t.name for t in offering.graph_subscriptions.tiers]
    assert "kuzu-standard" in names and offering.summary.total_graph_tiers == len(names)
    standard = next(t for t in offering.graph_subscriptions.tiers if t.name == "kuzu-standard")
    assert standard.monthly_price_per_graph == 49.0 and standard.monthly_credits_per_graph == 10000
    assert offering.repository_subscriptions.repositories[0].plans[0].monthly_price > 0

    client, _ = buyer
    tiers = get_available_graph_tiers.sync_detailed(client=client)
    assert tiers.status_code == 200 and isinstance(tiers.parsed, AvailableGraphTiersResponse)
    by_tier = {t.tier: t for t in tiers.parsed.tiers}
    assert set(by_tier) == set(names)
    large = by_tier["kuzu-large"]
    assert large.monthly_price == 199.0 and large.instance.memory_mb > 0 and large.limits.backup.max_backups_per_day > 0


def test_checkout_pay_and_manage_through_the_client(buyer: tuple[AuthenticatedClient, str]) -> None:
    client, org_id = buyer

    # billing customer before anything: defaults, nothing written
    customer = get_org_billing_customer.sync_detailed(org_id, client=client)
    assert customer.status_code == 200 and isinstance(customer.parsed, BillingCustomer)
    assert customer.parsed.org_id == org_id and customer.parsed.has_payment_method is False

    created = _checkout(client, "Client graph")
    assert created.requires_checkout is True and created.billing_disabled is False
    assert isinstance(created.session_id, str) and isinstance(created.subscription_id, str)
    assert isinstance(created.checkout_url, str)
    pending = get_checkout_status.sync_detailed(created.session_id, client=client)
    assert isinstance(pending.parsed, CheckoutStatusResponse) and pending.parsed.status == "pending_payment"

    _pay(created.checkout_url)
    status = _wait(client, created.session_id, ("active", "failed"))
    assert status.status == "active", status
    assert status.subscription_id == created.subscription_id and status.operation_id == created.subscription_id
    assert isinstance(status.resource_id, str) and status.resource_id.startswith("kg")

    listed = list_org_subscriptions.sync_detailed(org_id, client=client)
    assert listed.status_code == 200 and isinstance(listed.parsed, list)
    assert all(isinstance(s, GraphSubscriptionResponse) for s in listed.parsed)
    sub = next(s for s in listed.parsed if s.id == created.subscription_id)
    assert (sub.status, sub.plan_name, sub.base_price_cents, sub.resource_id) == (
        "active",
        "kuzu-standard",
        4900,
        status.resource_id,
    )
    assert isinstance(sub.current_period_end, str) and isinstance(sub.created_at, str)

    one = get_org_subscription.sync_detailed(org_id, created.subscription_id, client=client)
    assert one.status_code == 200 and isinstance(one.parsed, GraphSubscriptionResponse)

    invoices = list_org_invoices.sync_detailed(org_id, client=client, limit=10)
    assert invoices.status_code == 200 and isinstance(invoices.parsed, InvoicesResponse)
    assert invoices.parsed.total_count == 1 and invoices.parsed.has_more is False
    invoice = invoices.parsed.invoices[0]
    assert isinstance(invoice, Invoice)
    assert (invoice.status, invoice.amount_due, invoice.amount_paid, invoice.currency) == ("paid", 4900, 4900, "usd")
    assert isinstance(invoice.number, str) and invoice.number.startswith("INV-")
    assert invoice.subscription_id == created.subscription_id and invoice.line_items[0].amount == 4900

    upcoming = get_org_upcoming_invoice.sync_detailed(org_id, client=client)
    assert upcoming.status_code == 200 and isinstance(upcoming.parsed, UpcomingInvoice)
    assert upcoming.parsed.amount_due == 4900 and upcoming.parsed.subscription_id == created.subscription_id

    method = update_org_payment_method.sync_detailed(
        org_id, client=client, body=UpdatePaymentMethodRequest(payment_method_id="pm_card_visa")
    )
    assert method.status_code == 200 and isinstance(method.parsed, UpdatePaymentMethodResponse)
    assert isinstance(method.parsed.payment_method, PaymentMethod)
    assert method.parsed.payment_method.last4 == "4242" and method.parsed.payment_method.is_default is True
    customer = get_org_billing_customer.sync_detailed(org_id, client=client)
    assert isinstance(customer.parsed, BillingCustomer) and customer.parsed.has_payment_method is True
    assert isinstance(customer.parsed.stripe_customer_id, str)
    assert [pm.id for pm in customer.parsed.payment_methods] == [method.parsed.payment_method.id]

    canceled = cancel_org_subscription.sync_detailed(org_id, created.subscription_id, client=client)
    assert canceled.status_code == 200 and isinstance(canceled.parsed, GraphSubscriptionResponse)
    assert canceled.parsed.status == "active" and isinstance(canceled.parsed.canceled_at, str)
    assert canceled.parsed.additional_properties.get("cancel_at_period_end") is True
    again = cancel_org_subscription.sync_detailed(org_id, created.subscription_id, client=client)
    assert again.status_code == 409
    nothing = get_org_upcoming_invoice.sync_detailed(org_id, client=client)
    assert nothing.status_code == 200 and nothing.parsed is None


def test_client_sees_validation_errors(buyer: tuple[AuthenticatedClient, str]) -> None:
    client, _ = buyer
    config = CreateCheckoutRequestResourceConfig.from_dict({"graph_name": "x"})
    body = CreateCheckoutRequest(plan_name="no-such-plan", resource_type="graph", resource_config=config)
    response = create_checkout_session.sync_detailed(client=client, body=body)
    assert response.status_code == 422 and isinstance(response.parsed, HTTPValidationError)
    missing = get_checkout_status.sync_detailed("cs_local_unknown", client=client)
    assert missing.status_code == 404
