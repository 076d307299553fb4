"""Where a template puts what an assistant turn generates besides its content: tool calls and reasoning.

Templates render tool calls from structured fields (``tool_calls``), reasoning from ``reasoning_content`` or
inline ``<think>...</think>``, and may drop the reasoning of turns before the last user query (Qwen3). None of
that is message content, so the placeholder rendering of harness/data/render.py cannot see it. Here, for any
template and without generation tags:

* **contents**: one rendering with placeholders for the non-empty contents (every other field real);
* **tool calls / reasoning of turn k**: the text that changes when that field alone is removed from turn k
  (the difference of two renderings), kept inside turn k's region; an empty difference means the template did
  not render it (counted: history reasoning dropped);
* **glue**: the template text an assistant turn generates around them (``<think>`` tags, ``<tool_call>``
  wrappers): everything between the end of the generation prompt (``add_generation_prompt``'s header, found
  in the rendering) and the turn's end joins its neighbouring reasoning / tool-call / content segment; an empty
  ``<think></think>`` block there is its own segment (EMPTY_REASONING).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, Sequence

from harness.data.agentic import INLINE_THINK
from harness.errors import TemplateError

# segment ids (harness.data.tokenize.Segment; plain ints here so that this module imports no tokenizer code)
ASSISTANT, TOOL_CALL, REASONING, EMPTY_REASONING = 3, 7, 8, 9
_PH = "\ue000{}\ue001"
_PH_RE = re.compile("\ue000(\\d+)\ue001")
_EMPTY_THINK = re.compile(r"<think>\s*</think>\s*")
_THINK_AT = re.compile(INLINE_THINK.pattern.removeprefix("\\A"), re.S)  # for match(text, pos): \A never matches there


@dataclass
class Located:
    """A rendering with every message content's span and the generated non-content parts of assistant turns."""

    text: str
    spans: list[tuple[int, int]]
    marks: list[tuple[int, int, int, int]] = field(default_factory=list)  # (start, end, segment, turn)
    literal: list[tuple[int, int]] = field(default_factory=list)  # data text inside marks (arguments, reasoning)
    reasoning_dropped: int = 0  # assistant turns whose reasoning the template did not render
    reasoning_inlined: int = 0  # reasoning_content written into the content (template without that field)


def template_features(template: str) -> tuple[bool, bool, bool]:
    """(renders reasoning_content, renders tool_calls, renders tools) judged from the template's text."""
    return "reasoning_content" in template, "tool_calls" in template, "tools" in template


def prepare(template: str, msgs: Sequence[dict], tools: Any, where: str) -> tuple[list[dict], int]:
    """Messages as this template takes them: inline ``<think>`` moved to ``reasoning_content`` for templates that
    render that field, ``reasoning_content`` written inline for those that do not (counted). Data the template
    would drop silently (tool calls, a tools list) is an error."""
    aware_r, aware_c, aware_t = template_features(template)
    if tools and not aware_t:
        raise TemplateError("the chat template does not render a tools list; the row's tools would be dropped",
                            where=where, fix="use a template with tool support (model.chat_template: chatml_tools "
                            "or llama3_tools, or the model's own), or remove 'tools'")
    out, inlined = [], 0
    for i, m in enumerate(msgs):
        if m.get("tool_calls") and not aware_c:
            raise TemplateError(f"the chat template does not render tool_calls (message {i}): the calls would "
                                "not be in the text, so never trained", where=where,
                                fix="use a template with tool support (model.chat_template: chatml_tools or "
                                "llama3_tools, or the model's own)")
        if m["role"] != "assistant":
            out.append(m)
            continue
        r = m.get("reasoning_content")
        if aware_r and r is None and (hit := INLINE_THINK.match(m["content"])):
            m = {**m, "reasoning_content": hit.group(2).strip("\n"), "content": m["content"][hit.end():].lstrip("\n")}
        elif not aware_r and r is not None:
            m = {k: v for k, v in m.items() if k != "reasoning_content"}
            m["content"] = f"<think>\n{r.strip()}\n</think>\n\n{m['content']}"
            inlined += 1
        out.append(m)
    return out, inlined


def common_length(a: str, b: str, suffix: bool = False) -> int:
    """Length of the common prefix (or suffix) of a and b, by binary search on slice equality (C speed)."""
    lo, hi = 0, min(len(a), len(b))
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if (a[len(a) - mid:] == b[len(b) - mid:]) if suffix else (a[:mid] == b[:mid]):
            lo = mid
        else:
            hi = mid - 1
    return lo


def _diff(a: str, b: str) -> tuple[int, int]:
    """The span of `a` that `b` lacks. When `a` is `b` with a block inserted and the block's edges repeat the
    text around it (inserting "<tool_call>...</tool_call>" before "<|im_end|>" shares a "<"), the insertion is
    ambiguous: take its leftmost place, the block as the template wrote it."""
    p, s = common_length(a, b), common_length(a, b, True)
    if p + s > min(len(a), len(b)) and len(b) - s >= 0:
        return len(b) - s, len(a) - s
    return p, len(a) - s


def _minus(span: tuple[int, int], cut: tuple[int, int] | None) -> list[tuple[int, int]]:
    a, b = span
    if cut is None or cut[1] <= a or cut[0] >= b or cut[0] == cut[1]:
        return [(a, b)] if b > a else []
    return [(s, e) for s, e in ((a, cut[0]), (cut[1], b)) if e > s]


def _strings(x: Any) -> list[str]:
    if isinstance(x, str):
        return [x]
    if isinstance(x, dict):
        return [s for k, v in x.items() for s in (*_strings(k), *_strings(v))]
    if isinstance(x, list):
        return [s for v in x for s in _strings(v)]
    return []


def _find_all(text: str, needles: Sequence[str], lo: int, hi: int) -> list[tuple[int, int]]:
    out = []
    for s in needles:
        for form in {s, json.dumps(s, ensure_ascii=False)[1:-1]}:
            at = text.find(form, lo, hi) if form else -1
            if at >= 0:
                out.append((at, at + len(form)))
    return out


def inline_think_marks(text: str, spans: Sequence[tuple[int, int]], roles: Sequence[str]
                       ) -> list[tuple[int, int, int, int]]:
    """Reasoning written inline at the start of assistant contents (templates that render it as content)."""
    marks = []
    for k, ((s, e), role) in enumerate(zip(spans, roles)):
        if role == "assistant" and e > s and (hit := _THINK_AT.match(text, s, e)):
            end = hit.end()
            while end < e and text[end].isspace():
                end += 1
            seg = EMPTY_REASONING if not hit.group(2).strip() else REASONING
            marks.append((s + len(hit.group(1)), end, seg, k))
    return marks


def _contents(render, msgs: list[dict], text: str, where: str) -> list[tuple[int, int] | None]:
    """Spans of the contents from one placeholder rendering, else by search; None for an empty assistant content
    (templates test it, e.g. to render only the tool call: it gets no placeholder, and its place is set later)."""
    idx = [i for i, m in enumerate(msgs) if m["content"] or m["role"] != "assistant"]
    keep = set(idx)
    layout = render([{**m, "content": _PH.format(i)} if i in keep else m for i, m in enumerate(msgs)])
    parts = _PH_RE.split(layout)
    spans: list[tuple[int, int] | None] = [None] * len(msgs)
    if [int(x) for x in parts[1::2]] == idx:
        pieces = parts[0::2]
        for strip in (False, True):  # templates that trim contents
            pos, ok = 0, True
            for j, i in enumerate(idx):
                c = msgs[i]["content"].strip() if strip else msgs[i]["content"]
                if text[pos:pos + len(pieces[j])] != pieces[j]:
                    ok = False
                    break
                pos += len(pieces[j])
                if text[pos:pos + len(c)] != c:
                    ok = False
                    break
                spans[i] = (pos, pos + len(c))
                pos += len(c)
            if ok and text[pos:] == pieces[-1]:
                return spans
    cursor = 0  # the template rewrites something: search each content in order
    for i in idx:
        c = msgs[i]["content"]
        at = text.find(c, cursor)
        if at < 0:
            c = c.strip()
            at = text.find(c, cursor)
        if at < 0:
            raise TemplateError(f"the chat template does not render message {i} ({msgs[i]['role']}) verbatim, so "
                                "its tokens cannot be located", where=where,
                                fix="use a template that renders every message's content unchanged "
                                "(model.chat_template), e.g. Llama-style templates drop the content of a turn "
                                "with tool calls: move it to a turn of its own")
        spans[i] = (at, at + len(c))
        cursor = at + len(c)
    return spans


def _header(render_gen, render, msgs: list[dict], k: int) -> str | None:
    """The text add_generation_prompt appends after msgs[:k] (the assistant header inference ends with)."""
    try:
        with_gen, without = render_gen(msgs[:k]), render(msgs[:k])
    except Exception:  # noqa: BLE001 - some templates refuse a history that does not end on a user turn
        return None
    return with_gen[len(without):] if with_gen.startswith(without) and len(with_gen) > len(without) else None


def _glue(text: str, lo: int, labelled: list[tuple[int, int, int]], k: int) -> list[tuple[int, int, int, int]]:
    """Marks for the unlabelled text of turn k's generated region, from `lo` (the end of its header) to the end
    of its last labelled part: empty <think></think> blocks, the rest by the neighbour rule of `_fill`."""
    out: list[tuple[int, int, int, int]] = []
    prev_end, prev_seg = lo, None
    for s, e, seg in sorted(labelled):
        if s > prev_end:
            pos, left = prev_end, prev_seg
            for hit in _EMPTY_THINK.finditer(text, prev_end, s):
                out += _fill(pos, hit.start(), left, EMPTY_REASONING, k)
                out.append((hit.start(), hit.end(), EMPTY_REASONING, k))
                pos, left = hit.end(), EMPTY_REASONING
            out += _fill(pos, s, left, seg, k)
        if e > prev_end:
            prev_end, prev_seg = e, seg
    return out


def _fill(a: int, b: int, left: int | None, right: int | None, k: int) -> list[tuple[int, int, int, int]]:
    """Glue between two parts belongs to the reasoning block if it touches one (its tags), else to a tool call
    it touches (the call's wrapper), else to the content after it."""
    if b <= a:
        return []
    near = {left, right}
    seg = (REASONING if REASONING in near else EMPTY_REASONING if EMPTY_REASONING in near
           else TOOL_CALL if TOOL_CALL in near else right if right is not None else left)
    return [(a, b, seg, k)]


def locate(render, render_gen, msgs: list[dict], where: str) -> Located:
    """`render(msgs) -> str` and `render_gen(msgs) -> str` (add_generation_prompt) close over the template and
    the row's tools. See the module docstring."""
    text = render(msgs)
    opt = _contents(render, msgs, text, where)
    n = len(msgs)
    out = Located(text, [])

    def region(k: int) -> tuple[int, int]:  # between the contents of the messages around k
        lo = max((opt[j][1] for j in range(k) if opt[j] is not None), default=0)
        hi = min((opt[j][0] for j in range(k + 1, n) if opt[j] is not None), default=len(text))
        return lo, hi

    by_turn: dict[int, list[tuple[int, int, int]]] = {}
    for k, m in enumerate(msgs):
        if m["role"] != "assistant":
            continue
        lo, hi = region(k)
        parts: list[tuple[int, int, int]] = []
        for key, seg in (("tool_calls", TOOL_CALL), ("reasoning_content", REASONING)):
            val = m.get(key)
            if not val or (key == "reasoning_content" and not val.strip()):
                continue
            a, b = _diff(text, render([*msgs[:k], {x: v for x, v in m.items() if x != key}, *msgs[k + 1:]]))
            a, b = max(a, lo), min(b, hi)
            got = _minus((a, b), opt[k])
            if not got and key == "reasoning_content":
                out.reasoning_dropped += 1
                continue
            parts += [(s, e, seg) for s, e in got]
            needles = _strings([c["function"]["arguments"] for c in val]) if key == "tool_calls" else [val.strip()]
            out.literal += [x for s, e in got for x in _find_all(text, needles, s, e)]
        if opt[k] is not None:
            parts.append((*opt[k], ASSISTANT))
        if not parts:
            continue
        first = min(s for s, _, _ in parts)
        header = _header(render_gen, render, msgs, k)
        at = text.rfind(header, lo, first) if header else -1
        start = at + len(header) if at >= 0 else first
        out.marks += [(s, e, seg, k) for s, e, seg in parts if seg != ASSISTANT]
        out.marks += _glue(text, start, parts, k)
        by_turn[k] = parts
    # empty contents sit where their turn's generated parts start (or after the previous message)
    cursor = 0
    for k in range(n):
        if opt[k] is None:
            starts = [s for s, _, _ in by_turn.get(k, [])]
            pos = min(starts) if starts else cursor
            opt[k] = (pos, pos)
        cursor = max(cursor, opt[k][1], *(e for _, e, _ in by_turn.get(k, [])))
    out.spans = [s for s in opt if s is not None]
    return out
