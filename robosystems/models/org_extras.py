"""Org invitations and the append-only org audit log.

Invitations are the single source of truth for *pending* membership: an invitee may have no
account yet, and ``org_users.user_id`` must name a real user, so no placeholder membership row is
written.  The member list shows a pending invitation as a member with ``is_active=false`` whose
``user_id`` is the invitation id (``inv_…``).  Only the SHA-256 of the token is stored.

``org_audit_log`` has no foreign keys on purpose: it must outlive the org (a purge is itself an
audit event) and the users it names.  A trigger refuses UPDATE and DELETE.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import CheckConstraint, ForeignKey, Index, Integer, String, UniqueConstraint, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from robosystems.models.base import Base, created_at_column, updated_at_column

INVITATION_STATUSES = ("pending", "accepted", "revoked", "expired")


class OrgInvitation(Base):
    __tablename__ = "org_invitations"
    __table_args__ = (
        CheckConstraint("role IN ('owner', 'admin', 'member')", name="role"),
        CheckConstraint("status IN ('pending', 'accepted', 'revoked', 'expired')", name="status"),
        CheckConstraint("email = lower(email)", name="email_lowercase"),
        CheckConstraint("(status = 'accepted') = (accepted_at IS NOT NULL)", name="accepted_at"),
        UniqueConstraint("token_hash"),
        # At most one live invitation per (org, email): the backstop for concurrent invites.
        Index(
            "uq_org_invitations_org_id_email_pending",
            "org_id",
            "email",
            unique=True,
            postgresql_where=text("status = 'pending'"),
        ),
        Index("ix_org_invitations_email_status", "email", "status"),
        Index("ix_org_invitations_status_expires_at", "status", "expires_at"),
        Index("ix_org_invitations_org_id_created_at", "org_id", "created_at"),
    )

    id: Mapped[str] = mapped_column(String, primary_key=True)
    org_id: Mapped[str] = mapped_column(String, ForeignKey("orgs.id", ondelete="CASCADE"), nullable=False)
    email: Mapped[str] = mapped_column(String(320), nullable=False)
    role: Mapped[str] = mapped_column(String(20), nullable=False)
    status: Mapped[str] = mapped_column(String(16), nullable=False, server_default="pending")
    token_hash: Mapped[str] = mapped_column(String(64), nullable=False)
    invited_by: Mapped[str | None] = mapped_column(String, ForeignKey("users.id", ondelete="SET NULL"))
    accepted_by: Mapped[str | None] = mapped_column(String, ForeignKey("users.id", ondelete="SET NULL"))
    expires_at: Mapped[datetime] = mapped_column(nullable=False)
    accepted_at: Mapped[datetime | None] = mapped_column()
    revoked_at: Mapped[datetime | None] = mapped_column()
    last_sent_at: Mapped[datetime] = created_at_column()
    send_count: Mapped[int] = mapped_column(Integer, nullable=False, server_default="1")
    created_at: Mapped[datetime] = created_at_column()
    updated_at: Mapped[datetime] = updated_at_column()


class OrgAuditEvent(Base):
    __tablename__ = "org_audit_log"
    __table_args__ = (
        Index("ix_org_audit_log_org_id_created_at", "org_id", "created_at"),
        Index("ix_org_audit_log_org_id_event_type_created_at", "org_id", "event_type", "created_at"),
        CheckConstraint("event_type ~ '^[a-z]+(\\.[a-z_]+)+$'", name="event_type_format"),
    )

    id: Mapped[str] = mapped_column(String, primary_key=True)
    org_id: Mapped[str] = mapped_column(String, nullable=False)
    actor_user_id: Mapped[str | None] = mapped_column(String)
    target_user_id: Mapped[str | None] = mapped_column(String)
    event_type: Mapped[str] = mapped_column(String(64), nullable=False)
    details: Mapped[dict[str, Any]] = mapped_column(JSONB, nullable=False, server_default=text("'{}'::jsonb"))
    request_id: Mapped[str | None] = mapped_column(String(128))
    created_at: Mapped[datetime] = created_at_column()
