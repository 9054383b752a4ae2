"""Outgoing mail through the outbox table."""
