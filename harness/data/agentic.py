"""Agentic and reasoning messages: tool calls, tool results, reasoning, per-message loss weights.

Normalised shape (what every other module reads), an OpenAI/HF message plus a few optional keys:

* assistant ``tool_calls``: ``[{"type": "function", "function": {"name": str, "arguments": dict}, "id"?: str}]``
  (``arguments`` written as an object or a JSON string in the data; always an object here, which is what chat
  templates ``tojson``); its ``content`` may then be empty (``""`` for ``null``);
* assistant ``reasoning_content``: the reasoning, also read from ``reasoning`` / ``thinking``; reasoning written
  inline as ``<think>...</think>`` at the start of the content stays in the content (harness/data/render.py
  moves it to ``reasoning_content`` for templates that render that field);
* tool ``tool_call_id`` / ``name``;
* ``weight``: a per-message loss multiplier from ``weight`` (axolotl), ``train`` (0/1, bool), ``loss``,
  ``loss_weight`` (LLaMA-Factory) or ``loss_scale`` (ms-swift): 0/1 or a float >= 0 (harness.masking).

ShareGPT's ``function_call`` / ``observation`` speakers become an assistant tool call / a tool message.
Every key the harness does not understand is returned by name (``ignored``) so that callers report it.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from harness.errors import DataError

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
# reasoning written inline at the start of an assistant content: "<think>R</think>rest"
INLINE_THINK = re.compile(r"\A(\s*)<think>(.*?)</think>", re.S)
WEIGHT_KEYS = ("weight", "train", "loss", "loss_weight", "loss_scale")
REASONING_KEYS = ("reasoning_content", "reasoning", "thinking")
MESSAGE_KEYS = frozenset({"role", "content", "from", "value", "tool_calls", "function_call", "tool_call_id",
                          "name", *WEIGHT_KEYS, *REASONING_KEYS})


def _weight(m: dict, i: int, where: str) -> float | None:
    got = {k: m[k] for k in WEIGHT_KEYS if k in m and m[k] is not None}
    if not got:
        return None
    vals = set()
    for k, v in got.items():
        if isinstance(v, bool):
            v = float(v)
        if not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
            raise DataError(f"message {i} has {k}={v!r}, expected 0/1, true/false or a float >= 0", where=where,
                            fix=f"write {k}: 0 (not trained), 1 (trained) or a non-negative loss weight")
        vals.add(float(v))
    if len(vals) > 1:
        raise DataError(f"message {i} gives different loss weights {got}", where=where,
                        fix="keep one of " + ", ".join(WEIGHT_KEYS))
    return vals.pop()


def _arguments(args: Any, i: int, j: int, where: str) -> dict:
    if isinstance(args, str):
        try:
            args = json.loads(args) if args.strip() else {}
        except json.JSONDecodeError as exc:
            raise DataError(f"message {i} tool call {j}: arguments are not JSON ({exc.msg} at column {exc.colno}): "
                            f"{args[:60]!r}", where=where,
                            fix="write arguments as a JSON object or a string holding one, e.g. '{\"city\": \"Paris\"}'"
                            ) from None
    if not isinstance(args, dict):
        raise DataError(f"message {i} tool call {j}: arguments are a {type(args).__name__}, expected an object",
                        where=where, fix="arguments map parameter names to values: {\"city\": \"Paris\"}")
    return args


def tool_call(c: Any, i: int, j: int, where: str) -> dict:
    """One tool call, normalised (accepts the OpenAI shape and a bare {"name", "arguments"})."""
    if not isinstance(c, dict):
        raise DataError(f"message {i} tool call {j} is a {type(c).__name__}, expected an object", where=where,
                        fix='write {"type": "function", "function": {"name": ..., "arguments": {...}}}')
    fn = c.get("function", c)
    if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not fn["name"]:
        raise DataError(f"message {i} tool call {j} has no function name", where=where,
                        fix='write {"type": "function", "function": {"name": "get_weather", "arguments": {...}}}')
    args = fn.get("arguments", fn.get("parameters", {}))
    out: dict = {"type": "function", "function": {"name": fn["name"], "arguments": _arguments(args, i, j, where)}}
    if isinstance(c.get("id"), str):
        out["id"] = c["id"]
    return out


def sharegpt_message(m: dict, role_map: dict, i: int, where: str) -> dict:
    """A ShareGPT turn {"from", "value", ...} in the normalised shape (extra keys kept for `message`)."""
    speaker = str(m["from"]).lower()
    rest = {k: v for k, v in m.items() if k not in ("from", "value")}
    if speaker == "function_call":  # LLaMA-Factory: the value is the call as JSON {"name", "arguments"}
        try:
            call = json.loads(m["value"]) if isinstance(m["value"], str) else m["value"]
        except json.JSONDecodeError as exc:
            raise DataError(f"message {i} (function_call) is not JSON: {exc.msg}", where=where,
                            fix='write the value as {"name": ..., "arguments": {...}} (or a list of those)') from None
        calls = call if isinstance(call, list) else [call]
        return {**rest, "role": "assistant", "content": "", "tool_calls": calls}
    if speaker == "observation":
        return {**rest, "role": "tool", "content": m["value"]}
    role = role_map.get(speaker)
    if role is None:
        raise DataError(f"message {i} has unknown ShareGPT speaker '{m['from']}'", where=where,
                        fix=f"use one of {sorted([*role_map, 'function_call', 'observation'])}")
    return {**rest, "role": role, "content": m["value"]}


def message(m: dict, i: int, where: str, ignored: list[str]) -> dict:
    """The agentic keys of a (role/content-checked) raw message, normalised; unknown keys appended to `ignored`."""
    role = m["role"]
    out: dict = {"role": role, "content": m["content"]}
    for k in m:
        if k not in MESSAGE_KEYS:
            ignored.append(f"messages[].{k}")
    calls = m.get("tool_calls")
    if calls is None and isinstance(m.get("function_call"), dict):  # OpenAI's legacy single call
        calls = [m["function_call"]]
    if calls:
        if role != "assistant":
            raise DataError(f"message {i} ({role}) has tool_calls; only assistant messages call tools", where=where,
                            fix="move the calls to an assistant message")
        if not isinstance(calls, list):
            raise DataError(f"message {i} tool_calls is a {type(calls).__name__}, expected a list", where=where,
                            fix='write "tool_calls": [{"type": "function", "function": {...}}]')
        out["tool_calls"] = [tool_call(c, i, j, where) for j, c in enumerate(calls)]
    reasoning = next((m[k] for k in REASONING_KEYS if m.get(k) is not None), None)
    if reasoning is not None:
        if role != "assistant" or not isinstance(reasoning, str):
            raise DataError(f"message {i} ({role}) has reasoning of type {type(reasoning).__name__}", where=where,
                            fix="reasoning_content is a string on assistant messages")
        if INLINE_THINK.match(out["content"]):
            raise DataError(f"message {i} has reasoning twice: in reasoning_content and inline <think> in content",
                            where=where, fix="keep one of the two")
        out["reasoning_content"] = reasoning
    if role == "tool":
        for k in ("tool_call_id", "name"):
            if isinstance(m.get(k), str):
                out[k] = m[k]
    w = _weight(m, i, where)
    if w is not None:
        out["weight"] = w
    return out


def tools_list(tools: Any, where: str) -> list[dict] | None:
    """A row's or data set's `tools`: a list of function schemas (or a JSON string of one, ShareGPT style)."""
    if tools is None or tools == "" or tools == []:
        return None
    if isinstance(tools, str):
        try:
            tools = json.loads(tools)
        except json.JSONDecodeError as exc:
            raise DataError(f"'tools' is a string that is not JSON ({exc.msg})", where=where,
                            fix="write tools as a list of function schemas") from None
    if not isinstance(tools, list) or not all(isinstance(t, dict) for t in tools):
        raise DataError("'tools' must be a list of objects", where=where,
                        fix='write [{"type": "function", "function": {"name": ..., "parameters": {...}}}]')
    for j, t in enumerate(tools):
        fn = t.get("function", t)
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise DataError(f"tool {j} has no name", where=where, fix="every tool schema needs function.name")
    return tools


def validate_tools(messages: list[dict], where: str) -> None:
    """Order rules of tool use: every tool result answers a call of the assistant turn before it, and a
    conversation does not end on a tool result (nothing after it to supervise)."""
    pending: list[dict] | None = None  # calls of the last assistant turn still unanswered
    for i, m in enumerate(messages):
        if m["role"] == "assistant":
            pending = list(m.get("tool_calls") or [])
        elif m["role"] == "tool":
            if not pending:
                raise DataError(f"message {i} is a tool result with no unanswered tool call before it", where=where,
                                fix="put an assistant message with tool_calls before it (or, for ShareGPT, a "
                                    "function_call turn), or remove the tool message")
            cid = m.get("tool_call_id")
            ids = [c.get("id") for c in pending]
            if cid is not None and any(ids) and cid not in ids:
                raise DataError(f"message {i} answers tool_call_id {cid!r}, but the pending calls are {ids}",
                                where=where, fix="make tool_call_id match the id of the call it answers")
            pending.pop(ids.index(cid) if cid in ids else 0)
        else:
            pending = None
    if messages and messages[-1]["role"] == "tool":
        raise DataError("conversation ends on a tool result", where=where,
                        fix="add the assistant message that uses the result, or end the row at the tool call")
