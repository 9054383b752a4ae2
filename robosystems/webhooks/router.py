"""``POST /admin/v1/webhooks/stripe``: the Stripe-Signature is the credential (no auth header)."""

from __future__ import annotations

import logging

from fastapi import APIRouter, Request

from robosystems.audit.service import record_security_event_now
from robosystems.errors import BadRequest, PayloadTooLarge, ServiceUnavailable
from robosystems.observability import current_client_ip
from robosystems.services import AppServices
from robosystems.webhooks import service, verify
from robosystems.webhooks.schemas import WebhookAck

log = logging.getLogger("robosystems.webhooks")
router = APIRouter(tags=["webhooks"])


async def read_body(request: Request, limit: int) -> bytes:
    """The raw body, refused with 413 as soon as it passes ``limit`` (declared or streamed)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge()
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge()
        chunks.append(chunk)
    return b"".join(chunks)


async def _refuse_signature(services: AppServices, request: Request, reason: str) -> BadRequest:
    try:
        await record_security_event_now(
            services.sessionmaker,
            "webhook_signature_invalid",
            user_agent=request.headers.get("user-agent"),
            details={"reason": reason, "path": request.url.path},
        )
    except Exception:  # noqa: BLE001 - the 400 stands even if the audit row can't be written
        log.warning("could not record the invalid webhook signature (database unavailable?)")
    return BadRequest("Invalid Stripe signature", code="invalid_signature")


@router.post("/admin/v1/webhooks/stripe", response_model=WebhookAck, include_in_schema=False)
async def receive_stripe_webhook(request: Request) -> WebhookAck:
    # Hot path: no dependencies and one autocommit statement on the statement pool instead of an ORM
    # session; service.receive has committed when it returns (2xx = stored).
    services: AppServices = request.app.state.services
    settings = services.settings
    await services.limiter.hit(settings.webhook_rate_limit_per_ip, "webhook", current_client_ip() or "unknown")
    secrets = verify.signing_secrets(settings)
    if not secrets:
        raise ServiceUnavailable("Webhook signing secret is not configured", code="webhook_not_configured")
    body = await read_body(request, settings.webhook_max_body_bytes)
    try:
        verify.verify(body, request.headers.get("stripe-signature"), secrets, settings.stripe_webhook_tolerance_seconds)
    except verify.SignatureInvalid as exc:
        raise await _refuse_signature(services, request, exc.reason) from None
    received = await service.receive(services.statements_pool, body, service.parse_event(body))
    return WebhookAck(id=received.event_id, duplicate=received.duplicate)
