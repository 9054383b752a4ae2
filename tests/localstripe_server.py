"""``localstripe`` (PyPI) as a process on 127.0.0.1, with the few endpoints it lacks.

Run: ``python tests/localstripe_server.py --port 8420``.

localstripe is a stateful fake of Stripe's API (customers, payment methods, plans, subscriptions,
invoices, refunds, ...).  It has no Checkout or billing portal, does not replay idempotent requests
and keeps its store in /tmp; this wrapper adds, on top of the unmodified package:

* ``POST /v1/checkout/sessions``, ``GET /v1/checkout/sessions/{id}``, ``POST …/{id}/expire`` and
  ``POST /v1/billing_portal/sessions`` (subscription-mode sessions as Stripe shapes them);
* Stripe's idempotency: a POST repeating an ``Idempotency-Key`` gets the first answer again;
* ``GET /_config/requests``: every API request seen (method, path, Stripe-Version, Idempotency-Key and the
  form/query parameters), so tests can check what the SDK actually sent; ``DELETE /_config/requests`` clears it;
* ``POST /_config/fixtures`` ``{method, path, status, body}``: answer that request with a recorded response of the
  real API's shape (for what localstripe lacks or gets wrong: invoice previews with prorations, pending updates,
  subscription schedules); ``DELETE /_config/fixtures`` clears them;
* an in-memory store (nothing written to /tmp).
"""

from __future__ import annotations

import argparse
import json
import secrets
import time
from typing import Any
from urllib.parse import parse_qs

from aiohttp import web
from localstripe import resources, server
from localstripe.errors import UserError

resources.Store.dump_to_disk = lambda self: None  # type: ignore[method-assign]
resources.Store.try_load_from_disk = lambda self: None  # type: ignore[method-assign]

REQUESTS: list[dict[str, Any]] = []
FIXTURES: dict[tuple[str, str], tuple[int, Any]] = {}
IDEMPOTENT: dict[str, tuple[int, bytes]] = {}
SESSIONS: dict[str, dict[str, Any]] = {}


def _error(status: int, message: str, code: str | None = None, param: str | None = None) -> web.Response:
    body = {"error": {"type": "invalid_request_error", "message": message, "code": code, "param": param}}
    return web.json_response(body, status=status)


@web.middleware
async def record_and_replay(request: web.Request, handler: Any) -> web.StreamResponse:
    if request.path.startswith("/v1/"):
        raw = await request.text() if request.method == "POST" else request.query_string
        REQUESTS.append(
            {
                "method": request.method,
                "path": request.path,
                "stripe_version": request.headers.get("Stripe-Version"),
                "idempotency_key": request.headers.get("Idempotency-Key"),
                "params": {k: v[-1] for k, v in parse_qs(raw, keep_blank_values=True).items()},
            }
        )
        fixture = FIXTURES.get((request.method, request.path))
        if fixture is not None:
            return web.json_response(fixture[1], status=fixture[0])
    key = request.headers.get("Idempotency-Key")
    if request.method != "POST" or not key:
        return await handler(request)
    cache_key = f"{request.path}|{key}"
    if cache_key in IDEMPOTENT:
        status, body = IDEMPOTENT[cache_key]
        return web.Response(
            body=body, status=status, content_type="application/json", headers={"Idempotent-Replayed": "true"}
        )
    response = await handler(request)
    if isinstance(response, web.Response) and response.body is not None and response.status < 500:
        body = response.body if isinstance(response.body, bytes) else bytes(response.body)  # type: ignore[arg-type]
        IDEMPOTENT[cache_key] = (response.status, body)
    return response


async def create_checkout_session(request: web.Request) -> web.Response:
    data = await server.get_post_data(request) or {}
    if data.get("mode") != "subscription":
        return _error(400, "Only subscription mode is supported here", param="mode")
    if not data.get("success_url"):
        return _error(400, "Missing required param: success_url.", code="parameter_missing", param="success_url")
    items = data.get("line_items") or []
    if len(items) != 1:
        return _error(400, "Exactly one line item", param="line_items")
    customer = data.get("customer")
    if customer:
        try:
            resources.Customer._api_retrieve(customer)
        except UserError:
            return _error(400, f"No such customer: '{customer}'", code="resource_missing", param="customer")
    item = items[0]
    price_data = item.get("price_data") or {}
    amount = int(price_data.get("unit_amount", 0)) if price_data else 0
    expires_at = int(data.get("expires_at") or time.time() + 86400)
    session_id = "cs_test_" + secrets.token_hex(16)
    session = {
        "id": session_id,
        "object": "checkout.session",
        "mode": "subscription",
        "status": "open",
        "payment_status": "unpaid",
        "created": int(time.time()),
        "expires_at": expires_at,
        "customer": customer,
        "customer_email": data.get("customer_email"),
        "client_reference_id": data.get("client_reference_id"),
        "metadata": data.get("metadata") or {},
        "amount_total": amount,
        "currency": price_data.get("currency", "usd"),
        "subscription": None,
        "success_url": data["success_url"].replace("{CHECKOUT_SESSION_ID}", session_id),
        "cancel_url": data.get("cancel_url"),
        "url": f"https://checkout.stripe.test/c/pay/{session_id}",
        "livemode": False,
        "_line_items": items,
        "_subscription_data": data.get("subscription_data") or {},
    }
    SESSIONS[session_id] = session
    return web.json_response({k: v for k, v in session.items() if not k.startswith("_")})


async def retrieve_checkout_session(request: web.Request) -> web.Response:
    session = SESSIONS.get(request.match_info["id"])
    if session is None:
        return _error(404, "No such checkout.session", code="resource_missing", param="session")
    return web.json_response({k: v for k, v in session.items() if not k.startswith("_")})


async def expire_checkout_session(request: web.Request) -> web.Response:
    session = SESSIONS.get(request.match_info["id"])
    if session is None:
        return _error(404, "No such checkout.session", code="resource_missing", param="session")
    if session["status"] != "open":
        return _error(400, "Only Checkout Sessions with a status of `open` can be expired.")
    session.update(status="expired", url=None)
    return web.json_response({k: v for k, v in session.items() if not k.startswith("_")})


async def create_portal_session(request: web.Request) -> web.Response:
    data = await server.get_post_data(request) or {}
    try:
        resources.Customer._api_retrieve(data.get("customer") or "")
    except UserError:
        return _error(400, "No such customer", code="resource_missing", param="customer")
    portal_id = "bps_" + secrets.token_hex(12)
    return web.json_response(
        {
            "id": portal_id,
            "object": "billing_portal.session",
            "customer": data["customer"],
            "return_url": data.get("return_url"),
            "url": f"https://billing.stripe.test/p/session/{portal_id}",
            "created": int(time.time()),
            "livemode": False,
        }
    )


async def list_requests(request: web.Request) -> web.Response:
    return web.json_response(REQUESTS)


async def clear_requests(request: web.Request) -> web.Response:
    REQUESTS.clear()
    return web.Response(text=json.dumps({"cleared": True}))


async def add_fixture(request: web.Request) -> web.Response:
    data = await request.json()
    FIXTURES[(str(data["method"]).upper(), str(data["path"]))] = (int(data.get("status", 200)), data["body"])
    return web.json_response({"fixtures": len(FIXTURES)})


async def clear_fixtures(request: web.Request) -> web.Response:
    FIXTURES.clear()
    return web.json_response({"cleared": True})


def build_app() -> web.Application:
    app = server.app
    app.middlewares.insert(0, record_and_replay)
    app.router.add_post("/v1/checkout/sessions", create_checkout_session)
    app.router.add_get("/v1/checkout/sessions/{id}", retrieve_checkout_session)
    app.router.add_post("/v1/checkout/sessions/{id}/expire", expire_checkout_session)
    app.router.add_post("/v1/billing_portal/sessions", create_portal_session)
    app.router.add_get("/_config/requests", list_requests)
    app.router.add_delete("/_config/requests", clear_requests)
    app.router.add_post("/_config/fixtures", add_fixture)
    app.router.add_delete("/_config/fixtures", clear_fixtures)
    return app


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=8420)
    args = parser.parse_args()
    web.run_app(build_app(), host="127.0.0.1", port=args.port, print=None, access_log=None)


if __name__ == "__main__":
    main()
