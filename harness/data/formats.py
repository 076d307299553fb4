"""Load SFT data from local files or the hub and normalise every format to OpenAI `messages`.

Supported formats (auto-detected from the first row's keys, or forced with `format:`):

* ``messages``           ``{"messages": [{"role": "user", "content": "..."}, ...]}``; also accepts the key
                          ``conversations`` and ShareGPT rows (``{"from": "human", "value": "..."}``) and
                          LIMA-style rows whose ``conversations`` is a list of alternating user/assistant strings.
* ``alpaca``             ``{"instruction", "input"?, "output", "system"?}``
* ``prompt_completion``  ``{"prompt", "completion"}`` where each is a string or a list of messages.

Every error names the file and the 1-based line (JSONL) or 0-based row (JSON/parquet/hub) and says how to fix it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from harness.data import agentic
from harness.errors import DataError, did_you_mean
from harness.fsio import is_local_path

FORMATS = ("messages", "alpaca", "prompt_completion")
ROLES = ("system", "user", "assistant", "tool")
_SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                   "system": "system", "chatgpt": "assistant", "bing": "assistant", "tool": "tool"}


@dataclass(frozen=True)
class Conversation:
    """One normalised example: OpenAI-style messages plus where it came from (for error messages)."""

    messages: tuple[dict, ...]
    source: str  # "file.jsonl:12" (line) or "file.parquet[row 3]"
    tools: tuple[dict, ...] | None = None  # function schemas handed to the chat template (harness/data/agentic.py)
    ignored: tuple[str, ...] = ()  # keys of the row the harness does not read, reported by inspect and doctor

    def as_list(self) -> list[dict]:
        return [dict(m) for m in self.messages]


def _where(path: str, index: int, kind: str) -> str:
    return f"{path}:{index}" if kind == "line" else f"{path}[row {index}]"


def iter_rows(path: str, *, split: str = "train", name: str | None = None) -> Iterator[tuple[dict, str]]:
    """Yield ``(row, where)`` from a local .jsonl/.json/.parquet file or a hub dataset."""
    p = Path(path)
    suffix = p.suffix.lower()
    if p.exists():
        if suffix in (".jsonl", ".ndjson"):
            with open(p, "rb") as fh:
                for lineno, raw in enumerate(fh, start=1):
                    where = _where(path, lineno, "line")
                    try:
                        line = raw.decode("utf-8")
                    except UnicodeDecodeError as exc:
                        raise DataError(f"invalid UTF-8 ({exc.reason} at byte {exc.start})", where=where,
                                        fix="re-encode the file as UTF-8 or remove the line") from None
                    if not line.strip():
                        continue
                    try:
                        row = json.loads(line, object_pairs_hook=_no_duplicate_keys)
                    except json.JSONDecodeError as exc:
                        raise DataError(f"malformed JSON: {exc.msg} (column {exc.colno})", where=where,
                                        fix="each line must be one complete JSON object") from None
                    except ValueError as exc:  # duplicate keys
                        raise DataError(str(exc), where=where, fix="remove the duplicated key") from None
                    if not isinstance(row, dict):
                        raise DataError(f"expected a JSON object, got {type(row).__name__}", where=where,
                                        fix="each line must be a JSON object such as {\"messages\": [...]}")
                    yield row, where
            return
        if suffix == ".json":
            try:
                data = json.loads(p.read_text(encoding="utf-8"))
            except UnicodeDecodeError as exc:
                raise DataError(f"invalid UTF-8 ({exc.reason})", where=path, fix="re-encode as UTF-8") from None
            except json.JSONDecodeError as exc:
                raise DataError(f"malformed JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})",
                                where=f"{path}:{exc.lineno}", fix="fix the JSON syntax") from None
            if isinstance(data, dict):  # {"data": [...]} or {"train": [...]} wrappers
                for key in (split, "data", "train", "examples"):
                    if isinstance(data.get(key), list):
                        data = data[key]
                        break
            if not isinstance(data, list):
                raise DataError("expected a JSON list of objects", where=path,
                                fix="use a list of rows, or a .jsonl file with one object per line")
            for i, row in enumerate(data):
                if not isinstance(row, dict):
                    raise DataError(f"expected an object, got {type(row).__name__}", where=_where(path, i, "row"),
                                    fix="each row must be a JSON object")
                yield row, _where(path, i, "row")
            return
        if suffix == ".parquet":
            import pyarrow.parquet as pq

            table = pq.read_table(p)
            for i, row in enumerate(table.to_pylist()):
                yield row, _where(path, i, "row")
            return
        raise DataError(f"unsupported file type '{suffix}'", where=path,
                        fix="use .jsonl, .json or .parquet (or a hub dataset name)")
    if suffix in (".jsonl", ".json", ".parquet", ".ndjson") or os.sep in path and is_local_path(path):
        raise DataError("data file not found", where=path, fix="check the path (relative paths are resolved "
                        "against the directory you run from)")
    # A hub dataset name such as "GAIR/lima" (needs network or a populated HF cache).
    try:
        import datasets

        ds = datasets.load_dataset(path, name, split=split)
    except Exception as exc:  # offline, missing split, ... -> one clear message
        raise DataError(f"could not load hub dataset '{path}' split '{split}': {type(exc).__name__}: {exc}",
                        where=path, fix="check the name/split, or download it once with network "
                        "(HF_HUB_OFFLINE=1 needs a populated cache), or point to a local .jsonl") from None
    for i, row in enumerate(ds):
        yield dict(row), _where(f"{path}:{split}", i, "row")


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict:
    out: dict = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"duplicate key '{k}'")
        out[k] = v
    return out


def detect_format(row: dict, where: str) -> str:
    keys = set(row)
    if "messages" in keys or "conversations" in keys or "conversation" in keys:
        return "messages"
    if "instruction" in keys and ("output" in keys or "response" in keys):
        return "alpaca"
    if "prompt" in keys and ("completion" in keys or "response" in keys or "chosen" not in keys and "answer" in keys):
        return "prompt_completion"
    raise DataError(f"cannot detect the data format from keys {sorted(keys)}", where=where,
                    fix="use {\"messages\": [...]}, alpaca {\"instruction\", \"input\", \"output\"} or "
                        "{\"prompt\", \"completion\"}, or set data.train.format explicitly")


def _check_message(m: Any, i: int, where: str, ignored: list[str] | None = None) -> dict:
    if not isinstance(m, dict):
        raise DataError(f"message {i} is a {type(m).__name__}, expected an object with 'role' and 'content'",
                        where=where, fix="write messages as {\"role\": ..., \"content\": ...}")
    if "from" in m and "value" in m and "role" not in m:  # ShareGPT
        m = agentic.sharegpt_message(m, _SHAREGPT_ROLES, i, where)
    if m.get("content", "") is None and m.get("role") == "assistant" and (m.get("tool_calls") or m.get("function_call")):
        m = {**m, "content": ""}  # OpenAI: content null on an assistant turn that only calls tools
    for key in ("role", "content"):
        if key not in m:
            raise DataError(f"message {i} has no '{key}'" + did_you_mean(key, m.keys()), where=where,
                            fix=f"every message needs 'role' and 'content' (keys found: {sorted(m)})")
    role, content = m["role"], m["content"]
    if not isinstance(role, str) or role not in ROLES:
        raise DataError(f"message {i} has unknown role {role!r}" + did_you_mean(str(role), ROLES), where=where,
                        fix=f"roles must be one of {list(ROLES)}")
    if not isinstance(content, str):
        raise DataError(f"message {i} ({role}) content is {type(content).__name__}, expected a string",
                        where=where, fix="content must be a plain string (multimodal parts are not supported)")
    return agentic.message(m, i, where, ignored if ignored is not None else [])


# the row keys each format reads (others are reported as ignored, never dropped silently)
_ROW_KEYS = {"messages": {"messages", "conversations", "conversation", "tools", "system"},
             "alpaca": {"instruction", "input", "output", "response", "system"},
             "prompt_completion": {"prompt", "completion", "response", "answer", "tools"}}


def normalise(row: dict, fmt: str, where: str) -> list[dict]:
    """Turn one raw row into a list of ``{"role", "content"}`` messages (validated)."""
    return normalise_row(row, fmt, where)[0]


def normalise_row(row: dict, fmt: str, where: str) -> tuple[list[dict], list[dict] | None, list[str]]:
    """(messages, the row's tools list or None, the names of the keys the harness ignored) of one raw row."""
    ignored = [k for k in row if k not in _ROW_KEYS.get(fmt, ())]
    if fmt == "messages":
        msgs = row.get("messages", row.get("conversations", row.get("conversation")))
        if not isinstance(msgs, list):
            raise DataError(f"'messages' is a {type(msgs).__name__}, expected a list", where=where,
                            fix="messages must be a list of {\"role\", \"content\"} objects")
        if msgs and all(isinstance(m, str) for m in msgs):  # LIMA: alternating user/assistant strings
            msgs = [{"role": "user" if i % 2 == 0 else "assistant", "content": m} for i, m in enumerate(msgs)]
        out = [_check_message(m, i, where, ignored) for i, m in enumerate(msgs)]
        if row.get("system") is not None:  # ShareGPT's top-level system prompt
            if not isinstance(row["system"], str):
                raise DataError(f"'system' is a {type(row['system']).__name__}, expected a string", where=where,
                                fix="write the system prompt as a string")
            if out and out[0]["role"] == "system":
                raise DataError("row has a top-level 'system' and a system message", where=where,
                                fix="keep one of the two system prompts")
            out.insert(0, {"role": "system", "content": row["system"]})
    elif fmt == "alpaca":
        instr = row.get("instruction")
        output = row.get("output", row.get("response"))
        extra = row.get("input") or ""
        for key, val in (("instruction", instr), ("output", output), ("input", extra)):
            if not isinstance(val, str):
                raise DataError(f"alpaca field '{key}' is {type(val).__name__}, expected a string", where=where,
                                fix="alpaca rows need string 'instruction' and 'output' (and optional 'input')")
        user = instr if not extra else f"{instr}\n\n{extra}"
        out = ([{"role": "system", "content": row["system"]}] if isinstance(row.get("system"), str) else [])
        out += [{"role": "user", "content": user}, {"role": "assistant", "content": output}]
    elif fmt == "prompt_completion":
        prompt, completion = row.get("prompt"), row.get("completion", row.get("response", row.get("answer")))
        out = []
        for key, val, role in (("prompt", prompt, "user"), ("completion", completion, "assistant")):
            if isinstance(val, str):
                out.append({"role": role, "content": val})
            elif isinstance(val, list):
                out.extend(_check_message(m, i, where, ignored) for i, m in enumerate(val))
            else:
                raise DataError(f"'{key}' is {type(val).__name__}, expected a string or a list of messages",
                                where=where, fix="prompt/completion rows need string (or messages) values")
    else:
        raise DataError(f"unknown format '{fmt}'" + did_you_mean(fmt, FORMATS), where=where,
                        fix=f"format must be one of {list(FORMATS)} or 'auto'")
    return out, agentic.tools_list(row.get("tools"), where), ignored


def validate_conversation(messages: list[dict], where: str, *, require_assistant: bool = True) -> None:
    """Structural checks shared by every format: non-empty, not system-only, assistant turns non-empty."""
    if not messages:
        raise DataError("empty conversation (no messages)", where=where, fix="remove the row or add messages")
    if all(m["role"] == "system" for m in messages):
        raise DataError("conversation has only a system message", where=where,
                        fix="add a user turn and an assistant turn, or remove the row")
    for i, m in enumerate(messages):
        if m["role"] == "system" and i != 0:
            raise DataError(f"system message at position {i}; it must come first", where=where,
                            fix="move the system message to the start of the conversation")
        if (m["role"] == "assistant" and not m["content"].strip() and not m.get("tool_calls")
                and not (m.get("reasoning_content") or "").strip()):
            raise DataError(f"message {i} (assistant) is empty", where=where,
                            fix="remove the row or write the assistant's answer (or its tool_calls); an empty "
                                "response trains nothing but the end-of-turn token")
    agentic.validate_tools(messages, where)
    if require_assistant and not any(m["role"] == "assistant" for m in messages):
        raise DataError("conversation has no assistant turn", where=where,
                        fix="add an assistant message; with no response there is nothing to supervise "
                            "under prompt_masked")


def load_conversations(path: str, *, fmt: str = "auto", split: str = "train", name: str | None = None,
                       limit: int | None = None, require_assistant: bool = True,
                       system_prompt: str | None = None, tools: str | None = None) -> list[Conversation]:
    """Load and normalise a data source. Raises :class:`DataError` on the first bad row (file + line + fix).

    `tools`: a JSON file with a tools list given to every row that has none of its own."""
    if fmt != "auto" and fmt not in FORMATS:
        raise DataError(f"unknown format '{fmt}'" + did_you_mean(fmt, FORMATS), where=path,
                        fix=f"format must be 'auto' or one of {list(FORMATS)}")
    out: list[Conversation] = []
    row_fmt = None if fmt == "auto" else fmt
    shared_tools = _tools_file(tools) if tools else None
    for row, where in iter_rows(path, split=split, name=name):
        if row_fmt is None:
            row_fmt = detect_format(row, where)
        msgs, row_tools, ignored = normalise_row(row, row_fmt, where)
        if system_prompt is not None and (not msgs or msgs[0]["role"] != "system"):
            msgs = [{"role": "system", "content": system_prompt}] + msgs
        validate_conversation(msgs, where, require_assistant=require_assistant)
        row_tools = row_tools if row_tools is not None else shared_tools
        out.append(Conversation(tuple(msgs), where, tuple(row_tools) if row_tools else None, tuple(ignored)))
        if limit is not None and len(out) >= limit:
            break
    if not out:
        raise DataError("no examples found", where=path, fix="the file is empty; check the path")
    return out


def _tools_file(path: str) -> list[dict] | None:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError("tools file not found", where=path, fix="check data.train.tools") from None
    except json.JSONDecodeError as exc:
        raise DataError(f"malformed JSON: {exc.msg}", where=f"{path}:{exc.lineno}", fix="fix the JSON syntax") from None
    return agentic.tools_list(data.get("tools", data) if isinstance(data, dict) else data, path)
