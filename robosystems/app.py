"""create_app(): routers, middleware, error handlers, lifespan."""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text

from robosystems import __version__
from robosystems.admin.billing_router import router as admin_billing_router
from robosystems.admin.webhooks_router import router as admin_webhooks_router
from robosystems.auth.passwords import PasswordHashing
from robosystems.auth.ratelimit import RateLimiter
from robosystems.auth.router import router as auth_router
from robosystems.auth.tokens import TokenCodec
from robosystems.auth.user_router import router as user_router
from robosystems.billing.plans import get_catalog
from robosystems.billing.router import offering_router as billing_offering_router
from robosystems.billing.router import org_router as billing_org_router
from robosystems.billing.router import pages_router as billing_pages_router
from robosystems.billing.router import router as billing_router
from robosystems.config import Settings, get_settings
from robosystems.db import StatementPool, make_async_engine, make_async_sessionmaker, make_sync_engine
from robosystems.errors import install_error_handlers
from robosystems.graphs.admin_router import router as graphs_admin_router
from robosystems.graphs.router import operations_router as graph_operations_router
from robosystems.graphs.router import router as graphs_router
from robosystems.mail.service import delivery_loop
from robosystems.observability import RequestContextMiddleware
from robosystems.orgs.router import public_router as invitation_public_router
from robosystems.orgs.router import router as orgs_router
from robosystems.orgs.usage_router import router as org_usage_router
from robosystems.outbound.router import router as outbound_router
from robosystems.payments.factory import check_configuration as check_payment_configuration
from robosystems.payments.local_router import router as local_payments_router
from robosystems.services import AppServices
from robosystems.webhooks.router import router as webhooks_router
from robosystems.worker.inprocess import start_background_worker

log = logging.getLogger("robosystems.app")


async def _check_readiness(app: FastAPI) -> dict[str, str]:
    services: AppServices = app.state.services
    checks: dict[str, str] = {}
    try:
        async with services.engine.connect() as conn:
            await asyncio.wait_for(conn.execute(text("SELECT 1")), timeout=3)
        checks["database"] = "ok"
    except Exception as exc:  # noqa: BLE001 - readiness reports, never raises
        checks["database"] = f"unavailable ({type(exc).__name__})"
    if services.settings.redis_url:
        try:
            await asyncio.wait_for(services.limiter.storage.check(), timeout=3)
            checks["redis"] = "ok"
        except Exception as exc:  # noqa: BLE001
            checks["redis"] = f"unavailable ({type(exc).__name__})"
    data_dir = services.settings.robosystems_data_dir
    checks["storage"] = "ok" if data_dir.is_dir() else "unavailable"
    return checks


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    settings.ensure_secrets()
    get_catalog(settings.billing_plans_file)  # a bad plan catalog stops the service here, naming the problem
    check_payment_configuration(settings)  # e.g. production without STRIPE_SECRET_KEY stops here

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        settings.robosystems_data_dir.mkdir(parents=True, exist_ok=True)
        engine = make_async_engine(settings)
        maker = make_async_sessionmaker(engine)
        statements_pool = StatementPool(settings)
        await statements_pool.open()
        services = AppServices(
            settings=settings,
            engine=engine,
            sessionmaker=maker,
            hasher=PasswordHashing(settings),
            tokens=TokenCodec(settings),
            limiter=RateLimiter(settings),
            statements_pool=statements_pool,
        )
        app.state.services = services
        app.state.sessionmaker = maker
        stop = asyncio.Event()
        background: list[asyncio.Task[None]] = []
        sync_engine = None
        worker = None
        if settings.embedded_worker:
            sync_engine = make_sync_engine(settings, pool_size=1, max_overflow=1)
            background.append(asyncio.create_task(delivery_loop(settings, sync_engine, stop)))
            worker = start_background_worker(settings)  # in-process worker, relay (OUTBOX_RELAY=api) or None
        # Everything built so far lives as long as the process: move it out of the cyclic GC's reach, so a full
        # collection later scans only request garbage (bench/webhooks.py: a ~120 ms pause early in a burst).
        gc.collect()
        gc.freeze()
        log.info("robosystems %s ready (environment=%s)", __version__, settings.environment)
        try:
            yield
        finally:
            stop.set()
            for task in background:
                await task
            if worker is not None:
                await asyncio.to_thread(worker.stop)
            if sync_engine is not None:
                sync_engine.dispose()
            await statements_pool.close()
            await engine.dispose()

    app = FastAPI(
        title="RoboSystems",
        version=__version__,
        lifespan=lifespan,
    )
    install_error_handlers(app)
    app.include_router(auth_router)
    app.include_router(user_router)
    app.include_router(org_usage_router)
    app.include_router(orgs_router)
    app.include_router(invitation_public_router)
    app.include_router(outbound_router)
    app.include_router(webhooks_router)
    app.include_router(admin_webhooks_router)
    app.include_router(admin_billing_router)
    app.include_router(billing_offering_router)  # before any /v1/graphs/{graph_id} route
    app.include_router(billing_router)
    app.include_router(billing_org_router)
    app.include_router(billing_pages_router)
    app.include_router(local_payments_router)
    app.include_router(graphs_router)  # after billing_offering_router (/v1/graphs/tiers)
    app.include_router(graph_operations_router)
    app.include_router(graphs_admin_router)

    @app.get("/healthz", tags=["health"])
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", tags=["health"])
    async def readyz(request: Request) -> JSONResponse:
        checks = await _check_readiness(request.app)
        ready = all(v == "ok" for v in checks.values())
        return JSONResponse(
            {"status": "ready" if ready else "not_ready", "checks": checks}, status_code=200 if ready else 503
        )

    @app.get("/v1/status", tags=["health"])
    async def get_service_status(request: Request) -> dict[str, Any]:
        checks = await _check_readiness(request.app)
        healthy = all(v == "ok" for v in checks.values())
        return {
            "status": "healthy" if healthy else "degraded",
            "timestamp": datetime.now(UTC).isoformat(),
            "details": {"version": __version__, "environment": settings.environment, "checks": checks},
        }

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    if settings.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["*"],
            allow_headers=["Authorization", "Content-Type", "X-API-Key", "Idempotency-Key", "X-Request-ID"],
            expose_headers=["X-Request-ID", "Retry-After"],
        )
    app.add_middleware(RequestContextMiddleware, max_body_bytes=settings.request_max_body_bytes)
    return app
