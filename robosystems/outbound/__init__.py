"""Outbound webhooks: customer endpoints subscribe to org, billing and graph events, delivered signed to the
Standard Webhooks spec (not :mod:`robosystems.webhooks`, which is the inbound Stripe inbox).

* :mod:`~robosystems.outbound.catalogue` — the event types;
* :mod:`~robosystems.outbound.events` — ``emit`` (called by the features, in the transaction of the change) and
  the payload of every event;
* :mod:`~robosystems.outbound.endpoints` / ``router`` — the endpoint API;
* :mod:`~robosystems.outbound.delivery` — the worker side (claim, sign, send, record, retry, disable);
* :mod:`~robosystems.outbound.guard` — SSRF policy (URL check at registration, address check at connect time).
"""
