"""Findings and their text/JSON rendering, shared by the preflight and the verification."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

Severity = Literal["blocker", "fail", "warning", "info", "ok"]
ORDER: dict[str, int] = {"blocker": 0, "fail": 0, "warning": 1, "info": 2, "ok": 3}
HEADINGS = {
    "blocker": "BLOCKERS: the upgrade stops (before changing anything) until these are resolved",
    "fail": "FAILED CHECKS",
    "warning": "WARNINGS: the upgrade runs; review these",
    "info": "WHAT THE UPGRADE WILL DO WITH THE LEGACY DATA",
    "ok": "PASSED",
}


@dataclass
class Finding:
    id: str
    severity: Severity
    title: str
    count: int = 0
    edge_case: str | None = None  # legacy-schema.md E1..E11
    detail: str = ""
    examples: list[str] = field(default_factory=list)
    remedy: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def render(findings: list[Finding], *, show_ok: bool = True, headings: dict[str, str] | None = None) -> list[str]:
    lines: list[str] = []
    titles = {**HEADINGS, **(headings or {})}
    for severity in ("blocker", "fail", "warning", "info", "ok"):
        group = [f for f in findings if f.severity == severity]
        if not group or (severity == "ok" and not show_ok):
            continue
        lines.append("")
        lines.append(f"{titles[severity]} ({len(group)})")
        for f in group:
            tag = f"[{f.edge_case}] " if f.edge_case else ""
            lines.append(f"  - {tag}{f.id}: {f.title}" + (f" ({f.count:,})" if f.count else ""))
            if f.detail:
                lines.append(f"      {f.detail}")
            if f.examples:
                lines.append("      e.g. " + "; ".join(f.examples))
            if f.remedy:
                lines.append(f"      fix: {f.remedy}")
    return lines


def table(rows: Sequence[Sequence[str]], headers: Sequence[str]) -> list[str]:
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows, strict=False)]
    fmt = "  ".join("{:<" + str(w) + "}" for w in widths)
    out = [fmt.format(*headers), fmt.format(*("-" * w for w in widths))]
    out += [fmt.format(*(str(x) for x in row)) for row in rows]
    return out
