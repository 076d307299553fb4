"""Rendering a conversation with its chat template so that every message's content can be located exactly:
placeholders show which template text surrounds each message, end-of-turn markers are found per turn.
harness/data/tokenize.py turns the rendering into tokens with segments."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence

from harness.data import locate
from harness.errors import TemplateError

_PH = re.compile("\ue000(\\d+)\ue001")


def _template_of(tokenizer, chat_template: str | None) -> str:
    tmpl = chat_template or getattr(tokenizer, "chat_template", None)
    if isinstance(tmpl, dict):  # some tokenizers ship several named templates
        tmpl = tmpl.get("default") or next(iter(tmpl.values()))
    if not tmpl:
        name = getattr(tokenizer, "name_or_path", "the tokenizer")
        raise TemplateError(f"{name} has no chat template", where="model.chat_template",
                            fix="set model.chat_template to 'chatml', 'plain', a .jinja path or Jinja text")
    return tmpl


def _render(tokenizer, messages: Sequence[dict], template: str, tools=None, add_generation_prompt: bool = False
            ) -> str:
    kw = {"tools": list(tools)} if tools else {}
    text = tokenizer.apply_chat_template(list(messages), tokenize=False, chat_template=template,
                                         add_generation_prompt=add_generation_prompt, **kw)
    if not isinstance(text, str):  # some versions return a list for batched input
        text = text[0]
    return text


def end_of_turn_markers(tokenizer, eot: str | None = None) -> list[str]:
    """Strings that can end an assistant turn: the configured one, else eos + special tokens named *end*/*eot*."""
    if eot:
        return [eot]
    cands: list[str] = []
    specials = list(getattr(tokenizer, "all_special_tokens", []) or [])
    for tok in getattr(tokenizer, "added_tokens_decoder", {}).values():
        if getattr(tok, "special", False):
            specials.append(str(tok.content if hasattr(tok, "content") else tok))
    eos = getattr(tokenizer, "eos_token", None)
    if eos:
        cands.append(eos)
    for s in specials:
        low = s.lower()
        if s not in cands and ("end" in low or "eot" in low or s == "</s>"):
            cands.append(s)
    return cands


@dataclass
class _Layout:
    """Template text around each message, from one placeholder rendering (cached per role sequence)."""

    pieces: list[str]  # len n+1: text before message 0, between 0 and 1, ..., after the last


class TemplateRenderer:
    """Renders conversations and locates every message content and end-of-turn marker in the text."""

    def __init__(self, tokenizer, chat_template: str | None = None, eot: str | None = None):
        self.tokenizer = tokenizer
        self.template = _template_of(tokenizer, chat_template)
        self.eot_markers = end_of_turn_markers(tokenizer, eot)
        self._layouts: dict[tuple[str, ...], _Layout | None] = {}
        # a template that renders tool calls or reasoning: every conversation is located by harness/data/locate.py
        self.agentic = any(x in self.template for x in ("reasoning_content", "tool_calls", "<think>"))

    def needs_locate(self, messages: Sequence[dict], tools) -> bool:
        return self.agentic or bool(tools) or any("tool_calls" in m or "reasoning_content" in m for m in messages)

    def render_text(self, messages: Sequence[dict], tools=None, add_generation_prompt: bool = False) -> str:
        return _render(self.tokenizer, messages, self.template, tools, add_generation_prompt)

    def located(self, messages: Sequence[dict], tools=None, where: str = "") -> locate.Located:
        """Contents, tool calls, reasoning and their glue located in the rendering (harness/data/locate.py)."""
        msgs, inlined = locate.prepare(self.template, messages, tools, where)
        try:
            out = locate.locate(lambda m: self.render_text(m, tools), lambda m: self.render_text(m, tools, True),
                                msgs, where)
        except TemplateError:
            raise
        except Exception as exc:  # the template raised (e.g. "roles must alternate")
            raise TemplateError(f"chat template failed: {exc}", where=where,
                                fix="check the conversation's role order, or use a template that accepts it "
                                "(model.chat_template)") from None
        out.reasoning_inlined = inlined
        return out

    def _layout(self, roles: tuple[str, ...], where: str) -> _Layout | None:
        if roles in self._layouts:
            return self._layouts[roles]
        ph = [{"role": r, "content": f"\ue000{i}\ue001"} for i, r in enumerate(roles)]
        try:
            text = _render(self.tokenizer, ph, self.template)
        except Exception as exc:  # template raised (e.g. "roles must alternate")
            raise TemplateError(f"chat template failed on roles {list(roles)}: {exc}", where=where,
                                fix="check the conversation's role order, or use a template that accepts it"
                                ) from None
        parts = _PH.split(text)
        # parts = [piece0, idx0, piece1, idx1, ..., pieceN]
        idx = [int(x) for x in parts[1::2]]
        layout = _Layout(parts[0::2]) if idx == list(range(len(roles))) else None
        self._layouts[roles] = layout
        return layout

    def render_many(self, conversations: Sequence[Sequence[dict]], wheres: Sequence[str]
                    ) -> list[tuple[str, list[tuple[int, int]]]]:
        """`render` for a batch: one batched `apply_chat_template` call (the same per-conversation Jinja
        rendering, without the per-call setup), then the same span location. If the batch raises, each
        conversation is rendered alone so the error names the conversation that caused it."""
        try:
            texts = self.tokenizer.apply_chat_template([list(m) for m in conversations], tokenize=False,
                                                       chat_template=self.template)
        except Exception:  # noqa: BLE001 - re-rendered one by one below for a precise error
            texts = None
        if texts is None or isinstance(texts, str) or len(texts) != len(conversations):
            return [self.render(m, w) for m, w in zip(conversations, wheres)]
        return [self._locate(m, t, w) for m, t, w in zip(conversations, texts, wheres)]

    def render(self, messages: Sequence[dict], where: str = "") -> tuple[str, list[tuple[int, int]]]:
        """Return the rendered text and the (start, end) character span of each message's content."""
        try:
            text = _render(self.tokenizer, messages, self.template)
        except Exception as exc:
            raise TemplateError(f"chat template failed: {exc}", where=where,
                                fix="check the conversation's role order, or set model.chat_template") from None
        return self._locate(messages, text, where)

    def _locate(self, messages: Sequence[dict], text: str, where: str) -> tuple[str, list[tuple[int, int]]]:
        roles = tuple(m["role"] for m in messages)
        layout = self._layout(roles, where)
        if layout is not None:
            for strip in (False, True):  # some templates trim contents (e.g. Llama 3's `| trim`)
                spans, pos, parts = [], 0, []
                for i, m in enumerate(messages):
                    content = m["content"].strip() if strip else m["content"]
                    pos += len(layout.pieces[i])
                    spans.append((pos, pos + len(content)))
                    parts += [layout.pieces[i], content]
                    pos += len(content)
                parts.append(layout.pieces[-1])
                if "".join(parts) == text:
                    return text, spans
        # The template rewrites contents or depends on them: search each content in order.
        spans, cursor = [], 0
        for i, m in enumerate(messages):
            content = m["content"]
            at = text.find(content, cursor) if content else cursor
            if at < 0 and content.strip():
                content = content.strip()
                at = text.find(content, cursor)
            if at < 0:
                raise TemplateError(
                    f"the chat template does not render message {i} ({m['role']}) verbatim, so its tokens "
                    "cannot be located (templates that drop or rewrite earlier turns, e.g. strip reasoning "
                    "from past assistant turns, make the prompt not a prefix of the conversation)",
                    where=where, fix="use a template that renders every message's content unchanged "
                    "(model.chat_template), or split the conversation into single-turn examples")
            spans.append((at, at + len(content)))
            cursor = at + len(content)
        return text, spans

    def eot_span(self, text: str, content_end: int, next_start: int) -> tuple[int, int] | None:
        """The end-of-turn marker after an assistant content: template text up to and including the first
        end marker before the next message starts. None when the template has no marker there."""
        piece = text[content_end:next_start]
        best = None
        for marker in self.eot_markers:
            at = piece.find(marker)
            if at >= 0 and (best is None or at < best[0]):
                best = (at, at + len(marker))
        if best is None:
            return None
        return content_end, content_end + best[1]
