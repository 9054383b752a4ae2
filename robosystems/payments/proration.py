"""The proration formula Stripe uses (and the local provider reproduces to the second).

For a change at ``at`` inside the period ``[start, end)`` the unused time of the old price is credited and the
remaining time of the new price charged, each line rounded to the cent on its own::

    credit = -round(old_unit * old_qty * (end - at) / (end - start))
    charge =  round(new_unit * new_qty * (end - at) / (end - start))

Stripe computes prorations "down to the second" from the period start and the proration date; a preview and the
real change made with the same proration date give the same lines.
"""

from __future__ import annotations

from datetime import UTC, datetime
from fractions import Fraction

from robosystems.payments.base import ChangeLine


def _round(value: Fraction) -> int:
    """Half away from zero (a cent exactly in the middle goes to the larger magnitude)."""
    magnitude = abs(value)
    whole = int(magnitude)
    if magnitude - whole >= Fraction(1, 2):
        whole += 1
    return whole if value >= 0 else -whole


def remaining_fraction(start: int, end: int, at: int) -> Fraction:
    if end <= start:
        return Fraction(0)
    at = min(max(at, start), end)
    return Fraction(end - at, end - start)


def _label(name: str, quantity: int) -> str:
    return name if quantity == 1 else f"{quantity} × {name}"


def proration_lines(
    *,
    old_name: str,
    old_unit: int,
    old_quantity: int,
    new_name: str,
    new_unit: int,
    new_quantity: int,
    start: int,
    end: int,
    at: int,
) -> list[ChangeLine]:
    fraction = remaining_fraction(start, end, at)
    day = datetime.fromtimestamp(at, UTC).strftime("%d %b %Y")
    return [
        ChangeLine(
            f"Unused time on {_label(old_name, old_quantity)} after {day}", -_round(old_unit * old_quantity * fraction)
        ),
        ChangeLine(
            f"Remaining time on {_label(new_name, new_quantity)} after {day}",
            _round(new_unit * new_quantity * fraction),
        ),
    ]
