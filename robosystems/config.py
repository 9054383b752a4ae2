"""One Settings object for the whole service (pydantic-settings: environment + ``.env``).

Every tunable has a default here, a line in ``.env.example`` and a row in the README's
configuration table.  Outside development the service refuses to start with a missing or
placeholder secret and names it.
"""

from __future__ import annotations

import logging
import os
import secrets
from decimal import Decimal
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
    db_pool_size: int = Field(default=20, ge=1)
    db_max_overflow: int = Field(default=10, ge=0)
    db_pool_timeout_seconds: float = Field(default=10.0, gt=0)
    db_statement_pool_size: int = Field(default=10, ge=1)
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
    rate_limit_key_prefix: str = "robosystems-rl"
    rate_limit_login_per_ip_email: str = "10/minute"
    rate_limit_login_failures_per_account: str = "100/hour"
    rate_limit_register_per_ip: str = "20/hour"
    rate_limit_forgot_password_per_email: str = "5/hour"  # noqa: S105 - a rate, not a password
    rate_limit_email_resend_per_user: str = "5/hour"

    # --- organizations and invitations ---------------------------------------------------
    org_max_owned_orgs: int = Field(default=10, ge=-1)  # team/enterprise orgs a user may own; -1 = unlimited
    org_max_members: int = Field(default=1000, ge=-1)  # active members + pending invitations; -1 = unlimited
    org_deletion_grace_days: int = Field(default=30, ge=0)
    org_member_invitations_enabled: bool = True
    invitation_ttl_hours: int = Field(default=168, ge=1)
    invitation_retention_days: int = Field(default=30, ge=0)
    rate_limit_org_invitations_per_org: str = "50/hour"
    rate_limit_invitation_resend_per_org: str = "20/hour"
    rate_limit_invitation_public_per_ip: str = "60/minute"

    # --- mail ----------------------------------------------------------------------------
    smtp_url: str = ""
    mail_from: str = "RoboSystems <no-reply@robosystems.local>"
    mail_poll_interval_seconds: float = Field(default=2.0, gt=0)
    mail_max_attempts: int = Field(default=5, ge=1)

    # --- payments and checkout (robosystems/payments, robosystems/billing) -----------------
    billing_enabled: bool = True  # false: no checkout, graphs are provisioned at once
    billing_plans_file: Path | None = None  # plan catalog TOML; default: robosystems/billing/plans.toml
    payment_provider: Literal["auto", "local", "stripe"] = "auto"  # auto: stripe when STRIPE_SECRET_KEY is set
    stripe_secret_key: str = ""
    stripe_publishable_key: str = ""
    stripe_api_version: str = "2025-03-31.basil"  # pinned; sent on every Stripe call
    stripe_api_base: str = ""  # e.g. http://127.0.0.1:8420 for a local fake Stripe (localstripe)
    stripe_max_network_retries: int = Field(default=2, ge=0, le=10)
    stripe_timeout_seconds: float = Field(default=20.0, gt=0)
    checkout_ttl_minutes: int = Field(default=60, ge=30, le=1440)  # Stripe accepts 30 min .. 24 h
    checkout_sweep_interval_seconds: int = Field(default=300, ge=10)  # abandoned-checkout expiry task period
    checkout_success_url: str = ""  # default {base}/billing/checkout/return?session_id={CHECKOUT_SESSION_ID}
    checkout_cancel_url: str = ""
    billing_portal_return_url: str = ""  # default {base}/
    local_payments_webhook_url: str = ""  # local provider delivery target; default: in-process to this app
    local_renewal_interval_seconds: float = Field(default=300.0, ge=5)  # local provider: due renewals run this often
    proration_preview_max_age_seconds: int = Field(default=3600, ge=60)  # a change may pin a preview this old at most
    billing_portal_session_ttl_minutes: int = Field(default=60, ge=5, le=1440)  # local portal links expire after
    credits_low_threshold_percent: int = Field(default=10, ge=0, le=100)  # credits.low below this % of the allocation
    org_max_webhook_endpoints: int = Field(default=10, ge=-1)  # entitlement max_webhook_endpoints; -1 = unlimited

    # --- background work ------------------------------------------------------------------
    embedded_worker: bool = True

    # --- webhook inbox, Celery worker, task outbox (robosystems/webhooks, robosystems/worker) ---
    stripe_webhook_secret: str = ""  # comma-separated to accept several during a rotation
    stripe_webhook_tolerance_seconds: int = Field(default=300, ge=1)
    webhook_max_body_bytes: int = Field(default=2 * 1024 * 1024, ge=1024)
    webhook_event_retention_days: int = Field(default=30, ge=1)
    webhook_rate_limit_per_ip: str = "12000/minute"
    webhook_stale_seconds: int = Field(default=300, ge=10)  # received/processing this long -> picked up again
    webhook_reconcile_interval_seconds: int = Field(default=21600, ge=60)
    celery_broker_url: str = ""  # default: REDIS_URL; neither set -> in-process worker inside `serve`
    celery_result_backend: str = ""  # default: the broker when it is Redis
    celery_queue: str = "robosystems"
    task_max_retries: int = Field(default=5, ge=0)
    task_retry_backoff_seconds: float = Field(default=2.0, gt=0)
    task_retry_backoff_max_seconds: float = Field(default=120.0, gt=0)
    task_lease_seconds: int = Field(default=900, ge=10)  # in-process runs: an unfinished claim is retried after
    outbox_poll_interval_seconds: float = Field(default=1.0, gt=0)
    outbox_relay: Literal["worker", "api"] = "worker"  # with a broker: which process relays committed outbox rows
    worker_nice: int = Field(default=10, ge=0, le=19)  # `robosystems worker` runs at this lower CPU priority
    outbox_batch_size: int = Field(default=100, ge=1)
    embedded_worker_concurrency: int = Field(default=2, ge=1)
    embedded_worker_nice: int = Field(default=10, ge=0, le=19)  # in-process task threads yield the CPU to the API
    embedded_worker_switch_interval_ms: float = Field(default=1.0, gt=0)  # GIL hand-over bound with task threads
    embedded_worker_yield_lag_ms: float = Field(default=5.0, ge=0)  # task threads wait while the API lags more; 0 = off
    admin_api_key: str = ""

    # --- graphs: storage, provisioning, lifecycle, queries (robosystems/graphs) -------------
    graph_storage_dir: Path | None = None  # one LadybugDB database per graph; default: <data dir>/graphs
    graph_max_db_size_gb: int = Field(default=2048, ge=1)  # per database (address space reserved; power of 2)
    graph_max_open_databases: int = Field(default=32, ge=1)  # open per process; idle LRU ones are closed beyond
    graph_retention_days: int = Field(default=30, ge=0)  # canceled graph: read-only, files removed after
    past_due_grace_days: int = Field(default=7, ge=0)  # past_due graph stays writable this long
    provisioning_max_attempts: int = Field(default=4, ge=1)  # then failed + compensation
    provisioning_failure_compensation: Literal["refund", "credit", "none"] = "refund"
    provisioning_resume_after_seconds: int = Field(default=900, ge=30)  # stuck provisioning -> re-enqueued
    query_default_timeout_seconds: int = Field(default=30, ge=1)  # capped by the plan's max_timeout_seconds
    query_max_rows: int = Field(default=10000, ge=1)  # capped by the plan's max_rows_per_query
    query_max_length: int = Field(default=100_000, ge=100)  # characters of Cypher per request
    query_credit_cost: Decimal = Field(default=Decimal("1"), ge=0, le=Decimal("1000000"))  # per query; 0 = free
    graph_maintenance_interval_seconds: float = Field(default=3600.0, ge=10)  # scheduled graph/billing jobs
    rate_limit_admin_failures_per_ip: str = "30/minute"

    # --- outbound webhooks: customer endpoints, signed delivery (robosystems/outbound) ----------
    outbound_webhooks_allow_private: bool = False  # true (development only): private/loopback targets allowed
    outbound_webhooks_connect_timeout_seconds: float = Field(default=3.0, gt=0)
    outbound_webhooks_read_timeout_seconds: float = Field(default=10.0, gt=0)  # also bounds the whole request
    outbound_webhooks_response_max_bytes: int = Field(default=2048, ge=0)  # response body read and kept per attempt
    outbound_webhooks_endpoint_concurrency: int = Field(default=4, ge=1)  # requests in flight to one endpoint
    outbound_webhooks_concurrency: int = Field(default=32, ge=1)  # requests in flight per worker process
    outbound_webhooks_pump_seconds: float = Field(default=5.0, gt=0)  # a delivery run then yields its thread
    outbound_webhooks_poll_interval_seconds: float = Field(default=5.0, gt=0)  # due retries are picked up
    outbound_webhooks_retry_base_seconds: float = Field(default=10.0, gt=0)  # first retry; doubles each time
    outbound_webhooks_retry_max_delay_seconds: float = Field(default=21600.0, gt=0)
    outbound_webhooks_retry_jitter: float = Field(default=0.25, ge=0, le=1)  # each delay +- this fraction
    outbound_webhooks_retry_window_seconds: float = Field(default=259200.0, gt=0)  # then failed; endpoint disabled
    outbound_webhooks_secret_overlap_hours: float = Field(default=24.0, ge=0)  # old secret signs too after rotation
    outbound_webhooks_event_retention_days: int = Field(default=30, ge=1)
    outbound_webhooks_replay_max_events: int = Field(default=10000, ge=1)

    # --- legacy upgrade (robosystems/migrate_tools; the revisions read these, env first, then .env) ---
    migration_lock_timeout: str = "10s"  # longest wait of a migration statement for a table lock
    migration_statement_timeout: str = "10min"  # longest single migration statement
    migration_batch_size: int = Field(default=25_000, ge=1)  # rows per batch of the data-moving statements

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

    @property
    def graph_root(self) -> Path:
        """Where graph databases live (``GRAPH_STORAGE_DIR``, default ``<data dir>/graphs``)."""
        if self.graph_storage_dir is not None:
            return self.graph_storage_dir.expanduser().resolve()
        return self.robosystems_data_dir / "graphs"

    def ensure_secrets(self) -> None:
        """Fill development secrets from the data directory; refuse placeholders in production."""
        if self.is_production_like:
            if self.jwt_secret_key.strip().lower() in PLACEHOLDER_SECRETS or len(self.jwt_secret_key) < 32:
                raise ConfigError(
                    "JWT_SECRET_KEY is missing or a placeholder (need >= 32 random characters) "
                    f"with ENVIRONMENT={self.environment}; refusing to start"
                )
            if self.admin_api_key and (
                self.admin_api_key.strip().lower() in PLACEHOLDER_SECRETS or len(self.admin_api_key) < 32
            ):
                raise ConfigError(
                    f"ADMIN_API_KEY is a placeholder or shorter than 32 characters with ENVIRONMENT={self.environment}"
                )
            return
        if not self.jwt_secret_key:
            self.jwt_secret_key = _persistent_secret(self.secret_file("jwt_secret"))
        if not self.admin_api_key and self.environment == "development":
            path = self.secret_file("admin_api_key")
            self.admin_api_key = _persistent_secret(path)
            logging.getLogger("robosystems.config").info("ADMIN_API_KEY not set: using the development key in %s", path)


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
