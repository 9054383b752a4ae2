"""Access tokens: JWT HS256 with sub, org, sid, jti, iat, exp, iss, aud; algorithm pinned."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import jwt

from robosystems.config import Settings
from robosystems.ids import new_id

VERIFIED_CACHE_SIZE = 10_000


@dataclass(frozen=True)
class TokenClaims:
    user_id: str
    org_id: str | None
    session_id: str
    jti: str
    issued_at: datetime
    expires_at: datetime


class InvalidToken(Exception):
    """Signature, issuer, audience or shape is wrong."""


class ExpiredToken(InvalidToken):
    def __init__(self, claims: TokenClaims) -> None:
        super().__init__("token expired")
        self.claims = claims


class TokenCodec:
    def __init__(self, settings: Settings) -> None:
        self._key = settings.jwt_secret_key
        self._alg = settings.jwt_algorithm
        self._iss = settings.jwt_issuer
        self._aud = settings.jwt_audience
        self.ttl = timedelta(minutes=settings.access_token_expire_minutes)
        # Verified claims by token string: a token whose signature was checked once needs no second
        # HMAC; expiry is still checked on every use and revocation lives in the database.
        self._verified: dict[str, TokenClaims] = {}

    def issue(
        self, user_id: str, org_id: str | None, session_id: str, now: datetime | None = None
    ) -> tuple[str, TokenClaims]:
        now = now or datetime.now(UTC)
        claims = TokenClaims(user_id, org_id, session_id, new_id("jti"), now, now + self.ttl)
        payload = {
            "sub": user_id,
            "org": org_id,
            "sid": session_id,
            "jti": claims.jti,
            "iat": int(now.timestamp()),
            "exp": int(claims.expires_at.timestamp()),
            "iss": self._iss,
            "aud": self._aud,
        }
        return jwt.encode(payload, self._key, algorithm=self._alg), claims

    def decode(self, token: str) -> TokenClaims:
        """Verify and decode; raises ExpiredToken (with the claims) or InvalidToken."""
        cached = self._verified.get(token)
        if cached is not None:
            if cached.expires_at <= datetime.now(UTC):
                raise ExpiredToken(cached)
            return cached
        claims = self._verify(token)
        if len(self._verified) >= VERIFIED_CACHE_SIZE:
            self._verified.clear()
        self._verified[token] = claims
        return claims

    def _verify(self, token: str) -> TokenClaims:
        try:
            payload = jwt.decode(
                token,
                self._key,
                algorithms=[self._alg],
                audience=self._aud,
                issuer=self._iss,
                options={"require": ["sub", "sid", "jti", "iat", "exp", "iss", "aud"], "verify_exp": False},
            )
            claims = TokenClaims(
                user_id=str(payload["sub"]),
                org_id=str(payload["org"]) if payload.get("org") else None,
                session_id=str(payload["sid"]),
                jti=str(payload["jti"]),
                issued_at=datetime.fromtimestamp(int(payload["iat"]), UTC),
                expires_at=datetime.fromtimestamp(int(payload["exp"]), UTC),
            )
        except (jwt.PyJWTError, KeyError, TypeError, ValueError) as exc:
            raise InvalidToken(str(exc)) from exc
        if claims.expires_at <= datetime.now(UTC):
            raise ExpiredToken(claims)
        return claims
