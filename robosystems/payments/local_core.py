"""The local provider's core: ids, the events it records and delivers (signed like Stripe signs them), and the
Stripe-shaped objects it builds (``fixtures.json``).  :class:`robosystems.payments.local.LocalPaymentProvider`
builds on it."""

from __future__ import annotations

import hashlib
import json
import secrets
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from robosystems.payments.base import ProviderSubscription
from robosystems.payments.local_store import LocalStore, WebhookSender, _dt, _now, add_month, sign_payload


class LocalCore:
    """State and shapes shared by the local provider's use cases."""

    name = "local"

    def __init__(
        self, *, data_dir: Path, base_url: str, signing_secret: str, api_version: str, portal_ttl_seconds: int = 3600
    ) -> None:
        if not signing_secret:
            raise ValueError("the local payment provider needs a webhook signing secret")
        self.store = LocalStore(data_dir / "local_payments")
        self.base_url = base_url.rstrip("/")
        self.signing_secret = signing_secret
        self.api_version = api_version
        self.portal_ttl_seconds = portal_ttl_seconds

    # --- ids -----------------------------------------------------------------------------------

    @staticmethod
    def _id(prefix: str, idempotency_key: str | None = None) -> str:
        if idempotency_key:
            return f"{prefix}_local_{hashlib.sha256(idempotency_key.encode('utf-8')).hexdigest()[:24]}"
        return f"{prefix}_local_{secrets.token_hex(12)}"

    def checkout_url(self, session_id: str) -> str:
        return f"{self.base_url}/billing/local/checkout/{session_id}"

    def invoice_pdf_url(self, invoice_id: str) -> str:
        """The invoice's PDF (the id is the capability, like Stripe's ``invoice_pdf`` links)."""
        return f"{self.base_url}/billing/local/invoices/{invoice_id}.pdf"

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
            "unit_amount": local.get("unit_amount", session["amount_total"]),
            "unit_amount_decimal": str(local.get("unit_amount", session["amount_total"])),
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
                        "quantity": int(local.get("quantity", 1)),
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
            "invoice_pdf": self.invoice_pdf_url(invoice_id),
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
                        "description": f"{item['quantity']} × {local['description']}",
                        "quantity": item["quantity"],
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
