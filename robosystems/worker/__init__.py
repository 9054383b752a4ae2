"""Background-work plumbing: the Celery app, the task outbox and its relay, the beat schedule,
and the in-process runner used by ``serve`` when no broker is configured.

Nothing here imports a feature package: tasks are named by string and found by the Celery app's
autodiscovery (``robosystems.<feature>.tasks``).
"""
