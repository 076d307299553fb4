"""From conversations to masked examples: tokenize once, apply any number of regimes, count every drop.

Nothing is dropped silently: every removed example is counted under a reason, with its source (file:line)
kept for the first few, and callers (training, `harness inspect`) report the counts.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Sequence

import numpy as np

from harness.data.formats import Conversation
from harness.data.tokenize import ConversationTokenizer, Segment, Tokenized

if TYPE_CHECKING:
    from harness.masking import Masked

_KEEP_SOURCES = 5


@dataclass
class Drops:
    """Counted drops: reason -> count, and the first few sources per reason."""

    counts: Counter = field(default_factory=Counter)
    sources: dict[str, list[str]] = field(default_factory=dict)

    def add(self, reason: str, source: str) -> None:
        self.counts[reason] += 1
        lst = self.sources.setdefault(reason, [])
        if len(lst) < _KEEP_SOURCES:
            lst.append(source)

    def merged(self, other: "Drops") -> "Drops":
        out = Drops(Counter(self.counts), {k: list(v) for k, v in self.sources.items()})
        for reason, n in other.counts.items():
            out.counts[reason] += n
            out.sources.setdefault(reason, []).extend(other.sources.get(reason, [])[:_KEEP_SOURCES])
        return out

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def describe(self) -> str:
        if not self.counts:
            return "none"
        return ", ".join(f"{n} {r} (e.g. {', '.join(self.sources.get(r, [])[:2])})" for r, n in self.counts.items())


def tokenize_all(conversations: Sequence[Conversation], ct: ConversationTokenizer, *, chunk: int = 1024
                 ) -> tuple[list[Tokenized], Drops]:
    """Tokenize every conversation once (in chunks, for the fast tokenizer's batch path)."""
    drops = Drops()
    out: list[Tokenized] = []
    for i in range(0, len(conversations), chunk):
        part = conversations[i:i + chunk]
        for conv, t in zip(part, ct([c.as_list() for c in part], [c.source for c in part])):
            if t is None:
                drops.add("longer_than_max_length", conv.source)
            else:
                out.append(t)
    return out, drops


@dataclass
class MaskedData:
    """Examples kept under one regime, their masks, and what was dropped (and why)."""

    regime: str
    options: dict
    examples: list[Tokenized]
    masks: list[Masked]
    drops: Drops

    def stats(self) -> dict:
        from harness.masking import mask_hash  # harness.masking imports harness.data

        n_tok = int(sum(len(t) for t in self.examples))
        n_sup = int(sum(m.n_supervised for m in self.masks))
        w_sum = float(sum(float(m.weights.sum()) for m in self.masks))
        resp = int(sum(int(np.isin(t.segments, [Segment.ASSISTANT, Segment.EOT]).sum()) for t in self.examples))
        return {
            "regime": self.regime, "options": dict(self.options),
            "examples": len(self.examples), "dropped": self.drops.total, "drop_reasons": dict(self.drops.counts),
            "tokens": n_tok, "supervised_tokens": n_sup, "weight_sum": round(w_sum, 4),
            "supervised_fraction": round(n_sup / n_tok, 6) if n_tok else 0.0,
            "response_tokens": resp,
            "truncated_examples": sum(1 for t in self.examples if t.truncated),
            "boundary": dict(Counter(t.boundary for t in self.examples)),
            "turns_without_eot": int(sum(t.no_eot_turns for t in self.examples)),
            "mask_hash": mask_hash(self.masks, [t.input_ids for t in self.examples]),
        }


def apply_all(examples: Sequence[Tokenized], regime: str, options: dict | None = None,
              drops: Drops | None = None) -> MaskedData:
    """Apply a regime to every example; an example left with zero supervised tokens (e.g. its response was
    truncated away) is dropped and counted, never trained on."""
    from harness.masking import apply_regime  # harness.masking imports harness.data

    options = dict(options or {})
    kept, masks = [], []
    d = Drops().merged(drops) if drops is not None else Drops()
    for t in examples:
        m = apply_regime(t, regime, **options)
        if m.n_supervised == 0:
            d.add("zero_supervised_tokens" + ("_after_truncation" if t.truncated else ""), t.source)
            continue
        kept.append(t)
        masks.append(m)
    return MaskedData(regime, options, kept, masks, d)
