"""The admin credential: ``Authorization: Bearer <ADMIN_API_KEY>``, compared in constant time.

``ADMIN_API_KEY`` unset -> every admin route answers 503 ``admin_api_disabled`` (in development a key is
generated once into the data directory, see :meth:`Settings.ensure_secrets`).  Failed attempts are rate
limited per IP and written to the security audit log.
"""

from __future__ import annotations

import hmac
import logging
from typing import Annotated

from fastapi import Depends
from starlette.requests import Request

from robosystems.audit.service import record_security_event_now
from robosystems.auth.deps import Services, bearer_token
from robosystems.errors import ServiceUnavailable, Unauthorized
from robosystems.observability import current_client_ip

log = logging.getLogger("robosystems.admin")


async def require_admin(request: Request, services: Services) -> None:
    settings = services.settings
    expected = settings.admin_api_key
    if not expected:
        raise ServiceUnavailable("The admin API is disabled (ADMIN_API_KEY is not set)", code="admin_api_disabled")
    ip = current_client_ip() or "unknown"
    await services.limiter.check(settings.rate_limit_admin_failures_per_ip, "admin-fail", ip)
    presented = bearer_token(request) or ""
    if hmac.compare_digest(presented.encode("utf-8"), expected.encode("utf-8")):
        return
    await services.limiter.consume(settings.rate_limit_admin_failures_per_ip, "admin-fail", ip)
    try:
        await record_security_event_now(
            services.sessionmaker,
            "admin_key_invalid",
            user_agent=request.headers.get("user-agent"),
            details={"path": request.url.path, "presented": bool(presented)},
        )
    except Exception:  # noqa: BLE001 - the 401 stands even if the audit row can't be written
        log.warning("could not record the invalid admin key attempt (database unavailable?)")
    raise Unauthorized("Invalid admin credentials", code="invalid_admin_key")


AdminAuth = Annotated[None, Depends(require_admin)]
