"""`harness inspect`: the mask audit shows the same masks the regimes produce, in terminal, HTML and JSON."""

import json

import numpy as np
import pytest

from harness.cli import main
from harness.data import tokenize_conversation
from harness.masking import apply_regime

ROWS = [
    {"messages": [{"role": "system", "content": "You are helpful."}, {"role": "user", "content": "What is 2+2?"},
                  {"role": "assistant", "content": "4."}]},
    {"messages": [{"role": "user", "content": "What is the capital of France? " * 10},
                  {"role": "assistant", "content": "Paris is the capital of France."}]},
]


@pytest.fixture
def files(tmp_path, chatml_tok):
    tok_dir = tmp_path / "tok"
    chatml_tok.save_pretrained(tok_dir)
    data = tmp_path / "d.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in ROWS) + "\n")
    return tmp_path, str(data), str(tok_dir)


def test_inspect_cli_writes_json_and_html(files, chatml_tok, capsys):
    tmp, data, tok = files
    rc = main(["inspect", "--data", data, "--tokenizer", tok, "--max-length", "40", "--regime", "prompt_masked",
               "--regime", "prompt_only", "--regime", "prompt_weight:prompt_weight=0.25", "--json", str(tmp / "a.json"),
               "--html", str(tmp / "a.html")])
    assert rc == 0
    out = capsys.readouterr().out
    assert "mask statistics" in out and "prompt_weight:prompt_weight=0.25" in out
    assert "dropped 1 zero_supervised_tokens_after_truncation" in out  # the truncated response is counted
    doc = json.loads((tmp / "a.json").read_text())
    ex0 = doc["examples"][0]
    t = tokenize_conversation(ROWS[0]["messages"], chatml_tok)
    assert ex0["input_ids"] == t.input_ids.tolist() and len(ex0["tokens"]) == len(t)
    assert ex0["regimes"]["prompt_masked"]["labels"] == apply_regime(t, "prompt_masked").labels.tolist()
    w = np.array(ex0["regimes"]["prompt_weight:prompt_weight=0.25"]["weights"])
    assert set(np.round(w, 6)) == {0.0, 0.25, 1.0}
    assert doc["examples"][1]["regimes"]["prompt_masked"] is None  # dropped, shown as such
    stats = {s["regime"]: s for s in doc["stats"]}
    assert stats["prompt_masked"]["dropped"] == 1 and stats["prompt_only"]["dropped"] == 0
    assert stats["prompt_masked"]["supervised_tokens"] == 2  # "4." + <|im_end|>
    page = (tmp / "a.html").read_text()
    assert page.startswith("<!doctype html>") and "const DATA" in page and "<script src" not in page


def test_inspect_from_experiment(files, tmp_path, capsys, chatml_tok):
    tmp, data, tok = files
    exp = tmp / "e.yaml"
    exp.write_text(f"name: x\nmodel: {{name_or_path: {tok}}}\ndata: {{train: {{path: {data}}}, max_length: 64}}\n"
                   "grid:\n  regime.name: [prompt_masked, full]\n  train.lr: [1e-4, 2e-4]\n")
    assert main(["inspect", str(exp), "--n", "1", "--json", str(tmp / "e.json")]) == 0
    out = capsys.readouterr().out
    doc = json.loads((tmp / "e.json").read_text())
    # the grid's four runs have two regimes: each audited once, with the experiment's data and max_length
    masked_label = "prompt_masked:turns=all,eot=True"  # the experiment's regime options, spelled out
    assert [s["regime"] for s in doc["stats"]] == [masked_label, "full"]
    t = tokenize_conversation(ROWS[0]["messages"], chatml_tok)
    ex0 = doc["examples"][0]
    assert ex0["regimes"]["full"]["labels"][1:] == t.input_ids.tolist()[1:]  # full: every token but position 0
    assert ex0["regimes"][masked_label]["labels"] == apply_regime(t, "prompt_masked").labels.tolist()
    full, masked = (next(s for s in doc["stats"] if s["regime"] == r) for r in ("full", masked_label))
    assert full["supervised_tokens"] > masked["supervised_tokens"] > 0
    assert "mask statistics" in out and "prompt_masked" in out and "full" in out


def test_inspect_errors_are_clean(files, capsys):
    tmp, data, tok = files
    assert main(["inspect", "--data", data, "--tokenizer", tok, "--regime", "prompt_maskd"]) == 2
    assert "did you mean 'prompt_masked'" in capsys.readouterr().err
    assert main(["inspect"]) == 2


def test_inspect_piped_marks_the_loss_in_the_text_and_wraps(files, capsys, monkeypatch):
    """Off a terminal (capsys is a pipe) the colours are gone: in-loss tokens are between « », down-weighted
    ones between ‹ ›, so the three regime panels read differently; lines wrap at 120 columns, nothing is cut."""
    monkeypatch.delenv("COLUMNS", raising=False)
    tmp, data, tok = files
    rc = main(["inspect", "--data", data, "--tokenizer", tok, "--n", "1", "--regime", "prompt_masked",
               "--regime", "full", "--regime", "prompt_only", "--regime", "prompt_weight:prompt_weight=0.25"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "\x1b[" not in out and "…" not in out  # plain text, no cell or line cut short
    panels_part = out.split("mask statistics", 1)[0]
    panel_lines = [ln for ln in panels_part.splitlines() if ln.startswith(("│", "╭", "╰"))]
    assert {len(ln) for ln in panel_lines} == {120}  # the regimes' panels wrap at 120 columns
    header = next(ln for ln in out.splitlines() if "supervised" in ln)  # the statistics at their natural width
    assert "mask hash" in header and "spell specials" in header
    panels = {}
    for name in ("prompt_masked", "full", "prompt_only", "prompt_weight:prompt_weight=0.25"):
        start = out.index(f" {name}: ")
        block = out[start:].split("╰", 1)[0]
        panels[name] = "".join(ln.strip("│ ") for ln in block.splitlines()[1:])
    assert len(set(panels.values())) == 4, panels  # each regime's panel reads differently
    assert "«4.<|im_end|>" in panels["prompt_masked"] and "«What is 2+2?" not in panels["prompt_masked"]
    assert panels["full"].count("«") == 1 and panels["full"].startswith("<|im_start|>«system")  # all but the first
    assert "«" in panels["prompt_only"] and "4.«" not in panels["prompt_only"]
    assert "‹" in panels["prompt_weight:prompt_weight=0.25"] and "«4." in panels["prompt_weight:prompt_weight=0.25"]


def test_marked_groups_runs_of_tokens():
    from harness.inspect import _marked

    assert _marked(["a", "b", "c", "d", "e"], [0, 1, 1, 0.5, 0]) == "a«bc»‹d›e"
    assert _marked(["x\n", "y"], [1, 1]) == "«x\u23ce\ny»"
