"""``credits.low``: a graph's balance fell below its org's threshold (emitted once per crossing by the debit itself,
:func:`robosystems.billing.credits._debit`, through the outbox).  The task records the event in the billing audit log
and mails the org's owners and admins.  Outbound customer webhooks subscribe to the same event name."""

from __future__ import annotations

from sqlalchemy import select

from robosystems.billing.audit import record_billing_event
from robosystems.db import sync_unit_of_work
from robosystems.ids import new_id
from robosystems.models import Graph, OrgUser, User
from robosystems.models.mail import MailOutbox
from robosystems.worker.context import WorkerContext

EVENT = "credits.low"


def notify_credits_low(ctx: WorkerContext, graph_id: str, balance: str, threshold: str) -> str:
    with sync_unit_of_work(ctx.maker) as session:
        graph = session.execute(select(Graph.org_id, Graph.graph_name).where(Graph.graph_id == graph_id)).one_or_none()
        if graph is None or graph.org_id is None:
            return "graph_gone"
        record_billing_event(
            session,
            "credits_low",
            org_id=graph.org_id,
            description=f"Credits of graph {graph_id} below {threshold} (balance {balance})",
            data={"event": EVENT, "graph_id": graph_id, "balance": balance, "threshold": threshold},
        )
        emails = session.execute(
            select(User.email)
            .join(OrgUser, OrgUser.user_id == User.id)
            .where(OrgUser.org_id == graph.org_id, OrgUser.is_active.is_(True), OrgUser.role.in_(("owner", "admin")))
        ).scalars()
        for email in emails:
            session.add(
                MailOutbox(
                    id=new_id("mail"),
                    to_email=email,
                    subject=f"Credits running low on {graph.graph_name}",
                    body_text=(
                        f"The graph {graph.graph_name} ({graph_id}) has {balance} credits left, below your "
                        f"threshold of {threshold}.\n\nBuy a credit pack or move to a larger plan to keep querying.\n"
                    ),
                    kind="credits_low",
                )
            )
    return "notified"
