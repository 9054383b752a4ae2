"""/v1/orgs (orgs, members, invitations, audit), the public invitation endpoints, the caller's
invitations and the HTML accept page.  Thin handlers: access comes from ``OrgFor(action)`` (live
membership; 404 for non-members, 403 for a missing role), then one service call."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Form, Path, Query, Request
from fastapi.responses import HTMLResponse, Response

from robosystems.auth.deps import CurrentPrincipal, DbSession, Principal, Services, optional_principal
from robosystems.auth.schemas import AuthResponse
from robosystems.orgs import audit, invitations, members, pages, service
from robosystems.orgs.access import OrgAccess, require
from robosystems.orgs.policy import Action
from robosystems.orgs.schemas import (
    AcceptInvitationRequest,
    CreateOrgRequest,
    InvitationInfo,
    InvitationListResponse,
    InvitationPreview,
    InviteMemberRequest,
    OrgAuditListResponse,
    OrgDeletedResponse,
    OrgDetailResponse,
    OrgListResponse,
    OrgMemberListResponse,
    OrgMemberResponse,
    TransferOwnershipRequest,
    UpdateMemberRoleRequest,
    UpdateOrgRequest,
    UserInvitationListResponse,
)
from robosystems.sqljson import JSONText

router = APIRouter(prefix="/v1/orgs", tags=["org"])
public_router = APIRouter(tags=["invitations"])

Limit = Annotated[int, Query(ge=1, le=100)]
Offset = Annotated[int, Query(ge=0)]
MemberId = Annotated[str, Path(min_length=1, max_length=64)]
InvitationId = Annotated[str, Path(min_length=1, max_length=64)]
Token = Annotated[str, Path(min_length=1, max_length=512)]
OptionalPrincipal = Annotated[Principal | None, Depends(optional_principal)]

# Access per action (``OrgFor(action)`` spelled as module-level aliases so mypy accepts them).
ChangeMemberRoleAccess = Annotated[OrgAccess, Depends(require(Action.CHANGE_MEMBER_ROLE))]
DeleteOrgAccess = Annotated[OrgAccess, Depends(require(Action.DELETE_ORG))]
InviteMemberAccess = Annotated[OrgAccess, Depends(require(Action.INVITE_MEMBER))]
LeaveOrgAccess = Annotated[OrgAccess, Depends(require(Action.LEAVE_ORG))]
ManageInvitationsAccess = Annotated[OrgAccess, Depends(require(Action.MANAGE_INVITATIONS))]
TransferOwnershipAccess = Annotated[OrgAccess, Depends(require(Action.TRANSFER_OWNERSHIP))]
UpdateOrgAccess = Annotated[OrgAccess, Depends(require(Action.UPDATE_ORG))]
ViewAuditAccess = Annotated[OrgAccess, Depends(require(Action.VIEW_AUDIT))]
ViewMembersAccess = Annotated[OrgAccess, Depends(require(Action.VIEW_MEMBERS))]
ViewOrgAccess = Annotated[OrgAccess, Depends(require(Action.VIEW_ORG))]


def _ua(request: Request) -> str | None:
    return request.headers.get("user-agent")


# --- orgs ------------------------------------------------------------------------------------


# The org reads and the org-detail answers of writes are JSON rendered by PostgreSQL (sqljson):
# returned as is, the declared response_model documents them (tests validate them against it).


@router.get("", response_model=OrgListResponse)
async def list_user_orgs(principal: CurrentPrincipal, svc: Services, limit: Limit = 50, offset: Offset = 0) -> JSONText:
    return JSONText(await service.list_orgs_json(svc.statements_pool, principal.user_id, limit=limit, offset=offset))


@router.post("", status_code=201, response_model=OrgDetailResponse)
async def create_org(body: CreateOrgRequest, principal: CurrentPrincipal, db: DbSession, svc: Services) -> JSONText:
    detail = await service.create_org(db, svc, principal, name=body.name, org_type=body.org_type.value)
    return JSONText(detail, status_code=201)


@router.get("/{org_id}", response_model=OrgDetailResponse)
async def get_org(access: ViewOrgAccess, svc: Services) -> JSONText:
    return JSONText(await service.read_org_detail(svc.statements_pool, access))


@router.put("/{org_id}", response_model=OrgDetailResponse)
@router.patch("/{org_id}", response_model=OrgDetailResponse)  # same fields, same partial semantics as PUT
async def update_org(body: UpdateOrgRequest, access: UpdateOrgAccess, db: DbSession) -> JSONText:
    org_type = body.org_type.value if body.org_type else None
    return JSONText(await service.update_org(db, access.principal, access.org_id, name=body.name, org_type=org_type))


@router.delete("/{org_id}", status_code=202, response_model=OrgDeletedResponse)
async def delete_org(access: DeleteOrgAccess, db: DbSession, svc: Services) -> dict[str, Any]:
    return await service.delete_org(db, svc, access.principal, access.org_id)


@router.post("/{org_id}/leave", status_code=204, response_class=Response)
async def leave_org(access: LeaveOrgAccess, db: DbSession) -> Response:
    await members.leave_org(db, access.principal, access.org_id)
    return Response(status_code=204)


@router.post("/{org_id}/transfer-ownership", response_model=OrgDetailResponse)
async def transfer_ownership(
    body: TransferOwnershipRequest, access: TransferOwnershipAccess, db: DbSession
) -> JSONText:
    return JSONText(await members.transfer_ownership(db, access.principal, access.org_id, body.user_id))


# --- members ---------------------------------------------------------------------------------


@router.get("/{org_id}/members", response_model=OrgMemberListResponse)
async def list_org_members(
    access: ViewMembersAccess, db: DbSession, limit: Limit = 50, offset: Offset = 0
) -> dict[str, Any]:
    return await members.list_members(db, access.org_id, limit=limit, offset=offset)


@router.post("/{org_id}/members", status_code=201, response_model=OrgMemberResponse)
async def invite_org_member(
    body: InviteMemberRequest, access: InviteMemberAccess, db: DbSession, svc: Services
) -> dict[str, Any]:
    role = body.role.value if body.role else "member"
    return await invitations.invite_member(db, svc, access.principal, access.org_id, email=str(body.email), role=role)


@router.put("/{org_id}/members/{user_id}", response_model=OrgMemberResponse)
async def update_org_member_role(
    user_id: MemberId, body: UpdateMemberRoleRequest, access: ChangeMemberRoleAccess, db: DbSession
) -> dict[str, Any]:
    return await members.update_member_role(db, access.principal, access.org_id, user_id, body.role.value)


@router.delete("/{org_id}/members/{user_id}", status_code=204, response_class=Response)
async def remove_org_member(user_id: MemberId, access: ViewMembersAccess, db: DbSession) -> Response:
    # Any member may remove themselves (= leave); removing someone else needs REMOVE_MEMBER,
    # decided by the service under the org lock.
    await members.remove_member(db, access.principal, access.org_id, user_id)
    return Response(status_code=204)


# --- invitations (org-scoped) ------------------------------------------------------------------


@router.get("/{org_id}/invitations", response_model=InvitationListResponse)
async def list_invitations(
    access: ManageInvitationsAccess,
    db: DbSession,
    status: Literal["pending", "accepted", "revoked", "expired"] | None = None,
    limit: Limit = 50,
    offset: Offset = 0,
) -> dict[str, Any]:
    return await invitations.list_invitations(db, access.org_id, status=status, limit=limit, offset=offset)


@router.post("/{org_id}/invitations/{invitation_id}/resend", response_model=InvitationInfo)
async def resend_invitation(
    invitation_id: InvitationId, access: ManageInvitationsAccess, db: DbSession, svc: Services
) -> dict[str, Any]:
    return await invitations.resend_invitation(db, svc, access.principal, access.org_id, invitation_id)


@router.delete("/{org_id}/invitations/{invitation_id}", status_code=204, response_class=Response)
async def revoke_invitation(invitation_id: InvitationId, access: ManageInvitationsAccess, db: DbSession) -> Response:
    await invitations.revoke_invitation(db, access.principal, access.org_id, invitation_id)
    return Response(status_code=204)


# --- audit -----------------------------------------------------------------------------------


@router.get("/{org_id}/audit", response_model=OrgAuditListResponse)
async def list_org_audit(
    access: ViewAuditAccess,
    db: DbSession,
    event_type: Annotated[str | None, Query(max_length=64)] = None,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: Limit = 50,
    offset: Offset = 0,
) -> dict[str, Any]:
    return await audit.query_org_audit(
        db, access.org_id, event_type=event_type, since=since, until=until, limit=limit, offset=offset
    )


# --- public invitation endpoints, the caller's invitations, the accept page -------------------


@public_router.get("/v1/invitations/{token}", response_model=InvitationPreview)
async def preview_invitation(token: Token, db: DbSession, svc: Services) -> dict[str, Any]:
    return await invitations.preview_invitation(db, svc, token)


@public_router.post("/v1/invitations/{token}/accept", response_model=AuthResponse)
async def accept_invitation(
    token: Token,
    request: Request,
    db: DbSession,
    svc: Services,
    principal: OptionalPrincipal,
    body: AcceptInvitationRequest | None = None,
) -> dict[str, Any]:
    result = await invitations.accept_invitation(
        db,
        svc,
        token,
        principal,
        name=body.name if body else None,
        password=body.password if body else None,
        user_agent=_ua(request),
    )
    return result.body()


@public_router.get("/v1/user/invitations", response_model=UserInvitationListResponse, tags=["user"])
async def list_my_invitations(principal: CurrentPrincipal, db: DbSession) -> dict[str, Any]:
    return await invitations.user_invitations(db, principal)


@public_router.get("/invitations/{token}", response_class=HTMLResponse, include_in_schema=False)
async def invitation_page(token: Token, db: DbSession, svc: Services) -> HTMLResponse:
    page = await pages.invitation_page(db, svc, token)
    return HTMLResponse(page.html, status_code=page.status, headers={"Cache-Control": "no-store"})


@public_router.post("/invitations/{token}", response_class=HTMLResponse, include_in_schema=False)
async def invitation_form(
    token: Token,
    request: Request,
    db: DbSession,
    svc: Services,
    name: Annotated[str | None, Form(max_length=100)] = None,
    password: Annotated[str | None, Form(max_length=1024)] = None,
) -> HTMLResponse:
    page = await pages.submit_invitation_form(
        db, svc, token, name=(name or "").strip() or None, password=password, user_agent=_ua(request)
    )
    return HTMLResponse(page.html, status_code=page.status, headers={"Cache-Control": "no-store"})
