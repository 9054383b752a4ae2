"""Retry signalling shared by Celery tasks and the in-process runner."""

from __future__ import annotations

from robosystems.config import Settings


class RetryLater(Exception):  # noqa: N818 - a signal, not an error
    """Raised by a task body: "run me again in ``countdown`` seconds".

    The Celery base task turns it into ``self.retry(countdown=…)``; the in-process runner
    re-schedules the outbox row.  Either way it counts against the task's ``max_retries``
    (``TASK_MAX_RETRIES``); a task that keeps its own count (the webhook event row) stops raising
    it before that.
    """

    def __init__(self, countdown: float, reason: str = "") -> None:
        super().__init__(reason or f"retry in {countdown:.1f}s")
        self.countdown = max(0.0, countdown)
        self.reason = reason


def backoff_seconds(settings: Settings, attempt: int) -> float:
    """Exponential backoff for the ``attempt``-th failure (1-based), capped."""
    exponent = max(0, attempt - 1)
    return float(
        min(settings.task_retry_backoff_max_seconds, settings.task_retry_backoff_seconds * (2 ** min(exponent, 30)))
    )


def safe_error(exc: BaseException) -> str:
    """A short error text safe to store and show to operators: our own error codes, otherwise
    only the exception's type (never a driver message that may carry SQL or data)."""
    from sqlalchemy.exc import DBAPIError

    from robosystems.errors import AppError

    if isinstance(exc, AppError):
        text = f"{exc.code}: {exc.detail}"
    elif isinstance(exc, RetryLater):
        text = exc.reason or "retry later"
    elif isinstance(exc, DBAPIError):
        orig = exc.orig
        sqlstate = getattr(orig, "sqlstate", None)
        text = f"database error {type(orig).__name__}" + (f" (SQLSTATE {sqlstate})" if sqlstate else "")
    else:
        text = type(exc).__name__
    return text[:500]
