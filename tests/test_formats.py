"""Loading and normalising data: every format, and a clear error (file:line + fix) for every bad row."""

import json

import pytest

from harness.data import load_conversations
from harness.errors import DataError


def write(tmp_path, name, rows):
    p = tmp_path / name
    if name.endswith(".jsonl"):
        p.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    else:
        p.write_text(json.dumps(rows))
    return str(p)


CONV = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}


def test_formats_normalise_to_messages(tmp_path):
    alpaca = write(tmp_path, "a.jsonl", [{"instruction": "Add", "input": "2+2", "output": "4"}])
    assert load_conversations(alpaca)[0].as_list() == [
        {"role": "user", "content": "Add\n\n2+2"}, {"role": "assistant", "content": "4"}]
    pc = write(tmp_path, "p.json", [{"prompt": "Q?", "completion": "A."}])
    assert [m["role"] for m in load_conversations(pc)[0].messages] == ["user", "assistant"]
    lima = write(tmp_path, "l.jsonl", [{"conversations": ["q1", "a1", "q2", "a2"], "source": "x"}])
    assert [m["role"] for m in load_conversations(lima)[0].messages] == ["user", "assistant"] * 2
    share = write(tmp_path, "s.jsonl", [{"conversations": [{"from": "human", "value": "q"},
                                                           {"from": "gpt", "value": "a"}]}])
    assert load_conversations(share)[0].as_list()[1] == {"role": "assistant", "content": "a"}
    sysp = load_conversations(write(tmp_path, "m.jsonl", [CONV]), system_prompt="Be brief.")[0]
    assert sysp.messages[0] == {"role": "system", "content": "Be brief."}
    assert sysp.source.endswith("m.jsonl:1")


def test_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    p = tmp_path / "d.parquet"
    pq.write_table(pa.Table.from_pylist([{"prompt": "Q", "completion": "A"}]), p)
    assert load_conversations(str(p))[0].messages[1]["content"] == "A"


BAD = [
    ("malformed JSON", ['{"messages": [}'], r"bad\.jsonl:1: malformed JSON"),
    ("second line bad", [json.dumps(CONV), "{oops"], r"bad\.jsonl:2: malformed JSON"),
    ("unknown role", [{"messages": [{"role": "usr", "content": "x"}, {"role": "assistant", "content": "y"}]}],
     r"unknown role 'usr' \(did you mean 'user'\?\)"),
    ("missing content", [{"messages": [{"role": "user", "text": "x"}]}], r"message 0 has no 'content'"),
    ("wrong type", [{"messages": [{"role": "user", "content": 3}, {"role": "assistant", "content": "y"}]}],
     r"content is int, expected a string"),
    ("messages not a list", [{"messages": "hi"}], r"'messages' is a str, expected a list"),
    ("empty messages", [{"messages": []}], r"empty conversation"),
    ("system only", [{"messages": [{"role": "system", "content": "s"}]}], r"only a system message"),
    ("no assistant", [{"messages": [{"role": "user", "content": "x"}]}], r"no assistant turn"),
    ("empty assistant", [{"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": " "}]}],
     r"message 1 \(assistant\) is empty"),
    ("unknown format", [{"text": "x"}], r"cannot detect the data format"),
    ("not an object", ["[1, 2]"], r"expected a JSON object"),
    ("duplicate keys", ['{"messages": [], "messages": []}'], r"duplicate key 'messages'"),
]


@pytest.mark.parametrize("name,rows,pattern", BAD, ids=[b[0] for b in BAD])
def test_bad_rows_name_file_line_and_fix(tmp_path, name, rows, pattern):
    path = write(tmp_path, "bad.jsonl", rows)
    with pytest.raises(DataError, match=pattern) as info:
        load_conversations(path)
    assert "fix:" in str(info.value)
    assert "bad.jsonl" in str(info.value)


def test_invalid_utf8(tmp_path):
    p = tmp_path / "u.jsonl"
    p.write_bytes(json.dumps(CONV).encode() + b"\n" + b'{"messages": "\xff\xfe"}\n')
    with pytest.raises(DataError, match=r"u\.jsonl:2: invalid UTF-8"):
        load_conversations(str(p))


def test_missing_file_and_forced_unknown_format(tmp_path):
    with pytest.raises(DataError, match="data file not found"):
        load_conversations(str(tmp_path / "nope.jsonl"))
    path = write(tmp_path, "ok.jsonl", [CONV])
    with pytest.raises(DataError, match="unknown format 'mesages' \\(did you mean 'messages'\\?\\)"):
        load_conversations(path, fmt="mesages")
