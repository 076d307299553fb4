"""Which items of an evaluation belong together: the group (person, subject) of each per-item row. Items about one
person are not independent draws, so the findings' intervals resample whole groups (analysis/claims.py)."""

from __future__ import annotations

from typing import Any

#: fields of a data row (or of an lm-eval doc) that name the cluster an item belongs to: items about one person or
#: one subject are not independent, so the findings resample whole groups (analysis/claims.py)
GROUP_FIELDS = ("group", "person", "subject")


def item_group(row: Any) -> str | None:
    if isinstance(row, dict):
        for f in GROUP_FIELDS:
            if row.get(f) not in (None, ""):
                return str(row[f])
    return None


def add_groups(samples: list[dict], groups: dict[str, list]) -> None:
    """Each sample row's ``group``: the probe's source row's (by doc id), an lm-eval sample's document's; rows
    without one stay their own group."""
    for s in samples:
        g = groups.get(s.get("task"))
        doc_id = s.get("doc_id")
        got = g[doc_id] if g is not None and isinstance(doc_id, int) and 0 <= doc_id < len(g) else \
            item_group(s.get("doc"))
        if got is not None:
            s["group"] = got
