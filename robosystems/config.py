"""One Settings object for the whole service (pydantic-settings: environment + ``.env``).

Every tunable has a default here, a line in ``.env.example`` and a row in the README's
configuration table.  Outside development the service refuses to start with a missing or
placeholder secret and names it.
"""

from __future__ import annotations

import os
import secrets
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

PLACEHOLDER_SECRETS = frozenset(
    {"", "changeme", "change-me", "change_me", "secret", "placeholder", "your-secret-here", "dev", "test"}
)


class ConfigError(RuntimeError):
    """The configuration can't be used (e.g. a missing production secret)."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore")

    # --- general -------------------------------------------------------------------------
    environment: Literal["development", "test", "staging", "production"] = "development"
    robosystems_data_dir: Path = Path(".robosystems")
    app_base_url: str = ""
    log_level: str = "INFO"
    log_json: bool = True

    # --- database ------------------------------------------------------------------------
    database_url: str = ""
    db_pool_size: int = Field(default=10, ge=1)
    db_max_overflow: int = Field(default=10, ge=0)
    db_pool_timeout_seconds: float = Field(default=10.0, gt=0)
    db_statement_timeout_ms: int = Field(default=15000, ge=0)

    # --- redis ---------------------------------------------------------------------------
    redis_url: str = ""

    # --- tokens and sessions -------------------------------------------------------------
    jwt_secret_key: str = ""
    jwt_algorithm: Literal["HS256"] = "HS256"
    jwt_issuer: str = "robosystems"
    jwt_audience: str = "robosystems-api"
    access_token_expire_minutes: int = Field(default=60, ge=1)
    token_refresh_threshold_minutes: int = Field(default=10, ge=0)
    token_grace_period_minutes: int = Field(default=5, ge=0)
    session_max_age_days: int = Field(default=30, ge=1)

    # --- identity ------------------------------------------------------------------------
    user_registration_enabled: bool = True
    email_verification_enabled: bool = False
    email_verification_ttl_hours: int = Field(default=24, ge=1)
    password_reset_ttl_minutes: int = Field(default=60, ge=1)
    password_min_length: int = Field(default=12, ge=8)
    password_max_length: int = Field(default=128, ge=16)
    argon2_memory_kib: int = Field(default=19456, ge=19456)
    argon2_time_cost: int = Field(default=2, ge=2)
    argon2_parallelism: int = Field(default=1, ge=1)
    api_key_max_per_user: int = Field(default=50, ge=1)
    org_graphs_default_limit: int = Field(default=100, ge=-1)
    request_max_body_bytes: int = Field(default=1_048_576, ge=1024)

    # --- rate limits (the `limits` library's notation, e.g. "10/minute") ----------------
    rate_limit_enabled: bool = True
    rate_limit_login_per_ip_email: str = "10/minute"
    rate_limit_login_failures_per_account: str = "100/hour"
    rate_limit_register_per_ip: str = "20/hour"
    rate_limit_forgot_password_per_email: str = "5/hour"
    rate_limit_email_resend_per_user: str = "5/hour"

    # --- mail ----------------------------------------------------------------------------
    smtp_url: str = ""
    mail_from: str = "RoboSystems <no-reply@robosystems.local>"
    mail_poll_interval_seconds: float = Field(default=2.0, gt=0)
    mail_max_attempts: int = Field(default=5, ge=1)

    # --- background work ------------------------------------------------------------------
    embedded_worker: bool = True

    # --- serving -------------------------------------------------------------------------
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    workers: int = Field(default=1, ge=1)
    cors_origins: list[str] = Field(default_factory=list)

    @field_validator("robosystems_data_dir", mode="after")
    @classmethod
    def _absolute_data_dir(cls, value: Path) -> Path:
        return value.expanduser().resolve()

    # --- derived -------------------------------------------------------------------------
    @property
    def is_production_like(self) -> bool:
        return self.environment in ("staging", "production")

    @property
    def base_url(self) -> str:
        return (self.app_base_url or f"http://{self.host}:{self.port}").rstrip("/")

    def secret_file(self, name: str) -> Path:
        return self.robosystems_data_dir / name

    def ensure_secrets(self) -> None:
        """Fill development secrets from the data directory; refuse placeholders in production."""
        if self.is_production_like:
            if self.jwt_secret_key.strip().lower() in PLACEHOLDER_SECRETS or len(self.jwt_secret_key) < 32:
                raise ConfigError(
                    "JWT_SECRET_KEY is missing or a placeholder (need >= 32 random characters) "
                    f"with ENVIRONMENT={self.environment}; refusing to start"
                )
            return
        if not self.jwt_secret_key:
            self.jwt_secret_key = _persistent_secret(self.secret_file("jwt_secret"))


def _persistent_secret(path: Path) -> str:
    """Return the secret kept in ``path``; generate it once (mode 0600) when missing."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_text(encoding="utf-8").strip()
    value = secrets.token_urlsafe(48)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(value)
    return value


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    settings = Settings()
    settings.ensure_secrets()
    return settings
