"""The credit ledger: one pool per graph (``graph_credits``) and its transactions (``graph_credit_transactions``).

Rules (each implemented once, here):

* The balance never goes negative: CHECK ``current_balance >= 0`` and every debit is ONE conditional
  ``UPDATE … SET current_balance = current_balance - :amount WHERE … AND current_balance >= :amount``.
* Σ ledger(graph) == current_balance: every balance change writes its ledger row in the same transaction.
* Grants are idempotent by ``idempotency_key`` (unique index ``idx_credit_transactions_idempotency``): the ledger
  row is inserted first with ``ON CONFLICT DO NOTHING`` and the balance moves only when it was inserted, so a grant
  for the same invoice applies once, also when two workers race (the second waits for the first to commit).
* Amounts are Decimal with 2 places (``numeric(10,2)``); consumption rows are negative.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from robosystems.billing.audit import Actor, record_for_actor
from robosystems.config import get_settings
from robosystems.errors import AppError, Conflict, NotFound, Unprocessable
from robosystems.ids import new_id
from robosystems.models.graphs import Graph, GraphCredits, GraphCreditTransaction
from robosystems.models.orgs import OrgLimits
from robosystems.outbound import events as outbound
from robosystems.worker import outbox

CENT = Decimal("0.01")
MAX_AMOUNT = Decimal("99999999.99")  # numeric(10,2)

TRANSACTION_TYPES = ("allocation", "consumption", "refund", "adjustment", "expiration")
#: the low-balance notification task (robosystems/billing/tasks.py)
CREDITS_LOW_TASK = "robosystems.billing.credits_low"


class InsufficientCredits(AppError):
    status_code, code, detail = 402, "insufficient_credits", "Not enough credits"


def invoice_grant_key(invoice_id: str) -> str:
    return f"invoice:{invoice_id}"


def _amount(value: Decimal | int | str | float, *, allow_negative: bool = False) -> Decimal:
    try:
        amount = Decimal(str(value)).quantize(CENT, rounding=ROUND_HALF_UP)
    except (InvalidOperation, ValueError):
        raise Unprocessable("Invalid credit amount", code="invalid_amount") from None
    if not amount.is_finite() or abs(amount) > MAX_AMOUNT or amount == 0 or (amount < 0 and not allow_negative):
        raise Unprocessable("Invalid credit amount", code="invalid_amount")
    return amount


def _pool_missing(graph_id: str) -> NotFound:
    return NotFound("This graph has no credit pool", code="credit_pool_not_found")


def _ledger_row(
    pool_id: str,
    graph_id: str,
    transaction_type: str,
    amount: Decimal,
    description: str,
    *,
    idempotency_key: str | None = None,
    user_id: str | None = None,
    operation_id: str | None = None,
    request_id: str | None = None,
    metadata: dict[str, Any] | None = None,
) -> dict[str, Any]:
    return {
        "id": new_id("txn"),
        "graph_credits_id": pool_id,
        "graph_id": graph_id,
        "transaction_type": transaction_type,
        "amount": amount,
        "description": description[:500],
        "idempotency_key": idempotency_key,
        "user_id": user_id,
        "operation_id": operation_id,
        "request_id": request_id,
        "transaction_metadata": json.dumps(metadata, default=str) if metadata else None,
        "created_at": datetime.now(UTC),
    }


def _pool_id(session: Session, graph_id: str) -> str | None:
    value = session.execute(select(GraphCredits.id).where(GraphCredits.graph_id == graph_id)).scalar_one_or_none()
    return None if value is None else str(value)


def ensure_pool(
    session: Session,
    graph_id: str,
    *,
    user_id: str,
    monthly_allocation: Decimal | int = 0,
    storage_limit_gb: Decimal | int = 500,
    billing_admin_id: str | None = None,
) -> str:
    """The graph's pool id, creating an empty pool (balance 0) when there is none (race-free)."""
    now = datetime.now(UTC)
    session.execute(
        pg_insert(GraphCredits)
        .values(
            id=new_id("crd"),
            graph_id=graph_id,
            user_id=user_id,
            billing_admin_id=billing_admin_id or user_id,
            current_balance=Decimal("0"),
            monthly_allocation=Decimal(str(monthly_allocation)),
            storage_limit_gb=Decimal(str(storage_limit_gb)),
            auto_expand_enabled=False,
            storage_warning_threshold=Decimal("0.8"),
            created_at=now,
            updated_at=now,
        )
        .on_conflict_do_nothing(index_elements=[GraphCredits.graph_id])
    )
    pool = _pool_id(session, graph_id)
    assert pool is not None  # inserted or already there
    return pool


def _credit(
    session: Session,
    graph_id: str,
    amount: Decimal,
    transaction_type: str,
    description: str,
    *,
    idempotency_key: str | None,
    user_id: str | None = None,
    operation_id: str | None = None,
    metadata: dict[str, Any] | None = None,
    set_allocation_date: bool = False,
) -> bool:
    """Add ``amount`` (> 0) once per idempotency key.  True when applied, False for a repeat."""
    pool = _pool_id(session, graph_id)
    if pool is None:
        raise _pool_missing(graph_id)
    row = _ledger_row(
        pool,
        graph_id,
        transaction_type,
        amount,
        description,
        idempotency_key=idempotency_key,
        user_id=user_id,
        operation_id=operation_id,
        metadata=metadata,
    )
    stmt = pg_insert(GraphCreditTransaction).values(**row)
    if idempotency_key is not None:
        stmt = stmt.on_conflict_do_nothing(index_elements=[GraphCreditTransaction.idempotency_key])
    inserted = session.execute(stmt.returning(GraphCreditTransaction.id)).scalar_one_or_none()
    if inserted is None:
        return False
    values: dict[str, Any] = {"current_balance": GraphCredits.current_balance + amount, "updated_at": func.now()}
    if set_allocation_date:
        values["last_allocation_date"] = func.now()
    session.execute(update(GraphCredits).where(GraphCredits.id == pool).values(**values))
    return True


def grant_for_invoice(
    session: Session,
    graph_id: str,
    invoice_id: str,
    amount: Decimal | int | str,
    *,
    user_id: str | None = None,
    description: str | None = None,
    create_pool_for_user: str | None = None,
    monthly_allocation: Decimal | int | None = None,
) -> bool:
    """Allocate ``amount`` credits for a paid invoice, at most once per invoice (key ``invoice:<invoice_id>``).

    Returns True when this call granted them, False when the invoice was already granted.  With
    ``create_pool_for_user`` a missing pool is created (owned by that user, as the legacy columns require).
    """
    value = _amount(amount)
    if create_pool_for_user is not None:
        ensure_pool(
            session,
            graph_id,
            user_id=create_pool_for_user,
            monthly_allocation=monthly_allocation if monthly_allocation is not None else value,
        )
    granted = _credit(
        session,
        graph_id,
        value,
        "allocation",
        description or "Monthly credit allocation",
        idempotency_key=invoice_grant_key(invoice_id),
        user_id=user_id,
        metadata={"invoice_id": invoice_id},
        set_allocation_date=True,
    )
    if granted and monthly_allocation is not None:
        session.execute(
            update(GraphCredits)
            .where(GraphCredits.graph_id == graph_id)
            .values(monthly_allocation=Decimal(str(monthly_allocation)))
        )
    return granted


def reset_allocation(
    session: Session,
    graph_id: str,
    key: str,
    monthly: Decimal | int,
    *,
    description: str,
    metadata: dict[str, Any] | None = None,
) -> bool:
    """A paid renewal: the monthly allocation RESETS to ``monthly`` (no rollover), purchased credits stay.

    In the caller's transaction (the renewal's), once per ``key`` (``invoice:<id>`` / ``period:<sub>:<n>``): the pool
    row is locked, the unused allocation (balance - purchased) is written off as an ``expiration`` row (key
    ``expire:<key>``) and the new allocation added as an ``allocation`` row keyed ``key``.  Σ ledger == balance holds.
    Returns False when this key was already applied (a replayed renewal resets once)."""
    pool = session.execute(
        select(GraphCredits.id, GraphCredits.current_balance, GraphCredits.purchased_balance)
        .where(GraphCredits.graph_id == graph_id)
        .with_for_update()
    ).one_or_none()
    if pool is None:
        raise _pool_missing(graph_id)
    grant_key, expire_key = (
        invoice_grant_key(key) if not key.startswith(("invoice:", "period:")) else key,
        f"expire:{key}",
    )
    seen = session.execute(
        select(func.count()).where(GraphCreditTransaction.idempotency_key.in_((grant_key, expire_key)))
    ).scalar_one()
    if seen:
        return False
    unused = Decimal(pool.current_balance) - Decimal(pool.purchased_balance)
    allocation = Decimal(str(monthly)).quantize(CENT)
    meta = {"reset": True, **(metadata or {})}
    if unused > 0:
        session.execute(
            pg_insert(GraphCreditTransaction).values(
                **_ledger_row(
                    str(pool.id),
                    graph_id,
                    "expiration",
                    -unused,
                    f"Unused allocation expired ({description})"[:500],
                    idempotency_key=expire_key,
                    metadata=meta,
                )
            )
        )
    if allocation > 0:
        session.execute(
            pg_insert(GraphCreditTransaction).values(
                **_ledger_row(
                    str(pool.id),
                    graph_id,
                    "allocation",
                    allocation,
                    description,
                    idempotency_key=grant_key,
                    metadata=meta,
                )
            )
        )
    session.execute(
        update(GraphCredits)
        .where(GraphCredits.id == pool.id)
        .values(
            current_balance=GraphCredits.purchased_balance + allocation,
            monthly_allocation=allocation,
            last_allocation_date=func.now(),
            updated_at=func.now(),
        )
    )
    return True


def grant_purchased(
    session: Session, graph_id: str, purchase_id: str, amount: Decimal | int, *, description: str
) -> bool:
    """Credits bought as a pack: added to the balance AND to ``purchased_balance`` (never reset), once per purchase
    (key ``credit_pack:<purchase_id>``).  True when this call granted them."""
    value = _amount(amount)
    granted = _credit(
        session,
        graph_id,
        value,
        "allocation",
        description,
        idempotency_key=f"credit_pack:{purchase_id}",
        metadata={"credit_purchase_id": purchase_id, "purchased": True},
    )
    if granted:
        session.execute(
            update(GraphCredits)
            .where(GraphCredits.graph_id == graph_id)
            .values(purchased_balance=GraphCredits.purchased_balance + value)
        )
    return granted


def consume(
    session: Session,
    graph_id: str,
    amount: Decimal | int | str,
    *,
    description: str = "Credit consumption",
    user_id: str | None = None,
    operation_id: str | None = None,
    idempotency_key: str | None = None,
    metadata: dict[str, Any] | None = None,
) -> Decimal:
    """Debit ``amount`` atomically; returns the new balance.  402 ``insufficient_credits`` when the balance is short.

    With ``idempotency_key`` a repeat returns the current balance without charging again.
    """
    value = _amount(amount)
    if idempotency_key is not None:
        with session.begin_nested():  # ledger first: a repeat key inserts nothing and charges nothing
            pool = _pool_id(session, graph_id)
            if pool is None:
                raise _pool_missing(graph_id)
            row = _ledger_row(
                pool,
                graph_id,
                "consumption",
                -value,
                description,
                idempotency_key=idempotency_key,
                user_id=user_id,
                operation_id=operation_id,
                metadata=metadata,
            )
            inserted = session.execute(
                pg_insert(GraphCreditTransaction)
                .values(**row)
                .on_conflict_do_nothing(index_elements=[GraphCreditTransaction.idempotency_key])
                .returning(GraphCreditTransaction.id)
            ).scalar_one_or_none()
            if inserted is None:
                current = balance(session, graph_id)
                return current if current is not None else Decimal("0")
            _, new_balance = _debit(session, graph_id, value)
        return new_balance
    pool, new_balance = _debit(session, graph_id, value)
    session.execute(
        pg_insert(GraphCreditTransaction).values(
            **_ledger_row(
                pool,
                graph_id,
                "consumption",
                -value,
                description,
                user_id=user_id,
                operation_id=operation_id,
                metadata=metadata,
            )
        )
    )
    return new_balance


#: the org's own low-balance threshold, read by the debit's RETURNING (no extra round trip)
_ORG_THRESHOLD = (
    select(OrgLimits.credits_low_threshold)
    .join(Graph, Graph.org_id == OrgLimits.org_id)
    .where(Graph.graph_id == GraphCredits.graph_id)
    .scalar_subquery()
)


def low_threshold(org_threshold: Decimal | None, monthly_allocation: Decimal) -> Decimal:
    """The balance below which ``credits.low`` is emitted: the org's threshold, else CREDITS_LOW_THRESHOLD_PERCENT of
    the graph's monthly allocation."""
    if org_threshold is not None:
        return Decimal(org_threshold)
    percent = Decimal(get_settings().credits_low_threshold_percent)
    return (Decimal(monthly_allocation) * percent / 100).quantize(CENT)


def _debit(session: Session, graph_id: str, value: Decimal) -> tuple[str, Decimal]:
    """The one conditional UPDATE -> (pool id, new balance).  Raises (402/404) when nothing was debited.

    The monthly allocation is spent first, purchased credits (``purchased_balance``) after it.  A debit that takes the
    balance from at-or-above the org's low threshold to below it enqueues ``credits.low`` once (two debits serialize on
    the row: only one of them crosses)."""
    row = session.execute(
        update(GraphCredits)
        .where(GraphCredits.graph_id == graph_id, GraphCredits.current_balance >= value)
        .values(
            current_balance=GraphCredits.current_balance - value,
            purchased_balance=func.least(GraphCredits.purchased_balance, GraphCredits.current_balance - value),
            updated_at=func.now(),
        )
        .returning(GraphCredits.id, GraphCredits.current_balance, GraphCredits.monthly_allocation, _ORG_THRESHOLD)
    ).one_or_none()
    if row is not None:
        threshold = low_threshold(row[3], row[2])
        new_balance = Decimal(row[1])
        if threshold > 0 and new_balance < threshold <= new_balance + value:
            outbox.enqueue(session, CREDITS_LOW_TASK, [graph_id, str(new_balance), str(threshold)])
            outbound.credits_low(
                session, graph_id, balance=new_balance, threshold=threshold, monthly_allocation=Decimal(row[2])
            )
    if row is None:
        current = balance(session, graph_id)
        if current is None:
            raise _pool_missing(graph_id)
        raise InsufficientCredits(
            "Not enough credits for this operation",
            extra={"required": str(value), "available": str(current)},
        )
    return str(row[0]), Decimal(row[1])


def refund(
    session: Session,
    graph_id: str,
    amount: Decimal | int | str,
    *,
    description: str = "Credit refund",
    idempotency_key: str | None = None,
    user_id: str | None = None,
    operation_id: str | None = None,
    metadata: dict[str, Any] | None = None,
) -> bool:
    """Give credits back (e.g. for a failed operation); idempotent with a key.  True when applied."""
    return _credit(
        session,
        graph_id,
        _amount(amount),
        "refund",
        description,
        idempotency_key=idempotency_key,
        user_id=user_id,
        operation_id=operation_id,
        metadata=metadata,
    )


def adjust(
    session: Session,
    graph_id: str,
    amount: Decimal | int | str,
    *,
    reason: str,
    actor: Actor | str | None = None,
    idempotency_key: str | None = None,
) -> Decimal:
    """Operator adjustment (positive or negative) with a billing audit row; returns the new balance.

    A negative adjustment larger than the balance -> 409 ``negative_balance``."""
    value = _amount(amount, allow_negative=True)
    who = Actor.coerce(actor)
    org_id = session.execute(select(Graph.org_id).where(Graph.graph_id == graph_id)).scalar_one_or_none()
    if value > 0:
        applied = _credit(
            session,
            graph_id,
            value,
            "adjustment",
            f"Adjustment: {reason}"[:500],
            idempotency_key=idempotency_key,
            user_id=who.user_id,
            metadata={"reason": reason, "actor": who.type},
        )
    else:
        with session.begin_nested():
            pool = _pool_id(session, graph_id)
            if pool is None:
                raise _pool_missing(graph_id)
            stmt = pg_insert(GraphCreditTransaction).values(
                **_ledger_row(
                    pool,
                    graph_id,
                    "adjustment",
                    value,
                    f"Adjustment: {reason}"[:500],
                    idempotency_key=idempotency_key,
                    user_id=who.user_id,
                    metadata={"reason": reason, "actor": who.type},
                )
            )
            if idempotency_key is not None:
                stmt = stmt.on_conflict_do_nothing(index_elements=[GraphCreditTransaction.idempotency_key])
            applied = session.execute(stmt.returning(GraphCreditTransaction.id)).scalar_one_or_none() is not None
            if applied:
                try:
                    _debit(session, graph_id, -value)
                except InsufficientCredits:
                    raise Conflict("The adjustment would make the balance negative", code="negative_balance") from None
    current = balance(session, graph_id)
    assert current is not None
    if applied:
        record_for_actor(
            session,
            "credits_adjusted",
            who,
            org_id=org_id,
            reason=reason,
            description=f"Credits adjusted by {value} on graph {graph_id}",
            data={"graph_id": graph_id, "amount": str(value), "balance": str(current)},
        )
    return current


def balance(session: Session, graph_id: str) -> Decimal | None:
    """Current balance, ``None`` when the graph has no pool."""
    value = session.execute(
        select(GraphCredits.current_balance).where(GraphCredits.graph_id == graph_id)
    ).scalar_one_or_none()
    return None if value is None else Decimal(value)


def ledger_sum(session: Session, graph_id: str) -> Decimal:
    """Σ of the pool's transactions (equals :func:`balance` by invariant)."""
    value = session.execute(
        select(func.coalesce(func.sum(GraphCreditTransaction.amount), 0))
        .join(GraphCredits, GraphCredits.id == GraphCreditTransaction.graph_credits_id)
        .where(GraphCredits.graph_id == graph_id)
    ).scalar_one()
    return Decimal(value)


# --- async wrappers (same code, on an AsyncSession) ------------------------------------------------------------


async def consume_async(session: AsyncSession, graph_id: str, amount: Decimal | int | str, **kwargs: Any) -> Decimal:
    return await session.run_sync(lambda s: consume(s, graph_id, amount, **kwargs))


async def grant_for_invoice_async(
    session: AsyncSession, graph_id: str, invoice_id: str, amount: Decimal | int | str, **kwargs: Any
) -> bool:
    return await session.run_sync(lambda s: grant_for_invoice(s, graph_id, invoice_id, amount, **kwargs))


async def refund_async(session: AsyncSession, graph_id: str, amount: Decimal | int | str, **kwargs: Any) -> bool:
    return await session.run_sync(lambda s: refund(s, graph_id, amount, **kwargs))


async def adjust_async(session: AsyncSession, graph_id: str, amount: Decimal | int | str, **kwargs: Any) -> Decimal:
    return await session.run_sync(lambda s: adjust(s, graph_id, amount, **kwargs))


async def balance_async(session: AsyncSession, graph_id: str) -> Decimal | None:
    return await session.run_sync(lambda s: balance(s, graph_id))
