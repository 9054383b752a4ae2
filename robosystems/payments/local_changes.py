"""The local provider's subscription changes, renewals, one-time payments and customer portal.

What Stripe does, on the local documents:

* :meth:`preview_subscription_change` / :meth:`change_subscription`: Stripe's proration formula
  (:mod:`robosystems.payments.proration`) with the proration date pinned; the change invoices the proration at once
  (``billing_reason: subscription_update``) and charges the default payment method.  Like
  ``payment_behavior=pending_if_incomplete``, the subscription's item changes only when that charge succeeds; a
  failed charge voids the invoice and changes nothing (``invoice.payment_failed`` then ``invoice.voided``).
* :meth:`schedule_subscription_change`: the new price starts with the next period (a subscription schedule's second
  phase); :meth:`cancel_scheduled_change` releases it.
* :meth:`renew`: what Stripe's clock does at a period end: apply a scheduled change, start the next period, invoice
  it (``subscription_cycle``) and charge it (``past_due`` when the charge fails), or end a subscription canceled at
  period end (``customer.subscription.deleted``).  :meth:`due_renewals` lists the subscriptions whose period ended.
* :meth:`create_payment_checkout`: a hosted checkout in ``mode: payment`` (credit packs); paid on the same page.
* the customer portal (:meth:`portal`, :meth:`portal_update_card`, :meth:`portal_cancel`) and invoice PDFs.

Events are recorded on the subscription (or the customer) and sent by :meth:`deliver_object`.  Test payment
method ``pm_card_chargeCustomerFail`` (card 4000 0000 0000 0341 in the portal) attaches, but every charge fails.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from robosystems.payments.base import (
    ChangeLine,
    ChangePreview,
    ChangeResult,
    CheckoutSession,
    InvalidPaymentMethod,
    PaymentCheckoutRequest,
    PaymentMethodInfo,
    ProviderError,
    ProviderObjectMissing,
    ScheduledChange,
    SubscriptionChange,
)
from robosystems.payments.local_core import LocalCore
from robosystems.payments.local_store import WebhookSender, _dt, _now, _ts, add_month, card_brand
from robosystems.payments.proration import proration_lines

#: attaches fine, every charge fails (Stripe's test method / card of the same behaviour)
CHARGE_FAILING_PAYMENT_METHODS = {"pm_card_chargeCustomerFail": ("visa", "0341")}
CHARGE_FAILING_CARDS = frozenset({"4000000000000341"})
DECLINE_MESSAGE = "Your card was declined."


class SubscriptionNotChangeable(ProviderError):
    status_code, code, detail = 409, "subscription_not_changeable", "The provider can't change this subscription now"


@dataclass(frozen=True)
class PortalInvoice:
    id: str
    number: str
    status: str
    amount_cents: int
    currency: str
    created: datetime
    pdf_url: str


@dataclass(frozen=True)
class PortalSubscription:
    id: str
    description: str
    status: str
    cancel_at_period_end: bool
    current_period_end: datetime | None


@dataclass(frozen=True)
class PortalView:
    portal_id: str
    customer_id: str
    payment_method: str
    invoices: list[PortalInvoice]
    subscriptions: list[PortalSubscription]
    return_url: str
    expired: bool


class LocalChanges(LocalCore):
    # --- helpers -------------------------------------------------------------------------------

    def _charge_failure(self, customer_id: str) -> str | None:
        """Why charging the customer's default payment method fails (None: it succeeds)."""
        customer = self.store.get("customers", customer_id)["object"]
        pm_id = customer["invoice_settings"].get("default_payment_method")
        if not pm_id:
            return "No payment method on file."
        try:
            pm = self.store.get("payment_methods", pm_id)
        except ProviderObjectMissing:
            return "The payment method on file is not usable."
        return DECLINE_MESSAGE if pm.get("local", {}).get("charge_fails") else None

    @staticmethod
    def _item(sub: dict[str, Any]) -> dict[str, Any]:
        item: dict[str, Any] = sub["items"]["data"][0]
        return item

    def _price(self, change: SubscriptionChange) -> dict[str, Any]:
        return {
            "id": change.price_id or f"price_local_{change.plan_name}_{change.amount_cents}",
            "object": "price",
            "active": True,
            "currency": change.currency,
            "unit_amount": change.amount_cents,
            "unit_amount_decimal": str(change.amount_cents),
            "recurring": {"interval": change.interval, "interval_count": 1, "usage_type": "licensed"},
            "type": "recurring",
            "product": f"prod_local_{change.plan_name}",
            "nickname": change.plan_name,
            "metadata": {"plan_name": change.plan_name},
            "livemode": False,
        }

    def _lines(self, sub: dict[str, Any], change: SubscriptionChange) -> list[ChangeLine]:
        item = self._item(sub)
        start, end = int(item["current_period_start"]), int(item["current_period_end"])
        if not start <= change.proration_date <= end:
            raise SubscriptionNotChangeable("The proration date is outside the current period")
        price = item["price"]
        return proration_lines(
            old_name=str(price.get("nickname") or price["id"]),
            old_unit=int(price["unit_amount"]),
            old_quantity=int(item.get("quantity", 1)),
            new_name=change.plan_name,
            new_unit=change.amount_cents,
            new_quantity=change.quantity,
            start=start,
            end=end,
            at=change.proration_date,
        )

    def _invoice(
        self,
        sub: dict[str, Any],
        lines: list[dict[str, Any]],
        *,
        key: str,
        billing_reason: str,
        now: int,
        paid: bool,
    ) -> dict[str, Any]:
        """A finalized invoice of ``sub`` (paid, or open awaiting payment) with ``lines`` (Stripe shape)."""
        invoice_id = self._id("in", key)
        total = sum(int(li["amount"]) for li in lines)
        due = max(total, 0)
        item = self._item(sub)
        return {
            "id": invoice_id,
            "object": "invoice",
            "status": "paid" if paid else "open",
            "billing_reason": billing_reason,
            "collection_method": sub.get("collection_method", "charge_automatically"),
            "customer": sub["customer"],
            "created": now,
            "currency": sub.get("currency", "usd"),
            "amount_due": due,
            "amount_paid": due if paid else 0,
            "amount_remaining": 0 if paid else due,
            "subtotal": total,
            "total": total,
            "due_date": None,
            "number": f"LOCAL-{invoice_id[-8:].upper()}-0001",
            "hosted_invoice_url": None,
            "invoice_pdf": self.invoice_pdf_url(invoice_id),
            "livemode": False,
            "metadata": dict(sub.get("metadata") or {}),
            "period_start": now,
            "period_end": now,
            "post_payment_credit_notes_amount": 0,
            "status_transitions": {
                "finalized_at": now,
                "paid_at": now if paid else None,
                "marked_uncollectible_at": None,
                "voided_at": None,
            },
            "parent": {
                "type": "subscription_details",
                "quote_details": None,
                "subscription_details": {"subscription": sub["id"], "metadata": dict(sub.get("metadata") or {})},
            },
            "lines": {
                "object": "list",
                "data": [
                    {
                        "id": self._id("il", f"{key}:{index}"),
                        "object": "line_item",
                        "invoice": invoice_id,
                        "livemode": False,
                        "metadata": {},
                        "currency": sub.get("currency", "usd"),
                        "parent": {
                            "type": "subscription_item_details",
                            "invoice_item_details": None,
                            "subscription_item_details": {
                                "subscription": sub["id"],
                                "subscription_item": item["id"],
                                "invoice_item": None,
                                "proration": bool(li.get("proration")),
                            },
                        },
                        "pricing": {
                            "type": "price_details",
                            "price_details": {"price": li["price"]["id"], "product": li["price"]["product"]},
                        },
                        **{k: v for k, v in li.items() if k not in ("price", "proration")},
                    }
                    for index, li in enumerate(lines)
                ],
                "has_more": False,
                "url": f"/v1/invoices/{invoice_id}/lines",
            },
        }

    def _record(self, kind: str, object_id: str, record: dict[str, Any], events: list[dict[str, Any]]) -> None:
        local = record.setdefault("local", {})
        local["events"] = list(local.get("events", [])) + [e["id"] for e in events]
        self.store.put(kind, object_id, record)

    async def deliver_object(self, kind: str, object_id: str, send: WebhookSender) -> bool:
        """POST the undelivered events recorded on a subscription / customer, in order."""
        record = self.store.get(kind, object_id)
        return await self._deliver_ids(list(record.get("local", {}).get("events", [])), send)

    # --- plan changes --------------------------------------------------------------------------

    def preview_subscription_change(self, change: SubscriptionChange) -> ChangePreview:
        sub = self.store.get("subscriptions", change.subscription_id)["object"]
        if sub["status"] not in ("active", "trialing"):
            raise SubscriptionNotChangeable()
        lines = self._lines(sub, change)
        return ChangePreview(
            amount_due_now=max(sum(li.amount for li in lines), 0),
            currency=sub.get("currency", "usd"),
            lines=lines,
            next_invoice_total=change.amount_cents * change.quantity,
            proration_date=change.proration_date,
            period_end=_dt(self._item(sub)["current_period_end"]),
        )

    def change_subscription(self, change: SubscriptionChange) -> ChangeResult:
        done_key = self._id("chg", change.idempotency_key)
        if self.store.exists("changes", done_key):  # the same request again: the same answer
            return ChangeResult(**self.store.get("changes", done_key)["object"])
        with self.store.locked("subscriptions", change.subscription_id):
            record = self.store.get("subscriptions", change.subscription_id)
            sub = record["object"]
            if sub["status"] not in ("active", "trialing"):
                raise SubscriptionNotChangeable()
            now = _now()
            lines = self._lines(sub, change)
            price = self._price(change)
            item = self._item(sub)
            period = {"start": change.proration_date, "end": item["current_period_end"]}
            invoice_lines = [
                {
                    "amount": line.amount,
                    "description": line.description,
                    "quantity": q,
                    "period": period,
                    "price": p,
                    "proration": True,
                }
                for line, q, p in (
                    (lines[0], item.get("quantity", 1), item["price"]),
                    (lines[1], change.quantity, price),
                )
            ]
            failure = self._charge_failure(sub["customer"]) if sum(li.amount for li in lines) > 0 else None
            invoice = self._invoice(
                sub,
                invoice_lines,
                key=f"change:{change.idempotency_key}",
                billing_reason="subscription_update",
                now=now,
                paid=failure is None,
            )
            events = [self._event("invoice.finalized", {**invoice, "status": "open", "amount_paid": 0}, now)]
            if failure is None:
                item["price"], item["quantity"] = price, change.quantity
                sub["latest_invoice"] = invoice["id"]
                self.store.create_once("invoices", invoice["id"], {"object": invoice, "local": {}})
                events += [
                    self._event("invoice.paid", invoice, now),
                    self._event("customer.subscription.updated", sub, now),
                ]
                result = ChangeResult("paid", invoice["id"], int(invoice["amount_paid"]))
            else:  # pending_if_incomplete: the update is discarded with the voided invoice
                voided = {
                    **invoice,
                    "status": "void",
                    "status_transitions": {**invoice["status_transitions"], "voided_at": now},
                }
                self.store.create_once("invoices", invoice["id"], {"object": voided, "local": {}})
                events += [
                    self._event("invoice.payment_failed", invoice, now),
                    self._event("invoice.voided", voided, now),
                ]
                result = ChangeResult("failed", invoice["id"], int(invoice["amount_due"]), failure)
            self._record("subscriptions", sub["id"], record, events)
            self.store.create_once("changes", done_key, {"object": result.__dict__, "local": {}})
        return result

    def schedule_subscription_change(self, change: SubscriptionChange) -> ScheduledChange:
        schedule_id = self._id("sub_sched", change.idempotency_key)
        with self.store.locked("subscriptions", change.subscription_id):
            record = self.store.get("subscriptions", change.subscription_id)
            sub = record["object"]
            if sub["status"] not in ("active", "trialing", "past_due") or sub.get("cancel_at_period_end"):
                raise SubscriptionNotChangeable()
            record.setdefault("local", {})["scheduled_change"] = {
                "schedule_id": schedule_id,
                "price": self._price(change),
                "quantity": change.quantity,
            }
            sub["schedule"] = schedule_id
            self.store.put("subscriptions", sub["id"], record)
        return ScheduledChange(schedule_id, _dt(self._item(sub)["current_period_end"]))

    def cancel_scheduled_change(self, subscription_id: str, schedule_id: str) -> None:
        with self.store.locked("subscriptions", subscription_id):
            record = self.store.get("subscriptions", subscription_id)
            local = record.setdefault("local", {})
            if (local.get("scheduled_change") or {}).get("schedule_id") == schedule_id:
                local.pop("scheduled_change")
                record["object"]["schedule"] = None
                self.store.put("subscriptions", subscription_id, record)

    # --- renewals (the provider's clock) -------------------------------------------------------

    def due_renewals(self, now: int | None = None) -> list[str]:
        now = now or _now()
        due = []
        for path in sorted((self.store.root / "subscriptions").glob("sub_*.json")):
            sub = json.loads(path.read_text(encoding="utf-8"))["object"]
            if sub["status"] in ("active", "trialing", "past_due") and self._item(sub)["current_period_end"] <= now:
                due.append(str(sub["id"]))
        return due

    def renew(self, subscription_id: str, now: int | None = None) -> int:
        """Roll every period of the subscription that ended by ``now``; returns how many periods were renewed."""
        now = now or _now()
        renewed = 0
        with self.store.locked("subscriptions", subscription_id):
            record = self.store.get("subscriptions", subscription_id)
            sub, local = record["object"], record.setdefault("local", {})
            item = self._item(sub)
            events: list[dict[str, Any]] = []
            while sub["status"] in ("active", "trialing", "past_due") and item["current_period_end"] <= now:
                end = int(item["current_period_end"])
                if sub.get("cancel_at_period_end"):
                    sub.update(status="canceled", ended_at=end, canceled_at=sub.get("canceled_at") or end)
                    events.append(self._event("customer.subscription.deleted", sub, now))
                    break
                scheduled = local.pop("scheduled_change", None)
                if scheduled:
                    item["price"], item["quantity"] = scheduled["price"], scheduled["quantity"]
                    sub["schedule"] = None
                months = 12 if item["price"].get("recurring", {}).get("interval") == "year" else 1
                item["current_period_start"], item["current_period_end"] = end, add_month(end, months)
                quantity = int(item.get("quantity", 1))
                amount = int(item["price"]["unit_amount"]) * quantity
                failure = self._charge_failure(sub["customer"]) if amount > 0 else None
                label = str(item["price"].get("nickname") or item["price"]["id"])
                invoice = self._invoice(
                    sub,
                    [
                        {
                            "amount": amount,
                            "description": f"{quantity} × {label}",
                            "quantity": quantity,
                            "period": {"start": end, "end": item["current_period_end"]},
                            "price": item["price"],
                        }
                    ],
                    key=f"renewal:{sub['id']}:{end}",
                    billing_reason="subscription_cycle",
                    now=now,
                    paid=failure is None,
                )
                sub["latest_invoice"] = invoice["id"]
                sub["status"] = "active" if failure is None else "past_due"
                self.store.create_once("invoices", invoice["id"], {"object": invoice, "local": {}})
                events += [
                    self._event("customer.subscription.updated", sub, now),
                    self._event("invoice.finalized", {**invoice, "status": "open", "amount_paid": 0}, now),
                    self._event("invoice.paid" if failure is None else "invoice.payment_failed", invoice, now),
                ]
                renewed += 1
            if events:
                self._record("subscriptions", sub["id"], record, events)
        return renewed

    # --- one-time payments (credit packs) ------------------------------------------------------

    def create_payment_checkout(self, request: PaymentCheckoutRequest) -> CheckoutSession:
        session_id = self._id("cs", request.idempotency_key)
        metadata = {"credit_purchase_id": request.reference_id, "org_id": request.org_id, **request.metadata}
        obj = {
            "id": session_id,
            "object": "checkout.session",
            "mode": "payment",
            "status": "open",
            "payment_status": "unpaid",
            "created": _now(),
            "expires_at": _ts(request.expires_at),
            "customer": request.customer_id,
            "customer_email": request.customer_email,
            "client_reference_id": request.reference_id,
            "metadata": metadata,
            "amount_subtotal": request.amount_cents,
            "amount_total": request.amount_cents,
            "currency": request.currency,
            "subscription": None,
            "invoice": None,
            "payment_intent": None,
            "livemode": False,
            "success_url": request.success_url.replace("{CHECKOUT_SESSION_ID}", session_id),
            "cancel_url": request.cancel_url.replace("{CHECKOUT_SESSION_ID}", session_id),
            "url": self.checkout_url(session_id),
        }
        local = {"plan_name": "", "description": request.description, "interval": "one-time", "events": []}
        record, _ = self.store.create_once("checkout_sessions", session_id, {"object": obj, "local": local})
        stored = record["object"]
        return CheckoutSession(stored["id"], stored["url"], datetime.fromtimestamp(stored["expires_at"], UTC))

    def _pay_one_time(self, record: dict[str, Any], customer_id: str, now: int) -> list[dict[str, Any]]:
        """A paid ``mode: payment`` session: its invoice (no subscription) and the events Stripe sends."""
        session = record["object"]
        invoice_id = self._id("in", f"invoice:{session['id']}")
        amount = int(session["amount_total"] or 0)
        invoice = {
            "id": invoice_id,
            "object": "invoice",
            "status": "paid",
            "billing_reason": "manual",
            "collection_method": "charge_automatically",
            "customer": customer_id,
            "created": now,
            "currency": session["currency"],
            "amount_due": amount,
            "amount_paid": amount,
            "amount_remaining": 0,
            "subtotal": amount,
            "total": amount,
            "number": f"LOCAL-{invoice_id[-8:].upper()}-0001",
            "invoice_pdf": self.invoice_pdf_url(invoice_id),
            "hosted_invoice_url": None,
            "livemode": False,
            "metadata": dict(session["metadata"]),
            "period_start": now,
            "period_end": now,
            "status_transitions": {"finalized_at": now, "paid_at": now, "voided_at": None},
            "parent": None,
            "lines": {
                "object": "list",
                "data": [
                    {
                        "id": self._id("il", f"invoice_line:{session['id']}"),
                        "object": "line_item",
                        "invoice": invoice_id,
                        "amount": amount,
                        "currency": session["currency"],
                        "description": record["local"]["description"],
                        "quantity": 1,
                        "period": {"start": now, "end": now},
                        "parent": None,
                    }
                ],
                "has_more": False,
            },
        }
        self.store.create_once("invoices", invoice_id, {"object": invoice, "local": {}})
        session["invoice"] = invoice_id
        return [
            self._event("invoice.finalized", {**invoice, "status": "open", "amount_paid": 0}, now),
            self._event("invoice.paid", invoice, now),
        ]

    def retrieve_payment_method(self, payment_method_id: str) -> PaymentMethodInfo:
        try:
            card = self.store.get("payment_methods", payment_method_id)["object"]["card"]
        except ProviderObjectMissing as exc:
            raise InvalidPaymentMethod() from exc
        return PaymentMethodInfo(
            payment_method_id, "card", card["brand"], card["last4"], card["exp_month"], card["exp_year"]
        )

    # --- customer portal -----------------------------------------------------------------------

    def create_portal_session(self, *, customer_id: str, return_url: str) -> str:
        self.store.get("customers", customer_id)
        portal_id = self._id("bps")
        now = _now()
        obj = {
            "id": portal_id,
            "object": "billing_portal.session",
            "customer": customer_id,
            "created": now,
            "expires_at": now + self.portal_ttl_seconds,
            "return_url": return_url,
            "url": f"{self.base_url}/billing/local/portal/{portal_id}",
            "livemode": False,
        }
        self.store.create_once("portal_sessions", portal_id, {"object": obj, "local": {}})
        return str(obj["url"])

    def _portal_session(self, portal_id: str) -> dict[str, Any]:
        session: dict[str, Any] = self.store.get("portal_sessions", portal_id)["object"]
        return session

    def portal(self, portal_id: str) -> PortalView:
        session = self._portal_session(portal_id)
        customer_id = str(session["customer"])
        customer = self.store.get("customers", customer_id)["object"]
        pm_id = customer["invoice_settings"].get("default_payment_method")
        summary = "none"
        if pm_id:
            try:
                card = self.store.get("payment_methods", pm_id)["object"]["card"]
                summary = f"{card['brand']} •••• {card['last4']} (exp {card['exp_month']:02d}/{card['exp_year']})"
            except ProviderObjectMissing:
                summary = str(pm_id)
        invoices = [
            PortalInvoice(
                inv["id"],
                inv.get("number") or inv["id"],
                inv["status"],
                int(inv.get("amount_due") or 0),
                inv.get("currency", "usd"),
                datetime.fromtimestamp(inv["created"], UTC),
                self.invoice_pdf_url(inv["id"]),
            )
            for inv in self._objects("invoices", customer_id)
        ]
        subscriptions = [
            PortalSubscription(
                sub["id"],
                str(self._item(sub)["price"].get("nickname") or sub["id"]),
                sub["status"],
                bool(sub.get("cancel_at_period_end")),
                _dt(self._item(sub).get("current_period_end")),
            )
            for sub in self._objects("subscriptions", customer_id)
        ]
        return PortalView(
            portal_id,
            customer_id,
            summary,
            sorted(invoices, key=lambda i: i.created, reverse=True),
            subscriptions,
            str(session.get("return_url") or "/"),
            int(session.get("expires_at") or 0) < _now(),
        )

    def _objects(self, kind: str, customer_id: str) -> list[dict[str, Any]]:
        directory: Path = self.store.root / kind
        if not directory.is_dir():
            return []
        found = []
        for path in sorted(directory.glob("*.json")):
            obj = json.loads(path.read_text(encoding="utf-8"))["object"]
            if obj.get("customer") == customer_id:
                found.append(obj)
        return found

    def portal_update_card(self, portal_id: str, card_number: str) -> str | None:
        """A new default card from the portal (``payment_method.attached``, ``customer.updated``); the error
        message when the card is refused."""
        number = "".join(ch for ch in card_number if ch.isdigit())
        if len(number) < 12 or len(number) > 19:
            return "Enter a card number (test card: 4242 4242 4242 4242)."
        from robosystems.payments.local_store import DECLINED_CARDS

        if number in DECLINED_CARDS - CHARGE_FAILING_CARDS:
            return DECLINE_MESSAGE
        customer_id = str(self._portal_session(portal_id)["customer"])
        pm = self._payment_method_object(self._id("pm"), card_brand(number), number[-4:], customer_id)
        local = {"charge_fails": number in CHARGE_FAILING_CARDS}
        self.store.create_once("payment_methods", pm["id"], {"object": pm, "local": local})
        now = _now()
        with self.store.locked("customers", customer_id):
            record = self.store.get("customers", customer_id)
            record["object"]["invoice_settings"]["default_payment_method"] = pm["id"]
            events = [
                self._event("payment_method.attached", pm, now),
                self._event("customer.updated", record["object"], now),
            ]
            self._record("customers", customer_id, record, events)
        return None

    def portal_cancel(self, portal_id: str, subscription_id: str) -> bool:
        """Cancel one of the portal customer's subscriptions at period end (``customer.subscription.updated``)."""
        customer_id = self._portal_session(portal_id)["customer"]
        with self.store.locked("subscriptions", subscription_id):
            record = self.store.get("subscriptions", subscription_id)
            sub = record["object"]
            if sub.get("customer") != customer_id or sub["status"] == "canceled" or sub.get("cancel_at_period_end"):
                return False
            now = _now()
            sub.update(cancel_at_period_end=True, cancel_at=self._item(sub)["current_period_end"], canceled_at=now)
            self._record(
                "subscriptions", subscription_id, record, [self._event("customer.subscription.updated", sub, now)]
            )
        return True

    def invoice_pdf(self, invoice_id: str) -> bytes:
        from robosystems.payments.pdf import invoice_pdf

        invoice = self.store.get("invoices", invoice_id)["object"]
        return invoice_pdf(invoice)
