"""The local payment provider's storage and small helpers: Stripe-shaped JSON documents on disk (one file per
object, atomic writes, per-object locks), test card numbers, calendar months like Stripe's periods, the
``Stripe-Signature`` signer, and what the hosted checkout page shows."""

from __future__ import annotations

import calendar
import contextlib
import fcntl
import json
import os
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import stripe

from robosystems.payments.base import ProviderObjectMissing

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
