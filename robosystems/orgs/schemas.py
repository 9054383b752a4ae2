"""Request and response models of /v1/orgs, members, invitations and the org audit log
(field names of robosystems-client 0.2.13 where the client has the operation)."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any

from pydantic import BaseModel, EmailStr, Field, StringConstraints

from robosystems.auth.schemas import Name, Password

OrgName = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]
Id = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=64)]


class OrgType(StrEnum):
    PERSONAL = "personal"
    TEAM = "team"
    ENTERPRISE = "enterprise"


class OrgRole(StrEnum):
    OWNER = "owner"
    ADMIN = "admin"
    MEMBER = "member"


# --- requests -------------------------------------------------------------------------------------


class CreateOrgRequest(BaseModel):
    name: OrgName
    org_type: OrgType = OrgType.TEAM


class UpdateOrgRequest(BaseModel):
    name: OrgName | None = None
    org_type: OrgType | None = None


class InviteMemberRequest(BaseModel):
    email: Annotated[EmailStr, StringConstraints(max_length=320)]
    role: OrgRole | None = OrgRole.MEMBER


class UpdateMemberRoleRequest(BaseModel):
    role: OrgRole


class TransferOwnershipRequest(BaseModel):
    user_id: Id


class AcceptInvitationRequest(BaseModel):
    """A logged-in invitee sends nothing; a new person sends ``name`` and ``password``."""

    name: Name | None = None
    password: Password | None = None


# --- responses ------------------------------------------------------------------------------------


class OrgResponse(BaseModel):
    id: str
    name: str
    org_type: OrgType
    role: OrgRole
    member_count: int
    graph_count: int
    created_at: datetime
    joined_at: datetime


class OrgListResponse(BaseModel):
    orgs: list[OrgResponse]
    total: int


class OrgDetailMember(BaseModel):
    user_id: str
    name: str
    email: str
    role: OrgRole
    joined_at: datetime


class OrgDetailGraph(BaseModel):
    graph_id: str
    graph_name: str
    graph_type: str
    graph_tier: str
    created_at: datetime


class OrgDetailResponse(BaseModel):
    id: str
    name: str
    org_type: OrgType
    user_role: OrgRole
    members: list[OrgDetailMember]
    graphs: list[OrgDetailGraph]
    limits: dict[str, Any] | None
    created_at: datetime
    updated_at: datetime


class OrgDeletedResponse(BaseModel):
    id: str
    message: str
    deleted_at: datetime
    restorable_until: datetime


class OrgMemberResponse(BaseModel):
    user_id: str
    name: str
    email: str
    role: OrgRole
    joined_at: datetime
    is_active: bool


class OrgMemberListResponse(BaseModel):
    members: list[OrgMemberResponse]
    total: int
    org_id: str


class InvitationInfo(BaseModel):
    id: str
    email: str
    role: OrgRole
    status: str
    invited_by: str | None
    created_at: datetime
    expires_at: datetime


class InvitationListResponse(BaseModel):
    invitations: list[InvitationInfo]
    total: int


class InvitationPreview(BaseModel):
    org_name: str
    role: OrgRole
    inviter_name: str | None
    email: str = Field(description="The invited address, masked")
    expires_at: datetime


class UserInvitation(BaseModel):
    id: str
    org_id: str
    org_name: str
    role: OrgRole
    inviter_name: str | None
    created_at: datetime
    expires_at: datetime


class UserInvitationListResponse(BaseModel):
    invitations: list[UserInvitation]
    total: int


class OrgAuditEventResponse(BaseModel):
    id: str
    org_id: str
    event_type: str
    actor_user_id: str | None
    target_user_id: str | None
    details: dict[str, Any]
    request_id: str | None
    created_at: datetime


class OrgAuditListResponse(BaseModel):
    events: list[OrgAuditEventResponse]
    total: int
