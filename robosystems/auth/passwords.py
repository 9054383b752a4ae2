"""Password hashing (Argon2id at or above the OWASP floor; legacy bcrypt still verified) and policy.

Policy (NIST 800-63B style): 12..128 characters, not in a common-password list, no composition
rules.  Strength feedback comes from zxcvbn, which also ships the 30k common-password list.
"""

from __future__ import annotations

import string
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import bcrypt
from argon2 import PasswordHasher, Type
from argon2.exceptions import InvalidHashError, VerificationError
from zxcvbn import zxcvbn
from zxcvbn.frequency_lists import FREQUENCY_LISTS

from robosystems.config import Settings

_STRENGTH = {0: "very_weak", 1: "weak", 2: "fair", 3: "strong", 4: "very_strong"}


class PasswordHashing:
    def __init__(self, settings: Settings) -> None:
        self._hasher = PasswordHasher(
            time_cost=settings.argon2_time_cost,
            memory_cost=settings.argon2_memory_kib,
            parallelism=settings.argon2_parallelism,
            type=Type.ID,
        )
        # A real hash to verify against when the account doesn't exist, so that unknown and
        # known emails cost the same time.
        self._dummy = self._hasher.hash("robosystems-dummy-password")

    def hash(self, password: str) -> str:
        return self._hasher.hash(password)

    def verify(self, stored_hash: str, password: str) -> bool:
        if stored_hash.startswith(("$2a$", "$2b$", "$2y$")):
            try:
                return bcrypt.checkpw(password.encode("utf-8")[:72], stored_hash.encode("utf-8"))
            except ValueError:
                return False
        try:
            return self._hasher.verify(stored_hash, password)
        except (VerificationError, InvalidHashError):
            return False

    def needs_rehash(self, stored_hash: str) -> bool:
        if not stored_hash.startswith("$argon2"):
            return True
        try:
            return self._hasher.check_needs_rehash(stored_hash)
        except InvalidHashError:
            return True

    def burn(self, password: str) -> None:
        """Spend the time of one verification (unknown account path)."""
        self.verify(self._dummy, password)


@lru_cache(maxsize=1)
def _common_passwords() -> frozenset[str]:
    return frozenset(FREQUENCY_LISTS["passwords"])


@dataclass
class PasswordCheck:
    is_valid: bool
    strength: str
    score: int
    errors: list[str] = field(default_factory=list)
    suggestions: list[str] = field(default_factory=list)
    character_types: dict[str, bool] = field(default_factory=dict)


def policy(settings: Settings) -> dict[str, Any]:
    return {
        "min_length": settings.password_min_length,
        "max_length": settings.password_max_length,
        "require_uppercase": False,
        "require_lowercase": False,
        "require_digits": False,
        "require_special": False,
        "disallow_common_passwords": True,
        "description": (
            f"{settings.password_min_length} to {settings.password_max_length} characters, "
            "not a commonly used password; any characters, no composition rules."
        ),
    }


def check_password(settings: Settings, password: str, email: str | None = None) -> PasswordCheck:
    errors: list[str] = []
    if len(password) < settings.password_min_length:
        errors.append(f"Password must be at least {settings.password_min_length} characters long")
    if len(password) > settings.password_max_length:
        errors.append(f"Password must be at most {settings.password_max_length} characters long")
    if password.lower() in _common_passwords():
        errors.append("Password is too common")
    if email and password.lower() == email.lower():
        errors.append("Password must not be your email address")
    char_types = {
        "lowercase": any(c.islower() for c in password),
        "uppercase": any(c.isupper() for c in password),
        "digits": any(c.isdigit() for c in password),
        "special": any(c in string.punctuation or c.isspace() for c in password),
    }
    score, suggestions = 0, []
    if len(password) <= settings.password_max_length:
        user_inputs = [email] if email else []
        result = zxcvbn(password, user_inputs=user_inputs)
        score = int(result["score"])
        feedback = result.get("feedback", {})
        suggestions = [str(s) for s in feedback.get("suggestions", [])]
        if feedback.get("warning"):
            suggestions.insert(0, str(feedback["warning"]))
    if errors:
        score = min(score, 1)
    return PasswordCheck(
        is_valid=not errors,
        strength=_STRENGTH[score],
        score=score,
        errors=errors,
        suggestions=suggestions,
        character_types=char_types,
    )
