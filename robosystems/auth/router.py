"""/v1/auth: thin handlers, one service call each."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request

from robosystems.auth import passwords, service
from robosystems.auth.deps import CurrentPrincipal, DbSession, Services, bearer_token
from robosystems.auth.schemas import (
    AuthResponse,
    EmailVerificationRequest,
    ForgotPasswordRequest,
    LoginRequest,
    MeResponse,
    MessageResponse,
    PasswordCheckRequest,
    PasswordCheckResponse,
    PasswordPolicyResponse,
    RegisterRequest,
    ResetPasswordRequest,
    ResetPasswordValidateResponse,
    SwitchOrgRequest,
)
from robosystems.observability import current_client_ip

router = APIRouter(prefix="/v1/auth", tags=["auth"])


def _ua(request: Request) -> str | None:
    return request.headers.get("user-agent")


@router.post("/register", status_code=201, response_model=AuthResponse)
async def register_user(body: RegisterRequest, request: Request, db: DbSession, svc: Services) -> dict[str, Any]:
    await svc.limiter.hit(svc.settings.rate_limit_register_per_ip, "register", current_client_ip())
    result = await service.register(
        db, svc, name=body.name, email=str(body.email), password=body.password, user_agent=_ua(request)
    )
    return result.body()


@router.post("/login", response_model=AuthResponse)
async def login_user(body: LoginRequest, request: Request, db: DbSession, svc: Services) -> dict[str, Any]:
    result = await service.login(
        db,
        svc,
        email=body.email,
        password=body.password,
        org_id=body.org_id,
        ip=current_client_ip(),
        user_agent=_ua(request),
    )
    return result.body()


@router.post("/logout", response_model=MessageResponse)
async def logout_user(principal: CurrentPrincipal, db: DbSession) -> dict[str, str]:
    await service.logout(db, principal)
    return {"message": "Logged out"}


@router.post("/refresh", response_model=AuthResponse)
async def refresh_auth_session(request: Request, db: DbSession, svc: Services) -> dict[str, Any]:
    result = await service.refresh(db, svc, bearer_token(request), _ua(request))
    return result.body()


@router.get("/me", response_model=MeResponse)
async def get_current_auth_user(principal: CurrentPrincipal, db: DbSession) -> dict[str, Any]:
    return await service.me(db, principal)


@router.post("/switch-org", response_model=AuthResponse)
async def switch_org(
    body: SwitchOrgRequest, request: Request, principal: CurrentPrincipal, db: DbSession, svc: Services
) -> dict[str, Any]:
    result = await service.switch_org(db, svc, principal, body.org_id, _ua(request))
    return result.body()


@router.get("/password/policy", response_model=PasswordPolicyResponse)
async def get_password_policy(svc: Services) -> dict[str, Any]:
    return {"policy": passwords.policy(svc.settings)}


@router.post("/password/check", response_model=PasswordCheckResponse)
async def check_password_strength(body: PasswordCheckRequest, svc: Services) -> passwords.PasswordCheck:
    return passwords.check_password(svc.settings, body.password, body.email)


@router.post("/password/forgot", response_model=MessageResponse)
async def forgot_password(body: ForgotPasswordRequest, db: DbSession, svc: Services) -> dict[str, str]:
    await service.forgot_password(db, svc, body.email)
    return {"message": "If an account exists for this email, a password reset link has been sent."}


@router.get("/password/reset/validate", response_model=ResetPasswordValidateResponse)
async def validate_reset_token(
    db: DbSession, token: Annotated[str, Query(min_length=1, max_length=512)]
) -> dict[str, Any]:
    return await service.validate_reset_token(db, token)


@router.post("/password/reset", response_model=AuthResponse)
async def reset_password(body: ResetPasswordRequest, request: Request, db: DbSession, svc: Services) -> dict[str, Any]:
    result = await service.reset_password(db, svc, body.token, body.new_password, _ua(request))
    return result.body()


@router.post("/email/verify", response_model=AuthResponse)
async def verify_email(
    body: EmailVerificationRequest, request: Request, db: DbSession, svc: Services
) -> dict[str, Any]:
    result = await service.verify_email(db, svc, body.token, _ua(request))
    return result.body()


@router.post("/email/resend", response_model=MessageResponse)
async def resend_verification_email(principal: CurrentPrincipal, db: DbSession, svc: Services) -> dict[str, str]:
    await service.resend_verification(db, svc, principal)
    return {"message": "Verification email sent"}
