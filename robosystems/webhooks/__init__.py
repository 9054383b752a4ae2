"""Stripe webhook inbox: receive -> verify -> persist (+ outbox) -> 2xx; handlers applied by the worker."""
