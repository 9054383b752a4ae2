"""Payment-first graph provisioning: an idempotent saga keyed by the subscription id.

``provision_graph(ctx, subscription_id)`` is the ONE code path for the Celery task, the in-process runner and
the admin retry.  A subscription reaches ``provisioning`` only once its payment is confirmed (webhook) or billing
is disabled; this module turns it into a queryable graph:

1. **Exclusive run.**  A session-level advisory lock on the subscription (``pg_try_advisory_lock``) held on a
   dedicated connection for the whole run: a second copy (duplicate message, concurrent retry) finds it taken and
   does nothing; a run whose worker died (SIGKILL) loses the lock with its connection, so the redelivered message
   takes over at once.
2. **Claim** (own short transaction, ``SELECT … FOR UPDATE``): only a ``provisioning`` subscription is worked
   on; ``provisioning_attempt + 1``, ``provisioning_claimed_at``, a claim token.  The attempt counter is the
   retry budget (``PROVISIONING_MAX_ATTEMPTS``), kept in the row so every runner counts alike.  Tier and limits
   come from the PAID plan (``plan_name`` through the plan catalog) — never from the requested metadata.
3. **Database** outside any transaction: ``backend.create`` (idempotent: the graph id is derived from the
   subscription id, ``kg`` + 16 hex of sha256, so a retry after a crash finds the same directory) + health check.
4. **Finalize** (one transaction, subscription and org rows locked): org still live and under its graph limit,
   ``graphs`` row ``INSERT … ON CONFLICT DO NOTHING`` with ``org_id`` (org membership is what grants members
   access: no per-user rows), credit pool + the first allocation (keyed by the paid invoice, so the
   ``invoice.paid`` webhook and this task grant it once between them), subscription ``active``, audit rows.
   Only this commit makes the graph visible.
5. **Failure.**  A transient error (backend, database) releases the claim and retries with backoff from Settings
   (:class:`RetryLater`); after the last attempt — or at once for a permanent refusal (org deleted, limit reached,
   unknown plan) — the subscription becomes ``failed`` with a short safe reason, partial files are removed and the
   payment is compensated per ``PROVISIONING_FAILURE_COMPENSATION`` (refund | credit | none): the ``pending``
   marker is written with ``failed``; the provider call carries an idempotency key and its result is recorded
   once (``compensation_status``, billing audit row), then the subscription becomes ``refunded``.
"""

from __future__ import annotations

import hashlib
import inspect
import logging
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import Connection, Engine, column, select, table, text, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from robosystems.billing import credits, entitlements
from robosystems.billing import subscriptions as subs
from robosystems.billing.audit import SYSTEM, Actor, record_billing_event, record_for_actor
from robosystems.billing.plans import GraphPlan, get_catalog
from robosystems.billing.storage import register_size_probe
from robosystems.config import Settings
from robosystems.db import sync_unit_of_work
from robosystems.errors import AppError, Conflict, NotFound, Unprocessable
from robosystems.graphs.backend import (
    GraphBackend,
    GraphBackendError,
    GraphBusy,
    get_backend,
    power_of_two_at_least,
)
from robosystems.models import BillingInvoice, BillingSubscription, Graph, Org, OrgUser
from robosystems.outbound import events as outbound
from robosystems.payments.base import PaymentProvider, ProviderError
from robosystems.worker import outbox
from robosystems.worker.context import WorkerContext
from robosystems.worker.retry import RetryLater, backoff_seconds

log = logging.getLogger("robosystems.graphs.provisioning")

PROVISION_GRAPH_TASK = subs.PROVISION_GRAPH_TASK
GRAPH_NAME_MAX = 200

#: Columns added by revision a8b9c0d1e2f3 (Core only: the ORM model belongs to the billing domain).
SUB_MARKERS = table(
    "billing_subscriptions",
    column("id"),
    column("provisioning_attempt"),
    column("provisioning_claimed_at"),
    column("provisioning_claim_token"),
    column("compensation_status"),
    column("compensation_ref"),
    column("compensated_at"),
)


def backend_for(settings: Settings) -> GraphBackend:
    """This process's graph backend, configured from Settings (GRAPH_STORAGE_DIR, GRAPH_MAX_DB_SIZE_GB,
    GRAPH_MAX_OPEN_DATABASES)."""
    return get_backend(
        settings.graph_root,
        max_db_size=power_of_two_at_least(settings.graph_max_db_size_gb * 1024**3),
        max_open=settings.graph_max_open_databases,
    )


register_size_probe(lambda settings, graph_id: backend_for(settings).size_bytes(graph_id))


def graph_id_for(subscription_id: str) -> str:
    """The graph id a subscription provisions: ``kg`` + 16 lowercase hex, the same on every attempt."""
    return "kg" + hashlib.sha256(f"graph:{subscription_id}".encode()).hexdigest()[:16]


def _lock_key(subscription_id: str) -> int:
    return int.from_bytes(hashlib.sha256(f"provision:{subscription_id}".encode()).digest()[:8], "big", signed=True)


@dataclass(frozen=True)
class ProvisionResult:
    outcome: str  # active | already_active | in_progress | not_provisioning | not_found | failed | compensated
    subscription_id: str
    graph_id: str | None = None
    attempt: int = 0


class ProvisioningRefused(Exception):  # noqa: N818 - a business outcome
    """A permanent reason not to provision (no retry): the text is short and safe to show."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# --- the exclusive-run lock ------------------------------------------------------------------------------------


class RunLock:
    """A session-level advisory lock on a dedicated connection (released on exit, or by PostgreSQL when the
    process dies)."""

    def __init__(self, engine: Engine, subscription_id: str) -> None:
        self.engine = engine
        self.key = _lock_key(subscription_id)
        self.conn: Connection | None = None

    def acquire(self) -> bool:
        conn = self.engine.connect()
        try:
            got = bool(conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": self.key}).scalar())
            conn.commit()
        except BaseException:
            conn.close()
            raise
        if not got:
            conn.close()
            return False
        self.conn = conn
        return True

    def release(self) -> None:
        conn, self.conn = self.conn, None
        if conn is None:
            return
        try:
            conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": self.key})
            conn.commit()
        except Exception:  # noqa: BLE001 - never hand a connection that may still hold the lock back to the pool
            log.warning("could not release the provisioning lock; discarding the connection")
            conn.invalidate()
        finally:
            conn.close()


# --- helpers ---------------------------------------------------------------------------------------------------


def _now() -> datetime:
    return datetime.now(UTC)


def _markers(session: Session, subscription_id: str) -> Any:
    return session.execute(
        select(
            SUB_MARKERS.c.provisioning_attempt,
            SUB_MARKERS.c.provisioning_claim_token,
            SUB_MARKERS.c.compensation_status,
        ).where(SUB_MARKERS.c.id == subscription_id)
    ).one()


def _set_markers(session: Session, subscription_id: str, **values: Any) -> None:
    session.execute(update(SUB_MARKERS).where(SUB_MARKERS.c.id == subscription_id).values(**values))


def _config(sub: BillingSubscription) -> dict[str, Any]:
    value = (sub.subscription_metadata or {}).get("resource_config")
    return dict(value) if isinstance(value, dict) else {}


def _graph_name(config: dict[str, Any], graph_id: str) -> str:
    name = config.get("graph_name")
    if isinstance(name, str) and name.strip():
        return " ".join(name.split())[:GRAPH_NAME_MAX]
    return f"Graph {graph_id}"


def _str_list(value: Any, limit: int = 50) -> list[str]:
    if not isinstance(value, list):
        return []
    return [str(v)[:100] for v in value if isinstance(v, str | int | float)][:limit]


def _plan(settings: Settings, sub: BillingSubscription) -> GraphPlan:
    """The PAID plan (the subscription's plan_name); a tier in the requested metadata is ignored."""
    try:
        return get_catalog(settings.billing_plans_file).plan(sub.plan_name)
    except Unprocessable:
        raise ProvisioningRefused("the subscribed plan is not available") from None


def self_billed(sub: BillingSubscription) -> bool:
    """A subscription nobody pays a provider for (billing disabled): credits are allocated per period by us."""
    meta = sub.subscription_metadata or {}
    return bool(meta.get("billing_disabled")) or sub.payment_provider in ("none", "internal")


def period_grant_id(subscription_id: str, period_index: int) -> str:
    """The allocation key of a self-billed subscription's ``period_index``-th month (granted once each)."""
    return f"period:{subscription_id}:{period_index}"


def _pool_user(session: Session, sub: BillingSubscription) -> str | None:
    """A user to own the credit pool (legacy NOT NULL user columns): the requester, else an owner of the org."""
    meta = sub.subscription_metadata or {}
    candidates = [meta.get(k) for k in ("requested_by", "created_by", "user_id")]
    candidates.append(
        session.execute(
            text(
                "SELECT actor_user_id FROM billing_audit_logs WHERE subscription_id = :s AND actor_user_id IS NOT NULL "
                "ORDER BY event_timestamp LIMIT 1"
            ),
            {"s": sub.id},
        ).scalar_one_or_none()
    )
    for candidate in candidates:
        if (
            isinstance(candidate, str)
            and session.execute(text("SELECT 1 FROM users WHERE id = :u"), {"u": candidate}).first()
        ):
            return candidate
    found = session.execute(
        select(OrgUser.user_id)
        .where(OrgUser.org_id == sub.org_id, OrgUser.is_active.is_(True))
        .order_by((OrgUser.role == "owner").desc(), (OrgUser.role == "admin").desc(), OrgUser.joined_at)
        .limit(1)
    ).scalar_one_or_none()
    return None if found is None else str(found)


def paid_invoice(session: Session, subscription_id: str) -> BillingInvoice | None:
    return session.execute(
        select(BillingInvoice)
        .where(BillingInvoice.subscription_id == subscription_id, BillingInvoice.status == "paid")
        .order_by(BillingInvoice.paid_at.asc().nulls_last(), BillingInvoice.created_at)
        .limit(1)
    ).scalar_one_or_none()


def _check_org(session: Session, sub: BillingSubscription, graph_id: str, settings: Settings) -> None:
    """Org live (row locked: serializes provisioning and checkout of one org) and under its graph limit.  This
    subscription already holds one slot (it counted as pending at checkout), so it is excluded."""
    org = session.execute(select(Org.id, Org.deleted_at).where(Org.id == sub.org_id).with_for_update()).one_or_none()
    if org is None or org.deleted_at is not None:
        raise ProvisioningRefused("the organization no longer exists")
    limit = int(entitlements.entitlements_sync(session, sub.org_id, settings=settings).value("max_graphs"))
    if limit == -1:
        return
    used = session.execute(
        text(
            """
            SELECT (SELECT count(*) FROM graphs WHERE org_id = :org AND NOT is_subgraph AND graph_id <> :graph)
                 + (SELECT count(*) FROM billing_subscriptions s
                     WHERE s.org_id = :org AND s.resource_type = 'graph' AND s.id <> :sub
                       AND s.status IN ('pending_payment', 'provisioning')
                       AND (s.resource_id IS NULL
                            OR NOT EXISTS (SELECT 1 FROM graphs g WHERE g.graph_id = s.resource_id)))
            """
        ),
        {"org": sub.org_id, "graph": graph_id, "sub": sub.id},
    ).scalar_one()
    if int(used) >= limit:
        raise ProvisioningRefused("the organization has reached its graph limit")


def _safe_reason(exc: BaseException) -> str:
    if isinstance(exc, ProvisioningRefused):
        return exc.reason[:200]
    if isinstance(exc, GraphBusy):
        return "the graph database was busy"
    if isinstance(exc, GraphBackendError):
        return "the graph database could not be created"
    if isinstance(exc, DBAPIError):
        return "a database error interrupted provisioning"
    if isinstance(exc, AppError):
        return f"{exc.code}"[:200]
    return "provisioning failed"


# --- the saga --------------------------------------------------------------------------------------------------


def provision_graph(
    ctx: WorkerContext,
    subscription_id: str,
    *,
    backend: GraphBackend | None = None,
    provider: PaymentProvider | None = None,
) -> ProvisionResult:
    """Provision the subscription's graph (module doc).  Raises :class:`RetryLater` for a transient failure
    with attempts left."""
    lock = RunLock(ctx.engine, subscription_id)
    if not lock.acquire():
        log.info("provisioning %s: another run holds it", subscription_id)
        return ProvisionResult("in_progress", subscription_id)
    try:
        return _run(ctx, subscription_id, backend or backend_for(ctx.settings), provider)
    finally:
        lock.release()


def _run(
    ctx: WorkerContext, subscription_id: str, backend: GraphBackend, provider: PaymentProvider | None
) -> ProvisionResult:
    settings = ctx.settings
    token = secrets.token_hex(16)
    # --- claim ------------------------------------------------------------------------------------------------
    refused: ProvisioningRefused | None = None
    with sync_unit_of_work(ctx.maker) as session:
        try:
            sub = subs.lock_subscription(session, subscription_id)
        except NotFound:
            return ProvisionResult("not_found", subscription_id)
        markers = _markers(session, subscription_id)
        if sub.status == "failed" and markers.compensation_status == "pending":
            session.rollback()
            return compensate(ctx, subscription_id, provider=provider)
        if sub.status != "provisioning":
            outcome = "already_active" if sub.status == "active" and sub.resource_id else "not_provisioning"
            return ProvisionResult(outcome, subscription_id, sub.resource_id, markers.provisioning_attempt)
        attempt = int(markers.provisioning_attempt) + 1
        graph_id = sub.resource_id or graph_id_for(sub.id)
        _set_markers(
            session,
            subscription_id,
            provisioning_attempt=attempt,
            provisioning_claimed_at=_now(),
            provisioning_claim_token=token,
        )
        try:
            if sub.resource_type != "graph":
                raise ProvisioningRefused("only graph subscriptions are provisioned")
            _plan(settings, sub)
        except ProvisioningRefused as exc:
            refused = exc
    if refused is not None:
        return _fail(ctx, subscription_id, token, graph_id, refused.reason, backend, provider)
    log.info("provisioning %s: attempt %s, graph %s", subscription_id, attempt, graph_id)
    # --- database + finalize ------------------------------------------------------------------------------------
    try:
        try:
            backend.create(graph_id)
            if not backend.health(graph_id):
                raise GraphBackendError("health check failed")
            result = _finalize(ctx, subscription_id, token, graph_id, attempt)
        finally:
            backend.close(graph_id)  # release the file lock: the API process opens it next
    except ProvisioningRefused as exc:
        return _fail(ctx, subscription_id, token, graph_id, exc.reason, backend, provider)
    except Exception as exc:  # noqa: BLE001 - transient by default: retried, then failed + compensated
        reason = _safe_reason(exc)
        log.warning(
            "provisioning %s attempt %s failed: %s (%s)",
            subscription_id,
            attempt,
            reason,
            type(exc).__name__,
            exc_info=not isinstance(exc, GraphBackendError),
        )
        if attempt >= max_attempts(ctx):
            return _fail(ctx, subscription_id, token, graph_id, reason, backend, provider)
        with sync_unit_of_work(ctx.maker) as session:
            session.execute(
                update(SUB_MARKERS)
                .where(SUB_MARKERS.c.id == subscription_id, SUB_MARKERS.c.provisioning_claim_token == token)
                .values(provisioning_claimed_at=None, provisioning_claim_token=None)
            )
        delay = backoff_seconds(settings, attempt)
        raise RetryLater(delay, reason=f"provisioning attempt {attempt}: {reason}") from exc
    return result


def max_attempts(ctx: WorkerContext) -> int:
    """PROVISIONING_MAX_ATTEMPTS, never more than the task's retry budget allows (TASK_MAX_RETRIES + 1)."""
    return max(1, min(ctx.settings.provisioning_max_attempts, ctx.settings.task_max_retries + 1))


def _finalize(ctx: WorkerContext, subscription_id: str, token: str, graph_id: str, attempt: int) -> ProvisionResult:
    settings = ctx.settings
    with sync_unit_of_work(ctx.maker) as session:
        sub = subs.lock_subscription(session, subscription_id)
        markers = _markers(session, subscription_id)
        if sub.status != "provisioning":
            return ProvisionResult("not_provisioning", subscription_id, sub.resource_id, attempt)
        if markers.provisioning_claim_token != token:
            return ProvisionResult("in_progress", subscription_id, graph_id, attempt)
        plan = _plan(settings, sub)
        _check_org(session, sub, graph_id, settings)
        config = _config(sub)
        pool_user = _pool_user(session, sub)
        if pool_user is None:
            raise ProvisioningRefused("the organization has no active member")
        session.execute(
            pg_insert(Graph)
            .values(
                graph_id=graph_id,
                org_id=sub.org_id,
                graph_name=_graph_name(config, graph_id),
                graph_type="generic",
                schema_extensions=_str_list(config.get("schema_extensions")),
                graph_instance_id="default",
                graph_tier=plan.name,  # the PAID plan
                graph_metadata={
                    "subscription_id": sub.id,
                    "created_by": pool_user,
                    "description": str(config.get("description") or "")[:1000] or None,
                    "tags": _str_list(config.get("tags")),
                    "backend": "ladybug",
                },
                is_subgraph=False,
                is_repository=False,
            )
            .on_conflict_do_nothing(index_elements=[Graph.graph_id])
        )
        owner = session.execute(
            select(Graph.org_id, Graph.graph_metadata["subscription_id"].astext).where(Graph.graph_id == graph_id)
        ).one()
        if owner[0] != sub.org_id or (owner[1] is not None and owner[1] != sub.id):
            raise ProvisioningRefused("the graph id is already taken")
        sub.resource_id = graph_id
        monthly = entitlements.graph_entitlements(
            graph_id, plan, entitlements.org_overrides_sync(session, sub.org_id)
        ).value("monthly_credits")
        credits.ensure_pool(
            session,
            graph_id,
            user_id=pool_user,
            monthly_allocation=monthly,
            storage_limit_gb=plan.storage_gb,
        )
        granted = _first_allocation(session, sub, graph_id, plan, monthly)
        subs.transition(
            session,
            sub.id,
            "active",
            actor=SYSTEM,
            reason="graph provisioned",
            data={"graph_id": graph_id, "attempt": attempt},
        )
        _set_markers(session, subscription_id, provisioning_claimed_at=None, provisioning_claim_token=None)
        record_billing_event(
            session,
            "graph_provisioned",
            org_id=sub.org_id,
            subscription_id=sub.id,
            description=f"Graph {graph_id} provisioned ({plan.name})",
            data={"graph_id": graph_id, "plan": plan.name, "attempt": attempt, "credits_granted": granted},
        )
        outbound.graph_provisioned(session, sub, graph_id)
        log.info("provisioning %s: graph %s active (attempt %s)", subscription_id, graph_id, attempt)
        return ProvisionResult("active", subscription_id, graph_id, attempt)


def _first_allocation(
    session: Session, sub: BillingSubscription, graph_id: str, plan: GraphPlan, monthly: int
) -> str | None:
    """The first period's credits, keyed so the webhook / the monthly job can never grant them again: by the
    paid invoice, or for a self-billed subscription by its first period.  Without a paid invoice yet, the
    ``invoice.paid`` webhook grants them (it sees the subscription active, under the same row lock)."""
    if monthly <= 0:
        return None
    invoice = paid_invoice(session, sub.id)
    if invoice is not None:
        key = invoice.id
        description = f"Monthly credits ({plan.name}) for invoice {invoice.invoice_number}"
    elif self_billed(sub):
        key = period_grant_id(sub.id, 0)
        description = f"Monthly credits ({plan.name}), first period"
    else:
        return None
    credits.grant_for_invoice(
        session,
        graph_id,
        key,
        Decimal(monthly),
        description=description,
        monthly_allocation=monthly,
    )
    return key


# --- failure and compensation ----------------------------------------------------------------------------------


def _fail(
    ctx: WorkerContext,
    subscription_id: str,
    token: str,
    graph_id: str,
    reason: str,
    backend: GraphBackend,
    provider: PaymentProvider | None,
) -> ProvisionResult:
    """Final failure: ``failed`` + reason, partial files removed, compensation marked pending (then done)."""
    mode = ctx.settings.provisioning_failure_compensation
    with sync_unit_of_work(ctx.maker) as session:
        sub = subs.lock_subscription(session, subscription_id)
        markers = _markers(session, subscription_id)
        if sub.status != "provisioning" or markers.provisioning_claim_token != token:
            return ProvisionResult("not_provisioning", subscription_id, sub.resource_id, markers.provisioning_attempt)
        graph_row = session.execute(select(Graph.graph_id).where(Graph.graph_id == graph_id)).first()
        paid = not self_billed(sub)
        compensation = "pending" if (mode != "none" and paid) else "none"
        subs.transition(
            session,
            sub.id,
            "failed",
            actor=SYSTEM,
            reason=reason,
            data={"graph_id": graph_id, "attempt": markers.provisioning_attempt, "compensation": compensation},
        )
        _set_markers(
            session,
            subscription_id,
            provisioning_claimed_at=None,
            provisioning_claim_token=None,
            compensation_status=compensation,
        )
        record_billing_event(
            session,
            "provisioning_failed",
            org_id=sub.org_id,
            subscription_id=sub.id,
            reason=reason,
            description=f"Provisioning failed after {markers.provisioning_attempt} attempt(s)",
            data={"graph_id": graph_id, "attempts": markers.provisioning_attempt, "compensation_mode": mode},
        )
        outbound.graph_provisioning_failed(session, sub, reason, compensation=compensation)
        attempts = int(markers.provisioning_attempt)
    if graph_row is None:  # never remove the files of a graph that exists (e.g. a legacy resource id)
        backend.remove(graph_id)
    log.error("provisioning %s failed after %s attempt(s): %s", subscription_id, attempts, reason)
    if compensation == "pending":
        try:
            return compensate(ctx, subscription_id, provider=provider)
        except RetryLater:
            log.warning("provisioning %s: compensation deferred (the resume job retries it)", subscription_id)
    return ProvisionResult("failed", subscription_id, None, attempts)


def _provider(ctx: WorkerContext, provider: PaymentProvider | None) -> PaymentProvider:
    if provider is not None:
        return provider
    from robosystems.payments.factory import get_provider

    return get_provider(ctx.settings)


def _give_back(provider: PaymentProvider, mode: str, invoice_ref: str, reason: str, key: str) -> str:
    """Refund (or credit) the paid invoice at the provider; returns the provider's refund / credit id."""
    credit_only = getattr(provider, "credit_invoice", None)
    if mode == "credit" and callable(credit_only):
        return str(credit_only(invoice_ref, reason=reason, idempotency_key=key))
    call = provider.refund_or_credit_invoice
    if "mode" in inspect.signature(call).parameters:
        return str(call(invoice_ref, reason=reason, idempotency_key=key, mode=mode))  # type: ignore[call-arg]
    return call(invoice_ref, reason=reason, idempotency_key=key)


def compensate(ctx: WorkerContext, subscription_id: str, *, provider: PaymentProvider | None = None) -> ProvisionResult:
    """Give the money of a failed provisioning back, once (``compensation_status`` pending -> refunded/credited).

    The provider call is idempotent by key (``provisioning-compensation:<sub id>``); the result is recorded under
    the subscription row lock only while the marker is still ``pending``, so a repeat records nothing.  No paid
    invoice known yet (its webhook not applied): stays pending, :class:`RetryLater`."""
    settings = ctx.settings
    mode = settings.provisioning_failure_compensation
    with sync_unit_of_work(ctx.maker) as session:
        sub = subs.lock_subscription(session, subscription_id)
        if _markers(session, subscription_id).compensation_status != "pending":
            return ProvisionResult("compensated", subscription_id)
        invoice = paid_invoice(session, subscription_id)
        invoice_ref = invoice.stripe_invoice_id if invoice is not None else None
        invoice_id = invoice.id if invoice is not None else None
        provider_sub = sub.provider_subscription_id
        org_id = sub.org_id
        reason = sub.failure_reason or "provisioning failed"
    if mode == "none":
        with sync_unit_of_work(ctx.maker) as session:
            _set_markers(session, subscription_id, compensation_status="none")
        return ProvisionResult("failed", subscription_id)
    if invoice_ref is None:
        raise RetryLater(backoff_seconds(settings, 3), reason="compensation waits for the paid invoice")
    payments = _provider(ctx, provider)
    try:
        ref = _give_back(payments, mode, invoice_ref, reason, f"provisioning-compensation:{subscription_id}")
        if provider_sub:
            payments.cancel_subscription_at_period_end(
                provider_sub, idempotency_key=f"provisioning-cancel:{subscription_id}"
            )
    except ProviderError as exc:
        log.warning("compensation of %s failed at the provider (%s); retried later", subscription_id, exc.code)
        raise RetryLater(backoff_seconds(settings, 2), reason=f"compensation: {exc.code}") from exc
    status = "refunded" if ref.startswith("re_") else "credited"  # Stripe refund ids start with re_
    with sync_unit_of_work(ctx.maker) as session:
        subs.lock_subscription(session, subscription_id)
        if _markers(session, subscription_id).compensation_status != "pending":
            return ProvisionResult("compensated", subscription_id)
        _set_markers(
            session, subscription_id, compensation_status=status, compensation_ref=ref[:255], compensated_at=_now()
        )
        record_billing_event(
            session,
            "refund_processed",
            org_id=org_id,
            subscription_id=subscription_id,
            invoice_id=invoice_id,
            reason=reason,
            description=f"Failed provisioning compensated ({status})",
            data={
                "mode": mode,
                "provider_ref": ref,
                "provider_invoice": invoice_ref,
                "provider_subscription_canceled": bool(provider_sub),
            },
        )
        subs.transition(session, subscription_id, "refunded", actor=SYSTEM, reason=f"compensated ({status})")
    log.info("provisioning %s compensated: %s %s", subscription_id, status, ref)
    return ProvisionResult("compensated", subscription_id)


# --- admin retry -----------------------------------------------------------------------------------------------


def retry_failed(session: Session, subscription_id: str, *, actor: Actor, reason: str) -> BillingSubscription:
    """``failed`` -> ``provisioning`` again (attempt budget reset) + the task enqueued after commit.  Refused
    (409 ``already_compensated``) once the payment was given back."""
    sub = subs.lock_subscription(session, subscription_id)
    markers = _markers(session, subscription_id)
    if sub.status != "failed":
        raise subs.IllegalTransition(
            f"Only a failed provisioning can be retried (status: {sub.status})", code="not_failed"
        )
    if markers.compensation_status not in (None, "none"):
        raise Conflict(
            "The payment of this subscription is being or was given back: it needs a new purchase",
            code="already_compensated",
        )
    subs.transition(session, subscription_id, "provisioning", actor=actor, reason=reason, data={"retry": True})
    _set_markers(
        session,
        subscription_id,
        provisioning_attempt=0,
        provisioning_claimed_at=None,
        provisioning_claim_token=None,
        compensation_status=None,
    )
    record_for_actor(
        session,
        "provisioning_retried",
        actor,
        org_id=sub.org_id,
        subscription_id=sub.id,
        reason=reason,
        description="Provisioning retried by an operator",
    )
    outbox.enqueue(session, PROVISION_GRAPH_TASK, [subscription_id])
    return sub
