"""The README's verdict tables are generated from the committed findings files, never typed: each table follows a
marker ``<!-- findings: docs/findings/<study>.json -->`` and is this module's rendering of that file
(tests/test_readme_findings.py checks every one). After committing a new findings.json:

    python -m analysis.readme_tables README.md      # rewrites the tables under the markers in place
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

MARKER = re.compile(r"^<!-- findings: (\S+) -->$")
_MARK = {"yes": "yes", "no": "**no**", "inconclusive": "*inconclusive*", "n/a": "n/a", "": ""}


def table(findings_json: Path) -> list[str]:
    """The verdict table of one study: claim, status, effect [95% CI], raw and adjusted verdicts."""
    found = json.loads(Path(findings_json).read_text(encoding="utf-8"))["findings"]
    lines = ["| claim | family | status | observed (effect [95% CI]) | verdict | adjusted |", "|---|---|---|---|---|---|"]
    for f in found:
        adj = _MARK[f.get("adjusted") or ""] + (f" ({f['correction']} p={f['p_adjusted']:.3g})"
                                                 if f.get("p_adjusted") is not None else "")
        lines.append(f"| `{f['id']}`: {f['claim']} | {f['family']} | {f['status']} | {f['observed']} | "
                     f"{_MARK[f['verdict']]} | {adj} |")
    return lines


def blocks(text: str, root: Path) -> list[tuple[int, int, Path]]:
    """(first line of the table, line after it, findings file) for every marker of a README."""
    lines = text.splitlines()
    out = []
    for i, line in enumerate(lines):
        m = MARKER.match(line.strip())
        if m:
            j = i + 1
            while j < len(lines) and lines[j].startswith("|"):
                j += 1
            out.append((i + 1, j, root / m.group(1)))
    return out


def rewrite(readme: Path) -> str:
    text = Path(readme).read_text(encoding="utf-8")
    lines = text.splitlines()
    for start, end, src in reversed(blocks(text, Path(readme).parent)):
        lines[start:end] = table(src)
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    path = Path(sys.argv[1] if len(sys.argv) > 1 else "README.md")
    path.write_text(rewrite(path), encoding="utf-8")
    print(f"rewrote the findings tables of {path}")
