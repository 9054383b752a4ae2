"""HTML of the local provider's hosted pages (``templates/*.html``, ``string.Template``, every value escaped)."""

from __future__ import annotations

from functools import cache
from html import escape
from importlib import resources
from string import Template

from robosystems.payments.local import CheckoutView
from robosystems.payments.local_changes import PortalView

#: Served with every page: nothing but our own inline styles, never framed.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'; base-uri 'none'",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
}


@cache
def _template(name: str) -> Template:
    return Template(resources.files("robosystems.payments").joinpath("templates", name).read_text(encoding="utf-8"))


def layout(title: str, body: str) -> str:
    return _template("layout.html").substitute(title=escape(title), body=body)


def checkout_page(view: CheckoutView) -> str:
    base = f"/billing/local/checkout/{escape(view.session_id, quote=True)}"
    error = f'<p class="error" id="error">{escape(view.error)}</p>' if view.error else ""
    body = _template("checkout.html").substitute(
        description=escape(view.description),
        amount=escape(view.amount_display),
        interval=escape(view.interval),
        session_id=escape(view.session_id),
        expires_at=f"{view.expires_at:%Y-%m-%d %H:%M}",
        error=error,
        pay_action=f"{base}/pay",
        cancel_action=f"{base}/cancel",
    )
    return layout("Checkout", body)


def message_page(
    title: str, message: str, *, status: str, ok: bool = True, details: str = "", links: dict[str, str] | None = None
) -> str:
    link_html = "".join(
        f'<p><a href="{escape(href, quote=True)}">{escape(label)}</a></p>' for label, href in (links or {}).items()
    )
    body = _template("message.html").substitute(
        css_class="ok" if ok else "error",
        status=escape(status, quote=True),
        message=escape(message),
        details=details,
        links=link_html,
    )
    return layout(title, body)


def session_page(view: CheckoutView, *, delivered: bool) -> str:
    """A session that is no longer open (paid or expired)."""
    if view.status == "complete":
        if delivered:
            return message_page(
                "Payment received", "Payment received. Thank you!", status="paid", links={"Continue": view.success_url}
            )
        return message_page(
            "Payment received",
            "Payment received; the confirmation could not be delivered yet. Reload this page to retry.",
            status="paid_pending_confirmation",
            ok=False,
        )
    return message_page(
        "Checkout ended",
        "This checkout session has expired or was canceled.",
        status="expired",
        ok=False,
        links={"Back": view.cancel_url},
    )


def portal_page(view: PortalView, *, error: str | None = None) -> str:
    base = f"/billing/local/portal/{escape(view.portal_id, quote=True)}"
    subscriptions = (
        "".join(
            "<tr>"
            f'<td>{escape(sub.description)}</td><td class="status" data-status="{escape(sub.status, quote=True)}">'
            f"{escape(sub.status)}{' (cancels at period end)' if sub.cancel_at_period_end else ''}</td>"
            f"<td>{f'renews {sub.current_period_end:%Y-%m-%d}' if sub.current_period_end else ''}</td><td>"
            + (
                ""
                if sub.cancel_at_period_end or sub.status == "canceled"
                else f'<form method="post" action="{base}/subscriptions/{escape(sub.id, quote=True)}/cancel">'
                f'<button type="submit" class="cancel" id="cancel-{escape(sub.id, quote=True)}">Cancel</button></form>'
            )
            + "</td></tr>"
            for sub in view.subscriptions
        )
        or "<tr><td>No subscriptions</td></tr>"
    )
    invoices = (
        "".join(
            f'<tr class="invoice" data-invoice="{escape(inv.id, quote=True)}"><td>{escape(inv.number)}</td>'
            f"<td>{inv.created:%Y-%m-%d}</td><td>{inv.amount_cents / 100:,.2f} {escape(inv.currency.upper())}</td>"
            f"<td>{escape(inv.status)}</td>"
            f'<td><a class="pdf" href="{escape(inv.pdf_url, quote=True)}">PDF</a></td></tr>'
            for inv in view.invoices
        )
        or "<tr><td>No invoices</td></tr>"
    )
    body = _template("portal.html").substitute(
        customer_id=escape(view.customer_id),
        payment_method=escape(view.payment_method),
        error=f'<p class="error" id="error">{escape(error)}</p>' if error else "",
        card_action=f"{base}/payment-method",
        subscriptions=subscriptions,
        invoices=invoices,
        return_url=escape(view.return_url, quote=True),
    )
    return layout("Billing portal", body)
