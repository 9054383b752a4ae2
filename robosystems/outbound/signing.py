"""Signing secrets and the Standard Webhooks headers, produced with the ``standardwebhooks`` package (the spec's
reference implementation; nothing is signed by hand here).

* A secret is ``whsec_`` + base64 of 32 random bytes (the spec asks for 24..64 bytes).
* ``webhook-id`` is the event id (the same on every retry and replay, so a receiver can deduplicate),
  ``webhook-timestamp`` the time of this attempt (Unix seconds), ``webhook-signature`` one ``v1,<base64>`` per
  active secret, space-separated: during a rotation's overlap both the new and the previous secret sign, so a
  receiver still holding the old secret keeps verifying.
"""

from __future__ import annotations

import base64
import secrets
from collections.abc import Sequence
from datetime import datetime

from standardwebhooks import Webhook

SECRET_PREFIX = "whsec_"  # noqa: S105 - a prefix, not a secret


def new_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode("ascii")


def signature(active_secrets: Sequence[str], msg_id: str, timestamp: datetime, body: str) -> str:
    """The ``webhook-signature`` value: one ``v1,…`` per secret, newest first."""
    return " ".join(Webhook(secret).sign(msg_id, timestamp, body) for secret in active_secrets)


def headers(active_secrets: Sequence[str], msg_id: str, timestamp: datetime, body: str) -> dict[str, str]:
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(timestamp.timestamp())),
        "webhook-signature": signature(active_secrets, msg_id, timestamp, body),
    }
