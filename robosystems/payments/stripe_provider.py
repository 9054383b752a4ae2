"""Stripe, through the official SDK's ``StripeClient``.

* The API version is pinned (``STRIPE_API_VERSION``) and sent on every call, so the objects we read
  and the webhook payloads we receive have the shape the handlers expect.
* ``STRIPE_API_BASE`` points the client at another server (tests: ``localstripe`` on 127.0.0.1).
* Every create call carries an idempotency key (Stripe replays the first answer for 24 h).
* SDK exceptions are mapped to :class:`~robosystems.payments.base.ProviderError` subclasses with a
  fixed message; the SDK's text is logged, never returned.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Literal, TypeVar

import stripe
from stripe.params import (
    CustomerCreateParams,
    InvoiceCreatePreviewParams,
    InvoiceCreatePreviewParamsSubscriptionDetailsItem,
    InvoiceLineItemListParams,
    ProductCreateParams,
    RefundCreateParams,
    SubscriptionCreateParams,
    SubscriptionCreateParamsItem,
    SubscriptionScheduleUpdateParamsPhase,
    SubscriptionScheduleUpdateParamsPhaseItem,
    SubscriptionUpdateParams,
    SubscriptionUpdateParamsItem,
    SubscriptionUpdateParamsItemPriceData,
)
from stripe.params.checkout import SessionCreateParams, SessionCreateParamsLineItem

from robosystems.payments.base import (
    ChangeLine,
    ChangePreview,
    ChangeResult,
    CheckoutRequest,
    CheckoutSession,
    CollectionMethod,
    InvalidPaymentMethod,
    PaymentCheckoutRequest,
    PaymentDeclined,
    PaymentMethodInfo,
    ProviderError,
    ProviderObjectMissing,
    ProviderSubscription,
    ProviderUnavailable,
    ScheduledChange,
    SubscriptionChange,
)

log = logging.getLogger("robosystems.payments.stripe")
T = TypeVar("T")
Interval = Literal["day", "month", "week", "year"]
PAYMENT_FAILED = "The payment method on file was declined or needs authentication; update it in the billing portal"


def _interval(value: str) -> Interval:
    return "year" if value in ("year", "annual", "yearly") else "month"


def _dt(value: Any) -> datetime | None:
    return datetime.fromtimestamp(int(value), UTC) if value else None


def _plain(obj: Any) -> dict[str, Any]:
    """A StripeObject as plain dicts/lists (``to_dict`` is recursive in the SDK)."""
    if isinstance(obj, stripe.StripeObject):
        result: dict[str, Any] = obj.to_dict()
        return result
    return dict(obj)


class StripeProvider:
    name = "stripe"

    def __init__(
        self,
        *,
        secret_key: str,
        api_version: str,
        api_base: str = "",
        max_network_retries: int = 2,
        timeout_seconds: float = 20.0,
    ) -> None:
        base_addresses: dict[str, str] = {"api": api_base.rstrip("/")} if api_base else {}
        self.api_version = api_version
        self.client = stripe.StripeClient(
            secret_key,
            stripe_version=api_version,
            base_addresses=base_addresses,  # type: ignore[arg-type]
            max_network_retries=max_network_retries,
            http_client=stripe.HTTPXClient(timeout=timeout_seconds, allow_sync_methods=True),
        )

    # --- error mapping -------------------------------------------------------------------------

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        try:
            return fn()
        except stripe.CardError as exc:
            log.info("stripe %s: card error %s", what, exc.code)
            raise PaymentDeclined() from exc
        except stripe.InvalidRequestError as exc:
            log.warning("stripe %s: invalid request (%s, param=%s)", what, exc.code, exc.param)
            if exc.http_status == 404 or exc.code == "resource_missing":
                if "payment_method" in (exc.param or "") or what == "attach_payment_method":
                    raise InvalidPaymentMethod() from exc
                raise ProviderObjectMissing() from exc
            raise ProviderError() from exc
        except (stripe.APIConnectionError, stripe.RateLimitError) as exc:
            log.warning("stripe %s: unavailable (%s)", what, type(exc).__name__)
            raise ProviderUnavailable() from exc
        except stripe.StripeError as exc:
            log.error("stripe %s failed: %s (http %s)", what, type(exc).__name__, exc.http_status)
            raise ProviderError() from exc

    # --- PaymentProvider -----------------------------------------------------------------------

    def create_customer(self, *, org_id: str, name: str | None, email: str | None, idempotency_key: str) -> str:
        params: CustomerCreateParams = {"metadata": {"org_id": org_id}}
        if name:
            params["name"] = name
        if email:
            params["email"] = email
        customer = self._call(
            "create_customer",
            lambda: self.client.v1.customers.create(params, {"idempotency_key": idempotency_key}),
        )
        return str(customer.id)

    def create_checkout_session(self, request: CheckoutRequest) -> CheckoutSession:
        metadata = {
            "subscription_id": request.subscription_id,
            "org_id": request.org_id,
            "plan_name": request.plan_name,
            **request.metadata,
        }
        if request.price_id:
            line_item: SessionCreateParamsLineItem = {"price": request.price_id, "quantity": request.quantity}
        else:
            line_item = {
                "quantity": request.quantity,
                "price_data": {
                    "currency": request.currency,
                    "unit_amount": request.amount_cents,
                    "recurring": {"interval": request.interval},
                    "product_data": {"name": request.description, "metadata": {"plan_name": request.plan_name}},
                },
            }
        params: SessionCreateParams = {
            "mode": "subscription",
            "line_items": [line_item],
            "client_reference_id": request.subscription_id,
            "metadata": metadata,
            "subscription_data": {"metadata": metadata},
            "success_url": request.success_url,
            "cancel_url": request.cancel_url,
            "expires_at": int(request.expires_at.timestamp()),
        }
        if request.customer_id:
            params["customer"] = request.customer_id
        elif request.customer_email:
            params["customer_email"] = request.customer_email
        session = self._call(
            "create_checkout_session",
            lambda: self.client.v1.checkout.sessions.create(
                params,
                {"idempotency_key": request.idempotency_key},
            ),
        )
        expires = _dt(session.expires_at) or request.expires_at
        return CheckoutSession(str(session.id), str(session.url), expires)

    def expire_checkout_session(self, session_id: str) -> None:
        try:
            self._call("expire_checkout_session", lambda: self.client.v1.checkout.sessions.expire(session_id))
        except ProviderError as exc:
            # Stripe refuses to expire a session that is complete or already expired: nothing to do.
            if isinstance(exc, ProviderUnavailable):
                raise
            log.info("stripe checkout session %s not expired (not open)", session_id)

    def attach_payment_method(
        self, *, customer_id: str, payment_method_id: str, idempotency_key: str
    ) -> PaymentMethodInfo:
        pm = self._call(
            "attach_payment_method",
            lambda: self.client.v1.payment_methods.attach(
                payment_method_id,
                {"customer": customer_id},
                {"idempotency_key": f"{idempotency_key}:attach"},
            ),
        )
        self._call(
            "set_default_payment_method",
            lambda: self.client.v1.customers.update(
                customer_id,
                {"invoice_settings": {"default_payment_method": str(pm.id)}},
                {"idempotency_key": f"{idempotency_key}:default"},
            ),
        )
        data = _plain(pm)
        card = data.get("card") or {}
        return PaymentMethodInfo(
            id=str(data["id"]),
            type=str(data.get("type") or "card"),
            brand=card.get("brand"),
            last4=card.get("last4"),
            exp_month=card.get("exp_month"),
            exp_year=card.get("exp_year"),
        )

    def create_portal_session(self, *, customer_id: str, return_url: str) -> str:
        portal = self._call(
            "create_portal_session",
            lambda: self.client.v1.billing_portal.sessions.create({"customer": customer_id, "return_url": return_url}),
        )
        return str(portal.url)

    def cancel_subscription_at_period_end(self, subscription_id: str, *, idempotency_key: str) -> ProviderSubscription:
        sub = self._call(
            "cancel_subscription_at_period_end",
            lambda: self.client.v1.subscriptions.update(
                subscription_id, {"cancel_at_period_end": True}, {"idempotency_key": idempotency_key}
            ),
        )
        return self.subscription_value(_plain(sub))

    def refund_or_credit_invoice(self, invoice_id: str, *, reason: str, idempotency_key: str) -> str:
        invoice = _plain(self._call("retrieve_invoice", lambda: self.client.v1.invoices.retrieve(invoice_id)))
        metadata = {"invoice": invoice_id, "reason": reason[:200]}
        payment_intent, charge = self._invoice_payment(invoice)
        if invoice.get("amount_paid") and (payment_intent or charge):
            params: RefundCreateParams = {"metadata": metadata}
            if payment_intent:
                params["payment_intent"] = payment_intent
            elif charge:
                params["charge"] = charge
            refund = self._call(
                "refund_invoice",
                lambda: self.client.v1.refunds.create(params, {"idempotency_key": idempotency_key}),
            )
            return str(refund.id)
        # Nothing charged through a payment (e.g. invoice billing): credit the customer's balance.
        amount = int(invoice.get("amount_paid") or invoice.get("amount_due") or 0)
        txn = self._call(
            "credit_customer",
            lambda: self.client.v1.customers.balance_transactions.create(
                str(invoice["customer"]),
                {
                    "amount": -amount,
                    "currency": str(invoice.get("currency") or "usd"),
                    "description": f"Credit for invoice {invoice_id}",
                    "metadata": metadata,
                },
                {"idempotency_key": idempotency_key},
            ),
        )
        return str(txn.id)

    def _invoice_payment(self, invoice: dict[str, Any]) -> tuple[str | None, str | None]:
        """(payment_intent, charge) that paid the invoice.  API versions before 2025-03-31 carry them on
        the invoice; later ones list them as invoice payments."""

        def ident(value: Any) -> str | None:
            if isinstance(value, str):
                return value
            if isinstance(value, dict) and value.get("id"):
                return str(value["id"])
            return None

        payment_intent, charge = ident(invoice.get("payment_intent")), ident(invoice.get("charge"))
        if payment_intent or charge or not invoice.get("amount_paid"):
            return payment_intent, charge
        payments = _plain(
            self._call(
                "list_invoice_payments", lambda: self.client.v1.invoice_payments.list({"invoice": str(invoice["id"])})
            )
        )
        for entry in payments.get("data") or []:
            payment = entry.get("payment") or {}
            if entry.get("status") in (None, "paid"):
                payment_intent, charge = ident(payment.get("payment_intent")), ident(payment.get("charge"))
                if payment_intent or charge:
                    break
        return payment_intent, charge

    def _product_for_plan(self, plan_name: str) -> str:
        """One product per plan, with an id of ours: looked up, created once (``product:<plan>``) if missing."""
        product_id = f"robosystems_plan_{plan_name}".replace("-", "_")
        try:
            self._call("retrieve_product", lambda: self.client.v1.products.retrieve(product_id))
            return product_id
        except ProviderObjectMissing:
            pass
        params: ProductCreateParams = {
            "id": product_id,
            "name": f"RoboSystems {plan_name}",
            "metadata": {"plan_name": plan_name},
        }
        try:
            self._call(
                "create_product",
                lambda: self.client.v1.products.create(
                    params,
                    {"idempotency_key": f"product:{plan_name}"},
                ),
            )
        except ProviderError:
            # created meanwhile under another idempotency key (keys expire after 24 h): it exists now
            self._call("retrieve_product", lambda: self.client.v1.products.retrieve(product_id))
        return product_id

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
        meta = {"plan_name": plan_name, **metadata}
        if price_id:
            item: SubscriptionCreateParamsItem = {"price": price_id, "quantity": 1}
        else:
            item = {
                "quantity": 1,
                "price_data": {
                    "currency": currency,
                    "unit_amount": amount_cents,
                    "recurring": {"interval": interval},
                    "product": self._product_for_plan(plan_name),
                },
            }
        params: SubscriptionCreateParams = {
            "customer": customer_id,
            "items": [item],
            "metadata": meta,
            "collection_method": collection_method,
        }
        if collection_method == "send_invoice":
            params["days_until_due"] = days_until_due if days_until_due is not None else 30
        else:
            # the first invoice is paid off-session with the default method; a failed charge -> incomplete
            params["payment_behavior"] = "allow_incomplete"
        sub = self._call(
            "create_subscription",
            lambda: self.client.v1.subscriptions.create(
                params,
                {"idempotency_key": idempotency_key},
            ),
        )
        return self.subscription_value(_plain(sub))

    def invoice_lines(self, invoice_id: str) -> list[dict[str, Any]]:
        lines: list[dict[str, Any]] = []
        seen: set[str] = set()
        after: str | None = None
        while True:
            page = self._invoice_lines_page(invoice_id, after)
            fresh = [line for line in page.get("data") or [] if line.get("id") not in seen]
            lines.extend(fresh)
            seen.update(str(line.get("id")) for line in fresh)
            if not page.get("has_more") or not fresh:  # (a server ignoring starting_after must not loop forever)
                return lines
            after = str(fresh[-1]["id"])

    def _invoice_lines_page(self, invoice_id: str, after: str | None) -> dict[str, Any]:
        params: InvoiceLineItemListParams = {"limit": 100}
        if after is not None:
            params["starting_after"] = after
        return _plain(
            self._call("list_invoice_lines", lambda: self.client.v1.invoices.line_items.list(invoice_id, params))
        )

    def retrieve_subscription(self, subscription_id: str) -> ProviderSubscription:
        sub = self._call("retrieve_subscription", lambda: self.client.v1.subscriptions.retrieve(subscription_id))
        return self.subscription_value(_plain(sub))

    @staticmethod
    def subscription_value(sub: dict[str, Any]) -> ProviderSubscription:
        items = (sub.get("items") or {}).get("data") or []
        item = items[0] if items else {}
        # current API versions keep the period on the items; older ones on the subscription
        start = item.get("current_period_start") or sub.get("current_period_start")
        end = item.get("current_period_end") or sub.get("current_period_end")
        return ProviderSubscription(
            id=str(sub["id"]),
            status=str(sub.get("status") or ""),
            customer_id=sub.get("customer") if isinstance(sub.get("customer"), str) else None,
            cancel_at_period_end=bool(sub.get("cancel_at_period_end")),
            current_period_start=_dt(start),
            current_period_end=_dt(end),
            canceled_at=_dt(sub.get("canceled_at")),
            raw=sub,
        )

    # --- plan changes (invoice preview, pending updates, subscription schedules) ------------------

    def _current_item(self, subscription_id: str) -> tuple[dict[str, Any], dict[str, Any]]:
        sub = _plain(
            self._call("retrieve_subscription", lambda: self.client.v1.subscriptions.retrieve(subscription_id))
        )
        items = (sub.get("items") or {}).get("data") or []
        if not items:
            raise ProviderObjectMissing()
        return sub, dict(items[0])

    def _price_data(self, change: SubscriptionChange) -> SubscriptionUpdateParamsItemPriceData:
        """The new price inline, on the plan's product (the same shape for previews, updates and schedule phases)."""
        return {
            "currency": change.currency,
            "unit_amount": change.amount_cents,
            "recurring": {"interval": _interval(change.interval)},
            "product": self._product_for_plan(change.plan_name),
        }

    def preview_subscription_change(self, change: SubscriptionChange) -> ChangePreview:
        """``POST /v1/invoices/create_preview`` with ``subscription_details.proration_date`` pinned and
        ``proration_behavior=always_invoice``: the lines whose ``parent.subscription_item_details.proration`` is true
        are what the change invoices now (Stripe's advice for reading a proration preview)."""
        sub, current = self._current_item(change.subscription_id)
        item: InvoiceCreatePreviewParamsSubscriptionDetailsItem = {
            "id": str(current["id"]),
            "quantity": change.quantity,
        }
        if change.price_id:
            item["price"] = change.price_id
        else:
            item["price_data"] = self._price_data(change)
        params: InvoiceCreatePreviewParams = {
            "customer": str(sub["customer"]),
            "subscription": change.subscription_id,
            "subscription_details": {
                "items": [item],
                "proration_behavior": "always_invoice",
                "proration_date": change.proration_date,
            },
        }
        invoice = _plain(self._call("create_invoice_preview", lambda: self.client.v1.invoices.create_preview(params)))
        lines = [
            ChangeLine(str(line.get("description") or "Proration"), int(line.get("amount") or 0))
            for line in (invoice.get("lines") or {}).get("data") or []
            if ((line.get("parent") or {}).get("subscription_item_details") or {}).get("proration")
        ]
        return ChangePreview(
            amount_due_now=max(sum(line.amount for line in lines), 0),
            currency=str(invoice.get("currency") or change.currency),
            lines=lines,
            next_invoice_total=change.amount_cents * change.quantity,
            proration_date=change.proration_date,
            period_end=_dt(current.get("current_period_end")),
        )

    def change_subscription(self, change: SubscriptionChange) -> ChangeResult:
        """``POST /v1/subscriptions/{id}`` with ``payment_behavior=pending_if_incomplete``,
        ``proration_behavior=always_invoice`` and the pinned ``proration_date``: Stripe invoices the proration and
        charges it; the items change only when it is paid.  A failed charge leaves a ``pending_update``: its open
        invoice is voided, which discards the update (everything stays as it was)."""
        _, current = self._current_item(change.subscription_id)
        item: SubscriptionUpdateParamsItem = {"id": str(current["id"]), "quantity": change.quantity}
        if change.price_id:
            item["price"] = change.price_id
        else:
            item["price_data"] = self._price_data(change)
        params: SubscriptionUpdateParams = {
            "items": [item],
            "proration_behavior": "always_invoice",
            "proration_date": change.proration_date,
            "payment_behavior": "pending_if_incomplete",
            "expand": ["latest_invoice"],
        }
        sub = _plain(
            self._call(
                "change_subscription",
                lambda: self.client.v1.subscriptions.update(
                    change.subscription_id, params, {"idempotency_key": change.idempotency_key}
                ),
            )
        )
        latest = sub.get("latest_invoice")
        invoice: dict[str, Any] = latest if isinstance(latest, dict) else {}
        invoice_id = str(invoice.get("id")) if invoice.get("id") else None
        if not sub.get("pending_update"):
            paid = invoice.get("status") == "paid"
            return ChangeResult("paid" if paid else "pending", invoice_id, int(invoice.get("amount_due") or 0))
        if invoice_id:
            self._call(
                "void_invoice",
                lambda: self.client.v1.invoices.void_invoice(
                    invoice_id, {}, {"idempotency_key": f"{change.idempotency_key}:void"}
                ),
            )
        return ChangeResult("failed", invoice_id, int(invoice.get("amount_due") or 0), PAYMENT_FAILED)

    def schedule_subscription_change(self, change: SubscriptionChange) -> ScheduledChange:
        """A subscription schedule made from the subscription: its current phase runs to the period end, the next
        one bills the new price (no proration); ``end_behavior=release`` hands the subscription back afterwards."""
        _, current = self._current_item(change.subscription_id)
        schedule = _plain(
            self._call(
                "create_subscription_schedule",
                lambda: self.client.v1.subscription_schedules.create(
                    {"from_subscription": change.subscription_id},
                    {"idempotency_key": f"{change.idempotency_key}:schedule"},
                ),
            )
        )
        phases = schedule.get("phases") or []
        first = phases[0] if phases else {}
        price = current.get("price") or {}
        now_item: SubscriptionScheduleUpdateParamsPhaseItem = {
            "price": str(price.get("id") if isinstance(price, dict) else price),
            "quantity": int(current.get("quantity") or 1),
        }
        next_item: SubscriptionScheduleUpdateParamsPhaseItem = {"quantity": change.quantity}
        if change.price_id:
            next_item["price"] = change.price_id
        else:
            next_item["price_data"] = self._price_data(change)
        period_end = int(current.get("current_period_end") or first.get("end_date") or 0)
        this_phase: SubscriptionScheduleUpdateParamsPhase = {"items": [now_item], "end_date": period_end}
        if first.get("start_date"):
            this_phase["start_date"] = int(first["start_date"])
        next_phase: SubscriptionScheduleUpdateParamsPhase = {"items": [next_item], "proration_behavior": "none"}
        schedule_id = str(schedule["id"])
        self._call(
            "update_subscription_schedule",
            lambda: self.client.v1.subscription_schedules.update(
                schedule_id,
                {"end_behavior": "release", "phases": [this_phase, next_phase]},
                {"idempotency_key": f"{change.idempotency_key}:phases"},
            ),
        )
        return ScheduledChange(schedule_id, _dt(period_end))

    def cancel_scheduled_change(self, subscription_id: str, schedule_id: str) -> None:
        """Release the schedule: the subscription keeps its current price and renews unchanged."""
        self._call(
            "release_subscription_schedule",
            lambda: self.client.v1.subscription_schedules.release(
                schedule_id, {}, {"idempotency_key": f"release:{schedule_id}"}
            ),
        )

    def create_payment_checkout(self, request: PaymentCheckoutRequest) -> CheckoutSession:
        metadata = {"credit_purchase_id": request.reference_id, "org_id": request.org_id, **request.metadata}
        params: SessionCreateParams = {
            "mode": "payment",
            "line_items": [
                {
                    "quantity": 1,
                    "price_data": {
                        "currency": request.currency,
                        "unit_amount": request.amount_cents,
                        "product_data": {"name": request.description},
                    },
                }
            ],
            "client_reference_id": request.reference_id,
            "metadata": metadata,
            "payment_intent_data": {"metadata": metadata},
            "invoice_creation": {"enabled": True, "invoice_data": {"metadata": metadata}},
            "success_url": request.success_url,
            "cancel_url": request.cancel_url,
            "expires_at": int(request.expires_at.timestamp()),
        }
        if request.customer_id:
            params["customer"] = request.customer_id
        elif request.customer_email:
            params["customer_email"] = request.customer_email
        session = self._call(
            "create_payment_checkout",
            lambda: self.client.v1.checkout.sessions.create(params, {"idempotency_key": request.idempotency_key}),
        )
        return CheckoutSession(str(session.id), str(session.url), _dt(session.expires_at) or request.expires_at)

    def retrieve_payment_method(self, payment_method_id: str) -> PaymentMethodInfo:
        data = _plain(
            self._call("retrieve_payment_method", lambda: self.client.v1.payment_methods.retrieve(payment_method_id))
        )
        card = data.get("card") or {}
        return PaymentMethodInfo(
            id=str(data["id"]),
            type=str(data.get("type") or "card"),
            brand=card.get("brand"),
            last4=card.get("last4"),
            exp_month=card.get("exp_month"),
            exp_year=card.get("exp_year"),
        )
