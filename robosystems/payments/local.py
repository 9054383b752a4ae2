"""The local payment provider: a stand-in for Stripe that needs no account and no network.

It keeps its objects (customers, checkout sessions, subscriptions, invoices, payment methods,
events) as Stripe-shaped JSON documents in ``ROBOSYSTEMS_DATA_DIR/local_payments`` -- outside our
database, like a real provider: rolling back one of our transactions does not roll back a session
the provider already created, and the same idempotency key gives the same object again.

Its hosted checkout page (``GET /billing/local/checkout/{session_id}``, see
:mod:`robosystems.payments.local_router`) is plain HTML with two forms, Pay and Cancel.  Paying
creates the subscription, the invoice and the payment method at the "provider" and emits the events
Stripe would send -- ``checkout.session.completed`` (``payment_status: paid``),
``customer.subscription.created``, ``invoice.finalized``, ``invoice.paid`` -- signed exactly like
Stripe signs them (``Stripe-Signature: t=…,v1=…`` with the webhook signing secret), and delivers
them to our own ``POST /admin/v1/webhooks/stripe``, through the same verification path Stripe's
deliveries take.  Cancel (or the session's expiry) emits ``checkout.session.expired``.

Test cards on the page: any 16-digit number works except the Stripe decline numbers
(``4000000000000002``, ``4000000000009995``, ...), which show a decline and emit nothing.
``attach_payment_method`` accepts Stripe's test ids (``pm_card_visa``, ``pm_card_mastercard``,
``pm_card_amex``; ``pm_card_chargeDeclined`` is declined) and payment methods created here.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from robosystems.payments.base import (
    CheckoutRequest,
    CheckoutSession,
    CollectionMethod,
    InvalidPaymentMethod,
    PaymentDeclined,
    PaymentMethodInfo,
    ProviderObjectMissing,
    ProviderSubscription,
)
from robosystems.payments.local_changes import CHARGE_FAILING_PAYMENT_METHODS, LocalChanges
from robosystems.payments.local_store import (
    DECLINED_CARDS,
    DECLINED_PAYMENT_METHODS,
    TEST_PAYMENT_METHODS,
    CheckoutView,
    LocalStore,
    WebhookSender,
    _now,
    _ts,
    add_month,
    card_brand,
    sign_payload,
)

__all__ = [
    "DECLINED_CARDS",
    "DECLINED_PAYMENT_METHODS",
    "TEST_PAYMENT_METHODS",
    "CheckoutView",
    "LocalPaymentProvider",
    "LocalStore",
    "WebhookSender",
    "add_month",
    "card_brand",
    "sign_payload",
]


class LocalPaymentProvider(LocalChanges):
    """The local provider (``PAYMENT_PROVIDER=local``, or ``auto`` without ``STRIPE_SECRET_KEY``)."""

    # --- PaymentProvider -----------------------------------------------------------------------

    def create_customer(self, *, org_id: str, name: str | None, email: str | None, idempotency_key: str) -> str:
        customer_id = self._id("cus", idempotency_key)
        customer = {
            "id": customer_id,
            "object": "customer",
            "created": _now(),
            "email": email,
            "name": name,
            "livemode": False,
            "metadata": {"org_id": org_id},
            "invoice_settings": {"default_payment_method": None},
        }
        self.store.create_once("customers", customer_id, {"object": customer, "local": {}})
        return customer_id

    def create_checkout_session(self, request: CheckoutRequest) -> CheckoutSession:
        session_id = self._id("cs", request.idempotency_key)
        metadata = {
            "subscription_id": request.subscription_id,
            "org_id": request.org_id,
            "plan_name": request.plan_name,
            **request.metadata,
        }
        obj = {
            "id": session_id,
            "object": "checkout.session",
            "mode": "subscription",
            "status": "open",
            "payment_status": "unpaid",
            "created": _now(),
            "expires_at": _ts(request.expires_at),
            "customer": request.customer_id,
            "customer_email": request.customer_email,
            "client_reference_id": request.subscription_id,
            "metadata": metadata,
            "amount_subtotal": request.amount_cents * request.quantity,
            "amount_total": request.amount_cents * request.quantity,
            "currency": request.currency,
            "subscription": None,
            "invoice": None,
            "payment_intent": None,
            "livemode": False,
            # Stripe fills the {CHECKOUT_SESSION_ID} template variable of these URLs; so do we
            "success_url": request.success_url.replace("{CHECKOUT_SESSION_ID}", session_id),
            "cancel_url": request.cancel_url.replace("{CHECKOUT_SESSION_ID}", session_id),
            "url": self.checkout_url(session_id),
        }
        local = {
            "plan_name": request.plan_name,
            "description": request.description,
            "interval": request.interval,
            "price_id": request.price_id or f"price_local_{request.plan_name}",
            "unit_amount": request.amount_cents,
            "quantity": request.quantity,
            "events": [],
        }
        record, _ = self.store.create_once("checkout_sessions", session_id, {"object": obj, "local": local})
        stored = record["object"]
        return CheckoutSession(stored["id"], stored["url"], datetime.fromtimestamp(stored["expires_at"], UTC))

    def expire_checkout_session(self, session_id: str) -> None:
        self.expire(session_id)

    def attach_payment_method(
        self, *, customer_id: str, payment_method_id: str, idempotency_key: str
    ) -> PaymentMethodInfo:
        customer = self.store.get("customers", customer_id)
        if payment_method_id in DECLINED_PAYMENT_METHODS:
            raise PaymentDeclined()
        if payment_method_id in TEST_PAYMENT_METHODS or payment_method_id in CHARGE_FAILING_PAYMENT_METHODS:
            brand, last4 = (
                TEST_PAYMENT_METHODS.get(payment_method_id) or CHARGE_FAILING_PAYMENT_METHODS[payment_method_id]
            )
            pm_id = self._id("pm", idempotency_key)
            pm = self._payment_method_object(pm_id, brand, last4, customer_id)
            local = {"charge_fails": payment_method_id in CHARGE_FAILING_PAYMENT_METHODS}
            record, _ = self.store.create_once("payment_methods", pm_id, {"object": pm, "local": local})
            pm = record["object"]
        else:
            try:
                record = self.store.get("payment_methods", payment_method_id)
            except ProviderObjectMissing as exc:
                raise InvalidPaymentMethod() from exc
            pm = record["object"]
            if pm.get("customer") not in (None, customer_id):
                raise InvalidPaymentMethod()
            pm["customer"] = customer_id
            self.store.put("payment_methods", pm["id"], {"object": pm, "local": record.get("local", {})})
        with self.store.locked("customers", customer_id):
            customer = self.store.get("customers", customer_id)
            customer["object"]["invoice_settings"]["default_payment_method"] = pm["id"]
            self.store.put("customers", customer_id, customer)
        card = pm["card"]
        return PaymentMethodInfo(pm["id"], "card", card["brand"], card["last4"], card["exp_month"], card["exp_year"])

    def cancel_subscription_at_period_end(self, subscription_id: str, *, idempotency_key: str) -> ProviderSubscription:
        with self.store.locked("subscriptions", subscription_id):
            record = self.store.get("subscriptions", subscription_id)
            sub = record["object"]
            if sub["status"] != "canceled":
                sub["cancel_at_period_end"] = True
                sub["cancel_at"] = sub["items"]["data"][0]["current_period_end"]
                sub["canceled_at"] = sub.get("canceled_at") or _now()
                self.store.put("subscriptions", subscription_id, record)
        return self._subscription_value(sub)

    def refund_or_credit_invoice(self, invoice_id: str, *, reason: str, idempotency_key: str) -> str:
        refund_id = self._id("re", idempotency_key)
        with self.store.locked("invoices", invoice_id):
            record = self.store.get("invoices", invoice_id)
            invoice = record["object"]
            refund = {
                "id": refund_id,
                "object": "refund",
                "amount": invoice.get("amount_paid", 0),
                "currency": invoice.get("currency", "usd"),
                "created": _now(),
                "reason": "requested_by_customer",
                "metadata": {"invoice": invoice_id, "reason": reason[:200]},
                "status": "succeeded",
            }
            _, created = self.store.create_once("refunds", refund_id, {"object": refund, "local": {}})
            if created:
                invoice["post_payment_credit_notes_amount"] = invoice.get("amount_paid", 0)
                record.setdefault("local", {})["refunded"] = refund_id
                self.store.put("invoices", invoice_id, record)
        return refund_id

    def retrieve_subscription(self, subscription_id: str) -> ProviderSubscription:
        return self._subscription_value(self.store.get("subscriptions", subscription_id)["object"])

    def invoice_lines(self, invoice_id: str) -> list[dict[str, Any]]:
        lines: list[dict[str, Any]] = self.store.get("invoices", invoice_id)["object"]["lines"]["data"]
        return [dict(line) for line in lines]

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
        """A subscription without checkout.  ``charge_automatically`` charges the customer's default payment
        method at once (``customer.subscription.created``, ``invoice.finalized``, ``invoice.paid``);
        ``send_invoice`` leaves the first invoice open (``customer.subscription.created``,
        ``invoice.finalized``) until :meth:`pay_invoice`.  The events are kept on the subscription and sent by
        :meth:`deliver_subscription`.  Same idempotency key -> the same subscription, no new events."""
        ref = f"direct:{idempotency_key}"
        sub_id = self._id("sub", f"subscription:{ref}")
        if self.store.exists("subscriptions", sub_id):
            return self._subscription_value(self.store.get("subscriptions", sub_id)["object"])
        customer = self.store.get("customers", customer_id)["object"]
        pm_id = customer["invoice_settings"].get("default_payment_method")
        if collection_method == "charge_automatically" and not pm_id:
            raise InvalidPaymentMethod()
        meta = {"plan_name": plan_name, **metadata}
        # the shapes are the ones a paid checkout produces, built from a stand-in "session"
        record = {
            "object": {"id": ref, "currency": currency, "amount_total": amount_cents, "metadata": meta},
            "local": {
                "plan_name": plan_name,
                "description": f"{plan_name} subscription",
                "interval": interval,
                "price_id": price_id or f"price_local_{plan_name}",
            },
        }
        now = _now()
        subscription = self._subscription_object(record, customer_id, pm_id, now)
        invoice = self._invoice_object(record, customer_id, subscription, now)
        subscription["latest_invoice"] = invoice["id"]
        subscription["collection_method"] = collection_method
        invoice["collection_method"] = collection_method
        open_invoice = {
            **invoice,
            "status": "open",
            "amount_paid": 0,
            "amount_remaining": invoice["amount_due"],
            "status_transitions": {**invoice["status_transitions"], "paid_at": None},
        }
        if collection_method == "send_invoice":
            subscription["days_until_due"] = days_until_due
            subscription["default_payment_method"] = None
            open_invoice["due_date"] = now + 86400 * (days_until_due or 30)
            invoice = open_invoice
        with self.store.locked("subscriptions", sub_id):
            if self.store.exists("subscriptions", sub_id):  # a concurrent call with the same key won
                return self._subscription_value(self.store.get("subscriptions", sub_id)["object"])
            events = [
                self._event("customer.subscription.created", subscription, now),
                self._event("invoice.finalized", open_invoice, now),
            ]
            if collection_method == "charge_automatically":
                events.append(self._event("invoice.paid", invoice, now))
            self.store.create_once("invoices", invoice["id"], {"object": invoice, "local": {}})
            self.store.create_once(
                "subscriptions", sub_id, {"object": subscription, "local": {"events": [e["id"] for e in events]}}
            )
        return self._subscription_value(subscription)

    def pay_invoice(self, invoice_id: str) -> dict[str, Any]:
        """The customer pays an open (``send_invoice``) invoice: ``invoice.paid`` is recorded on its subscription
        (sent by :meth:`deliver_subscription`).  Paying a paid invoice changes nothing."""
        with self.store.locked("invoices", invoice_id):
            record = self.store.get("invoices", invoice_id)
            invoice = record["object"]
            if invoice["status"] != "open":
                return dict(invoice)
            now = _now()
            invoice.update(
                status="paid",
                amount_paid=invoice["amount_due"],
                amount_remaining=0,
                status_transitions={**invoice["status_transitions"], "paid_at": now},
            )
            self.store.put("invoices", invoice_id, record)
            event = self._event("invoice.paid", invoice, now)
        sub_id = invoice["parent"]["subscription_details"]["subscription"]
        with self.store.locked("subscriptions", sub_id):
            sub_record = self.store.get("subscriptions", sub_id)
            local = sub_record.setdefault("local", {})
            local["events"] = list(local.get("events", [])) + [event["id"]]
            self.store.put("subscriptions", sub_id, sub_record)
        return dict(invoice)

    def subscription_events(self, subscription_id: str) -> list[dict[str, Any]]:
        record = self.store.get("subscriptions", subscription_id)
        return [self.store.get("events", e)["object"] for e in record.get("local", {}).get("events", [])]

    async def deliver_subscription(self, subscription_id: str, send: WebhookSender) -> bool:
        """POST the undelivered events of a subscription created by :meth:`create_subscription`, in order."""
        record = self.store.get("subscriptions", subscription_id)
        return await self._deliver_ids(list(record.get("local", {}).get("events", [])), send)

    # --- the hosted page -----------------------------------------------------------------------

    def view(self, session_id: str) -> CheckoutView:
        """The session as the page shows it (an open session past its expiry is expired first)."""
        record = self.store.get("checkout_sessions", session_id)
        if record["object"]["status"] == "open" and record["object"]["expires_at"] <= _now():
            self.expire(session_id)
            record = self.store.get("checkout_sessions", session_id)
        return self._view(record)

    def _view(self, record: dict[str, Any], error: str | None = None) -> CheckoutView:
        obj, local = record["object"], record["local"]
        return CheckoutView(
            session_id=obj["id"],
            status=obj["status"],
            payment_status=obj["payment_status"],
            description=local["description"],
            amount_cents=int(obj["amount_total"] or 0),
            currency=obj["currency"],
            interval=local["interval"],
            expires_at=datetime.fromtimestamp(obj["expires_at"], UTC),
            success_url=obj["success_url"],
            cancel_url=obj["cancel_url"],
            subscription_id=obj.get("subscription"),
            error=error,
        )

    def pay(self, session_id: str, card_number: str = "4242424242424242") -> CheckoutView:
        """Pay an open session: creates the payment method, subscription and invoice and records the
        four events to deliver.  Paying twice (double click, two tabs) pays once."""
        number = "".join(ch for ch in card_number if ch.isdigit())
        with self.store.locked("checkout_sessions", session_id):
            record = self.store.get("checkout_sessions", session_id)
            obj, local = record["object"], record["local"]
            if obj["status"] == "open" and obj["expires_at"] <= _now():
                self._expire_locked(record)
                return self._view(record)
            if obj["status"] != "open":
                return self._view(record)
            if len(number) < 12 or len(number) > 19:
                return self._view(record, error="Enter a card number (test card: 4242 4242 4242 4242).")
            if number in DECLINED_CARDS:
                return self._view(record, error="Your card was declined.")
            now = _now()
            customer_id = obj["customer"] or self.create_customer(
                org_id=obj["metadata"].get("org_id", ""),
                name=None,
                email=obj.get("customer_email"),
                idempotency_key=f"checkout-customer:{session_id}",
            )
            pm = self._payment_method_object(self._id("pm"), card_brand(number), number[-4:], customer_id)
            self.store.create_once("payment_methods", pm["id"], {"object": pm, "local": {}})
            if obj.get("mode") == "payment":  # a one-time payment (credit pack): no subscription
                invoice_events = self._pay_one_time(record, customer_id, now)
                obj.update(status="complete", payment_status="paid", customer=customer_id, url=None)
                events = [self._event("checkout.session.completed", obj, now), *invoice_events]
                local["events"] = local["events"] + [e["id"] for e in events]
                self.store.put("checkout_sessions", session_id, record)
                return self._view(record)
            subscription = self._subscription_object(record, customer_id, pm["id"], now)
            invoice = self._invoice_object(record, customer_id, subscription, now)
            subscription["latest_invoice"] = invoice["id"]
            self.store.create_once("subscriptions", subscription["id"], {"object": subscription, "local": {}})
            self.store.create_once("invoices", invoice["id"], {"object": invoice, "local": {}})
            with self.store.locked("customers", customer_id):
                customer = self.store.get("customers", customer_id)
                customer["object"]["invoice_settings"]["default_payment_method"] = pm["id"]
                self.store.put("customers", customer_id, customer)

            obj.update(
                status="complete",
                payment_status="paid",
                customer=customer_id,
                subscription=subscription["id"],
                invoice=invoice["id"],
                url=None,
            )
            finalized = {
                **invoice,
                "status": "open",
                "amount_paid": 0,
                "amount_remaining": invoice["amount_due"],
                "status_transitions": {**invoice["status_transitions"], "paid_at": None},
            }
            events = [
                self._event("checkout.session.completed", obj, now),
                self._event("customer.subscription.created", subscription, now),
                self._event("invoice.finalized", finalized, now),
                self._event("invoice.paid", invoice, now),
            ]
            local["events"] = local["events"] + [e["id"] for e in events]
            self.store.put("checkout_sessions", session_id, record)
            return self._view(record)

    def expire(self, session_id: str) -> CheckoutView:
        """Expire an open session (Cancel on the page, or its time ran out): ``checkout.session.expired``."""
        with self.store.locked("checkout_sessions", session_id):
            record = self.store.get("checkout_sessions", session_id)
            if record["object"]["status"] == "open":
                self._expire_locked(record)
            return self._view(record)

    def _expire_locked(self, record: dict[str, Any]) -> None:
        obj = record["object"]
        obj.update(status="expired", url=None)
        event = self._event("checkout.session.expired", obj, _now())
        record["local"]["events"] = record["local"]["events"] + [event["id"]]
        self.store.put("checkout_sessions", obj["id"], record)
