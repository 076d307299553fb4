"""Tool-calling and reasoning conversations in OpenAI format, end to end on the 2-layer model: `harness run` over a
grid of the agentic regime options, `harness inspect` (what is trained) and `harness doctor` (parity)."""

from __future__ import annotations

import json

import pytest

from harness.cli import main
from harness.grid import load_experiment

pytestmark = pytest.mark.usefixtures("one_torch_thread")

EXPERIMENT = """\
name: agentic
results_dir: {root}/results
model: {{name_or_path: {root}/model, chat_template: chatml_tools}}
data:
  train: {{path: {root}/agent.jsonl}}
  max_length: 512
train: {{lr: 3e-3, epochs: 1, batch_tokens: 1024, seed: 1, threads: 1, log_every: 1}}
launcher: {{backend: debug}}
grid:
  regime.reasoning: [train, mask]
  regime.multiturn: [render, per_turn]
"""
TOOLS = [{"type": "function", "function": {"name": "add", "parameters": {"type": "object"}}}]


def rows(n: int) -> list[dict]:
    out = []
    for i in range(n):
        a, b = i % 7, i % 5
        call = {"id": f"c{i}", "type": "function",
                "function": {"name": "add", "arguments": json.dumps({"a": a, "b": b})}}  # a JSON string
        msgs = [{"role": "user", "content": f"What is {a}+{b}?"},
                {"role": "assistant", "content": None, "tool_calls": [call], "reasoning_content": "Use add."},
                {"role": "tool", "tool_call_id": f"c{i}", "content": str(a + b)},
                {"role": "assistant", "content": f"{a + b}.", "reasoning_content": f"The tool says {a + b}."}]
        if i % 2:  # a second user query: the first turns' reasoning leaves the one-render history
            msgs += [{"role": "user", "content": "Thanks?"}, {"role": "assistant", "content": "Welcome.",
                                                             "reasoning_content": "Be polite."}]
        out.append({"messages": msgs, "tools": TOOLS})
    return out


def test_agentic_grid_runs_inspects_and_checks_parity(tmp_path, capsys):
    from tests.tiny import build_tiny

    build_tiny(tmp_path)
    cfg = json.loads((tmp_path / "model" / "config.json").read_text())  # room for the tools list (rotary: no
    (tmp_path / "model" / "config.json").write_text(json.dumps({**cfg, "max_position_embeddings": 512}))  # weights)
    (tmp_path / "agent.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows(12)))
    exp = tmp_path / "agentic.yaml"
    exp.write_text(EXPERIMENT.format(root=tmp_path))
    runs = load_experiment(exp).runs
    assert len(runs) == 4
    assert main(["run", str(exp)]) == 0
    masks = {}
    for r in runs:
        rdir = load_experiment(exp).run_dir(r).path
        assert (rdir / "DONE").exists()
        masks[r.config.regime.reasoning, r.config.regime.multiturn] = json.loads(
            (rdir / "provenance.json").read_text())["mask"]
    for reasoning in ("train", "mask"):
        one, per = masks[reasoning, "render"], masks[reasoning, "per_turn"]
        # one render: every call trained; 6 rows x 2 turns before a later user query lose their reasoning
        assert one["tool_call_tokens"]["supervised"] == one["tool_call_tokens"]["total"] > 0
        assert one["reasoning_dropped_turns"] == 12 and one["examples"] == 12
        # per turn: one example per assistant turn; each call trained once (in its own example; history after);
        # the history of the odd rows' last example still drops two turns' reasoning (context, not trained)
        assert per["examples"] == 12 * 2 + 6 and per["reasoning_dropped_turns"] == 12
        assert per["tool_call_tokens"]["supervised"] == one["tool_call_tokens"]["total"]
        if reasoning == "train":
            assert one["reasoning_tokens"]["supervised"] == one["reasoning_tokens"]["total"] > 0
            # each turn with its own reasoning: the 12 dropped ones are back
            assert per["reasoning_tokens"]["supervised"] > one["reasoning_tokens"]["supervised"]
        else:
            assert one["reasoning_tokens"]["supervised"] == per["reasoning_tokens"]["supervised"] == 0
    out = tmp_path / "audit.json"
    capsys.readouterr()
    assert main(["inspect", str(exp), "--n", "2", "--json", str(out)]) == 0
    audit = json.loads(out.read_text())
    parity = {p["regime"]: p for p in audit["parity"]}
    assert parity["prompt_masked:turns=last,eot=True,multiturn=per_turn"]["mismatches"] == 0
    # the odd rows' call turn and first answer, trained without the reasoning inference would generate first
    assert parity["prompt_masked:turns=all,eot=True"]["mismatches"] == 12
    ex = audit["examples"][0]
    w = ex["regimes"]["prompt_masked:turns=all,eot=True"]["weights"]
    trained = {s for s, x in zip(ex["segments"], w) if x > 0}
    assert trained == {"reasoning", "tool_call", "assistant", "eot"}
    per = ex["regimes"]["prompt_masked:turns=last,eot=True,multiturn=per_turn"]  # its own example: the last turn
    assert per["example"]["source"] == ex["source"] + "#turn3" and len(per["weights"]) == len(per["example"]["tokens"])
    assert ex["tokens"].count("<|im_end|>") == 5 and sum(  # system (tools), user, call, tool, answer
        1 for t, x in zip(ex["tokens"], w) if x > 0 and t == "<|im_end|>") == 2  # one end of turn per assistant turn
    assert main(["doctor", str(exp)]) == 0
    said = capsys.readouterr().out
    assert "warn  parity prompt_masked:turns=all,eot=True: template chatml_tools: 12 of 30 trained turns differ" in said
    assert ("ok    parity prompt_masked:turns=last,eot=True,multiturn=per_turn: template chatml_tools: 30 trained "
            "turns follow") in said
