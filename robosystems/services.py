"""Process-wide collaborators, built once per app and reached through a dependency."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from starlette.requests import Request

from robosystems.auth.passwords import PasswordHashing
from robosystems.auth.ratelimit import RateLimiter
from robosystems.auth.tokens import TokenCodec
from robosystems.config import Settings
from robosystems.db import StatementPool


@dataclass
class AppServices:
    settings: Settings
    engine: AsyncEngine
    sessionmaker: async_sessionmaker[AsyncSession]
    hasher: PasswordHashing
    tokens: TokenCodec
    limiter: RateLimiter
    #: autocommit psycopg pool for hot single-statement work (see StatementPool)
    statements_pool: StatementPool


async def get_services(request: Request) -> AppServices:
    # async: a plain `def` dependency would be sent through the thread pool on every request
    services: AppServices = request.app.state.services
    return services
