"""The Stripe webhook inbox and the transactional task outbox.

* ``webhook_events``: one row per provider event, keyed by the provider's event id (Stripe's
  ``evt_…``), written before the webhook is answered.  ``subject_id`` is the provider object the
  event is serialized on (the subscription when the event names one, else the customer or the
  object itself); ``note`` says why an event was ignored (``unknown_customer``, ``stale`` …).
* ``task_outbox``: work for the broker written in the same transaction as the change that needs it;
  a relay publishes due rows (``FOR UPDATE SKIP LOCKED``) after commit and periodically.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import CheckConstraint, DateTime, Index, Integer, String, func, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from robosystems.models.base import Base, created_at_column

WEBHOOK_EVENT_STATUSES = ("received", "processing", "processed", "failed", "ignored")
OUTBOX_STATUSES = ("pending", "sent", "failed")


class WebhookEvent(Base):
    __tablename__ = "webhook_events"
    __table_args__ = (
        CheckConstraint("status IN ('received', 'processing', 'processed', 'failed', 'ignored')", name="status"),
        CheckConstraint("attempts >= 0", name="attempts_non_negative"),
        Index("ix_webhook_events_status_received_at", "status", "received_at"),
        Index("ix_webhook_events_type_received_at", "type", "received_at"),
        Index("ix_webhook_events_subject_id_created", "subject_id", "created"),
        Index("ix_webhook_events_object_id", "object_id"),
    )

    id: Mapped[str] = mapped_column(String(255), primary_key=True)
    provider: Mapped[str] = mapped_column(String(20), nullable=False, server_default="stripe")
    type: Mapped[str] = mapped_column(String(120), nullable=False)
    created: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    object_id: Mapped[str | None] = mapped_column(String(255))
    subject_id: Mapped[str | None] = mapped_column(String(255))
    livemode: Mapped[bool | None] = mapped_column()
    api_version: Mapped[str | None] = mapped_column(String(40))
    payload: Mapped[dict[str, Any]] = mapped_column(JSONB, nullable=False)
    status: Mapped[str] = mapped_column(String(16), nullable=False, server_default="received")
    attempts: Mapped[int] = mapped_column(Integer, nullable=False, server_default="0")
    last_error: Mapped[str | None] = mapped_column(String(500))
    note: Mapped[str | None] = mapped_column(String(200))
    received_at: Mapped[datetime] = created_at_column()
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now(), nullable=False)
    processed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class TaskOutbox(Base):
    __tablename__ = "task_outbox"
    __table_args__ = (
        CheckConstraint("status IN ('pending', 'sent', 'failed')", name="status"),
        Index(
            "ix_task_outbox_pending_next_attempt_at",
            "next_attempt_at",
            postgresql_where=text("status = 'pending'"),
        ),
        Index("ix_task_outbox_status_created_at", "status", "created_at"),
    )

    id: Mapped[str] = mapped_column(String, primary_key=True)
    task_name: Mapped[str] = mapped_column(String(200), nullable=False)
    args: Mapped[list[Any]] = mapped_column(JSONB, nullable=False, server_default="[]")
    status: Mapped[str] = mapped_column(String(16), nullable=False, server_default="pending")
    attempts: Mapped[int] = mapped_column(Integer, nullable=False, server_default="0")
    last_error: Mapped[str | None] = mapped_column(String(500))
    next_attempt_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), nullable=False, server_default=func.now()
    )
    created_at: Mapped[datetime] = created_at_column()
    sent_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
