"""Building a response body as JSON text in PostgreSQL, for hot read paths.

A read endpoint whose answer is one statement can let PostgreSQL assemble the JSON and hand the
text straight to the client: no row objects, no Pydantic validation, no re-encoding in the
API process (measured in bench/orgs.py: that was most of the CPU of ``GET /v1/orgs/{id}``).
The route still declares its ``response_model`` (OpenAPI), and a test per route checks the text
validates against it and is byte-for-byte what Pydantic itself would render for the values.

Timestamps must look exactly like the rest of the API (Pydantic's rendering of an aware UTC
datetime): ``2026-01-02T03:04:05Z`` or, with a fraction, ``2026-01-02T03:04:05.120000Z``.
"""

from __future__ import annotations

from starlette.responses import Response


def iso_utc(column: str) -> str:
    """SQL expression rendering the timestamptz ``column`` like Pydantic does (NULL stays NULL)."""
    return (
        f"CASE WHEN mod(date_part('microseconds', {column})::bigint, 1000000) = 0 "
        f"THEN to_char({column} AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"') "
        f"ELSE to_char({column} AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"') END"
    )


class JSONText(Response):
    """A response whose body is JSON text produced elsewhere (PostgreSQL), sent as is."""

    media_type = "application/json"
