"""The Celery application (``robosystems worker`` / ``robosystems beat``).

* Broker: ``CELERY_BROKER_URL``, else ``REDIS_URL``.  With neither, nothing is published: ``serve``
  runs the same task objects in-process (see :mod:`robosystems.worker.inprocess`).
* Results: ``CELERY_RESULT_BACKEND``, else the broker when it is Redis; tasks ignore results by
  default (the database is the record of what happened).
* Reliability: ``acks_late`` + ``reject_on_worker_lost`` + prefetch 1 (a task killed mid-run is
  redelivered), retries/backoff from Settings, JSON only.  Tasks take ids and open their own unit
  of work (:func:`robosystems.worker.context.get_context`).
* Tasks live in ``robosystems/<feature>/tasks.py`` and are found by autodiscovery; the beat schedule
  names them by string (:mod:`robosystems.worker.schedule`), so this module imports no feature.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar, cast

from celery import Celery, Task

from robosystems.config import Settings, get_settings
from robosystems.worker.retry import RetryLater, backoff_seconds

log = logging.getLogger("robosystems.worker")

#: Packages searched for a ``tasks`` module.
TASK_PACKAGES = (
    "robosystems.worker",
    "robosystems.webhooks",
    "robosystems.billing",
    "robosystems.graphs",
    "robosystems.orgs",
    "robosystems.mail",
    "robosystems.outbound",
)


def broker_url(settings: Settings) -> str:
    """The broker URL, or "" when none is configured (in-process mode)."""
    return settings.celery_broker_url or settings.redis_url


def celery_config(settings: Settings) -> dict[str, Any]:
    broker = broker_url(settings)
    backend = settings.celery_result_backend or (broker if broker.startswith(("redis://", "rediss://")) else None)
    socket_options = {"socket_connect_timeout": 3, "socket_timeout": 10}
    from robosystems.worker.schedule import beat_schedule

    return {
        "broker_url": broker or "memory://",
        "result_backend": backend,
        "task_ignore_result": True,
        "result_expires": 86400,
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "timezone": "UTC",
        "enable_utc": True,
        "task_default_queue": settings.celery_queue,
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "task_default_retry_delay": settings.task_retry_backoff_seconds,
        "broker_connection_retry_on_startup": True,
        "broker_connection_timeout": 3,
        "broker_transport_options": {"visibility_timeout": 3600, **socket_options},
        "redis_socket_connect_timeout": 3,
        "redis_socket_timeout": 10,
        "worker_hijack_root_logger": False,
        "worker_send_task_events": False,
        "beat_schedule": beat_schedule(settings),
    }


class RobosystemsTask(Task):  # type: ignore[misc,unused-ignore]
    """Base task: late acks, redelivery when the worker dies, :class:`RetryLater` -> ``retry``."""

    acks_late = True
    reject_on_worker_lost = True
    typing = True

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().__call__(*args, **kwargs)
        except RetryLater as exc:
            if self.request.called_directly:  # in-process runner: it re-schedules the outbox row itself
                raise
            raise self.retry(exc=exc, countdown=exc.countdown) from exc


def create_celery_app(settings: Settings) -> Celery:
    class SettingsTask(RobosystemsTask):
        max_retries = settings.task_max_retries
        default_retry_delay = settings.task_retry_backoff_seconds

    app = Celery("robosystems", task_cls=SettingsTask)
    app.conf.update(celery_config(settings))
    app.autodiscover_tasks(list(TASK_PACKAGES))
    return app


celery_app = create_celery_app(get_settings())

_loaded = threading.Lock()
_imported: set[str] = set()
_failed_at: dict[str, float] = {}
_RETRY_IMPORT_SECONDS = 60.0


def ensure_tasks_loaded() -> None:
    """Import every feature's ``tasks`` module (what a worker does at start).

    Each module is imported on its own: one feature whose tasks module fails to import (logged as an error,
    retried every minute) does not stop the others' tasks from running in-process.
    """
    if len(_imported) == len(TASK_PACKAGES):
        return
    with _loaded:
        now = time.monotonic()
        for package in TASK_PACKAGES:
            if package in _imported or now - _failed_at.get(package, -_RETRY_IMPORT_SECONDS) < _RETRY_IMPORT_SECONDS:
                continue
            module = f"{package}.tasks"
            try:
                if importlib.util.find_spec(module) is not None:
                    importlib.import_module(module)
            except Exception:  # noqa: BLE001 - reported; the other features keep working
                _failed_at[package] = now
                log.exception("could not import %s; its tasks stay pending until it imports", module)
                continue
            _imported.add(package)


def registered_task_names() -> frozenset[str]:
    ensure_tasks_loaded()
    return frozenset(name for name in celery_app.tasks if not name.startswith("celery."))


def task_backoff(attempt: int, settings: Settings | None = None) -> float:
    return backoff_seconds(settings or get_settings(), attempt)


F = TypeVar("F", bound=Callable[..., Any])


def task(name: str, **options: Any) -> Callable[[F], F]:
    """``@celery_app.task(name=…)`` with the decorated function's type kept (for mypy --strict)."""
    return cast(Callable[[F], F], celery_app.task(name=name, **options))
