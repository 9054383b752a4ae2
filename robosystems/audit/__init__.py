"""Audit logs: security events (append-only)."""
