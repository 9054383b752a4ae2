"""Request ids, JSON logs, Prometheus metrics and the body-size cap, as plain ASGI middleware.

Plain ASGI (not ``BaseHTTPMiddleware``) keeps the per-request cost to a few microseconds.
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
import sys
import time
from datetime import UTC, datetime
from typing import Any

from prometheus_client import Counter, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from robosystems.ids import new_id

_request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")
_client_ip: contextvars.ContextVar[str] = contextvars.ContextVar("client_ip", default="")
_SAFE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")

REQUESTS = Counter("robosystems_http_requests_total", "HTTP requests", ["method", "route", "status"])
LATENCY = Histogram(
    "robosystems_http_request_duration_seconds",
    "HTTP request latency",
    ["method", "route"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)


def current_request_id() -> str:
    return _request_id.get()


def current_client_ip() -> str:
    return _client_ip.get()


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
            "request_id": _request_id.get(),
        }
        for key, value in record.__dict__.items():
            if key.startswith("ctx_"):
                payload[key[4:]] = value
        if record.exc_info:
            payload["exc"] = self.formatException(record.exc_info)
        return json.dumps(payload, default=str)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        base = f"{datetime.fromtimestamp(record.created, UTC):%H:%M:%S} {record.levelname:<7} [{_request_id.get()}] "
        base += f"{record.name}: {record.getMessage()}"
        if record.exc_info:
            base += "\n" + self.formatException(record.exc_info)
        return base


def configure_logging(level: str = "INFO", json_logs: bool = True) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if json_logs else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    # Access logs are replaced by our own metrics; keep them quiet unless debugging.
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)


class RequestContextMiddleware:
    """Request id (incoming ``X-Request-ID`` if well-formed, else a new one) on the context,
    every log line and the response; request metrics; a cap on the declared body size."""

    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = ""
        content_length = -1
        for name, value in scope.get("headers", ()):
            if name == b"x-request-id":
                incoming = value.decode("latin-1")
            elif name == b"content-length":
                try:
                    content_length = int(value)
                except ValueError:
                    content_length = -1
        rid = incoming if _SAFE_REQUEST_ID.match(incoming) else new_id("req")
        token = _request_id.set(rid)
        client = scope.get("client")
        ip_token = _client_ip.set(client[0] if client else "")
        status_holder = [500]
        rid_header = (b"x-request-id", rid.encode("latin-1"))

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                status_holder[0] = message["status"]
                message["headers"] = [*message.get("headers", []), rid_header]
            await send(message)

        start = time.perf_counter()
        started = [False]

        async def tracking_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                started[0] = True
            await send_wrapper(message)

        try:
            if content_length > self.max_body_bytes and not scope["path"].startswith("/admin/v1/webhooks/"):
                await _send_error(rid, tracking_send, 413, "Request body too large", "payload_too_large")
            else:
                await self.app(scope, _limited_receive(receive, self.max_body_bytes, scope), tracking_send)
        except Exception:  # noqa: BLE001 - last resort: logged with its traceback, answered as a fixed 500
            logging.getLogger("robosystems.errors").exception("unhandled error")
            if started[0]:
                raise
            await _send_error(rid, tracking_send, 500, "Internal server error", "internal_error")
        finally:
            route = scope.get("route")
            route_name = getattr(route, "path", "unmatched")
            method = scope.get("method", "")
            REQUESTS.labels(method, route_name, str(status_holder[0])).inc()
            LATENCY.labels(method, route_name).observe(time.perf_counter() - start)
            _request_id.reset(token)
            _client_ip.reset(ip_token)


class BodyTooLarge(Exception):
    """Raised by the receive wrapper when a streamed body passes the cap."""


def _limited_receive(receive: Receive, limit: int, scope: Scope) -> Receive:
    if scope["path"].startswith("/admin/v1/webhooks/"):
        return receive  # the webhook endpoint applies its own (larger) cap
    seen = 0

    async def wrapped() -> Message:
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:
                raise BodyTooLarge
        return message

    return wrapped


async def _send_error(rid: str, send: Send, status: int, detail: str, code: str) -> None:
    body = json.dumps({"detail": detail, "code": code, "request_id": rid}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})
