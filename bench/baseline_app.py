"""The floor to compare against: a minimal FastAPI app on the service's own stack.

Same stack as ``robosystems serve``: uvicorn with uvloop + httptools, one worker, no access log,
and the async SQLAlchemy engine built by ``robosystems.db.make_async_engine`` (psycopg 3, the
same pool size / overflow / timeouts / connect options, read from the same Settings).  Each
request is one indexed primary-key SELECT on a pooled connection, returned as JSON:

    GET /user/{id}  ->  SELECT id, email, name FROM users WHERE id = :id
    GET /healthz    ->  {"status": "ok"}

Run: ``.venv/bin/python bench/baseline_app.py --port 8100 --database-url postgresql://...``
"""

from __future__ import annotations

import argparse
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import uvicorn
from fastapi import FastAPI, HTTPException
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from robosystems.config import Settings
from robosystems.db import make_async_engine

USER_BY_ID = text("SELECT id, email, name FROM users WHERE id = :id")


def create_app(database_url: str) -> FastAPI:
    settings = Settings(database_url=database_url)
    state: dict[str, AsyncEngine] = {}

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        state["engine"] = make_async_engine(settings)
        try:
            yield
        finally:
            await state["engine"].dispose()

    app = FastAPI(title="bench-baseline", lifespan=lifespan)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/user/{user_id}")
    async def get_user(user_id: str) -> dict[str, Any]:
        async with state["engine"].connect() as conn:
            row = (await conn.execute(USER_BY_ID, {"id": user_id})).one_or_none()
        if row is None:
            raise HTTPException(status_code=404, detail="not found")
        return {"id": row.id, "email": row.email, "name": row.name}

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8100)
    args = parser.parse_args()
    uvicorn.run(
        create_app(args.database_url),
        host=args.host,
        port=args.port,
        workers=1,
        log_config=None,
        access_log=False,
        loop="uvloop",
        http="httptools",
    )


if __name__ == "__main__":
    main()
