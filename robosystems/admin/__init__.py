"""Operator endpoints under ``/admin/v1`` (Bearer ``ADMIN_API_KEY``; hidden from the public OpenAPI)."""
