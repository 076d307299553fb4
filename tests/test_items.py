"""Per-item results through the real pipeline (test-size world, debug launcher): every probe writes one item
row per question/text/conversation, the items add up to the checkpoint's metrics, and a final_only task runs on
the final checkpoint only."""

from __future__ import annotations

import json

import pytest

from analysis.items import load_items
from analysis.load import load_runs
from harness.grid import load_experiment

EXP = """\
name: itemtest
results_dir: {root}/results
model: {{name_or_path: {w}/model}}
data:
  train: {{path: {w}/data/sft_train.jsonl, limit: 60}}
  eval: {{path: {w}/data/eval_qa_heldout.jsonl, limit: 12}}
  max_length: 128
train: {{lr: 1e-3, epochs: 2, batch_tokens: 256, seed: 1, threads: 1}}
eval:
  include_path: [{w}/tasks]
  tasks: [{{name: world_qa, limit: 15, final_only: true}}, {{name: world_facts, limit: 10}}]
  pretrain_text: {w}/data/eval_heldout_bios.jsonl
  raw_questions: {w}/data/eval_raw_questions.jsonl
  probe_limit: 12
  text_limit: 9
launcher: {{backend: debug}}
"""

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.slow
def test_items_add_up_and_final_only_tasks(test_world, tmp_path):
    from harness.launch.submit import launch

    p = tmp_path / "e.yaml"
    p.write_text(EXP.format(root=tmp_path, w=test_world))
    exp = load_experiment(p)
    launch(exp, out=lambda *a: None)
    rdir = exp.out_dir / "runs" / exp.runs[0].run_id
    evals = sorted((rdir / "eval").glob("step-*.json"))
    assert len(evals) == 2  # epochs 1 and 2
    first, last = (json.loads(e.read_text())["metrics"] for e in evals)
    base = json.loads((exp.out_dir / "base/eval/step-000000.json").read_text())["metrics"]
    assert "world_qa/exact_match" not in first and "world_qa/exact_match" in last and "world_qa/exact_match" in base
    assert "world_facts/acc" in first and "world_facts/acc" in last

    metrics = ["world_qa/exact_match", "world_facts/acc", "nll/response", "forgetting/pretrain_nll",
               "forgetting/pretrain_nll_delta", "forgetting/kl_base", "format/answered"]
    items = load_items(exp.out_dir, metrics)
    runs = load_runs(exp.out_dir)
    counts = {"world_qa/exact_match": 15, "world_facts/acc": 10, "nll/response": 12, "forgetting/pretrain_nll": 9,
              "forgetting/pretrain_nll_delta": 9, "forgetting/kl_base": 9, "format/answered": 12}
    for (run, step, metric), g in items.groupby(["run_id", "step", "metric"]):
        assert len(g) == counts[metric], (run, step, metric)
        agg = g["num"].sum() / g["den"].sum()
        if run == "base":
            want = base[metric]
        else:
            r = runs[(runs["run_id"] == run) & (runs["step"] == step) & (runs["metric"] == metric)]
            want = float(r["value"].iloc[0])
        assert agg == pytest.approx(want, abs=1e-9), (run, step, metric)
    qa_steps = set(items.loc[(items["metric"] == "world_qa/exact_match") & (items["run_id"] != "base"), "step"])
    assert qa_steps == {int(evals[-1].stem[-6:])}
