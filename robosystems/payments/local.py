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

import calendar
import contextlib
import fcntl
import hashlib
import json
import os
import secrets
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import stripe

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

#: card numbers Stripe's test mode declines (generic, insufficient funds, lost, stolen, expired, cvc, processing).
DECLINED_CARDS = frozenset(
    {
        "4000000000000002",
        "4000000000009995",
        "4000000000009987",
        "4000000000009979",
        "4000000000000069",
        "4000000000000127",
        "4000000000000119",
        "4000000000000341",
    }
)
#: Stripe's well-known test payment method ids.
TEST_PAYMENT_METHODS: dict[str, tuple[str, str]] = {
    "pm_card_visa": ("visa", "4242"),
    "pm_card_visa_debit": ("visa", "5556"),
    "pm_card_mastercard": ("mastercard", "4444"),
    "pm_card_amex": ("amex", "8431"),
    "pm_card_discover": ("discover", "1117"),
}
DECLINED_PAYMENT_METHODS = frozenset({"pm_card_chargeDeclined", "pm_card_visa_chargeDeclined"})

#: A function that POSTs one signed webhook body and returns the HTTP status.
WebhookSender = Callable[[bytes, dict[str, str]], Awaitable[int]]


def _now() -> int:
    return int(time.time())


def _ts(value: datetime) -> int:
    return int(value.timestamp())


def _dt(value: int | None) -> datetime | None:
    return datetime.fromtimestamp(value, UTC) if value else None


def add_month(ts: int, months: int = 1) -> int:
    """``ts`` plus calendar months (day clamped to the target month's length), like Stripe's periods."""
    dt = datetime.fromtimestamp(ts, UTC)
    month0 = dt.month - 1 + months
    year, month = dt.year + month0 // 12, month0 % 12 + 1
    day = min(dt.day, calendar.monthrange(year, month)[1])
    return int(dt.replace(year=year, month=month, day=day).timestamp())


def card_brand(number: str) -> str:
    if number.startswith("4"):
        return "visa"
    if number[:2] in {"51", "52", "53", "54", "55"} or number[:2] == "22":
        return "mastercard"
    if number[:2] in {"34", "37"}:
        return "amex"
    if number.startswith("6"):
        return "discover"
    return "unknown"


def sign_payload(payload: bytes, secret: str, timestamp: int | None = None) -> str:
    """The ``Stripe-Signature`` header Stripe would send for ``payload`` (the SDK's own signer)."""
    header: str = stripe.WebhookSignature.generate_signature_header(payload.decode("utf-8"), secret, timestamp)
    return header


class LocalStore:
    """Stripe-shaped JSON documents on disk: one file per object, atomic writes, per-object locks.

    Safe across threads and processes on one machine (``os.link`` for create-once, ``flock`` for
    read-modify-write)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _path(self, kind: str, object_id: str) -> Path:
        if not object_id or "/" in object_id or object_id.startswith("."):
            raise ProviderObjectMissing()
        return self.root / kind / f"{object_id}.json"

    def _write_tmp(self, directory: Path, record: dict[str, Any]) -> str:
        directory.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=".json")
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(record, fh, sort_keys=True)
        return tmp

    def create_once(self, kind: str, object_id: str, record: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        """Store ``record`` unless the object exists; returns (the stored record, created?)."""
        path = self._path(kind, object_id)
        tmp = self._write_tmp(path.parent, record)
        try:
            os.link(tmp, path)
        except FileExistsError:
            return self.get(kind, object_id), False
        finally:
            os.unlink(tmp)
        return record, True

    def put(self, kind: str, object_id: str, record: dict[str, Any]) -> None:
        path = self._path(kind, object_id)
        tmp = self._write_tmp(path.parent, record)
        os.replace(tmp, path)

    def get(self, kind: str, object_id: str) -> dict[str, Any]:
        try:
            with self._path(kind, object_id).open(encoding="utf-8") as fh:
                record: dict[str, Any] = json.load(fh)
        except (FileNotFoundError, ValueError) as exc:
            raise ProviderObjectMissing() from exc
        return record

    def exists(self, kind: str, object_id: str) -> bool:
        return self._path(kind, object_id).exists()

    @contextlib.contextmanager
    def locked(self, kind: str, object_id: str) -> Iterator[None]:
        lock_dir = self.root / "locks"
        lock_dir.mkdir(parents=True, exist_ok=True)
        self._path(kind, object_id)  # validates the id
        with (lock_dir / f"{kind}-{object_id}.lock").open("a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)


@dataclass(frozen=True)
class CheckoutView:
    """What the hosted page shows."""

    session_id: str
    status: str  # open | complete | expired
    payment_status: str
    description: str
    amount_cents: int
    currency: str
    interval: str
    expires_at: datetime
    success_url: str
    cancel_url: str
    subscription_id: str | None
    error: str | None = None

    @property
    def amount_display(self) -> str:
        return f"{self.amount_cents / 100:,.2f} {self.currency.upper()}"


class LocalPaymentProvider:
    """The local provider (``PAYMENT_PROVIDER=local``, or ``auto`` without ``STRIPE_SECRET_KEY``)."""

    name = "local"

    def __init__(self, *, data_dir: Path, base_url: str, signing_secret: str, api_version: str) -> None:
        if not signing_secret:
            raise ValueError("the local payment provider needs a webhook signing secret")
        self.store = LocalStore(data_dir / "local_payments")
        self.base_url = base_url.rstrip("/")
        self.signing_secret = signing_secret
        self.api_version = api_version

    # --- ids -----------------------------------------------------------------------------------

    @staticmethod
    def _id(prefix: str, idempotency_key: str | None = None) -> str:
        if idempotency_key:
            return f"{prefix}_local_{hashlib.sha256(idempotency_key.encode('utf-8')).hexdigest()[:24]}"
        return f"{prefix}_local_{secrets.token_hex(12)}"

    def checkout_url(self, session_id: str) -> str:
        return f"{self.base_url}/billing/local/checkout/{session_id}"

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
            "amount_subtotal": request.amount_cents,
            "amount_total": request.amount_cents,
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
        if payment_method_id in TEST_PAYMENT_METHODS:
            brand, last4 = TEST_PAYMENT_METHODS[payment_method_id]
            pm_id = self._id("pm", idempotency_key)
            pm = self._payment_method_object(pm_id, brand, last4, customer_id)
            record, _ = self.store.create_once("payment_methods", pm_id, {"object": pm, "local": {}})
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

    def create_portal_session(self, *, customer_id: str, return_url: str) -> str:
        self.store.get("customers", customer_id)
        portal_id = self._id("bps")
        obj = {
            "id": portal_id,
            "object": "billing_portal.session",
            "customer": customer_id,
            "created": _now(),
            "return_url": return_url,
            "url": f"{self.base_url}/billing/local/portal/{portal_id}",
            "livemode": False,
        }
        self.store.create_once("portal_sessions", portal_id, {"object": obj, "local": {}})
        return str(obj["url"])

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

    # --- events --------------------------------------------------------------------------------

    def _event(self, event_type: str, obj: dict[str, Any], created: int) -> dict[str, Any]:
        event_id = self._id("evt")
        event: dict[str, Any] = {
            "id": event_id,
            "object": "event",
            "api_version": self.api_version,
            "created": created,
            "data": {"object": json.loads(json.dumps(obj))},
            "livemode": False,
            "pending_webhooks": 1,
            "request": {"id": None, "idempotency_key": None},
            "type": event_type,
        }
        self.store.create_once("events", event_id, {"object": event, "local": {"delivered": False, "attempts": 0}})
        return event

    def undelivered_events(self, session_id: str) -> list[dict[str, Any]]:
        """Events of this session not yet accepted by the webhook endpoint, oldest first."""
        return self._undelivered(self.store.get("checkout_sessions", session_id)["local"]["events"])

    def _undelivered(self, event_ids: list[str]) -> list[dict[str, Any]]:
        out = []
        for event_id in event_ids:
            stored = self.store.get("events", event_id)
            if not stored["local"]["delivered"]:
                out.append(stored["object"])
        return out

    def events_of(self, session_id: str) -> list[dict[str, Any]]:
        record = self.store.get("checkout_sessions", session_id)
        return [self.store.get("events", event_id)["object"] for event_id in record["local"]["events"]]

    def signed(self, event: dict[str, Any]) -> tuple[bytes, dict[str, str]]:
        body = json.dumps(event, separators=(",", ":"), sort_keys=True).encode("utf-8")
        return body, {"Content-Type": "application/json", "Stripe-Signature": sign_payload(body, self.signing_secret)}

    async def deliver(self, session_id: str, send: WebhookSender) -> bool:
        """POST this session's undelivered events, in order, each signed; stops at the first
        refusal (it is retried at the next page view).  True when everything is delivered."""
        return await self._deliver_ids(self.store.get("checkout_sessions", session_id)["local"]["events"], send)

    async def _deliver_ids(self, event_ids: list[str], send: WebhookSender) -> bool:
        for event in self._undelivered(event_ids):
            body, headers = self.signed(event)
            try:
                status = await send(body, headers)
            except Exception:  # noqa: BLE001 - an unreachable endpoint is retried later, like Stripe does
                status = 0
            with self.store.locked("events", event["id"]):
                stored = self.store.get("events", event["id"])
                stored["local"]["attempts"] += 1
                stored["local"]["last_status"] = status
                # never back to undelivered (two deliveries may race; the inbox keeps one copy)
                stored["local"]["delivered"] = bool(stored["local"].get("delivered")) or 200 <= status < 300
                self.store.put("events", event["id"], stored)
            if not 200 <= status < 300:
                return False
        return True

    # --- object shapes (fixtures.json) ---------------------------------------------------------

    @staticmethod
    def _payment_method_object(pm_id: str, brand: str, last4: str, customer_id: str | None) -> dict[str, Any]:
        year = datetime.now(UTC).year + 3
        return {
            "id": pm_id,
            "object": "payment_method",
            "type": "card",
            "created": _now(),
            "customer": customer_id,
            "livemode": False,
            "metadata": {},
            "billing_details": {"address": None, "email": None, "name": None, "phone": None},
            "card": {
                "brand": brand,
                "display_brand": brand,
                "last4": last4,
                "exp_month": 12,
                "exp_year": year,
                "country": "US",
                "funding": "credit",
            },
        }

    def _subscription_object(self, record: dict[str, Any], customer_id: str, pm_id: str, now: int) -> dict[str, Any]:
        session, local = record["object"], record["local"]
        sub_id = self._id("sub", f"subscription:{session['id']}")
        end = add_month(now, 12 if local["interval"] == "year" else 1)
        price = {
            "id": local["price_id"],
            "object": "price",
            "active": True,
            "currency": session["currency"],
            "unit_amount": session["amount_total"],
            "unit_amount_decimal": str(session["amount_total"]),
            "recurring": {"interval": local["interval"], "interval_count": 1, "usage_type": "licensed"},
            "type": "recurring",
            "product": f"prod_local_{local['plan_name']}",
            "nickname": local["plan_name"],
            "metadata": {"plan_name": local["plan_name"]},
            "livemode": False,
        }
        return {
            "id": sub_id,
            "object": "subscription",
            "status": "active",
            "customer": customer_id,
            "created": now,
            "start_date": now,
            "billing_cycle_anchor": now,
            "cancel_at_period_end": False,
            "cancel_at": None,
            "canceled_at": None,
            "ended_at": None,
            "collection_method": "charge_automatically",
            "currency": session["currency"],
            "default_payment_method": pm_id,
            "latest_invoice": None,
            "livemode": False,
            "metadata": dict(session["metadata"]),
            "items": {
                "object": "list",
                "data": [
                    {
                        "id": self._id("si", f"subscription_item:{session['id']}"),
                        "object": "subscription_item",
                        "created": now,
                        "current_period_start": now,
                        "current_period_end": end,
                        "metadata": {},
                        "price": price,
                        "quantity": 1,
                        "subscription": sub_id,
                    }
                ],
                "has_more": False,
                "url": f"/v1/subscription_items?subscription={sub_id}",
            },
        }

    def _invoice_object(
        self, record: dict[str, Any], customer_id: str, subscription: dict[str, Any], now: int
    ) -> dict[str, Any]:
        session, local = record["object"], record["local"]
        invoice_id = self._id("in", f"invoice:{session['id']}")
        item = subscription["items"]["data"][0]
        amount = int(session["amount_total"] or 0)
        period = {"start": item["current_period_start"], "end": item["current_period_end"]}
        return {
            "id": invoice_id,
            "object": "invoice",
            "status": "paid",
            "billing_reason": "subscription_create",
            "collection_method": "charge_automatically",
            "customer": customer_id,
            "created": now,
            "currency": session["currency"],
            "amount_due": amount,
            "amount_paid": amount,
            "amount_remaining": 0,
            "subtotal": amount,
            "total": amount,
            "due_date": None,
            "number": f"LOCAL-{invoice_id[-8:].upper()}-0001",
            "hosted_invoice_url": None,
            "invoice_pdf": None,
            "livemode": False,
            "metadata": dict(session["metadata"]),
            "period_start": now,
            "period_end": now,
            "post_payment_credit_notes_amount": 0,
            "status_transitions": {
                "finalized_at": now,
                "paid_at": now,
                "marked_uncollectible_at": None,
                "voided_at": None,
            },
            "parent": {
                "type": "subscription_details",
                "quote_details": None,
                "subscription_details": {"subscription": subscription["id"], "metadata": dict(session["metadata"])},
            },
            "lines": {
                "object": "list",
                "data": [
                    {
                        "id": self._id("il", f"invoice_line:{session['id']}"),
                        "object": "line_item",
                        "invoice": invoice_id,
                        "amount": amount,
                        "currency": session["currency"],
                        "description": f"1 × {local['description']}",
                        "quantity": 1,
                        "period": period,
                        "metadata": {},
                        "livemode": False,
                        "parent": {
                            "type": "subscription_item_details",
                            "invoice_item_details": None,
                            "subscription_item_details": {
                                "subscription": subscription["id"],
                                "subscription_item": item["id"],
                                "invoice_item": None,
                                "proration": False,
                            },
                        },
                        "pricing": {
                            "type": "price_details",
                            "price_details": {"price": item["price"]["id"], "product": item["price"]["product"]},
                        },
                    }
                ],
                "has_more": False,
                "url": f"/v1/invoices/{invoice_id}/lines",
            },
        }

    @staticmethod
    def _subscription_value(sub: dict[str, Any]) -> ProviderSubscription:
        item = sub["items"]["data"][0]
        return ProviderSubscription(
            id=sub["id"],
            status=sub["status"],
            customer_id=sub.get("customer"),
            cancel_at_period_end=bool(sub.get("cancel_at_period_end")),
            current_period_start=_dt(item.get("current_period_start")),
            current_period_end=_dt(item.get("current_period_end")),
            canceled_at=_dt(sub.get("canceled_at")),
            raw=sub,
        )
