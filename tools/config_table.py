"""Regenerate the README's configuration table from .env.example (the one place defaults and
meanings are written).  Usage: .venv/bin/python tools/config_table.py  (rewrites README.md)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
START, END = "<!-- config-table:start -->", "<!-- config-table:end -->"


def table() -> str:
    out = []
    for line in (ROOT / ".env.example").read_text().splitlines():
        section = re.match(r"# --- (.+?) ---", line)
        if section:
            out.append(f"| **{section.group(1)}** | | |")
            continue
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, rest = line.partition("=")
        value, _, comment = rest.partition("  #")
        value = value.strip().split(" #")[0].strip()
        shown = f"`{value}`" if value else "(unset)"
        out.append(f"| `{key.strip()}` | {shown} | {comment.strip().lstrip('#').strip().replace('|', '/')} |")
    return "\n".join(["| setting | default | meaning |", "|---|---|---|", *out])


def main() -> None:
    readme = (ROOT / "README.md").read_text()
    before, _, rest = readme.partition(START)
    _, _, after = rest.partition(END)
    (ROOT / "README.md").write_text(f"{before}{START}\n{table()}\n{END}{after}")


if __name__ == "__main__":
    main()
