"""The payment provider protocol and the value objects it exchanges.

Methods are synchronous: the worker (webhook handlers, provisioning compensation, reconciliation)
calls them directly, the API calls them in a thread (:func:`starlette.concurrency.run_in_threadpool`)
so a slow provider never blocks the event loop.  Every method that creates something at the provider
takes an ``idempotency_key``: retrying a call with the same key has the effect of one call.

Provider failures are raised as :class:`ProviderError` subclasses (AppErrors with stable codes and a
fixed, safe message): the provider's own exception text never reaches a response.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, Protocol, runtime_checkable

from robosystems.errors import AppError

CollectionMethod = Literal["charge_automatically", "send_invoice"]


class ProviderError(AppError):
    """The payment provider refused or failed a call."""

    status_code, code, detail = 502, "payment_provider_error", "The payment provider could not process the request"


class ProviderUnavailable(ProviderError):
    status_code, code, detail = 503, "payment_provider_unavailable", "The payment provider is not reachable"


class PaymentDeclined(ProviderError):
    status_code, code, detail = 402, "card_declined", "The payment method was declined"


class InvalidPaymentMethod(ProviderError):
    status_code, code, detail = 422, "invalid_payment_method", "Unknown or unusable payment method"


class ProviderObjectMissing(ProviderError):
    status_code, code, detail = 404, "provider_object_missing", "The payment provider does not know this object"


@dataclass(frozen=True)
class CheckoutRequest:
    """What a hosted checkout session sells: one recurring plan for one pending subscription."""

    idempotency_key: str
    subscription_id: str
    org_id: str
    customer_id: str | None
    plan_name: str
    description: str
    amount_cents: int
    currency: str
    interval: str  # "month" | "year"
    expires_at: datetime
    success_url: str
    cancel_url: str
    price_id: str | None = None
    customer_email: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    quantity: int = 1  # seats of a per-seat plan (``amount_cents`` is the unit price)


@dataclass(frozen=True)
class PaymentCheckoutRequest:
    """A hosted checkout for a one-time payment (a credit pack): ``reference_id`` is our purchase id."""

    idempotency_key: str
    reference_id: str
    org_id: str
    customer_id: str | None
    description: str
    amount_cents: int
    currency: str
    expires_at: datetime
    success_url: str
    cancel_url: str
    customer_email: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class SubscriptionChange:
    """Move a provider subscription's (single) item to another plan price and/or quantity.

    ``proration_date`` (epoch seconds) pins the proration: a preview and the change made with the same value
    charge the same amount to the cent."""

    subscription_id: str
    plan_name: str
    amount_cents: int  # unit price of the new plan
    quantity: int
    currency: str
    interval: str  # "month" | "year"
    proration_date: int
    idempotency_key: str
    price_id: str | None = None


@dataclass(frozen=True)
class ChangeLine:
    description: str
    amount: int  # cents; negative = credit for unused time


@dataclass(frozen=True)
class ChangePreview:
    amount_due_now: int
    currency: str
    lines: list[ChangeLine]
    next_invoice_total: int  # the renewal after the change
    proration_date: int
    period_end: datetime | None


@dataclass(frozen=True)
class ChangeResult:
    """``paid``: the proration invoice is paid and the provider applied the change; ``pending``: the invoice awaits
    payment (the provider applies the change when it is paid); ``failed``: the charge failed, nothing changed at the
    provider (its pending update was discarded), ``failure_reason`` says why."""

    status: Literal["paid", "pending", "failed"]
    invoice_id: str | None
    amount_due: int
    failure_reason: str | None = None


@dataclass(frozen=True)
class ScheduledChange:
    schedule_id: str
    effective_at: datetime | None


@dataclass(frozen=True)
class CheckoutSession:
    id: str
    url: str
    expires_at: datetime


@dataclass(frozen=True)
class PaymentMethodInfo:
    id: str
    type: str
    brand: str | None = None
    last4: str | None = None
    exp_month: int | None = None
    exp_year: int | None = None

    def summary(self) -> dict[str, Any]:
        """The ``payment_method_summary`` kept on the billing customer row."""
        return {
            "id": self.id,
            "type": self.type,
            "brand": self.brand,
            "last4": self.last4,
            "exp_month": self.exp_month,
            "exp_year": self.exp_year,
        }


@dataclass(frozen=True)
class ProviderSubscription:
    id: str
    status: str
    customer_id: str | None
    cancel_at_period_end: bool
    current_period_start: datetime | None
    current_period_end: datetime | None
    canceled_at: datetime | None = None
    raw: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class PaymentProvider(Protocol):
    """A payment provider (Stripe, or the local stand-in)."""

    name: str  # "stripe" | "local" (stored in billing_customers.provider)

    def create_customer(self, *, org_id: str, name: str | None, email: str | None, idempotency_key: str) -> str:
        """Create the provider customer of an org; returns its id (``cus_…``)."""
        ...

    def create_checkout_session(self, request: CheckoutRequest) -> CheckoutSession:
        """A hosted checkout page for one subscription (same idempotency key -> same session)."""
        ...

    def expire_checkout_session(self, session_id: str) -> None:
        """End an open checkout session (no-op when it is already complete or expired)."""
        ...

    def attach_payment_method(
        self, *, customer_id: str, payment_method_id: str, idempotency_key: str
    ) -> PaymentMethodInfo:
        """Attach a payment method to the customer and make it the default for invoices."""
        ...

    def create_portal_session(self, *, customer_id: str, return_url: str) -> str:
        """URL of the provider's customer portal for this customer."""
        ...

    def cancel_subscription_at_period_end(self, subscription_id: str, *, idempotency_key: str) -> ProviderSubscription:
        """Ask the provider to end the subscription at the end of the current period."""
        ...

    def refund_or_credit_invoice(self, invoice_id: str, *, reason: str, idempotency_key: str) -> str:
        """Give the money of a paid invoice back (refund; a credit when nothing was charged).
        Returns the provider id of the refund / credit note."""
        ...

    def retrieve_subscription(self, subscription_id: str) -> ProviderSubscription:
        """Current state at the provider (reconciliation)."""
        ...

    def invoice_lines(self, invoice_id: str) -> list[dict[str, Any]]:
        """Every line item of a provider invoice, all pages (an event embeds only the first page)."""
        ...

    def preview_subscription_change(self, change: SubscriptionChange) -> ChangePreview:
        """What :meth:`change_subscription` with the same ``change`` would invoice now (Stripe's invoice preview,
        ``proration_behavior=always_invoice``, proration date pinned)."""
        ...

    def change_subscription(self, change: SubscriptionChange) -> ChangeResult:
        """Apply the change now: the proration is invoiced and charged to the default payment method; the change
        takes effect only when that invoice is paid (Stripe ``payment_behavior=pending_if_incomplete``)."""
        ...

    def schedule_subscription_change(self, change: SubscriptionChange) -> ScheduledChange:
        """The change takes effect at the end of the current period (no proration)."""
        ...

    def cancel_scheduled_change(self, subscription_id: str, schedule_id: str) -> None:
        """Call off a scheduled change (the subscription renews unchanged)."""
        ...

    def create_payment_checkout(self, request: PaymentCheckoutRequest) -> CheckoutSession:
        """A hosted checkout for a one-time payment (same idempotency key -> same session)."""
        ...

    def retrieve_payment_method(self, payment_method_id: str) -> PaymentMethodInfo:
        """A payment method's card summary (the default changed at the provider, e.g. in its portal)."""
        ...

    def create_subscription(
        self,
        *,
        customer_id: str,
        plan_name: str,
        amount_cents: int,
        currency: str,
        interval: str,
        price_id: str | None,
        metadata: dict[str, str],
        collection_method: CollectionMethod,
        days_until_due: int | None,
        idempotency_key: str,
    ) -> ProviderSubscription:
        """A subscription without a checkout page: charged to the customer's default payment method
        (``charge_automatically``) or invoiced (``send_invoice``, due after ``days_until_due`` days).
        The provider confirms the payment by ``invoice.paid``."""
        ...
