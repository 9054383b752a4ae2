"""The event catalogue: every type a customer endpoint can subscribe to (the README shows this table; a CHECK
constraint holds the vocabulary, see revision 0b16e7d2c4a9)."""

from __future__ import annotations

from robosystems.models.outbound import EVENT_TYPES as VOCABULARY

#: type -> when it is sent (README "Event catalogue"); the types are the models' vocabulary (CHECK constraints)
EVENT_TYPES: dict[str, str] = {
    "org.updated": "the organization's name or type changed (`previous_attributes` holds the old values)",
    "org.deleted": "the organization was deleted (restorable by an operator until `restorable_until`)",
    "member.added": "a person joined the organization (an invitation was accepted)",
    "member.removed": "a member was removed or left",
    "member.role_changed": "a member's role changed (also both sides of an ownership transfer)",
    "invitation.created": "someone was invited",
    "invitation.accepted": "an invitation was accepted",
    "subscription.created": "a subscription was created (checkout started, or a graph bought with a card on file)",
    "subscription.updated": "a subscription's status changed (other than to canceled), or `cancel_at_period_end` "
    "changed (a cancellation scheduled or taken back)",
    "subscription.canceled": "a subscription was canceled",
    "invoice.paid": "an invoice was paid (once per invoice)",
    "invoice.payment_failed": "a payment attempt for an invoice failed (once per attempt)",
    "graph.provisioned": "a paid graph was created and is ready",
    "graph.provisioning_failed": "provisioning a paid graph failed for good (the payment is compensated)",
    "graph.read_only": "a graph became read-only (subscription ended, unpaid or paused, or past due beyond grace)",
    "graph.deleted": "a graph's database was removed (retention after the subscription ended)",
    "credits.low": "a graph's credit balance fell below the threshold (% of its monthly allocation)",
    "ping": "sent by POST …/webhook-endpoints/{id}/test only",
}

assert tuple(EVENT_TYPES) == VOCABULARY, "the catalogue and the CHECK vocabulary must list the same types"

#: what an endpoint may subscribe to (``ping`` is sent to one endpoint on request, whatever it subscribes to)
SUBSCRIBABLE: tuple[str, ...] = tuple(t for t in EVENT_TYPES if t != "ping")


def catalogue_markdown() -> str:
    """The catalogue as a Markdown table (kept in the README; a test checks they agree)."""
    lines = ["| event | sent when |", "|---|---|"]
    lines += [f"| `{name}` | {when} |" for name, when in EVENT_TYPES.items()]
    return "\n".join(lines)
