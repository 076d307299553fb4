"""Train/inference parity: does every trained assistant turn follow exactly the prompt inference builds?

At inference the model sees ``apply_chat_template(history, add_generation_prompt=True)`` (P) and generates the
turn; the template's rendering of ``history + [turn]`` (E) says what it should generate (E after P, through the
turn's end of turn). For each assistant turn a regime trains (any token of the turn with weight > 0), the
training example must hold (1) P as its text before the turn and (2) the same tokens as E's tokenization from
there through the turn's end. Templates break this in known ways: Qwen3-style templates drop the reasoning of
turns before the last user query (so a multi-turn conversation rendered once trains those turns without the
reasoning inference would produce first: ms-swift#4939, LLaMA-Factory#9083), and generation prompts that differ
from the history's assistant header. ``harness doctor`` and ``harness inspect`` report each mismatch with the
first differing token; ``regime.multiturn: per_turn`` or ``regime.turns: last`` are the usual fixes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from harness.data.formats import Conversation
from harness.data.locate import common_length, prepare
from harness.data.prepare import per_turn, tokenize_all
from harness.data.tokenize import RESPONSE_SEGMENTS, ConversationTokenizer, Tokenized
from harness.masking import apply_regime


@dataclass
class ParityIssue:
    source: str
    turn: int  # message index of the assistant turn
    token: int  # index of the first differing token in the training example
    train: str  # that token in the training example ('' past its end)
    inference: str  # the token inference has there
    reason: str

    def describe(self) -> str:
        return (f"{self.source} turn {self.turn}: {self.reason}; first differing token #{self.token}: "
                f"training {self.train!r} vs inference {self.inference!r}")


@dataclass
class Parity:
    template: str  # the template's name (model.chat_template, else the tokenizer's name)
    turns_checked: int = 0
    issues: list[ParityIssue] = field(default_factory=list)  # the first few
    mismatches: int = 0  # every mismatching turn

    @property
    def ok(self) -> bool:
        return not self.mismatches

    def describe(self) -> str:
        if self.ok:
            return f"template {self.template}: {self.turns_checked} trained turns follow the inference prompt exactly"
        return (f"template {self.template}: {self.mismatches} of {self.turns_checked} trained turns differ from "
                "inference; " + "; ".join(i.describe() for i in self.issues[:2]))


def _tok(tokenizer, i: int) -> str:
    return tokenizer.decode([int(i)], skip_special_tokens=False, clean_up_tokenization_spaces=False)


def _token_at(t: Tokenized, char: int) -> int:
    """Index of the first token of `t` that ends after character `char`."""
    return int(np.searchsorted(t.offsets[:, 1], char, side="right"))


def _turn_end(t: Tokenized, k: int) -> int:
    """One past the last token of turn k's response (content, tool calls, reasoning, end of turn)."""
    idx = np.flatnonzero((t.turns == k) & np.isin(t.segments, RESPONSE_SEGMENTS))
    return int(idx[-1]) + 1 if len(idx) else 0


def _check_turn(ct: ConversationTokenizer, conv: Conversation, t: Tokenized, k: int) -> ParityIssue | None:
    r, tok = ct.renderer, ct.tokenizer
    msgs, _ = prepare(r.template, conv.as_list(), conv.tools, conv.source)
    prompt = r.render_text(msgs[:k], conv.tools, add_generation_prompt=True)
    if not t.text.startswith(prompt):
        at = common_length(t.text, prompt)
        j = _token_at(t, at)
        want = tok.encode(prompt[at:], add_special_tokens=False)[:1]
        return ParityIssue(conv.source, k, j, _tok(tok, t.input_ids[j]) if j < len(t) else "",
                           _tok(tok, want[0]) if want else "", "the text before this turn is not the prompt "
                           "inference builds (apply_chat_template(history, add_generation_prompt=True))")
    finals = tokenize_all([Conversation(tuple(conv.messages[:k + 1]), conv.source, conv.tools)], ct)[0]
    if not finals:  # dropped as too long: nothing to compare
        return None
    final = finals[0]
    if not final.text.startswith(prompt):
        return ParityIssue(conv.source, k, _token_at(t, len(prompt)), "", "", "the template renders this turn's "
                           "header differently after the generation prompt")
    s_train, s_inf = _token_at(t, len(prompt)), _token_at(final, len(prompt))
    a, b = t.input_ids[s_train:_turn_end(t, k)], final.input_ids[s_inf:_turn_end(final, k)]
    if len(a) == len(b) and (a == b).all():
        return None
    d = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    return ParityIssue(conv.source, k, s_train + d, _tok(tok, a[d]) if d < len(a) else "",
                       _tok(tok, b[d]) if d < len(b) else "", "the trained turn differs from what the template "
                       "renders when this turn is the last (what inference must generate)")


def check_parity(conversations: Sequence[Conversation], ct: ConversationTokenizer, regime: str,
                 options: dict | None = None, *, template: str = "", limit: int = 64,
                 max_issues: int = 5) -> Parity:
    """Parity of the first `limit` conversations' trained turns under a regime (see the module docstring)."""
    options = dict(options or {})
    convs = list(conversations[:limit])
    if options.get("multiturn") == "per_turn":
        convs = per_turn(convs)
    examples, _ = tokenize_all(convs, ct)
    by_source = {c.source: c for c in convs}
    out = Parity(template or str(getattr(ct.tokenizer, "name_or_path", "") or "the tokenizer's template"))
    for t in examples:
        if t.truncated:  # a cut example is compared with nothing whole
            continue
        w = apply_regime(t, regime, **options).weights
        for k in sorted({int(x) for x in np.unique(t.turns[w > 0])}):
            if t.roles[k] != "assistant":
                continue
            out.turns_checked += 1
            issue = _check_turn(ct, by_source[t.source], t, k)
            if issue is not None:
                out.mismatches += 1
                if len(out.issues) < max_issues:
                    out.issues.append(issue)
    return out
