"""Billing: plan catalog, customers, subscriptions (state machine), invoices, credits ledger, billing audit.

Domain modules (``plans``, ``customers``, ``subscriptions``, ``invoices``, ``credits``, ``audit``) take a sync
``Session`` (worker tasks) and offer ``*_async`` variants for an ``AsyncSession`` that run the same code.  They
flush, never commit.  The HTTP layer (router/schemas/checkout/service) sits on top of them.
"""
