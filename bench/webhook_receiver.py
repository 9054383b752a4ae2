"""A fast local webhook receiver for bench/outbound.py (aiohttp, one process): answers 204 to every POST and
records (path, webhook-id, arrival wall-clock time, the payload's ``timestamp``).  ``GET /_stats`` returns the
count; ``GET /_arrivals`` the records; ``POST /_reset`` forgets them.

    .venv/bin/python bench/webhook_receiver.py 8401
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

from aiohttp import web

ARRIVALS: list[dict[str, Any]] = []


async def hook(request: web.Request) -> web.Response:
    body = await request.read()
    arrived = time.time()
    entry: dict[str, Any] = {"path": request.path, "id": request.headers.get("webhook-id"), "at": arrived}
    if request.query.get("timestamps") != "0":
        try:
            entry["timestamp"] = json.loads(body).get("timestamp")
        except ValueError:
            entry["timestamp"] = None
    ARRIVALS.append(entry)
    return web.Response(status=204)


async def stats(_: web.Request) -> web.Response:
    return web.json_response({"count": len(ARRIVALS)})


async def arrivals(_: web.Request) -> web.Response:
    return web.json_response(ARRIVALS)


async def reset(_: web.Request) -> web.Response:
    ARRIVALS.clear()
    return web.json_response({"count": 0})


def main() -> None:
    app = web.Application()
    app.router.add_get("/_stats", stats)
    app.router.add_get("/_arrivals", arrivals)
    app.router.add_post("/_reset", reset)
    app.router.add_get("/healthz", stats)
    app.router.add_post("/{tail:.*}", hook)
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None, access_log=None)


if __name__ == "__main__":
    main()
