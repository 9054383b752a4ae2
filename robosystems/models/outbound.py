"""Outbound webhooks (robosystems/outbound): customer endpoints, the events of each org, one delivery per
(endpoint, event) and every attempt of it.

* ``outbound_endpoints``: an org's subscribed URL and its signing secret (plus the previous secret while a
  rotation overlaps); ``enabled=false`` with ``disabled_reason`` once deliveries failed for the whole retry window.
* ``outbound_events``: one row per event, written in the transaction of the change; ``body`` is the exact JSON
  that is signed and sent (so every retry sends the same bytes under the same ``webhook-id``); ``dedupe_key``
  (unique per org) makes an emission idempotent where the cause may repeat.
* ``outbound_deliveries``: unique per (endpoint, event); ``pending`` with ``next_attempt_at`` until delivered or
  given up (``failed``) ``OUTBOUND_WEBHOOKS_RETRY_WINDOW_SECONDS`` after ``retrying_since`` (reset by a manual
  retry or a replay); ``lease_until`` marks an attempt in flight (per-endpoint cap, crash recovery).
* ``outbound_attempts``: status code, duration, truncated response body or error of each try.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    Boolean,
    CheckConstraint,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import Mapped, mapped_column

from robosystems.models.base import Base, created_at_column, updated_at_column

DELIVERY_STATUSES = ("pending", "delivered", "failed")
#: the event type vocabulary (CHECK constraints); what each means: robosystems.outbound.catalogue
SUBSCRIBABLE = (
    "org.updated",
    "org.deleted",
    "member.added",
    "member.removed",
    "member.role_changed",
    "invitation.created",
    "invitation.accepted",
    "subscription.created",
    "subscription.updated",
    "subscription.canceled",
    "invoice.paid",
    "invoice.payment_failed",
    "graph.provisioned",
    "graph.provisioning_failed",
    "graph.read_only",
    "graph.deleted",
    "credits.low",
)
EVENT_TYPES = (*SUBSCRIBABLE, "ping")  # ping: sent to one endpoint on request only
_EVENT_TYPES_SQL = ", ".join(f"'{t}'" for t in EVENT_TYPES)
_SUBSCRIBABLE_SQL = ", ".join(f"'{t}'" for t in SUBSCRIBABLE)


class OutboundEndpoint(Base):
    __tablename__ = "outbound_endpoints"
    __table_args__ = (
        CheckConstraint("cardinality(events) >= 1", name="has_events"),
        CheckConstraint(f"events <@ ARRAY[{_SUBSCRIBABLE_SQL}]::varchar[]", name="known_events"),
        Index("ix_outbound_endpoints_org_id_created_at", "org_id", "created_at"),
    )

    id: Mapped[str] = mapped_column(String, primary_key=True)
    org_id: Mapped[str] = mapped_column(String, ForeignKey("orgs.id", ondelete="CASCADE"), nullable=False)
    url: Mapped[str] = mapped_column(String(2048), nullable=False)
    description: Mapped[str | None] = mapped_column(String(500))
    events: Mapped[list[str]] = mapped_column(ARRAY(String(64)), nullable=False)
    secret: Mapped[str] = mapped_column(String(100), nullable=False)
    previous_secret: Mapped[str | None] = mapped_column(String(100))
    previous_secret_expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    enabled: Mapped[bool] = mapped_column(Boolean, nullable=False, server_default=text("true"))
    disabled_reason: Mapped[str | None] = mapped_column(String(200))
    disabled_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_by: Mapped[str | None] = mapped_column(String)
    created_at: Mapped[datetime] = created_at_column()
    updated_at: Mapped[datetime] = updated_at_column()


class OutboundEvent(Base):
    __tablename__ = "outbound_events"
    __table_args__ = (
        CheckConstraint(f"type IN ({_EVENT_TYPES_SQL})", name="type"),
        Index("ix_outbound_events_org_id_created_at", "org_id", "created_at"),
        Index("ix_outbound_events_created_at", "created_at"),
        Index(
            "uq_outbound_events_org_id_dedupe_key",
            "org_id",
            "dedupe_key",
            unique=True,
            postgresql_where=text("dedupe_key IS NOT NULL"),
        ),
    )

    id: Mapped[str] = mapped_column(String, primary_key=True)
    org_id: Mapped[str] = mapped_column(String, ForeignKey("orgs.id", ondelete="CASCADE"), nullable=False)
    type: Mapped[str] = mapped_column(String(64), nullable=False)
    body: Mapped[str] = mapped_column(Text, nullable=False)
    dedupe_key: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime] = created_at_column()


class OutboundDelivery(Base):
    __tablename__ = "outbound_deliveries"
    __table_args__ = (
        CheckConstraint("status IN ('pending', 'delivered', 'failed')", name="status"),
        CheckConstraint("attempt_count >= 0", name="attempt_count_non_negative"),
        UniqueConstraint("endpoint_id", "event_id"),
        Index(
            "ix_outbound_deliveries_due",
            "endpoint_id",
            "next_attempt_at",
            postgresql_where=text("status = 'pending'"),
        ),
        Index(
            "ix_outbound_deliveries_in_flight",
            "endpoint_id",
            postgresql_where=text("status = 'pending' AND lease_until IS NOT NULL"),
        ),
        Index("ix_outbound_deliveries_endpoint_id_created_at", "endpoint_id", "created_at"),
        Index("ix_outbound_deliveries_event_id", "event_id"),
    )

    id: Mapped[str] = mapped_column(String, primary_key=True)
    endpoint_id: Mapped[str] = mapped_column(
        String, ForeignKey("outbound_endpoints.id", ondelete="CASCADE"), nullable=False
    )
    event_id: Mapped[str] = mapped_column(String, ForeignKey("outbound_events.id", ondelete="CASCADE"), nullable=False)
    status: Mapped[str] = mapped_column(String(16), nullable=False, server_default="pending")
    attempt_count: Mapped[int] = mapped_column(Integer, nullable=False, server_default="0")
    next_attempt_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), server_default=func.now())
    retrying_since: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False, server_default=func.now())
    lease_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_status_code: Mapped[int | None] = mapped_column(Integer)
    last_attempt_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    delivered_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = created_at_column()
    updated_at: Mapped[datetime] = updated_at_column()


class OutboundAttempt(Base):
    __tablename__ = "outbound_attempts"
    __table_args__ = (Index("ix_outbound_attempts_delivery_id_attempted_at", "delivery_id", "attempted_at"),)

    id: Mapped[str] = mapped_column(String, primary_key=True)
    delivery_id: Mapped[str] = mapped_column(
        String, ForeignKey("outbound_deliveries.id", ondelete="CASCADE"), nullable=False
    )
    attempted_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    status_code: Mapped[int | None] = mapped_column(Integer)
    duration_ms: Mapped[int] = mapped_column(Integer, nullable=False)
    response_body: Mapped[str | None] = mapped_column(Text)
    error: Mapped[str | None] = mapped_column(String(200))
