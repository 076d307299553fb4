"""The README quotes no verdict by hand: every findings table in it is the rendering of a committed
docs/findings/<study>.json (analysis/readme_tables.py), and every committed findings file is quoted."""

from __future__ import annotations

from pathlib import Path

from analysis.readme_tables import blocks, table

ROOT = Path(__file__).resolve().parents[1]


def test_readme_tables_equal_the_committed_findings_files():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    found = blocks(text, ROOT)
    lines = text.splitlines()
    for start, end, src in found:
        assert src.exists(), f"README quotes {src}, which is not committed"
        assert lines[start:end] == table(src), (f"README table under {src.name} differs from the file: run "
                                                f"python -m analysis.readme_tables README.md")
    quoted = {src.resolve() for _, _, src in found}
    committed = {p.resolve() for p in (ROOT / "docs" / "findings").glob("*.json")}
    assert committed <= quoted, f"committed but not quoted in the README: {sorted(committed - quoted)}"
    assert found, "the README quotes no findings file"
