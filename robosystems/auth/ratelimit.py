"""Rate limits with the `limits` library: Redis when REDIS_URL is set, process memory otherwise.

If Redis is unreachable the limiter fails open (logs a warning): an outage of the limiter must
not lock every user out.  All limits are strings in Settings ("10/minute").
"""

from __future__ import annotations

import logging
import math
import time

from limits import RateLimitItem, parse
from limits.aio.storage import Storage
from limits.aio.strategies import SlidingWindowCounterRateLimiter
from limits.storage import storage_from_string

from robosystems.config import Settings
from robosystems.errors import RateLimited

log = logging.getLogger("robosystems.ratelimit")


class RateLimiter:
    def __init__(self, settings: Settings) -> None:
        self.enabled = settings.rate_limit_enabled
        uri = f"async+{settings.redis_url}" if settings.redis_url else "async+memory://"
        storage = storage_from_string(uri, key_prefix=settings.rate_limit_key_prefix)
        assert isinstance(storage, Storage)
        self.storage: Storage = storage
        self._limiter = SlidingWindowCounterRateLimiter(self.storage)
        self._parsed: dict[str, RateLimitItem] = {}

    def _item(self, limit: str) -> RateLimitItem:
        item = self._parsed.get(limit)
        if item is None:
            item = self._parsed[limit] = parse(limit)
        return item

    async def hit(self, limit: str, *keys: str) -> None:
        """Consume one unit; raise 429 with Retry-After when the limit is exhausted."""
        if not self.enabled:
            return
        item = self._item(limit)
        try:
            allowed = await self._limiter.hit(item, *keys)
            if allowed:
                return
            stats = await self._limiter.get_window_stats(item, *keys)
        except Exception as exc:  # noqa: BLE001 - limiter outage must not take the API down
            log.warning("rate limiter unavailable, failing open: %s", type(exc).__name__)
            return
        raise RateLimited(retry_after=math.ceil(stats.reset_time - time.time()))

    async def check(self, limit: str, *keys: str) -> None:
        """Raise 429 if the limit is already exhausted, without consuming."""
        if not self.enabled:
            return
        item = self._item(limit)
        try:
            if await self._limiter.test(item, *keys):
                return
            stats = await self._limiter.get_window_stats(item, *keys)
        except Exception as exc:  # noqa: BLE001
            log.warning("rate limiter unavailable, failing open: %s", type(exc).__name__)
            return
        raise RateLimited(retry_after=math.ceil(stats.reset_time - time.time()))

    async def consume(self, limit: str, *keys: str) -> None:
        """Record one unit without raising (e.g. a failed login)."""
        if not self.enabled:
            return
        try:
            await self._limiter.hit(self._item(limit), *keys)
        except Exception as exc:  # noqa: BLE001
            log.warning("rate limiter unavailable: %s", type(exc).__name__)

    async def reset(self) -> None:
        await self.storage.reset()
