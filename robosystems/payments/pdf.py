"""A one-page PDF of an invoice, for the local provider's ``invoice_pdf`` links.

Plain text in the standard Helvetica font (no embedded fonts or images), so the document is a few hundred bytes
of PDF 1.4 written directly: a catalog, one page, one content stream and the cross-reference table.  A PDF library
(fpdf2 would pull in Pillow and fontTools) is not worth it for a stand-in provider's receipts.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any


def _escape(text: str) -> str:
    ascii_text = text.encode("latin-1", "replace").decode("latin-1")
    return ascii_text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")


def _money(cents: int, currency: str) -> str:
    return f"{cents / 100:,.2f} {currency.upper()}"


def text_pdf(lines: list[str]) -> bytes:
    """A valid one-page PDF showing ``lines`` top to bottom."""
    body = ["BT", "/F1 11 Tf", "14 TL", "56 790 Td"]
    for index, line in enumerate(lines):
        body.append(f"({_escape(line)}) Tj" if index == 0 else f"({_escape(line)}) '")
    body.append("ET")
    stream = "\n".join(body).encode("latin-1")
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 595 842] /Resources << /Font << /F1 4 0 R >> >> "
        b"/Contents 5 0 R >>",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>",
        b"<< /Length " + str(len(stream)).encode() + b" >>\nstream\n" + stream + b"\nendstream",
    ]
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, obj in enumerate(objects, start=1):
        offsets.append(len(out))
        out += f"{number} 0 obj\n".encode() + obj + b"\nendobj\n"
    xref = len(out)
    out += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    out += b"".join(f"{offset:010d} 00000 n \n".encode() for offset in offsets)
    out += f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode()
    return bytes(out)


def invoice_pdf(invoice: dict[str, Any]) -> bytes:
    currency = str(invoice.get("currency") or "usd")
    created = datetime.fromtimestamp(int(invoice.get("created") or 0), UTC)
    lines = [
        "RoboSystems - invoice (local payment provider: no real payment is taken)",
        "",
        f"Invoice {invoice.get('number') or invoice['id']}",
        f"Date: {created:%Y-%m-%d %H:%M} UTC",
        f"Status: {invoice.get('status')}",
        "",
    ]
    for line in (invoice.get("lines") or {}).get("data") or []:
        lines.append(f"{line.get('description') or 'Item'}:  {_money(int(line.get('amount') or 0), currency)}")
    lines += ["", f"Total: {_money(int(invoice.get('total') or 0), currency)}"]
    lines.append(f"Paid: {_money(int(invoice.get('amount_paid') or 0), currency)}")
    return text_pdf(lines)
