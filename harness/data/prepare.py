"""From conversations to tokenized examples, once, counting every drop (the regimes are applied by
harness.masking.apply_all).

Nothing is dropped silently: every removed example is counted under a reason, with its source (file:line)
kept for the first few, and callers (training, `harness inspect`) report the counts.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Sequence

from harness.data.formats import Conversation
from harness.data.tokenize import ConversationTokenizer, Tokenized

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


def per_turn(conversations: Sequence[Conversation]) -> list[Conversation]:
    """One example per assistant turn (regime.multiturn: per_turn): the conversation up to and including that
    turn, so the template renders it as the final turn (with its own reasoning) after the history as inference
    renders it. Sources read "file:line#turn K" (K: the message index of the turn)."""
    out = []
    for c in conversations:
        for k, m in enumerate(c.messages):
            if m["role"] == "assistant":
                out.append(Conversation(c.messages[:k + 1], f"{c.source}#turn{k}", c.tools, c.ignored))
    return out


def tokenize_all(conversations: Sequence[Conversation], ct: ConversationTokenizer, *, chunk: int = 1024
                 ) -> tuple[list[Tokenized], Drops]:
    """Tokenize every conversation once (in chunks, for the fast tokenizer's batch path)."""
    drops = Drops()
    out: list[Tokenized] = []
    for i in range(0, len(conversations), chunk):
        part = conversations[i:i + chunk]
        for conv, t in zip(part, ct([c.as_list() for c in part], [c.source for c in part], [c.tools for c in part])):
            if t is None:
                drops.add("longer_than_max_length", conv.source)
            else:
                if conv.ignored:
                    t.meta["ignored_fields"] = conv.ignored
                out.append(t)
    return out, drops
