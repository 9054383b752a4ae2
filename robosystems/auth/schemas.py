"""Request and response models of /v1/auth and /v1/user (field names of robosystems-client 0.2.13)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from pydantic import BaseModel, EmailStr, Field, StringConstraints

Name = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=100)]
Password = Annotated[str, StringConstraints(min_length=1, max_length=1024)]
Email = Annotated[EmailStr, StringConstraints(max_length=320)]
Token = Annotated[str, StringConstraints(min_length=1, max_length=512)]


class RegisterRequest(BaseModel):
    name: Name
    email: Email
    password: Password
    captcha_token: str | None = Field(default=None, max_length=4096)


class LoginRequest(BaseModel):
    email: Annotated[str, StringConstraints(min_length=1, max_length=320)]
    password: Password
    org_id: str | None = Field(default=None, max_length=64)


class SwitchOrgRequest(BaseModel):
    org_id: Annotated[str, StringConstraints(min_length=1, max_length=64)]


class AuthUser(BaseModel):
    id: str
    name: str
    email: str


class AuthOrg(BaseModel):
    id: str
    name: str
    type: str
    role: str | None = None


class AuthResponse(BaseModel):
    user: AuthUser
    org: AuthOrg | None = None
    message: str
    token: str | None = None
    expires_in: int | None = None
    refresh_threshold: int | None = None


class MessageResponse(BaseModel):
    message: str


class SuccessResponse(BaseModel):
    success: bool = True
    message: str
    data: dict[str, Any] | None = None


class MeResponse(BaseModel):
    id: str
    name: str
    email: str
    email_verified: bool
    org: AuthOrg | None = None


class PasswordCheckRequest(BaseModel):
    password: Password
    email: str | None = Field(default=None, max_length=320)


class PasswordCheckResponse(BaseModel):
    is_valid: bool
    strength: str
    score: int
    errors: list[str]
    suggestions: list[str]
    character_types: dict[str, bool]


class PasswordPolicyResponse(BaseModel):
    policy: dict[str, Any]


class ForgotPasswordRequest(BaseModel):
    email: Annotated[str, StringConstraints(min_length=1, max_length=320)]


class ResetPasswordRequest(BaseModel):
    token: Token
    new_password: Password


class ResetPasswordValidateResponse(BaseModel):
    valid: bool
    email: str | None = None


class EmailVerificationRequest(BaseModel):
    token: Token


class UserResponse(BaseModel):
    id: str
    name: str | None = None
    email: str | None = None
    email_verified: bool | None = None
    accounts: list[dict[str, str]] = Field(default_factory=list)


class UpdateUserRequest(BaseModel):
    name: Name | None = None
    email: Email | None = None


class UpdatePasswordRequest(BaseModel):
    current_password: Password
    new_password: Password
    confirm_password: Password


class CreateAPIKeyRequest(BaseModel):
    name: Name
    description: str | None = Field(default=None, max_length=1000)
    expires_at: datetime | None = None


class UpdateAPIKeyRequest(BaseModel):
    name: Name | None = None
    description: str | None = Field(default=None, max_length=1000)


class APIKeyInfo(BaseModel):
    id: str
    name: str
    prefix: str
    is_active: bool
    created_at: str
    description: str | None = None
    last_used_at: str | None = None
    expires_at: str | None = None


class APIKeysResponse(BaseModel):
    api_keys: list[APIKeyInfo]


class CreateAPIKeyResponse(BaseModel):
    api_key: APIKeyInfo
    key: str
