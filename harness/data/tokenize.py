"""One tokenization path: render with the chat template, tokenize once with offsets, give every token a segment.

Why character offsets: the only ground truth for "which tokens are the response" is where each message's
content sits in the rendered text. Templates without ``{% generation %}`` tags (most of them) and BPE merges
across the prompt/response boundary both break the usual "tokenize the prompt separately and count" trick
(trl#598, trl#5213, transformers#34172). We instead:

1. render the conversation once with unique placeholders as contents, which shows exactly which template
   text surrounds each message (cached per role sequence), and check that rendering the real contents gives
   the same text with the contents in place (otherwise: sequential search, otherwise a clear TemplateError);
2. mark every character with a segment (template, system, user, tool, assistant content, assistant
   end-of-turn) and a turn index;
3. tokenize the rendered text once with offsets and map characters to tokens.

**Straddling tokens** (a token whose characters come from two segments, e.g. ``": 4"`` when the template
ends with ``": "`` and the response starts with ``"4"``):

* At a **response boundary** (where assistant content / end-of-turn begins or ends) the ``boundary`` policy
  decides. ``split`` (default): that conversation is tokenized piecewise, cut at its response boundaries
  only, so no token crosses one. This is what inference does: the prompt (every earlier turn included) is
  tokenized as one string and the model generates the response from the boundary, so training sees
  exactly the prompt tokens it will be given and the response tokens it will have to produce. If the
  pieces do not decode to the same text (e.g. a SentencePiece tokenizer that adds a prefix space to every
  piece) we fall back to ``merge`` and count it (``boundary='merged_fallback'``). ``merge``: keep the joint
  tokenization.
* Every other straddling token (e.g. ``"User: What"`` merging template and user text, or any token under
  ``merge``) takes the segment of highest priority among its characters: assistant content > end-of-turn >
  prompt (system/user/tool) > template. So a token carrying any response character is supervised under
  ``prompt_masked`` (the response is never cut) and one carrying prompt and template characters is prompt.
"""

from __future__ import annotations

import re
from bisect import bisect_right
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any, Sequence

import numpy as np

from harness.data.locate import inline_think_marks
from harness.data.render import TemplateRenderer
from harness.errors import DataError


class Segment(IntEnum):
    """Per-token segment ids. Regimes are pure functions of these (see harness.masking)."""

    TEMPLATE = 0  # chat-template/control text: role headers, separators, BOS, default system prompts
    SYSTEM = 1  # system message content
    USER = 2  # user message content
    ASSISTANT = 3  # assistant message content
    EOT = 4  # the assistant's end-of-turn marker (e.g. <|im_end|>): the model must learn to stop
    TOOL = 5  # tool message content (treated as prompt)
    REPLAY = 6  # pretraining-style text mixed into the steps (data.replay; never part of a conversation)
    TOOL_CALL = 7  # an assistant turn's tool calls as the template renders them (with their wrapper text)
    REASONING = 8  # an assistant turn's reasoning with its <think> tags (reasoning_content or inline)
    EMPTY_REASONING = 9  # an empty <think></think> block the assistant turn generates


ROLE_SEGMENT = {"system": Segment.SYSTEM, "user": Segment.USER, "assistant": Segment.ASSISTANT,
                "tool": Segment.TOOL}
PROMPT_SEGMENTS = (Segment.SYSTEM, Segment.USER, Segment.TOOL)
RESPONSE_SEGMENTS = (Segment.ASSISTANT, Segment.EOT, Segment.TOOL_CALL, Segment.REASONING, Segment.EMPTY_REASONING)
# merge-policy priority of a straddling token (higher wins): content is never cut, then what else the turn generates
_PRIORITY = np.array([0, 2, 2, 5, 3, 2, 0, 4, 4, 3], dtype=np.int8)
# segments whose characters belong to the turn that generates them (not to the message whose content follows)
_OWN_TURN = frozenset({Segment.EOT, Segment.TOOL_CALL, Segment.REASONING, Segment.EMPTY_REASONING})
BOUNDARY_POLICIES = ("split", "merge")
TRUNCATION_POLICIES = ("right", "left", "drop")


@dataclass
class Tokenized:
    """One conversation, tokenized once. Arrays are aligned token by token."""

    input_ids: np.ndarray  # int64 [T]
    segments: np.ndarray  # int8 [T], Segment values
    turns: np.ndarray  # int16 [T], index of the message each token belongs to
    offsets: np.ndarray  # int32 [T, 2], character span in `text`
    text: str  # the rendered conversation
    roles: tuple[str, ...]  # role of each message (turn index -> role)
    source: str = ""  # file:line of the example, for error messages
    truncated: int = 0  # tokens removed by truncation
    boundary: str = "clean"  # clean | split | merged | merged_fallback: how the response boundaries were tokenized
    no_eot_turns: int = 0  # assistant turns whose template has no end-of-turn marker
    literal_contents: int = 0  # message contents that spell a special token, tokenized as text
    meta: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def last_assistant_turn(self) -> int:
        idx = [i for i, r in enumerate(self.roles) if r == "assistant"]
        return idx[-1] if idx else -1


# ----------------------------------------------------------------------------------------------- tokenizing


def _char_runs(text: str, roles: Sequence[str], spans: list[tuple[int, int]], renderer: TemplateRenderer,
               extra: Sequence[tuple[int, int, int, int]] = ()) -> tuple[list[int], list[int], list[int], int]:
    """The rendered text as runs of characters with one (segment, turn) each: run starts, segments, turns, and
    the number of assistant turns without an end-of-turn marker.

    Character rule: a message's content has its role's segment; the end-of-turn span after an assistant content
    is EOT of that turn; `extra` marks (tool calls, reasoning: harness/data/locate.py) override both, and the
    end-of-turn marker is searched after the last of them; everything else is template. Turn of a template
    character: the message whose content ends after it (the header belongs to the message it introduces), the
    last message for the tail. Adjacent
    runs never share a label and no run is empty, so a token covers one run unless it straddles a change.
    """
    n, L = len(roles), len(text)
    # labelled intervals that override the template default: (start, end, segment, turn)
    marks: list[tuple[int, int, int, int]] = []  # the turn is only used for EOT marks
    no_eot = 0
    gen_end: dict[int, int] = {}
    for s, e, _, k in extra:
        gen_end[k] = max(gen_end.get(k, 0), e)
    for k, ((s, e), role) in enumerate(zip(spans, roles)):
        marks.append((s, e, int(ROLE_SEGMENT[role]), k))
        if role == "assistant":
            nxt = spans[k + 1][0] if k + 1 < n else L
            eot = renderer.eot_span(text, max(e, gen_end.get(k, 0)), nxt)
            if eot is None:
                no_eot += 1
            else:
                marks.append((eot[0], eot[1], int(Segment.EOT), k))
    marks += [(s, e, int(sg), k) for s, e, sg, k in extra]
    # breakpoints: every mark boundary and every template turn change (after content k ends, turn k+1 starts)
    points = {0}
    for s, e, _, _ in marks:
        points.add(s)
        points.add(e)
    for k in range(n - 1):
        points.add(spans[k][1])
    bps = sorted(p for p in points if 0 <= p < L)
    ends = [e for _, e in spans]
    starts_out: list[int] = []
    segs: list[int] = []
    turns: list[int] = []
    for p in bps:
        seg, turn = int(Segment.TEMPLATE), None
        for s, e, sg, k in marks:  # later marks win, as later writes would in a per-character labelling
            if s <= p < e:
                seg, turn = sg, (k if sg in _OWN_TURN else None)
        if turn is None:
            turn = min(bisect_right(ends, p), max(n - 1, 0))
        if segs and segs[-1] == seg and turns[-1] == turn:
            continue
        starts_out.append(p)
        segs.append(seg)
        turns.append(turn)
    return starts_out, segs, turns, no_eot


def _runs_to_tokens(run_start: np.ndarray, run_seg: np.ndarray, run_turn: np.ndarray, tok_start: np.ndarray,
                    tok_last: np.ndarray):
    """Map tokens (first and last character, global positions) to runs (global starts, sorted) with the
    priority rule for straddling tokens. Returns (segments, turns, crosses_response_boundary)."""
    ia = np.searchsorted(run_start, tok_start, side="right") - 1
    ib = np.searchsorted(run_start, tok_last, side="right") - 1
    tok_seg = run_seg[ia]
    tok_turn = run_turn[ia]
    resp = (run_seg == Segment.ASSISTANT) | (run_seg == Segment.EOT)
    resp_id = np.concatenate([[0], np.cumsum(resp[1:] != resp[:-1])]) if len(resp) else np.zeros(0, np.int64)
    crosses = resp_id[ia] != resp_id[ib]
    prio = _PRIORITY[run_seg]
    for i in np.flatnonzero(ia != ib):
        a, b = int(ia[i]), int(ib[i]) + 1
        j = a + int(np.argmax(prio[a:b]))
        tok_seg[i], tok_turn[i] = run_seg[j], run_turn[j]
    return tok_seg, tok_turn, crosses


def _map_chunk(texts: Sequence[str], runs: Sequence[tuple], offsets: Sequence[np.ndarray]):
    """`_runs_to_tokens` for many conversations at once (one searchsorted over the concatenation).
    Returns per conversation (segments int8, turns int16, crosses bool)."""
    lens = np.array([len(t) for t in texts], dtype=np.int64)
    base = np.concatenate([[0], np.cumsum(lens)[:-1]]) if len(lens) else lens
    n_tok = np.array([o.shape[0] for o in offsets], dtype=np.int64)
    r_start = np.concatenate([np.asarray(r[0], np.int64) + b for r, b in zip(runs, base)] or [np.zeros(0, np.int64)])
    r_seg = np.concatenate([np.asarray(r[1], np.int8) for r in runs] or [np.zeros(0, np.int8)])
    r_turn = np.concatenate([np.asarray(r[2], np.int16) for r in runs] or [np.zeros(0, np.int16)])
    offs = np.concatenate(list(offsets)) if len(offsets) else np.zeros((0, 2), np.int32)
    hi = np.repeat(lens - 1, n_tok)
    b_tok = np.repeat(base, n_tok)
    o0 = offs[:, 0].astype(np.int64)
    o1 = offs[:, 1].astype(np.int64)
    t_start = np.clip(o0, 0, hi) + b_tok
    t_last = np.clip(np.maximum(o1 - 1, o0), 0, hi) + b_tok
    empty = np.repeat(lens == 0, n_tok)
    if empty.any():  # an empty text has no runs: its tokens (if any) get template / turn 0
        t_start[empty] = t_last[empty] = 0
    if len(r_start) == 0:
        z = [(np.zeros(int(t), np.int8), np.zeros(int(t), np.int16), np.zeros(int(t), bool)) for t in n_tok]
        return z
    seg, turn, crosses = _runs_to_tokens(r_start, r_seg, r_turn, t_start, t_last)
    if empty.any():
        seg[empty], turn[empty], crosses[empty] = 0, 0, False
    cut = np.cumsum(n_tok)[:-1]
    return list(zip(np.split(seg, cut), np.split(turn, cut), np.split(crosses, cut)))


class ConversationTokenizer:
    """Tokenizes many conversations with one renderer (template layouts cached per role sequence)."""

    def __init__(self, tokenizer, *, chat_template: str | None = None, eot: str | None = None,
                 boundary: str = "split", max_length: int | None = None, truncation: str = "right",
                 literal_content: bool = True):
        if boundary not in BOUNDARY_POLICIES:
            raise DataError(f"unknown boundary policy '{boundary}'", where="data.boundary",
                            fix=f"use one of {list(BOUNDARY_POLICIES)}")
        if truncation not in TRUNCATION_POLICIES:
            raise DataError(f"unknown truncation policy '{truncation}'", where="data.truncation",
                            fix=f"use one of {list(TRUNCATION_POLICIES)}")
        if not getattr(tokenizer, "is_fast", False):
            raise DataError(f"tokenizer {getattr(tokenizer, 'name_or_path', '')} is not a fast tokenizer",
                            where="model.tokenizer", fix="load it with use_fast=True (character offsets "
                            "are needed to find the response tokens)")
        self.tokenizer = tokenizer
        self.renderer = TemplateRenderer(tokenizer, chat_template, eot)
        self.boundary = boundary
        self.max_length = max_length
        self.truncation = truncation
        self._backend_checked = False
        # message contents are text: a content that spells a special token (say "<|im_end|>") must not become
        # that token, or training would teach a turn boundary inside a message and a user could forge a turn
        self.literal_content = literal_content
        specials = sorted({a.content for a in getattr(tokenizer, "added_tokens_decoder", {}).values()
                           if a.special and a.content}, key=len, reverse=True)
        self._first_chars = frozenset(t[0] for t in specials)
        self._specials = re.compile("|".join(map(re.escape, specials))) if specials else None

    def _encode(self, texts: list[str]) -> tuple[list[list[int]], list[np.ndarray]]:
        """Token ids and character offsets of each text (no special tokens added).

        The fast tokenizer's own `encode_batch` is called directly after one small call through transformers
        has set the backend's state (no truncation, no padding, its special-token splitting), which skips
        the per-`Encoding` conversion to Python lists that `tokenizer(...)` does. Backends configured in any
        other way go through `tokenizer(...)` unchanged."""
        if not texts:
            return [], []
        backend = getattr(self.tokenizer, "_tokenizer", None)
        if backend is not None and not self._backend_checked:
            self.tokenizer([""], add_special_tokens=False, return_offsets_mapping=True, return_attention_mask=False)
            self._backend_checked = True
        if backend is not None and backend.truncation is None and backend.padding is None:
            encs = backend.encode_batch(texts, add_special_tokens=False)
            return [e.ids for e in encs], [np.asarray(e.offsets, dtype=np.int32).reshape(-1, 2) for e in encs]
        enc = self.tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True,
                             return_attention_mask=False)
        offs = [np.asarray(o, dtype=np.int32).reshape(-1, 2) for o in enc["offset_mapping"]]
        return enc["input_ids"], offs

    def _encode_literal(self, texts: list[str]) -> tuple[list[list[int]], list[np.ndarray]]:
        """Like :meth:`_encode`, with special-token strings tokenized as plain text (split_special_tokens)."""
        backend = getattr(self.tokenizer, "_tokenizer", None)
        if backend is not None and hasattr(backend, "encode_special_tokens"):
            before = backend.encode_special_tokens
            backend.encode_special_tokens = True
            try:
                return self._encode(texts)
            finally:
                backend.encode_special_tokens = before
        enc = self.tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True,
                             return_attention_mask=False, split_special_tokens=True)
        return enc["input_ids"], [np.asarray(o, dtype=np.int32).reshape(-1, 2) for o in enc["offset_mapping"]]

    def spelled_specials(self, text: str, spans: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
        """The content spans of `text` that spell one of the tokenizer's special tokens."""
        if self._specials is None:
            return []
        return [(a, b) for a, b in spans if b > a and not self._first_chars.isdisjoint(text[a:b])
                and self._specials.search(text, a, b) is not None]

    def _piece_encode(self, text: str, cuts: Sequence[int], literal: Sequence[tuple[int, int]]):
        """Tokenize `text` in pieces cut at `cuts`; the pieces inside a `literal` span as plain text."""
        bounds = sorted({0, len(text), *cuts, *(x for span in literal for x in span)})
        pieces = list(zip(bounds[:-1], bounds[1:]))
        lit = [any(a <= s and e <= b for a, b in literal) for s, e in pieces]
        ids_l: list = [None] * len(pieces)
        offs_l: list = [None] * len(pieces)
        for flag, enc in ((False, self._encode), (True, self._encode_literal)):
            idx = [i for i, f in enumerate(lit) if f == flag]
            got = enc([text[pieces[i][0]:pieces[i][1]] for i in idx])
            for k, i in enumerate(idx):
                ids_l[i], offs_l[i] = got[0][k], got[1][k]
        ids = [i for part in ids_l for i in part]
        offs = (np.concatenate([o + a for o, (a, _) in zip(offs_l, pieces)]) if ids
                else np.zeros((0, 2), np.int32))
        return ids, offs.astype(np.int32)

    def _split_encode(self, text: str, run: tuple, literal: Sequence[tuple[int, int]] = ()):
        """Tokenize `text` in pieces cut at its response boundaries (see the module docstring)."""
        r_start, r_seg = run[0], run[1]
        resp = [sg in RESPONSE_SEGMENTS for sg in r_seg]
        cuts = [r_start[i] for i in range(1, len(resp)) if resp[i] != resp[i - 1]]
        return self._piece_encode(text, cuts, literal)

    def _render(self, conversations: Sequence[Sequence[dict]], sources: list[str], tools: list
                ) -> tuple[list[tuple[str, list]], list[list], list[list], list[dict]]:
        """(text, content spans), extra marks, extra literal spans and meta of each conversation: plain ones
        through the batched placeholder rendering, those with tool calls / reasoning (or any conversation under
        a template that renders them) through harness/data/locate.py."""
        n = len(conversations)
        rendered: list = [None] * n
        extra: list[list] = [[] for _ in range(n)]
        lit: list[list] = [[] for _ in range(n)]
        meta: list[dict] = [{} for _ in range(n)]
        plain = [i for i in range(n) if not self.renderer.needs_locate(conversations[i], tools[i])]
        for i, r in zip(plain, self.renderer.render_many([conversations[i] for i in plain], [sources[i] for i in plain])):
            rendered[i] = r
            if "<think>" in r[0]:
                extra[i] = inline_think_marks(r[0], r[1], [m["role"] for m in conversations[i]])
        for i in range(n):
            if rendered[i] is None:
                loc = self.renderer.located(conversations[i], tools[i], sources[i])
                rendered[i] = (loc.text, loc.spans)
                extra[i] = loc.marks + inline_think_marks(loc.text, loc.spans, [m["role"] for m in conversations[i]])
                lit[i] = loc.literal
                meta[i] = {"reasoning_dropped": loc.reasoning_dropped, "reasoning_inlined": loc.reasoning_inlined}
            w = [m.get("weight") for m in conversations[i]]
            if any(x is not None for x in w):
                meta[i]["message_weights"] = np.array([1.0 if x is None else x for x in w], dtype=np.float32)
        return rendered, extra, lit, meta

    def __call__(self, conversations: Sequence[Sequence[dict]], sources: Sequence[str] | None = None,
                 tools: Sequence[Any] | None = None) -> list[Tokenized | None]:
        """Tokenize a batch. Returns one `Tokenized` per conversation, or None where `truncation='drop'`
        dropped an over-long one. `tools`: each conversation's tools list (or None), given to the template."""
        sources = list(sources) if sources is not None else [f"example {i}" for i in range(len(conversations))]
        tools = list(tools) if tools is not None else [None] * len(conversations)
        rendered, extras, extra_lit, metas = self._render(conversations, sources, tools)
        texts = [t for t, _ in rendered]
        all_ids, all_offs = self._encode(texts)
        runs = []
        no_eots = []
        for msgs, (text, spans), extra in zip(conversations, rendered, extras):
            r_start, r_seg, r_turn, no_eot = _char_runs(text, tuple(m["role"] for m in msgs), spans, self.renderer,
                                                        extra)
            runs.append((r_start, r_seg, r_turn))
            no_eots.append(no_eot)
        literal = [self.spelled_specials(text, list(spans) + x) if self.literal_content else []
                   for (text, spans), x in zip(rendered, extra_lit)]
        for k, lit in enumerate(literal):  # rare: re-encode those conversations with their contents as text
            if lit:
                all_ids[k], all_offs[k] = self._piece_encode(texts[k], (), lit)
        mapped = _map_chunk(texts, runs, all_offs)
        out: list[Tokenized | None] = []
        decode = None
        for msgs, text, run, no_eot, ids, offs, (tok_seg, tok_turn, crosses), where, lit, meta in zip(
                conversations, texts, runs, no_eots, all_ids, all_offs, mapped, sources, literal, metas):
            roles = tuple(m["role"] for m in msgs)
            boundary = "clean"
            if crosses.any():
                boundary = "merged"
                if self.boundary == "split":
                    s_ids, s_offs = self._split_encode(text, run, lit)
                    decode = decode or (lambda x: self.tokenizer.decode(
                        x, skip_special_tokens=False, clean_up_tokenization_spaces=False))
                    if decode(s_ids) == decode(ids):
                        ids, offs, boundary = s_ids, s_offs, "split"
                        tok_seg, tok_turn, _ = _map_chunk([text], [run], [offs])[0]
                    else:
                        boundary = "merged_fallback"
            t = Tokenized(np.asarray(ids, dtype=np.int64), tok_seg, tok_turn, offs, text, roles, where,
                          boundary=boundary, no_eot_turns=no_eot, literal_contents=len(lit), meta=meta)
            out.append(self._truncate(t))
        return out

    def _truncate(self, t: Tokenized) -> Tokenized | None:
        L = self.max_length
        if L is None or len(t) <= L:
            return t
        if self.truncation == "drop":
            return None
        cut = len(t) - L
        sl = slice(0, L) if self.truncation == "right" else slice(cut, None)
        return Tokenized(t.input_ids[sl], t.segments[sl], t.turns[sl], t.offsets[sl], t.text, t.roles,
                         t.source, truncated=cut, boundary=t.boundary, no_eot_turns=t.no_eot_turns,
                         literal_contents=t.literal_contents, meta=t.meta)


def tokenize_conversation(messages: Sequence[dict], tokenizer, *, chat_template: str | None = None,
                          eot: str | None = None, boundary: str = "split", max_length: int | None = None,
                          truncation: str = "right", source: str = "", literal_content: bool = True,
                          tools: Any = None) -> Tokenized | None:
    """Tokenize one conversation (OpenAI-style messages) and give every token a segment and turn.

    Returns None only when ``truncation='drop'`` and the conversation is longer than ``max_length``.
    See the module docstring for the boundary rule.
    """
    ct = ConversationTokenizer(tokenizer, chat_template=chat_template, eot=eot, boundary=boundary,
                               max_length=max_length, truncation=truncation, literal_content=literal_content)
    return ct([list(messages)], [source or "conversation"], [tools])[0]
