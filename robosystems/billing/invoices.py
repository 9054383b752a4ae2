"""Invoices: gapless numbering, creation, upsert from a Stripe-shaped invoice object, marking paid.

Numbers are ``INV-YYYY-MM-NNNN`` (NNNN widens past 9999) taken from ``billing_invoice_counters`` by ONE statement
(``INSERT … ON CONFLICT (period) DO UPDATE SET last_number = last_number + 1 RETURNING``) in the same transaction as
the invoice insert: the counter row stays locked until that transaction ends, so numbers within a month are
gapless and strictly increasing in commit order, and a rolled-back transaction gives its number back.  Take the
number as late as possible in a transaction (it serializes invoice creation for that month until commit).

A provider invoice is numbered by us exactly once: :func:`upsert_from_provider` serializes on the provider invoice
id (transaction-scoped advisory lock), so concurrent deliveries of the same invoice create one row and one number.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from sqlalchemy import func, insert, select, text
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from robosystems.billing.audit import Actor, record_for_actor
from robosystems.billing.subscriptions import find_by_provider_ref
from robosystems.errors import Conflict, NotFound, Unprocessable
from robosystems.ids import new_id
from robosystems.models.billing import (
    INVOICE_STATUSES,
    BillingInvoice,
    BillingInvoiceCounter,
    BillingInvoiceLineItem,
    BillingSubscription,
)
from robosystems.outbound import events as outbound

log = logging.getLogger("robosystems.billing.invoices")

# Order in which an invoice may move: an older provider event never moves it back (paid/void are final).
_STATUS_RANK = {"draft": 0, "open": 1, "uncollectible": 2, "paid": 3, "void": 3}
_STATUS_AUDIT = {
    "open": "invoice_finalized",
    "paid": "invoice_paid",
    "void": "invoice_voided",
    "uncollectible": "invoice_uncollectible",
}


def _now() -> datetime:
    return datetime.now(UTC)


def invoice_period(when: datetime) -> str:
    when = when.astimezone(UTC) if when.tzinfo else when
    return f"{when.year:04d}-{when.month:02d}"


def format_invoice_number(period: str, number: int) -> str:
    return f"INV-{period}-{number:04d}"


def next_invoice_number(session: Session, when: datetime | None = None) -> str:
    """Take the next number of ``when``'s month (UTC; default now).  Commits/rolls back with the caller."""
    period = invoice_period(when or _now())
    stmt = pg_insert(BillingInvoiceCounter).values(period=period, last_number=1)
    stmt = stmt.on_conflict_do_update(
        index_elements=[BillingInvoiceCounter.period],
        set_={"last_number": BillingInvoiceCounter.last_number + 1, "updated_at": func.now()},
    )
    number = session.execute(stmt.returning(BillingInvoiceCounter.last_number)).scalar_one()
    return format_invoice_number(period, int(number))


@dataclass
class LineItemInput:
    description: str
    amount_cents: int
    period_start: datetime
    period_end: datetime
    quantity: int = 1
    unit_price_cents: int | None = None
    resource_type: str = "graph"
    resource_id: str | None = None
    subscription_id: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


def _insert_lines(session: Session, invoice_id: str, lines: Sequence[LineItemInput]) -> None:
    if not lines:
        return
    session.execute(
        insert(BillingInvoiceLineItem),
        [
            {
                "id": new_id("bli"),
                "invoice_id": invoice_id,
                "subscription_id": li.subscription_id,
                "resource_type": li.resource_type,
                "resource_id": li.resource_id,
                "description": li.description[:500],
                "quantity": li.quantity,
                "unit_price_cents": (
                    li.unit_price_cents
                    if li.unit_price_cents is not None
                    else (li.amount_cents // li.quantity if li.quantity else li.amount_cents)
                ),
                "amount_cents": li.amount_cents,
                "period_start": li.period_start,
                "period_end": li.period_end,
                "line_metadata": li.metadata or None,
            }
            for li in lines
        ],
    )


def create_invoice(
    session: Session,
    *,
    org_id: str,
    period_start: datetime,
    period_end: datetime,
    subtotal_cents: int,
    total_cents: int | None = None,
    tax_cents: int = 0,
    discount_cents: int = 0,
    status: str = "draft",
    currency: str = "usd",
    subscription_id: str | None = None,
    stripe_invoice_id: str | None = None,
    amount_paid_cents: int | None = None,
    due_date: datetime | None = None,
    paid_at: datetime | None = None,
    hosted_invoice_url: str | None = None,
    invoice_pdf: str | None = None,
    payment_method: str | None = None,
    payment_reference: str | None = None,
    notes: str | None = None,
    lines: Sequence[LineItemInput] = (),
    numbered_at: datetime | None = None,
    actor: Actor | str | None = None,
    billing_reason: str | None = None,
) -> BillingInvoice:
    """Insert a numbered invoice (+ line items) and its ``invoice_generated`` audit row."""
    if status not in INVOICE_STATUSES:
        raise Unprocessable(f"Unknown invoice status {status!r}", code="unknown_invoice_status")
    total = subtotal_cents + tax_cents - discount_cents if total_cents is None else total_cents
    paid = amount_paid_cents if amount_paid_cents is not None else (total if status == "paid" else 0)
    invoice_id = new_id("binv")
    number = next_invoice_number(session, numbered_at)
    session.execute(
        insert(BillingInvoice).values(
            id=invoice_id,
            org_id=org_id,
            subscription_id=subscription_id,
            invoice_number=number,
            period_start=period_start,
            period_end=period_end,
            currency=currency,
            subtotal_cents=subtotal_cents,
            tax_cents=tax_cents,
            discount_cents=discount_cents,
            total_cents=total,
            amount_paid_cents=paid,
            status=status,
            stripe_invoice_id=stripe_invoice_id,
            hosted_invoice_url=hosted_invoice_url,
            invoice_pdf=invoice_pdf,
            due_date=due_date,
            paid_at=paid_at if paid_at is not None else (_now() if status == "paid" else None),
            payment_method=payment_method,
            payment_reference=payment_reference,
            notes=notes,
            billing_reason=billing_reason,
        )
    )
    _insert_lines(session, invoice_id, lines)
    record_for_actor(
        session,
        "invoice_generated",
        actor,
        org_id=org_id,
        invoice_id=invoice_id,
        subscription_id=subscription_id,
        description=f"Invoice {number} generated",
        data={
            "invoice_number": number,
            "total_cents": total,
            "status": status,
            "provider_invoice_id": stripe_invoice_id,
        },
    )
    inv = session.execute(select(BillingInvoice).where(BillingInvoice.id == invoice_id)).scalar_one()
    outbound.invoice_changed(session, inv)
    return inv


async def create_invoice_async(session: AsyncSession, **kwargs: Any) -> BillingInvoice:
    return await session.run_sync(lambda s: create_invoice(s, **kwargs))


# --- provider (Stripe-shaped) invoices --------------------------------------------------------------------------


def _bad(what: str) -> Unprocessable:
    return Unprocessable(f"Provider invoice: {what}", code="invalid_provider_invoice")


def _int(value: Any, what: str, default: int = 0) -> int:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | str | float | Decimal):
        raise _bad(f"{what} is not a number")
    try:
        return int(Decimal(str(value)))
    except (InvalidOperation, ValueError):
        raise _bad(f"{what} is not a number") from None


def _epoch(value: Any, what: str) -> datetime | None:
    if value is None:
        return None
    seconds = _int(value, what)
    try:
        return datetime.fromtimestamp(seconds, UTC)
    except (OverflowError, OSError, ValueError):
        raise _bad(f"{what} is out of range") from None


def _ref(value: Any) -> str | None:
    """A provider reference that may be an id string or an expanded object."""
    if isinstance(value, str) and value:
        return value
    if isinstance(value, Mapping) and isinstance(value.get("id"), str):
        return str(value["id"])
    return None


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def provider_subscription_ref(provider_invoice: Mapping[str, Any]) -> str | None:
    """``invoice.parent.subscription_details.subscription`` (basil and later), else the old ``invoice.subscription``."""
    details = _mapping(_mapping(provider_invoice.get("parent")).get("subscription_details"))
    return _ref(details.get("subscription")) or _ref(provider_invoice.get("subscription"))


def _line_subscription_ref(line: Mapping[str, Any]) -> str | None:
    parent = _mapping(line.get("parent"))
    for key in ("subscription_item_details", "invoice_item_details"):
        ref = _ref(_mapping(parent.get(key)).get("subscription"))
        if ref:
            return ref
    return _ref(line.get("subscription"))


@dataclass
class _ParsedInvoice:
    provider_id: str
    status: str
    currency: str
    subtotal: int
    tax: int
    discount: int
    total: int
    amount_paid: int
    period_start: datetime
    period_end: datetime
    due_date: datetime | None
    paid_at: datetime | None
    hosted_invoice_url: str | None
    invoice_pdf: str | None
    subscription_ref: str | None
    lines: list[dict[str, Any]]
    billing_reason: str | None = None


def _parse(inv: Mapping[str, Any]) -> _ParsedInvoice:
    provider_id = inv.get("id")
    if not isinstance(provider_id, str) or not provider_id or len(provider_id) > 255:
        raise _bad("missing id")
    status = inv.get("status") or "draft"
    if status not in INVOICE_STATUSES:
        raise _bad(f"unknown status {str(status)[:40]!r}")
    currency = inv.get("currency") or "usd"
    if not isinstance(currency, str) or len(currency) != 3:
        raise _bad("bad currency")
    created = _epoch(inv.get("created"), "created") or _now()
    raw_lines = _mapping(inv.get("lines")).get("data") or []
    if not isinstance(raw_lines, list):
        raise _bad("lines.data is not a list")
    lines: list[dict[str, Any]] = []
    for index, raw in enumerate(raw_lines):
        line = _mapping(raw)
        period = _mapping(line.get("period"))
        quantity = max(1, _int(line.get("quantity"), f"line {index} quantity", 1))
        amount = _int(line.get("amount"), f"line {index} amount")
        unit_decimal = _mapping(line.get("pricing")).get("unit_amount_decimal")
        unit = _int(unit_decimal, f"line {index} unit amount") if unit_decimal is not None else amount // quantity
        description = line.get("description")
        lines.append(
            {
                "provider_line_id": line.get("id") if isinstance(line.get("id"), str) else f"{provider_id}:{index}",
                "description": description if isinstance(description, str) and description else None,
                "amount": amount,
                "quantity": quantity,
                "unit": unit,
                "period_start": _epoch(period.get("start"), f"line {index} period start"),
                "period_end": _epoch(period.get("end"), f"line {index} period end"),
                "subscription_ref": _line_subscription_ref(line),
            }
        )
    starts = [li["period_start"] for li in lines if li["period_start"] is not None]
    ends = [li["period_end"] for li in lines if li["period_end"] is not None]
    period_start = min(starts) if starts else (_epoch(inv.get("period_start"), "period_start") or created)
    period_end = max(ends) if ends else (_epoch(inv.get("period_end"), "period_end") or period_start)
    subtotal = _int(inv.get("subtotal"), "subtotal")
    taxes = inv.get("total_taxes") or []
    tax = sum(_int(_mapping(t).get("amount"), "tax amount") for t in taxes) if isinstance(taxes, list) else 0
    if not tax:
        tax = _int(inv.get("tax"), "tax")
    discounts = inv.get("total_discount_amounts") or []
    discount = (
        sum(_int(_mapping(d).get("amount"), "discount amount") for d in discounts) if isinstance(discounts, list) else 0
    )
    total = _int(inv.get("total"), "total", subtotal + tax - discount)
    paid_at = _epoch(_mapping(inv.get("status_transitions")).get("paid_at"), "paid_at")
    hosted = inv.get("hosted_invoice_url")
    pdf = inv.get("invoice_pdf")
    return _ParsedInvoice(
        provider_id=provider_id,
        status=status,
        currency=currency.lower(),
        subtotal=subtotal,
        tax=tax,
        discount=discount,
        total=total,
        amount_paid=_int(inv.get("amount_paid"), "amount_paid"),
        period_start=period_start,
        period_end=period_end,
        due_date=_epoch(inv.get("due_date"), "due_date"),
        paid_at=paid_at if paid_at is not None or status != "paid" else _now(),
        hosted_invoice_url=hosted if isinstance(hosted, str) else None,
        invoice_pdf=pdf if isinstance(pdf, str) else None,
        subscription_ref=provider_subscription_ref(inv),
        lines=lines,
        billing_reason=str(inv["billing_reason"])[:40] if isinstance(inv.get("billing_reason"), str) else None,
    )


def _local_subscription(session: Session, org_id: str, ref: str | None) -> BillingSubscription | None:
    if not ref:
        return None
    sub = find_by_provider_ref(session, provider_subscription_id=ref)
    if sub is not None and sub.org_id != org_id:
        log.warning("provider subscription %s belongs to org %s, not %s: not linked", ref, sub.org_id, org_id)
        return None
    return sub


def _line_inputs(
    session: Session, org_id: str, parsed: _ParsedInvoice, invoice_sub: BillingSubscription | None, skip: set[str]
) -> list[LineItemInput]:
    result: list[LineItemInput] = []
    for li in parsed.lines:
        if li["provider_line_id"] in skip:
            continue
        sub = invoice_sub
        if li["subscription_ref"] and (
            sub is None or li["subscription_ref"] not in (sub.provider_subscription_id, sub.stripe_subscription_id)
        ):
            sub = _local_subscription(session, org_id, li["subscription_ref"]) or invoice_sub
        description = li["description"] or (f"{sub.plan_name} subscription" if sub else "Invoice item")
        result.append(
            LineItemInput(
                description=description,
                amount_cents=li["amount"],
                quantity=li["quantity"],
                unit_price_cents=li["unit"],
                period_start=li["period_start"] or parsed.period_start,
                period_end=li["period_end"] or parsed.period_end,
                resource_type=sub.resource_type if sub else "graph",
                resource_id=sub.resource_id if sub else None,
                subscription_id=sub.id if sub else None,
                metadata={"provider_line_id": li["provider_line_id"]},
            )
        )
    return result


def lock_provider_invoice(session: Session, provider_invoice_id: str) -> None:
    """Serialize work on one provider invoice until the end of the transaction."""
    session.execute(
        text("SELECT pg_advisory_xact_lock(hashtextextended(:k, 0))"), {"k": f"billing_invoice:{provider_invoice_id}"}
    )


def upsert_from_provider(
    session: Session, org_id: str, provider_invoice: Mapping[str, Any], *, actor: Actor | str | None = None
) -> BillingInvoice:
    """Create (numbered once) or update the local invoice for a Stripe-shaped invoice object.

    Amounts are cents; the subscription is ``invoice.parent.subscription_details.subscription`` (linked when it is
    a subscription of the same org).  An update never moves the status back (paid/void are final), adds line items
    not seen before and keeps the number.
    """
    parsed = _parse(provider_invoice)
    lock_provider_invoice(session, parsed.provider_id)
    existing = session.execute(
        select(BillingInvoice)
        .where(BillingInvoice.stripe_invoice_id == parsed.provider_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    ).scalar_one_or_none()
    if existing is not None and existing.org_id != org_id:
        raise Conflict("The provider invoice belongs to another organization", code="provider_invoice_org_mismatch")
    sub = _local_subscription(session, org_id, parsed.subscription_ref)

    if existing is None:
        return create_invoice(
            session,
            org_id=org_id,
            period_start=parsed.period_start,
            period_end=parsed.period_end,
            subtotal_cents=parsed.subtotal,
            total_cents=parsed.total,
            tax_cents=parsed.tax,
            discount_cents=parsed.discount,
            status=parsed.status,
            currency=parsed.currency,
            subscription_id=sub.id if sub else None,
            stripe_invoice_id=parsed.provider_id,
            amount_paid_cents=parsed.amount_paid,
            due_date=parsed.due_date,
            paid_at=parsed.paid_at,
            hosted_invoice_url=parsed.hosted_invoice_url,
            invoice_pdf=parsed.invoice_pdf,
            payment_method="provider",
            payment_reference=parsed.provider_id,
            lines=_line_inputs(session, org_id, parsed, sub, set()),
            actor=actor,
            billing_reason=parsed.billing_reason,
        )

    inv = existing
    old_status = inv.status
    if _STATUS_RANK[parsed.status] >= _STATUS_RANK[old_status] and old_status not in ("paid", "void"):
        inv.status = parsed.status
    if inv.status == parsed.status:  # only a current snapshot may overwrite amounts
        inv.subtotal_cents, inv.tax_cents = parsed.subtotal, parsed.tax
        inv.discount_cents, inv.total_cents = parsed.discount, parsed.total
        inv.currency = parsed.currency
    inv.amount_paid_cents = max(inv.amount_paid_cents, parsed.amount_paid)
    inv.hosted_invoice_url = parsed.hosted_invoice_url or inv.hosted_invoice_url
    inv.invoice_pdf = parsed.invoice_pdf or inv.invoice_pdf
    inv.due_date = parsed.due_date or inv.due_date
    if inv.status == "paid":
        inv.paid_at = inv.paid_at or parsed.paid_at or _now()
    if inv.subscription_id is None and sub is not None:
        inv.subscription_id = sub.id
    inv.billing_reason = inv.billing_reason or parsed.billing_reason
    inv.updated_at = _now()
    seen = {
        str(v)
        for v in session.execute(
            select(BillingInvoiceLineItem.line_metadata["provider_line_id"].as_string()).where(
                BillingInvoiceLineItem.invoice_id == inv.id
            )
        ).scalars()
        if v is not None
    }
    _insert_lines(session, inv.id, _line_inputs(session, org_id, parsed, sub, seen))
    session.flush()
    if inv.status != old_status and inv.status in _STATUS_AUDIT:
        record_for_actor(
            session,
            _STATUS_AUDIT[inv.status],
            actor,
            org_id=org_id,
            invoice_id=inv.id,
            subscription_id=inv.subscription_id,
            description=f"Invoice {inv.invoice_number} {old_status} -> {inv.status}",
            data={"from": old_status, "to": inv.status, "provider_invoice_id": parsed.provider_id},
        )
    outbound.invoice_changed(session, inv)
    return inv


async def upsert_from_provider_async(
    session: AsyncSession, org_id: str, provider_invoice: Mapping[str, Any], **kwargs: Any
) -> BillingInvoice:
    return await session.run_sync(lambda s: upsert_from_provider(s, org_id, provider_invoice, **kwargs))


def mark_paid(
    session: Session,
    invoice_id: str,
    *,
    paid_at: datetime | None = None,
    amount_paid_cents: int | None = None,
    payment_method: str | None = None,
    payment_reference: str | None = None,
    actor: Actor | str | None = None,
    reason: str | None = None,
) -> BillingInvoice:
    """Mark an invoice paid (idempotent: an already paid invoice is returned unchanged); a void one -> 409."""
    inv = session.execute(
        select(BillingInvoice)
        .where(BillingInvoice.id == invoice_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    ).scalar_one_or_none()
    if inv is None:
        raise NotFound("Invoice not found", code="invoice_not_found")
    if inv.status == "paid":
        return inv
    if inv.status == "void":
        raise Conflict("A void invoice can't be paid", code="invoice_void")
    old_status = inv.status
    inv.status = "paid"
    inv.paid_at = paid_at or _now()
    inv.amount_paid_cents = inv.total_cents if amount_paid_cents is None else amount_paid_cents
    inv.payment_method = payment_method or inv.payment_method
    inv.payment_reference = payment_reference or inv.payment_reference
    inv.updated_at = _now()
    session.flush()
    record_for_actor(
        session,
        "invoice_paid",
        actor,
        org_id=inv.org_id,
        invoice_id=inv.id,
        subscription_id=inv.subscription_id,
        reason=reason,
        description=f"Invoice {inv.invoice_number} marked paid",
        data={"from": old_status, "amount_paid_cents": inv.amount_paid_cents},
    )
    outbound.invoice_changed(session, inv)
    return inv


async def mark_paid_async(session: AsyncSession, invoice_id: str, **kwargs: Any) -> BillingInvoice:
    return await session.run_sync(lambda s: mark_paid(s, invoice_id, **kwargs))
