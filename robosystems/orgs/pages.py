"""The small accept page behind the mailed link ``{APP_BASE_URL}/invitations/{token}``.

Plain HTML forms, no JavaScript: it shows the org, the role, the inviter and the (masked)
invited address, and accepts either as a new person (name + password: the account is created)
or as the existing account of the invited address (its password, checked by the normal login
path with its rate limits and audit events).  Nothing is handed back but a confirmation: the
page signs nobody in (the session the password check opens is revoked at once).
"""

from __future__ import annotations

from dataclasses import dataclass
from html import escape

from sqlalchemy.ext.asyncio import AsyncSession

from robosystems.auth import service as auth_service
from robosystems.auth.deps import Principal
from robosystems.auth.sessions import revoke_session
from robosystems.errors import AppError, Unprocessable
from robosystems.observability import current_client_ip
from robosystems.orgs import invitations
from robosystems.services import AppServices


@dataclass(frozen=True)
class Page:
    status: int
    html: str


STYLE = (
    "body{font-family:system-ui,sans-serif;max-width:34rem;margin:3rem auto;padding:0 1rem;color:#222}"
    "label{display:block;margin:.8rem 0 .2rem}input{width:100%;padding:.4rem;font-size:1rem}"
    "button{margin-top:1rem;padding:.5rem 1.2rem;font-size:1rem}.muted{color:#666}.error{color:#a00}"
)


def _layout(title: str, body: str) -> str:
    return (
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">"
        "<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">"
        "<meta name=\"referrer\" content=\"no-referrer\">"
        f"<title>{escape(title)}</title><style>{STYLE}</style></head><body>"
        f"<h1>{escape(title)}</h1>{body}</body></html>"
    )


def _error_page(exc: AppError) -> Page:
    if exc.status_code == 410:
        text = "This invitation has expired. Ask the person who invited you to send a new one."
    elif exc.status_code == 404:
        text = "This invitation link is not valid (it may have been used or revoked)."
    else:
        text = exc.detail
    return Page(exc.status_code, _layout("Invitation", f"<p class=\"error\">{escape(text)}</p>"))


async def _form_page(session: AsyncSession, token: str, error: str | None = None, status: int = 200) -> Page:
    inv = await invitations.find_live_invitation(session, token)
    has_account = await invitations.account_exists(session, inv.email)
    inviter = f" by {escape(inv.inviter_name)}" if inv.inviter_name else ""
    parts = [
        f"<p>You have been invited{inviter} to join <strong>{escape(inv.org_name)}</strong> "
        f"as <strong>{escape(inv.role)}</strong>.</p>",
        f"<p class=\"muted\">Invitation for {escape(auth_service.mask_email(inv.email))}, valid until "
        f"{inv.expires_at:%Y-%m-%d %H:%M} UTC.</p>",
    ]
    if error:
        parts.append(f"<p class=\"error\">{escape(error)}</p>")
    action = f"/invitations/{escape(token, quote=True)}"
    if has_account:
        fields = (
            "<p>Confirm with the password of your account to accept.</p>"
            "<label for=\"password\">Password</label>"
            "<input id=\"password\" name=\"password\" type=\"password\" autocomplete=\"current-password\" required>"
        )
    else:
        fields = (
            "<p>Create your account to accept.</p>"
            "<label for=\"name\">Your name</label>"
            "<input id=\"name\" name=\"name\" autocomplete=\"name\" maxlength=\"100\" required>"
            "<label for=\"password\">Choose a password (at least 12 characters)</label>"
            "<input id=\"password\" name=\"password\" type=\"password\" autocomplete=\"new-password\" required>"
        )
    parts.append(
        f"<form method=\"post\" action=\"{action}\">{fields}<button type=\"submit\">Accept invitation</button></form>"
    )
    return Page(status, _layout("Invitation", "".join(parts)))


async def invitation_page(session: AsyncSession, services: AppServices, token: str) -> Page:
    try:
        invitations.ensure_enabled(services)
        return await _form_page(session, token)
    except AppError as exc:
        return _error_page(exc)


async def submit_invitation_form(
    session: AsyncSession, services: AppServices, token: str, *, name: str | None, password: str | None,
    user_agent: str | None,
) -> Page:
    """Accept from the page.  Any refusal rolls the whole unit of work back before the page is
    rendered, so a half-done accept (e.g. account created, join refused) never commits."""
    try:
        inv = await invitations.find_live_invitation(session, token)
        if not password:
            raise Unprocessable("Enter your password", code="password_required")
        principal: Principal | None = None
        login_session: str | None = None
        if await invitations.account_exists(session, inv.email):
            result = await auth_service.login(
                session, services, email=inv.email, password=password, org_id=None, ip=current_client_ip(),
                user_agent=user_agent,
            )
            login_session = result.issued.session_id
            principal = Principal(
                user_id=result.user.id, email=result.user.email, name=result.user.name,
                email_verified=result.user.email_verified, token_org_id=None, session_id=login_session,
            )
        await invitations.accept_without_session(
            session, services, token, principal, name=name or None, password=password, user_agent=user_agent
        )
        if login_session:
            await revoke_session(session, login_session, "invitation_page")
    except AppError as exc:
        await session.rollback()
        if exc.status_code in (404, 410, 503):
            return _error_page(exc)
        try:
            return await _form_page(session, token, error=exc.detail, status=exc.status_code)
        except AppError as again:
            return _error_page(again)
    body = (
        f"<p>You joined <strong>{escape(inv.org_name)}</strong> as <strong>{escape(inv.role)}</strong>.</p>"
        "<p>Sign in to RoboSystems with your email address and password to continue.</p>"
    )
    return Page(200, _layout("Invitation accepted", body))
