"""/v1/user: profile, password change, API keys."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from robosystems.auth import api_keys, service
from robosystems.auth.deps import CurrentPrincipal, DbSession, Services
from robosystems.auth.schemas import (
    APIKeyInfo,
    APIKeysResponse,
    CreateAPIKeyRequest,
    CreateAPIKeyResponse,
    SuccessResponse,
    UpdateAPIKeyRequest,
    UpdatePasswordRequest,
    UpdateUserRequest,
    UserResponse,
)

router = APIRouter(prefix="/v1/user", tags=["user"])


@router.get("", response_model=UserResponse)
async def get_current_user(principal: CurrentPrincipal) -> dict[str, Any]:
    return {
        "id": principal.user_id,
        "name": principal.name,
        "email": principal.email,
        "email_verified": principal.email_verified,
        "accounts": [],
    }


@router.put("", response_model=UserResponse)
async def update_user(
    body: UpdateUserRequest, principal: CurrentPrincipal, db: DbSession, svc: Services
) -> dict[str, Any]:
    user = await service.update_profile(db, svc, principal, body.name, str(body.email) if body.email else None)
    return {
        "id": user.id,
        "name": user.name,
        "email": user.email,
        "email_verified": user.email_verified,
        "accounts": [],
    }


@router.put("/password", response_model=SuccessResponse)
async def update_user_password(
    body: UpdatePasswordRequest, principal: CurrentPrincipal, db: DbSession, svc: Services
) -> dict[str, Any]:
    await service.change_password(db, svc, principal, body.current_password, body.new_password, body.confirm_password)
    return {"success": True, "message": "Password updated; other sessions were signed out"}


@router.get("/api-keys", response_model=APIKeysResponse)
async def list_user_api_keys(principal: CurrentPrincipal, db: DbSession) -> dict[str, Any]:
    keys = await api_keys.list_keys(db, principal.user_id)
    return {"api_keys": [api_keys.key_info(k) for k in keys]}


@router.post("/api-keys", status_code=201, response_model=CreateAPIKeyResponse)
async def create_user_api_key(
    body: CreateAPIKeyRequest, principal: CurrentPrincipal, db: DbSession, svc: Services
) -> dict[str, Any]:
    key, plain = await api_keys.create_key(db, svc, principal.user_id, body.name, body.description, body.expires_at)
    return {"api_key": api_keys.key_info(key), "key": plain}


@router.put("/api-keys/{api_key_id}", response_model=APIKeyInfo)
async def update_user_api_key(
    api_key_id: str, body: UpdateAPIKeyRequest, principal: CurrentPrincipal, db: DbSession
) -> dict[str, Any]:
    key = await api_keys.update_key(db, principal.user_id, api_key_id, body.name, body.description)
    return api_keys.key_info(key)


@router.delete("/api-keys/{api_key_id}", response_model=SuccessResponse)
async def revoke_user_api_key(api_key_id: str, principal: CurrentPrincipal, db: DbSession) -> dict[str, Any]:
    await api_keys.revoke_key(db, principal.user_id, api_key_id)
    return {"success": True, "message": "API key revoked"}
