"""Prefixed ULIDs (``user_01J…``, ``org_01J…``) and random secrets."""

from __future__ import annotations

import hashlib
import secrets

from ulid import ULID


def new_id(prefix: str) -> str:
    return f"{prefix}_{ULID()}"


def random_token(nbytes: int = 32) -> str:
    """URL-safe token with ``nbytes`` of entropy (32 bytes = 256 bits)."""
    return secrets.token_urlsafe(nbytes)


def sha256_hex(value: str) -> str:
    return hashlib.sha256(value.encode("utf-8")).hexdigest()
