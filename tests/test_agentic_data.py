"""Agentic and reasoning rows: OpenAI/HF tool calls, tool results, reasoning, ShareGPT function calls,
per-message loss weights, reported unknown fields, and a clear error (file:line + fix) for every bad row."""

import json

import pytest

from harness.data import load_conversations
from harness.errors import DataError

CALL = {"type": "function", "id": "c1", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
AGENT = {"messages": [
    {"role": "user", "content": "Weather in Paris?"},
    {"role": "assistant", "content": None, "tool_calls": [CALL], "reasoning_content": "Need the tool."},
    {"role": "tool", "tool_call_id": "c1", "name": "get_weather", "content": "sunny"},
    {"role": "assistant", "content": "It is sunny."}], "tools": TOOLS}


def write(tmp_path, rows, name="d.jsonl"):
    p = tmp_path / name
    p.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return str(p)


def test_openai_agentic_rows_load(tmp_path):
    string_args = json.loads(json.dumps(AGENT))
    string_args["messages"][1]["tool_calls"][0]["function"]["arguments"] = '{"city": "Paris"}'
    for row in (AGENT, string_args):
        c = load_conversations(write(tmp_path, [row]))[0]
        call = c.messages[1]
        assert call["content"] == "" and call["reasoning_content"] == "Need the tool."
        assert call["tool_calls"] == [CALL]  # arguments always an object, as templates tojson them
        assert c.messages[2] == {"role": "tool", "content": "sunny", "tool_call_id": "c1", "name": "get_weather"}
        assert c.tools == tuple(TOOLS) and c.ignored == ()


def test_reasoning_aliases_and_dataset_tools(tmp_path):
    row = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a", "reasoning": "r"}]}
    tools = tmp_path / "tools.json"
    tools.write_text(json.dumps(TOOLS))
    c = load_conversations(write(tmp_path, [row]), tools=str(tools))[0]
    assert c.messages[1]["reasoning_content"] == "r" and c.tools == tuple(TOOLS)
    # a row's own tools win over the data set's
    own = load_conversations(write(tmp_path, [{**row, "tools": TOOLS[:0] + [{"name": "x"}]}]), tools=str(tools))[0]
    assert own.tools == ({"name": "x"},)


def test_sharegpt_function_call_observation_and_system(tmp_path):
    row = {"system": "Use tools.", "tools": json.dumps(TOOLS), "conversations": [
        {"from": "human", "value": "Weather?"},
        {"from": "function_call", "value": json.dumps({"name": "get_weather", "arguments": {"city": "Oslo"}})},
        {"from": "observation", "value": "rain"},
        {"from": "gpt", "value": "Rain."}]}
    c = load_conversations(write(tmp_path, [row]))[0]
    assert [m["role"] for m in c.messages] == ["system", "user", "assistant", "tool", "assistant"]
    assert c.messages[0]["content"] == "Use tools."  # top-level system: no longer dropped
    assert c.messages[2]["tool_calls"][0]["function"] == {"name": "get_weather", "arguments": {"city": "Oslo"}}
    assert c.tools == tuple(TOOLS)


@pytest.mark.parametrize("key,value,want", [("weight", 0, 0.0), ("train", False, 0.0), ("loss", 1, 1.0),
                                            ("loss_weight", 0.25, 0.25), ("loss_scale", 2.0, 2.0)])
def test_message_weights(tmp_path, key, value, want):
    row = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a", key: value}]}
    assert load_conversations(write(tmp_path, [row]))[0].messages[1]["weight"] == want


def test_unknown_fields_are_reported_not_dropped_silently(tmp_path):
    row = {"id": 7, "messages": [{"role": "user", "content": "q", "lang": "en"},
                                 {"role": "assistant", "content": "a"}]}
    assert load_conversations(write(tmp_path, [row]))[0].ignored == ("id", "messages[].lang")


def _msgs(*m):
    return {"messages": list(m)}


U = {"role": "user", "content": "q"}
A = {"role": "assistant", "content": "a"}
BAD = {
    "tool result without a call": (_msgs(U, A, {"role": "tool", "content": "x"}, A), "no unanswered tool call"),
    "more results than calls": (_msgs(U, {"role": "assistant", "content": "", "tool_calls": [CALL]},
                                      {"role": "tool", "content": "x"}, {"role": "tool", "content": "y"}, A),
                                "no unanswered tool call"),
    "non-JSON arguments": (_msgs(U, {"role": "assistant", "content": "", "tool_calls": [
        {"type": "function", "function": {"name": "f", "arguments": "{city: Paris"}}]}), "arguments are not JSON"),
    "ends on a tool result": (_msgs(U, {"role": "assistant", "content": "", "tool_calls": [CALL]},
                                    {"role": "tool", "content": "x"}), "ends on a tool result"),
    "tool_call_id mismatch": (_msgs(U, {"role": "assistant", "content": "", "tool_calls": [CALL]},
                                    {"role": "tool", "content": "x", "tool_call_id": "zz"}, A), "tool_call_id 'zz'"),
    "call without a name": (_msgs(U, {"role": "assistant", "content": "", "tool_calls": [
        {"type": "function", "function": {"arguments": {}}}]}), "no function name"),
    "tool_calls on a user turn": (_msgs({**U, "tool_calls": [CALL]}, A), "only assistant messages call tools"),
    "empty assistant without calls": (_msgs(U, {"role": "assistant", "content": None}), "content is NoneType"),
    "negative weight": (_msgs(U, {**A, "weight": -1}), "weight=-1"),
    "conflicting weights": (_msgs(U, {**A, "weight": 1, "train": False}), "different loss weights"),
    "reasoning twice": (_msgs(U, {**A, "content": "<think>r</think>a", "reasoning_content": "r"}),
                        "reasoning twice"),
    "two system prompts": ({"system": "s", "messages": [{"role": "system", "content": "t"}, U, A]},
                           "top-level 'system' and a system message"),
    "tools not a list": ({**_msgs(U, A), "tools": {"name": "f"}}, "'tools' must be a list"),
}


@pytest.mark.parametrize("kind", list(BAD))
def test_bad_agentic_rows_name_file_line_and_fix(tmp_path, kind):
    row, msg = BAD[kind]
    path = write(tmp_path, [{"messages": [U, A]}, row])
    with pytest.raises(DataError) as err:
        load_conversations(path)
    assert msg in err.value.message and err.value.where == f"{path}:2" and err.value.fix
