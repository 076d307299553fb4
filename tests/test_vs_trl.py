"""benchmarks/vs_trl.py's identical-work plan: the rows it hands TRL carry exactly the real and supervised tokens
harness's engine trains on in the same steps, for each regime (TRL itself is the benchmark-only extra)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

from harness.grid import load_experiment
from harness.training.loop import setup
from tests.tiny import build_tiny

ROOT = Path(__file__).resolve().parents[1]


def _vs_trl():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    spec = importlib.util.spec_from_file_location("vs_trl_under_test", ROOT / "benchmarks" / "vs_trl.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("regime", ["prompt_masked", "full", "prompt_weight"])
def test_trl_rows_hold_the_engines_tokens_step_by_step(tmp_path, regime):
    torch.set_num_threads(1)
    exp = build_tiny(tmp_path)
    cfg = load_experiment(exp).runs[0].config
    vs = _vs_trl()
    a = type("A", (), dict(root=tmp_path, seq=64, rows=4, steps=3, lr=1e-3, threads=1, micro_rows=None,
                           prompt_weight=0.1))()
    mine = vs.experiment(a, Path(cfg.model.name_or_path), Path(cfg.data.train.path), regime,
                         Path(cfg.model.name_or_path))
    records, expected, chosen, rows = vs.plan_rows(mine, 3)
    assert len(records) == 3 * rows and len(expected) == 3 and rows == 4
    s = setup(load_experiment(mine).runs[0].config)
    for k, i in enumerate(chosen):
        m, _ = s.engine.step(s.batches(i), metrics=False, step=k + 1)
        assert (m.tokens, m.supervised) == (expected[k]["tokens"], expected[k]["supervised"])
        recs = records[k * rows:(k + 1) * rows]
        # TRL's count: labels[:, 1:] != -100 per row; its collator also masks each example's first token
        assert sum(sum(x != -100 for x in r["labels"][1:]) for r in recs) == m.supervised
        assert sum(sum(r["seq_lengths"]) for r in recs) == sum(len(r["input_ids"]) for r in recs) == m.tokens
    res = {"steps": [dict(e) for e in expected]}
    assert vs.count_mismatches(res, expected) == []
    res["steps"][1]["supervised"] += 1
    assert vs.count_mismatches(res, expected) == [f"step 2: supervised {expected[1]['supervised'] + 1} != "
                                                  f"{expected[1]['supervised']}"]
