"""One error model for the whole API: ``{"detail", "code", "request_id"}``.

Business code raises :class:`AppError` (or a subclass); the handlers registered by
:func:`install_error_handlers` are the only place that maps exceptions to HTTP.  Unexpected
exceptions become a 500 with a fixed message: exception text never reaches a response body.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import psycopg
import psycopg_pool
from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy import exc as sa_exc
from starlette.exceptions import HTTPException as StarletteHTTPException

from robosystems.observability import BodyTooLarge, current_request_id

log = logging.getLogger("robosystems.errors")


class AppError(Exception):
    status_code: int = 400
    code: str = "bad_request"
    detail: str = "Bad request"

    def __init__(
        self,
        detail: str | None = None,
        *,
        code: str | None = None,
        status_code: int | None = None,
        headers: Mapping[str, str] | None = None,
        extra: Mapping[str, object] | None = None,
    ) -> None:
        self.detail = detail or type(self).detail
        self.code = code or type(self).code
        self.status_code = status_code or type(self).status_code
        self.headers = dict(headers or {})
        self.extra = dict(extra or {})
        super().__init__(self.detail)


class BadRequest(AppError):
    status_code, code, detail = 400, "bad_request", "Bad request"


class Unauthorized(AppError):
    status_code, code, detail = 401, "unauthorized", "Not authenticated"

    def __init__(self, detail: str | None = None, *, code: str | None = None) -> None:
        super().__init__(detail, code=code, headers={"WWW-Authenticate": "Bearer"})


class Forbidden(AppError):
    status_code, code, detail = 403, "forbidden", "Not allowed"


class NotFound(AppError):
    status_code, code, detail = 404, "not_found", "Not found"


class Conflict(AppError):
    status_code, code, detail = 409, "conflict", "Conflict"


class Gone(AppError):
    status_code, code, detail = 410, "gone", "Gone"


class PayloadTooLarge(AppError):
    status_code, code, detail = 413, "payload_too_large", "Request body too large"


class Unprocessable(AppError):
    status_code, code, detail = 422, "unprocessable", "Invalid request"


class RateLimited(AppError):
    status_code, code, detail = 429, "rate_limited", "Too many requests"

    def __init__(self, retry_after: int, detail: str | None = None) -> None:
        super().__init__(detail, headers={"Retry-After": str(max(1, retry_after))})


class ServiceUnavailable(AppError):
    status_code, code, detail = 503, "service_unavailable", "Service unavailable"


def error_body(detail: str, code: str, **extra: object) -> dict[str, object]:
    return {"detail": detail, "code": code, "request_id": current_request_id(), **extra}


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(AppError)
    async def _app_error(_: Request, exc: AppError) -> JSONResponse:
        if exc.status_code == 422:
            # Every 422 has FastAPI's validation shape: robosystems-client parses a 422 body as
            # HTTPValidationError and iterates `detail` as a list (a string detail crashes it).
            detail = [{"loc": ["body"], "msg": exc.detail, "type": exc.code}]
            body = {"detail": detail, "code": exc.code, "request_id": current_request_id(), **exc.extra}
            return JSONResponse(body, status_code=422, headers=exc.headers)
        return JSONResponse(
            error_body(exc.detail, exc.code, **exc.extra), status_code=exc.status_code, headers=exc.headers
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        codes = {404: "not_found", 405: "method_not_allowed", 401: "unauthorized", 403: "forbidden"}
        detail = exc.detail if isinstance(exc.detail, str) else "Request failed"
        return JSONResponse(
            error_body(detail, codes.get(exc.status_code, "http_error")),
            status_code=exc.status_code,
            headers=getattr(exc, "headers", None),
        )

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        # FastAPI's 422 shape (the client's HTTPValidationError), without echoing the input back.
        errors = [
            {"loc": list(e.get("loc", ())), "msg": str(e.get("msg", "")), "type": str(e.get("type", ""))}
            for e in exc.errors()
        ]
        return JSONResponse(
            {"detail": jsonable_encoder(errors), "code": "validation_error", "request_id": current_request_id()},
            status_code=422,
        )

    @app.exception_handler(BodyTooLarge)
    async def _too_large(_: Request, exc: BodyTooLarge) -> JSONResponse:
        return JSONResponse(error_body("Request body too large", "payload_too_large"), status_code=413)

    @app.exception_handler(sa_exc.OperationalError)
    @app.exception_handler(sa_exc.InterfaceError)
    @app.exception_handler(sa_exc.TimeoutError)
    @app.exception_handler(psycopg.OperationalError)  # robosystems.db.StatementPool runs psycopg itself
    @app.exception_handler(psycopg.InterfaceError)
    @app.exception_handler(psycopg_pool.PoolTimeout)
    async def _database_unavailable(_: Request, exc: Exception) -> JSONResponse:
        # Connection refused, server out of slots, pool exhausted: the caller may retry.
        log.error("database unavailable: %s", type(exc).__name__)
        return JSONResponse(
            error_body("Database unavailable; retry later", "database_unavailable"),
            status_code=503,
            headers={"Retry-After": "5"},
        )

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error", exc_info=exc)
        return JSONResponse(error_body("Internal server error", "internal_error"), status_code=500)
