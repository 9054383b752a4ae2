"""Stripe-Signature verification on the raw body, and the signing secret in use.

``stripe.WebhookSignature.verify_header`` checks the HMAC of ``"{t}.{body}"`` against every ``v1``
entry of the header (several are sent while Stripe rotates a secret) in constant time, and refuses a
timestamp older than the tolerance; we also refuse one further than the tolerance in the future
(the SDK does not).  Only the header is verified with the SDK (~10 µs); the JSON is parsed by the
caller (``Webhook.construct_event`` would build the SDK object tree: ~1.3 ms per event).

Secret: ``STRIPE_WEBHOOK_SECRET`` (comma-separated to accept several during a rotation).  When it is
unset and ``STRIPE_SECRET_KEY`` is unset too (the local payment provider), a secret generated once
in the data directory (``stripe_webhook_secret``) is used; the local provider signs the events it
emits with :func:`signing_secret` as well.  Stripe mode without a webhook secret has no secret:
the endpoint answers 503 and verifies nothing against "".
"""

from __future__ import annotations

import time
from functools import lru_cache
from pathlib import Path

import stripe

from robosystems.config import Settings, _persistent_secret

LOCAL_SECRET_FILE = "stripe_webhook_secret"  # noqa: S105 - a file name


class SignatureInvalid(Exception):  # noqa: N818 - mirrors the SDK's naming
    """The Stripe-Signature header is missing, malformed, stale, from the future or does not match."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def stripe_mode(settings: Settings) -> bool:
    """True when the payment provider is Stripe (PAYMENT_PROVIDER / STRIPE_SECRET_KEY)."""
    from robosystems.payments.factory import provider_name

    return provider_name(settings) == "stripe"


@lru_cache(maxsize=8)
def _local_secret(path: Path) -> str:
    return _persistent_secret(path)


def signing_secrets(settings: Settings) -> list[str]:
    """Secrets accepted for incoming events ([] -> the endpoint is not configured)."""
    configured = [s.strip() for s in settings.stripe_webhook_secret.split(",") if s.strip()]
    if configured:
        return configured
    if stripe_mode(settings):
        return []
    return [_local_secret(settings.secret_file(LOCAL_SECRET_FILE))]


def signing_secret(settings: Settings) -> str | None:
    """The secret the local provider signs with (the first accepted one); None in Stripe mode without one."""
    secrets = signing_secrets(settings)
    return secrets[0] if secrets else None


def sign(payload: str, secret: str, timestamp: int | None = None) -> str:
    """A ``Stripe-Signature`` header for ``payload``, made the way Stripe makes it (the SDK's helper)."""
    header: str = stripe.WebhookSignature.generate_signature_header(payload, secret, timestamp=timestamp)
    return header


def _timestamp(header: str) -> int:
    for item in header.split(","):
        key, _, value = item.strip().partition("=")
        if key == "t":
            return int(value)
    raise ValueError("no timestamp")


def verify(body: bytes, header: str | None, secrets: list[str], tolerance: int, now: float | None = None) -> None:
    """Raise :class:`SignatureInvalid` unless ``header`` signs ``body`` with one of ``secrets`` recently."""
    if not header:
        raise SignatureInvalid("missing")
    if len(header) > 4096:
        raise SignatureInvalid("malformed")
    try:
        payload = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SignatureInvalid("body_not_utf8") from exc
    try:
        ts = _timestamp(header)
    except ValueError as exc:
        raise SignatureInvalid("malformed") from exc
    now = time.time() if now is None else now
    if ts > now + tolerance:
        raise SignatureInvalid("timestamp_in_future")
    if ts < now - tolerance:
        raise SignatureInvalid("timestamp_too_old")
    for secret in secrets:
        try:
            stripe.WebhookSignature.verify_header(payload, header, secret, tolerance)
        except stripe.SignatureVerificationError:
            continue
        return
    raise SignatureInvalid("mismatch")
