"""The published ``robosystems-client==0.2.13``, unmodified, against the real service over HTTP.

A real ``robosystems serve`` subprocess (see tests/live_server.py) runs on the test database;
every call goes through the client's own ``sync_detailed`` functions, so request building,
status handling and response parsing are the client's.  Each test asserts the status code, that
``.parsed`` is the model the client declares for it, and the field values; database state is
checked directly where the operation changes it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from robosystems_client import AuthenticatedClient, Client
from robosystems_client.api.auth import (
    check_password_strength,
    forgot_password,
    get_current_auth_user,
    get_password_policy,
    login_user,
    logout_user,
    refresh_auth_session,
    register_user,
    resend_verification_email,
    reset_password,
    validate_reset_token,
    verify_email,
)
from robosystems_client.api.status import get_service_status
from robosystems_client.api.user import (
    create_user_api_key,
    get_current_user,
    list_user_api_keys,
    revoke_user_api_key,
    update_user,
    update_user_api_key,
    update_user_password,
)
from robosystems_client.models import (
    APIKeyInfo,
    APIKeysResponse,
    AuthResponse,
    CreateAPIKeyRequest,
    CreateAPIKeyResponse,
    EmailVerificationRequest,
    ErrorResponse,
    ForgotPasswordRequest,
    ForgotPasswordResponseForgotpassword,
    GetCurrentAuthUserResponseGetcurrentauthuser,
    HealthStatus,
    HTTPValidationError,
    LoginRequest,
    LogoutUserResponseLogoutuser,
    PasswordCheckRequest,
    PasswordCheckResponse,
    PasswordCheckResponseCharacterTypes,
    PasswordPolicyResponse,
    PasswordPolicyResponsePolicy,
    RegisterRequest,
    ResendVerificationEmailResponseResendverificationemail,
    ResetPasswordRequest,
    ResetPasswordValidateResponse,
    SuccessResponse,
    UpdateAPIKeyRequest,
    UpdatePasswordRequest,
    UpdateUserRequest,
    UserResponse,
)
from robosystems_client.models.auth_response_org_type_0 import AuthResponseOrgType0
from robosystems_client.models.auth_response_user import AuthResponseUser
from robosystems_client.models.health_status_details_type_0 import HealthStatusDetailsType0
from robosystems_client.types import UNSET, Response
from sqlalchemy import Engine
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tests.helpers import PASSWORD, count, last_mail, token_from_mail, unique_email
from tests.live_server import running_server

NEW_PASSWORD = "a different long passphrase 77"
TIMEOUT = httpx.Timeout(30.0)


# --- fixtures -------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def live_server(database_url: str) -> Iterator[str]:
    """Base URL of a real ``robosystems serve`` process on the test database (defaults: no verification)."""
    with running_server(database_url) as base_url:
        yield base_url


@pytest.fixture(scope="session")
def verification_server(database_url: str) -> Iterator[str]:
    """A second live server on the same database with ``EMAIL_VERIFICATION_ENABLED=true``."""
    with running_server(database_url, EMAIL_VERIFICATION_ENABLED="true") as base_url:
        yield base_url


class Clients:
    """Builds the client's own ``Client`` / ``AuthenticatedClient`` objects and closes them afterwards."""

    def __init__(self) -> None:
        self._open: list[Client | AuthenticatedClient] = []

    def anon(self, base_url: str) -> Client:
        client = Client(base_url=base_url, timeout=TIMEOUT)
        self._open.append(client)
        return client

    def bearer(self, base_url: str, token: str) -> AuthenticatedClient:
        client = AuthenticatedClient(base_url=base_url, token=token, timeout=TIMEOUT)
        self._open.append(client)
        return client

    def api_key(self, base_url: str, key: str) -> AuthenticatedClient:
        # The client's X-API-Key mechanism (as its extensions use it): no prefix, header X-API-Key.
        client = AuthenticatedClient(
            base_url=base_url, token=key, prefix="", auth_header_name="X-API-Key", timeout=TIMEOUT
        )
        self._open.append(client)
        return client

    def close(self) -> None:
        for client in self._open:
            client.get_httpx_client().close()


@pytest.fixture
def clients() -> Iterator[Clients]:
    made = Clients()
    yield made
    made.close()


# --- helpers --------------------------------------------------------------------------------------


def _ok(response: Response[Any], status: int, model: type) -> Any:
    assert response.status_code == status, (response.status_code, response.content)
    assert response.parsed is not None, response.content
    assert isinstance(response.parsed, model), (type(response.parsed), response.content)
    return response.parsed


def _error(response: Response[Any], status: int, code: str) -> ErrorResponse:
    parsed: ErrorResponse = _ok(response, status, ErrorResponse)
    assert isinstance(parsed.detail, str) and parsed.detail
    assert parsed.code == code
    assert isinstance(parsed.request_id, str) and parsed.request_id
    return parsed


def _aware(value: str) -> datetime:
    parsed = datetime.fromisoformat(value)
    assert parsed.tzinfo is not None, value
    return parsed


def _check_auth_response(auth: AuthResponse, *, email: str, name: str) -> tuple[str, str, str]:
    """Common AuthResponse checks; returns (user_id, org_id, token)."""
    assert isinstance(auth.user, AuthResponseUser)
    assert auth.user["email"] == email
    assert auth.user["name"] == name
    user_id = auth.user["id"]
    assert isinstance(user_id, str) and user_id.startswith("user_")
    assert isinstance(auth.message, str) and auth.message
    assert isinstance(auth.org, AuthResponseOrgType0)
    assert auth.org["type"] == "personal"
    org_id = auth.org["id"]
    assert isinstance(org_id, str) and org_id.startswith("org_")
    assert isinstance(auth.org["name"], str) and auth.org["name"]
    assert isinstance(auth.token, str) and auth.token.count(".") == 2
    assert auth.expires_in == 3600 and isinstance(auth.expires_in, int)
    assert auth.refresh_threshold == 600 and isinstance(auth.refresh_threshold, int)
    return user_id, org_id, auth.token


def _register(clients: Clients, base_url: str, *, email: str | None = None, name: str = "Compat User") -> AuthResponse:
    email = email or unique_email("compat")
    response = register_user.sync_detailed(
        client=clients.anon(base_url), body=RegisterRequest(name=name, email=email, password=PASSWORD)
    )
    auth: AuthResponse = _ok(response, 201, AuthResponse)
    _check_auth_response(auth, email=email.strip().lower(), name=name)
    return auth


def _token(auth: AuthResponse) -> str:
    assert isinstance(auth.token, str)
    return auth.token


# --- auth -----------------------------------------------------------------------------------------


def test_register_user(live_server: str, clients: Clients, sync_engine: Engine) -> None:
    response = register_user.sync_detailed(
        client=clients.anon(live_server),
        body=RegisterRequest(name="Ada Lovelace", email="  Ada.Compat@Example.COM ", password=PASSWORD),
    )
    auth: AuthResponse = _ok(response, 201, AuthResponse)
    user_id, org_id, _ = _check_auth_response(auth, email="ada.compat@example.com", name="Ada Lovelace")
    assert response.headers["x-request-id"]
    assert count(sync_engine, "SELECT count(*) FROM users WHERE id = :u AND email = 'ada.compat@example.com'",
                 u=user_id) == 1
    assert count(sync_engine, "SELECT count(*) FROM org_users WHERE org_id = :o AND user_id = :u AND role = 'owner'",
                 o=org_id, u=user_id) == 1

    duplicate = register_user.sync_detailed(
        client=clients.anon(live_server),
        body=RegisterRequest(name="Other", email="ADA.COMPAT@example.com", password=PASSWORD),
    )
    _error(duplicate, 409, "email_taken")
    assert count(sync_engine, "SELECT count(*) FROM users") == 1


def test_register_weak_password_is_parsed_as_validation_error(
    live_server: str, clients: Clients, sync_engine: Engine
) -> None:
    response = register_user.sync_detailed(
        client=clients.anon(live_server),
        body=RegisterRequest(name="Weak", email=unique_email(), password="short pw 1"),
    )
    parsed: HTTPValidationError = _ok(response, 422, HTTPValidationError)
    assert isinstance(parsed.detail, list) and parsed.detail
    assert any("at least 12" in item.msg for item in parsed.detail)
    assert count(sync_engine, "SELECT count(*) FROM users") == 0


def test_login_user(live_server: str, clients: Clients) -> None:
    registered = _register(clients, live_server, name="Login User")
    email = registered.user["email"]
    response = login_user.sync_detailed(
        client=clients.anon(live_server), body=LoginRequest(email=email.upper(), password=PASSWORD)
    )
    auth: AuthResponse = _ok(response, 200, AuthResponse)
    user_id, org_id, token = _check_auth_response(auth, email=email, name="Login User")
    assert user_id == registered.user["id"]
    assert org_id == registered.org["id"]  # type: ignore[index]
    assert token != registered.token

    wrong = login_user.sync_detailed(
        client=clients.anon(live_server), body=LoginRequest(email=email, password="not the password at all")
    )
    unknown = login_user.sync_detailed(
        client=clients.anon(live_server), body=LoginRequest(email=unique_email("nobody"), password=PASSWORD)
    )
    assert _error(wrong, 401, "invalid_credentials").detail == _error(unknown, 401, "invalid_credentials").detail


def test_get_current_auth_user(live_server: str, clients: Clients) -> None:
    registered = _register(clients, live_server, name="Me User")
    response = get_current_auth_user.sync_detailed(client=clients.bearer(live_server, _token(registered)))
    me: GetCurrentAuthUserResponseGetcurrentauthuser = _ok(response, 200, GetCurrentAuthUserResponseGetcurrentauthuser)
    assert me["id"] == registered.user["id"]
    assert me["email"] == registered.user["email"]
    assert me["name"] == "Me User"
    assert me["org"]["id"] == registered.org["id"]  # type: ignore[index]
    assert me["org"]["type"] == "personal"

    anonymous = get_current_auth_user.sync_detailed(client=clients.anon(live_server))
    _error(anonymous, 401, "not_authenticated")


def test_refresh_auth_session(live_server: str, clients: Clients) -> None:
    registered = _register(clients, live_server, name="Refresh User")
    old = clients.bearer(live_server, _token(registered))
    response = refresh_auth_session.sync_detailed(client=old)
    auth: AuthResponse = _ok(response, 200, AuthResponse)
    user_id, org_id, token = _check_auth_response(auth, email=registered.user["email"], name="Refresh User")
    assert (user_id, org_id) == (registered.user["id"], registered.org["id"])  # type: ignore[index]
    assert token != registered.token

    # The new token works; the old one is revoked and can never refresh again.
    _ok(get_current_auth_user.sync_detailed(client=clients.bearer(live_server, token)), 200,
        GetCurrentAuthUserResponseGetcurrentauthuser)
    _error(get_current_auth_user.sync_detailed(client=old), 401, "session_revoked")
    _error(refresh_auth_session.sync_detailed(client=clients.bearer(live_server, _token(registered))), 401,
           "session_revoked")


def test_logout_user(live_server: str, clients: Clients, sync_engine: Engine) -> None:
    registered = _register(clients, live_server)
    authed = clients.bearer(live_server, _token(registered))
    response = logout_user.sync_detailed(client=authed)
    out: LogoutUserResponseLogoutuser = _ok(response, 200, LogoutUserResponseLogoutuser)
    assert isinstance(out["message"], str) and out["message"]
    assert count(sync_engine, "SELECT count(*) FROM auth_sessions WHERE user_id = :u AND revoked_at IS NOT NULL",
                 u=registered.user["id"]) == 1

    after = get_current_auth_user.sync_detailed(client=clients.bearer(live_server, _token(registered)))
    _error(after, 401, "session_revoked")
    assert get_current_user.sync_detailed(client=clients.bearer(live_server, _token(registered))).status_code == 401


def test_get_password_policy(live_server: str, clients: Clients) -> None:
    response = get_password_policy.sync_detailed(client=clients.anon(live_server))
    body: PasswordPolicyResponse = _ok(response, 200, PasswordPolicyResponse)
    assert isinstance(body.policy, PasswordPolicyResponsePolicy)
    assert body.policy["min_length"] == 12
    assert body.policy["max_length"] == 128
    assert body.policy["disallow_common_passwords"] is True


def test_check_password_strength(live_server: str, clients: Clients) -> None:
    strong = check_password_strength.sync_detailed(
        client=clients.anon(live_server), body=PasswordCheckRequest(password=PASSWORD, email="someone@example.com")
    )
    good: PasswordCheckResponse = _ok(strong, 200, PasswordCheckResponse)
    assert good.is_valid is True
    assert good.errors == []
    assert isinstance(good.score, int) and 0 <= good.score <= 4
    assert isinstance(good.strength, str) and good.strength
    assert isinstance(good.suggestions, list)
    assert isinstance(good.character_types, PasswordCheckResponseCharacterTypes)
    assert good.character_types["lowercase"] is True
    assert good.character_types["digits"] is True

    weak = check_password_strength.sync_detailed(
        client=clients.anon(live_server), body=PasswordCheckRequest(password="password1234")
    )
    bad: PasswordCheckResponse = _ok(weak, 200, PasswordCheckResponse)
    assert bad.is_valid is False
    assert any("common" in e for e in bad.errors)
    assert bad.score <= 1


def test_password_reset_flow(live_server: str, clients: Clients, sync_engine: Engine) -> None:
    registered = _register(clients, live_server, name="Reset User")
    email = registered.user["email"]
    anon = clients.anon(live_server)

    known = forgot_password.sync_detailed(client=anon, body=ForgotPasswordRequest(email=email))
    unknown = forgot_password.sync_detailed(client=anon, body=ForgotPasswordRequest(email=unique_email("ghost")))
    known_body: ForgotPasswordResponseForgotpassword = _ok(known, 200, ForgotPasswordResponseForgotpassword)
    unknown_body: ForgotPasswordResponseForgotpassword = _ok(unknown, 200, ForgotPasswordResponseForgotpassword)
    assert known_body.to_dict() == unknown_body.to_dict()
    assert isinstance(known_body["message"], str) and known_body["message"]

    token = token_from_mail(last_mail(sync_engine, email, "password_reset"), "Reset token")
    valid = validate_reset_token.sync_detailed(client=anon, token=token)
    checked: ResetPasswordValidateResponse = _ok(valid, 200, ResetPasswordValidateResponse)
    assert checked.valid is True
    assert isinstance(checked.email, str) and checked.email.endswith("@example.com")
    assert checked.email != email and "*" in checked.email

    bogus = validate_reset_token.sync_detailed(client=anon, token="not-a-real-token")
    bogus_body: ResetPasswordValidateResponse = _ok(bogus, 200, ResetPasswordValidateResponse)
    assert bogus_body.valid is False
    assert bogus_body.email is None or bogus_body.email is UNSET

    reset = reset_password.sync_detailed(client=anon, body=ResetPasswordRequest(token=token, new_password=NEW_PASSWORD))
    auth: AuthResponse = _ok(reset, 200, AuthResponse)
    user_id, _, new_token = _check_auth_response(auth, email=email, name="Reset User")
    assert user_id == registered.user["id"]

    # Other sessions are revoked, the new token and the new password work, the token is single use.
    _error(get_current_auth_user.sync_detailed(client=clients.bearer(live_server, _token(registered))), 401,
           "session_revoked")
    _ok(get_current_auth_user.sync_detailed(client=clients.bearer(live_server, new_token)), 200,
        GetCurrentAuthUserResponseGetcurrentauthuser)
    _ok(login_user.sync_detailed(client=anon, body=LoginRequest(email=email, password=NEW_PASSWORD)), 200,
        AuthResponse)
    _error(login_user.sync_detailed(client=anon, body=LoginRequest(email=email, password=PASSWORD)), 401,
           "invalid_credentials")
    used = validate_reset_token.sync_detailed(client=anon, token=token)
    assert _ok(used, 200, ResetPasswordValidateResponse).valid is False
    again = reset_password.sync_detailed(client=anon, body=ResetPasswordRequest(token=token, new_password=PASSWORD))
    _error(again, 400, "invalid_token")


def test_verify_email_and_resend(verification_server: str, clients: Clients, sync_engine: Engine) -> None:
    registered = _register(clients, verification_server, name="Verify User")
    email, user_id = registered.user["email"], registered.user["id"]
    assert count(sync_engine, "SELECT count(*) FROM users WHERE id = :u AND NOT email_verified", u=user_id) == 1
    first = token_from_mail(last_mail(sync_engine, email, "email_verification"), "Verification token")
    authed = clients.bearer(verification_server, _token(registered))

    resent = resend_verification_email.sync_detailed(client=authed)
    resent_body: ResendVerificationEmailResponseResendverificationemail = _ok(
        resent, 200, ResendVerificationEmailResponseResendverificationemail
    )
    assert isinstance(resent_body["message"], str) and resent_body["message"]
    assert count(sync_engine, "SELECT count(*) FROM mail_outbox WHERE to_email = :e AND kind = 'email_verification'",
                 e=email) == 2
    second = token_from_mail(last_mail(sync_engine, email, "email_verification"), "Verification token")
    assert second != first

    response = verify_email.sync_detailed(
        client=clients.anon(verification_server), body=EmailVerificationRequest(token=second)
    )
    auth: AuthResponse = _ok(response, 200, AuthResponse)
    verified_user_id, _, token = _check_auth_response(auth, email=email, name="Verify User")
    assert verified_user_id == user_id
    assert count(sync_engine, "SELECT count(*) FROM users WHERE id = :u AND email_verified", u=user_id) == 1
    _ok(get_current_user.sync_detailed(client=clients.bearer(verification_server, token)), 200, UserResponse)

    reused = verify_email.sync_detailed(
        client=clients.anon(verification_server), body=EmailVerificationRequest(token=second)
    )
    _error(reused, 400, "invalid_token")
    _error(resend_verification_email.sync_detailed(client=authed), 400, "already_verified")


def test_resend_verification_when_disabled_is_503(live_server: str, clients: Clients) -> None:
    registered = _register(clients, live_server)
    response = resend_verification_email.sync_detailed(client=clients.bearer(live_server, _token(registered)))
    _error(response, 503, "email_verification_disabled")


# --- user -----------------------------------------------------------------------------------------


def test_get_current_user(live_server: str, clients: Clients) -> None:
    registered = _register(clients, live_server, name="Profile User")
    response = get_current_user.sync_detailed(client=clients.bearer(live_server, _token(registered)))
    user: UserResponse = _ok(response, 200, UserResponse)
    assert user.id == registered.user["id"]
    assert user.name == "Profile User"
    assert user.email == registered.user["email"]
    assert user.accounts == []


def test_update_user(live_server: str, clients: Clients, sync_engine: Engine) -> None:
    registered = _register(clients, live_server, name="Before Name")
    other = _register(clients, live_server)
    authed = clients.bearer(live_server, _token(registered))
    new_email = unique_email("renamed")

    response = update_user.sync_detailed(
        client=authed, body=UpdateUserRequest(name="After Name", email=new_email.upper())
    )
    user: UserResponse = _ok(response, 200, UserResponse)
    assert user.id == registered.user["id"]
    assert user.name == "After Name"
    assert user.email == new_email
    assert user.accounts == []
    assert count(sync_engine, "SELECT count(*) FROM users WHERE id = :u AND email = :e AND name = 'After Name'",
                 u=user.id, e=new_email) == 1

    name_only = update_user.sync_detailed(client=authed, body=UpdateUserRequest(name="Third Name"))
    renamed: UserResponse = _ok(name_only, 200, UserResponse)
    assert (renamed.name, renamed.email) == ("Third Name", new_email)

    taken = update_user.sync_detailed(client=authed, body=UpdateUserRequest(email=other.user["email"]))
    assert taken.status_code == 409
    assert taken.parsed is None  # 409 is not a status the client declares for update_user
    assert count(sync_engine, "SELECT count(*) FROM users WHERE id = :u AND email = :e", u=user.id, e=new_email) == 1


def test_update_user_password(live_server: str, clients: Clients) -> None:
    registered = _register(clients, live_server, name="Password User")
    email = registered.user["email"]
    anon = clients.anon(live_server)
    second_login = _ok(login_user.sync_detailed(client=anon, body=LoginRequest(email=email, password=PASSWORD)),
                       200, AuthResponse)
    authed = clients.bearer(live_server, _token(registered))

    wrong = update_user_password.sync_detailed(
        client=authed,
        body=UpdatePasswordRequest(current_password="wrong password entirely", new_password=NEW_PASSWORD,
                                   confirm_password=NEW_PASSWORD),
    )
    _error(wrong, 400, "invalid_current_password")
    mismatch = update_user_password.sync_detailed(
        client=authed,
        body=UpdatePasswordRequest(current_password=PASSWORD, new_password=NEW_PASSWORD,
                                   confirm_password=NEW_PASSWORD + "x"),
    )
    _error(mismatch, 400, "password_mismatch")

    response = update_user_password.sync_detailed(
        client=authed,
        body=UpdatePasswordRequest(current_password=PASSWORD, new_password=NEW_PASSWORD,
                                   confirm_password=NEW_PASSWORD),
    )
    ok: SuccessResponse = _ok(response, 200, SuccessResponse)
    assert ok.success is True
    assert isinstance(ok.message, str) and ok.message

    # The presenting session survives, the other one is signed out, only the new password works.
    _ok(get_current_user.sync_detailed(client=authed), 200, UserResponse)
    _error(get_current_auth_user.sync_detailed(client=clients.bearer(live_server, _token(second_login))), 401,
           "session_revoked")
    _ok(login_user.sync_detailed(client=anon, body=LoginRequest(email=email, password=NEW_PASSWORD)), 200,
        AuthResponse)
    _error(login_user.sync_detailed(client=anon, body=LoginRequest(email=email, password=PASSWORD)), 401,
           "invalid_credentials")


def test_user_api_keys_lifecycle(live_server: str, clients: Clients, sync_engine: Engine) -> None:
    registered = _register(clients, live_server, name="Key User")
    authed = clients.bearer(live_server, _token(registered))
    expires = (datetime.now(UTC) + timedelta(days=30)).replace(microsecond=0)

    created = create_user_api_key.sync_detailed(
        client=authed,
        body=CreateAPIKeyRequest(name="ci key", description="used by CI", expires_at=expires.isoformat()),
    )
    body: CreateAPIKeyResponse = _ok(created, 201, CreateAPIKeyResponse)
    key = body.key
    info = body.api_key
    assert isinstance(info, APIKeyInfo)
    assert isinstance(key, str) and key.startswith("rfs") and len(key) == 67
    assert info.id.startswith("uak_")
    assert info.name == "ci key"
    assert info.description == "used by CI"
    assert info.prefix == key[:8]
    assert info.is_active is True
    assert _aware(info.created_at) <= datetime.now(UTC) + timedelta(seconds=5)
    assert isinstance(info.expires_at, str) and _aware(info.expires_at) == expires
    assert info.last_used_at is None
    assert count(sync_engine, "SELECT count(*) FROM user_api_keys WHERE id = :k AND key_hash <> :plain",
                 k=info.id, plain=key) == 1

    listed = list_user_api_keys.sync_detailed(client=authed)
    keys: APIKeysResponse = _ok(listed, 200, APIKeysResponse)
    assert [k.id for k in keys.api_keys] == [info.id]
    assert all(isinstance(k, APIKeyInfo) for k in keys.api_keys)
    assert keys.api_keys[0].to_dict() == info.to_dict()

    # The key authenticates through the client's X-API-Key mechanism.
    with_key = clients.api_key(live_server, key)
    me = get_current_user.sync_detailed(client=with_key)
    assert _ok(me, 200, UserResponse).id == registered.user["id"]
    used = _ok(list_user_api_keys.sync_detailed(client=with_key), 200, APIKeysResponse).api_keys[0]
    assert isinstance(used.last_used_at, str) and _aware(used.last_used_at) <= datetime.now(UTC)

    updated = update_user_api_key.sync_detailed(
        info.id, client=authed, body=UpdateAPIKeyRequest(name="renamed key", description="new description")
    )
    renamed: APIKeyInfo = _ok(updated, 200, APIKeyInfo)
    assert (renamed.id, renamed.name, renamed.description) == (info.id, "renamed key", "new description")
    assert renamed.prefix == info.prefix and renamed.is_active is True

    # Another user can neither update nor revoke it (404: existence is not revealed).
    stranger = clients.bearer(live_server, _token(_register(clients, live_server)))
    foreign_update = update_user_api_key.sync_detailed(info.id, client=stranger, body=UpdateAPIKeyRequest(name="x"))
    assert foreign_update.status_code == 404
    _error(revoke_user_api_key.sync_detailed(info.id, client=stranger), 404, "api_key_not_found")

    revoked = revoke_user_api_key.sync_detailed(info.id, client=authed)
    gone: SuccessResponse = _ok(revoked, 200, SuccessResponse)
    assert gone.success is True and gone.message
    _error(get_current_auth_user.sync_detailed(client=with_key), 401, "invalid_api_key")
    assert _ok(list_user_api_keys.sync_detailed(client=authed), 200, APIKeysResponse).api_keys == []
    _error(revoke_user_api_key.sync_detailed(info.id, client=authed), 404, "api_key_not_found")


def test_create_api_key_with_past_expiry_is_parsed_as_validation_error(live_server: str, clients: Clients) -> None:
    registered = _register(clients, live_server)
    past = (datetime.now(UTC) - timedelta(days=1)).isoformat()
    response = create_user_api_key.sync_detailed(
        client=clients.bearer(live_server, _token(registered)), body=CreateAPIKeyRequest(name="old", expires_at=past)
    )
    parsed: HTTPValidationError = _ok(response, 422, HTTPValidationError)
    assert isinstance(parsed.detail, list) and parsed.detail


# --- status ---------------------------------------------------------------------------------------


def test_get_service_status(live_server: str, clients: Clients) -> None:
    response = get_service_status.sync_detailed(client=clients.anon(live_server))
    status: HealthStatus = _ok(response, 200, HealthStatus)
    assert status.status == "healthy"
    assert isinstance(status.timestamp, datetime) and status.timestamp.tzinfo is not None
    assert abs(status.timestamp - datetime.now(UTC)) < timedelta(minutes=5)
    assert isinstance(status.details, HealthStatusDetailsType0)
    assert status.details["checks"]["database"] == "ok"


# --- transaction boundary -------------------------------------------------------------------------


async def test_request_transaction_commits_before_response_is_sent(app: ASGIApp, sync_engine: Engine) -> None:
    """A client that got its 201 must see its writes on the next call.

    Deterministic: the probe looks at the database at the moment the app starts the response.
    (With FastAPI's default dependency scope the commit ran after the response had been sent,
    and a live client racing the commit saw e.g. a 401 on login right after registering.)
    """
    email = unique_email("commit")
    seen: list[int] = []

    def probe(send: Send) -> Callable[[Message], Awaitable[None]]:
        async def probing_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                seen.append(count(sync_engine, "SELECT count(*) FROM users WHERE email = :e", e=email))
            await send(message)

        return probing_send

    async def probed_app(scope: Scope, receive: Receive, send: Send) -> None:
        await app(scope, receive, probe(send))

    transport = httpx.ASGITransport(app=probed_app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        response = await client.post("/v1/auth/register", json={"name": "C", "email": email, "password": PASSWORD})
    assert response.status_code == 201, response.text
    assert seen == [1]
