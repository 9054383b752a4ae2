"""Queue mail in the caller's transaction; deliver it afterwards through SMTP or the log.

The outbox row is written in the same transaction as the business change, so a rolled-back
request sends nothing and a committed one is delivered even if SMTP is down for a while
(retried with backoff up to ``MAIL_MAX_ATTEMPTS``).
"""

from __future__ import annotations

import asyncio
import logging
import smtplib
import ssl
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from urllib.parse import unquote, urlsplit

from sqlalchemy import Engine, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from robosystems.config import Settings
from robosystems.ids import new_id
from robosystems.models import MailOutbox

log = logging.getLogger("robosystems.mail")


async def queue_mail(session: AsyncSession, *, to: str, subject: str, body: str, kind: str) -> str:
    return await session.run_sync(lambda s: queue_mail_sync(s, to=to, subject=subject, body=body, kind=kind))


def queue_mail_sync(session: Session, *, to: str, subject: str, body: str, kind: str) -> str:
    """:func:`queue_mail` for a worker's ``Session``."""
    mail_id = new_id("mail")
    session.execute(insert(MailOutbox).values(id=mail_id, to_email=to, subject=subject, body_text=body, kind=kind))
    return mail_id


def _send_smtp(settings: Settings, to: str, subject: str, body: str) -> None:
    parts = urlsplit(settings.smtp_url)
    msg = EmailMessage()
    msg["From"] = settings.mail_from
    msg["To"] = to
    msg["Subject"] = subject
    msg.set_content(body)
    host = parts.hostname or "localhost"
    if parts.scheme == "smtps":
        client: smtplib.SMTP = smtplib.SMTP_SSL(
            host, parts.port or 465, context=ssl.create_default_context(), timeout=15
        )
    else:
        client = smtplib.SMTP(host, parts.port or 587, timeout=15)
    with client:
        if parts.scheme == "smtp" and (parts.port or 587) != 25:
            client.starttls(context=ssl.create_default_context())
        if parts.username:
            client.login(unquote(parts.username), unquote(parts.password or ""))
        client.send_message(msg)


def deliver_pending(settings: Settings, engine: Engine, batch: int = 50) -> int:
    """Deliver due mails (SMTP when SMTP_URL is set, else the log).  Returns how many were sent.

    Rows are claimed with ``FOR UPDATE SKIP LOCKED`` so several workers never send one twice.
    """
    sent = 0
    now = datetime.now(UTC)
    with engine.begin() as conn:
        rows = conn.execute(
            select(MailOutbox.id, MailOutbox.to_email, MailOutbox.subject, MailOutbox.body_text, MailOutbox.attempts)
            .where(MailOutbox.status == "pending", MailOutbox.next_attempt_at <= now)
            .order_by(MailOutbox.created_at)
            .limit(batch)
            .with_for_update(skip_locked=True)
        ).all()
        for row in rows:
            try:
                if settings.smtp_url:
                    _send_smtp(settings, row.to_email, row.subject, row.body_text)
                else:
                    log.info(
                        "mail (no SMTP_URL; logged only) to=%s subject=%s\n%s", row.to_email, row.subject, row.body_text
                    )
            except (OSError, smtplib.SMTPException) as exc:
                attempts = row.attempts + 1
                failed = attempts >= settings.mail_max_attempts
                log.warning("mail %s delivery failed (attempt %s): %s", row.id, attempts, type(exc).__name__)
                conn.execute(
                    update(MailOutbox)
                    .where(MailOutbox.id == row.id)
                    .values(
                        attempts=attempts,
                        status="failed" if failed else "pending",
                        last_error=type(exc).__name__,
                        next_attempt_at=now + timedelta(seconds=30 * 2**attempts),
                    )
                )
                continue
            conn.execute(
                update(MailOutbox)
                .where(MailOutbox.id == row.id)
                .values(status="sent", attempts=row.attempts + 1, sent_at=now)
            )
            sent += 1
    return sent


async def delivery_loop(settings: Settings, engine: Engine, stop: asyncio.Event) -> None:
    """Poll the outbox until ``stop`` is set (used by ``serve`` until the worker takes over)."""
    while not stop.is_set():
        try:
            await asyncio.to_thread(deliver_pending, settings, engine)
        except Exception:  # noqa: BLE001 - keep the loop alive; the row stays pending
            log.exception("mail delivery pass failed")
        try:
            await asyncio.wait_for(stop.wait(), timeout=settings.mail_poll_interval_seconds)
        except TimeoutError:
            pass
