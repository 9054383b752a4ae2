"""Pick the configured payment provider.

``PAYMENT_PROVIDER=auto`` (default): Stripe when ``STRIPE_SECRET_KEY`` is set, else the local
provider.  ``stripe`` without a key refuses to start; ``local`` always uses the local provider.
Providers are cached per settings object (the Stripe client holds an HTTP connection pool).
"""

from __future__ import annotations

import threading

from robosystems.config import ConfigError, Settings
from robosystems.payments.base import PaymentProvider
from robosystems.payments.local import LocalPaymentProvider
from robosystems.payments.stripe_provider import StripeProvider
from robosystems.webhooks.verify import signing_secret

_lock = threading.Lock()
_cache: dict[int, tuple[Settings, PaymentProvider]] = {}


def provider_name(settings: Settings) -> str:
    if settings.payment_provider == "auto":
        return "stripe" if settings.stripe_secret_key else "local"
    return settings.payment_provider


def webhook_signing_secret(settings: Settings) -> str:
    """The secret the local provider signs its events with: the one the webhook endpoint verifies
    (:func:`robosystems.webhooks.verify.signing_secret`: ``STRIPE_WEBHOOK_SECRET``, else a secret
    generated once in the data directory)."""
    secret = signing_secret(settings)
    if not secret:
        raise ConfigError("PAYMENT_PROVIDER=local with STRIPE_SECRET_KEY set needs STRIPE_WEBHOOK_SECRET")
    return secret


def build_provider(settings: Settings) -> PaymentProvider:
    name = provider_name(settings)
    if name == "stripe":
        if not settings.stripe_secret_key:
            raise ConfigError("PAYMENT_PROVIDER=stripe needs STRIPE_SECRET_KEY")
        return StripeProvider(
            secret_key=settings.stripe_secret_key,
            api_version=settings.stripe_api_version,
            api_base=settings.stripe_api_base,
            max_network_retries=settings.stripe_max_network_retries,
            timeout_seconds=settings.stripe_timeout_seconds,
        )
    return LocalPaymentProvider(
        data_dir=settings.robosystems_data_dir,
        base_url=settings.base_url,
        signing_secret=webhook_signing_secret(settings),
        api_version=settings.stripe_api_version,
        portal_ttl_seconds=settings.billing_portal_session_ttl_minutes * 60,
    )


def get_provider(settings: Settings) -> PaymentProvider:
    """The provider for these settings (built once per settings object)."""
    key = id(settings)
    with _lock:
        cached = _cache.get(key)
        if cached is None or cached[0] is not settings:
            cached = (settings, build_provider(settings))
            _cache[key] = cached
        return cached[1]


def check_configuration(settings: Settings) -> None:
    """At start: refuse to take no money silently, and build the provider (a bad setup fails here, not
    at the first checkout).  Outside development the local provider must be asked for explicitly."""
    if (
        settings.is_production_like
        and settings.billing_enabled
        and settings.payment_provider == "auto"
        and not settings.stripe_secret_key
    ):
        raise ConfigError(
            f"STRIPE_SECRET_KEY is not set with ENVIRONMENT={settings.environment}: set it, or set "
            "PAYMENT_PROVIDER=local explicitly (no real payments are taken), or BILLING_ENABLED=false"
        )
    get_provider(settings)


def local_provider(settings: Settings) -> LocalPaymentProvider | None:
    provider = get_provider(settings)
    return provider if isinstance(provider, LocalPaymentProvider) else None
