"""Organizations, memberships and org-level limits."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from sqlalchemy import Boolean, CheckConstraint, ForeignKey, Index, Integer, Numeric, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from robosystems.models.base import Base, created_at_column, updated_at_column

ORG_TYPES = ("personal", "team", "enterprise")
ORG_ROLES = ("owner", "admin", "member")


class Org(Base):
    __tablename__ = "orgs"
    __table_args__ = (
        CheckConstraint("org_type IN ('personal', 'team', 'enterprise')", name="org_type"),
        CheckConstraint("(org_type = 'personal') = (personal_user_id IS NOT NULL)", name="personal_owner"),
        UniqueConstraint("personal_user_id"),
    )

    id: Mapped[str] = mapped_column(String, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), nullable=False)
    org_type: Mapped[str] = mapped_column(String(20), nullable=False)
    personal_user_id: Mapped[str | None] = mapped_column(String, ForeignKey("users.id", ondelete="CASCADE"))
    deleted_at: Mapped[datetime | None] = mapped_column()
    created_at: Mapped[datetime] = created_at_column()
    updated_at: Mapped[datetime] = updated_at_column()


class OrgUser(Base):
    __tablename__ = "org_users"
    __table_args__ = (
        UniqueConstraint("org_id", "user_id"),
        Index("ix_org_users_user_id", "user_id"),
        CheckConstraint("role IN ('owner', 'admin', 'member')", name="role"),
    )

    id: Mapped[str] = mapped_column(String, primary_key=True)
    org_id: Mapped[str] = mapped_column(String, ForeignKey("orgs.id", ondelete="CASCADE"), nullable=False)
    user_id: Mapped[str] = mapped_column(String, ForeignKey("users.id", ondelete="CASCADE"), nullable=False)
    role: Mapped[str] = mapped_column(String(20), nullable=False)
    is_active: Mapped[bool] = mapped_column(Boolean, nullable=False, server_default="true")
    joined_at: Mapped[datetime] = created_at_column()
    created_at: Mapped[datetime] = created_at_column()
    updated_at: Mapped[datetime] = updated_at_column()


class OrgLimits(Base):
    __tablename__ = "org_limits"
    __table_args__ = (
        UniqueConstraint("org_id"),
        CheckConstraint("max_graphs >= -1", name="max_graphs"),
        CheckConstraint("credits_low_threshold IS NULL OR credits_low_threshold >= 0", name="credits_low_threshold"),
    )

    id: Mapped[str] = mapped_column(String, primary_key=True)
    org_id: Mapped[str] = mapped_column(String, ForeignKey("orgs.id", ondelete="CASCADE"), nullable=False)
    max_graphs: Mapped[int] = mapped_column(Integer, nullable=False)
    #: balance below which credits.low is emitted (NULL: CREDITS_LOW_THRESHOLD_PERCENT of the allocation)
    credits_low_threshold: Mapped[Decimal | None] = mapped_column(Numeric(10, 2))
    created_at: Mapped[datetime] = created_at_column()
    updated_at: Mapped[datetime] = updated_at_column()
