"""train.report_to: tensorboard. What TensorBoard reads back from a run directory holds every logged step once
(also across a kill and resume) and each checkpoint's eval metrics; tracking never enters the run hash."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from harness.grid import load_experiment
from harness.layout import RunDir
from tests.tiny import build_tiny

pytest.importorskip("tensorboard", reason="the `track` extra (make test installs it)")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

HARNESS = [sys.executable, "-m", "harness.cli"]


def _scalars(logdir) -> dict[str, list[tuple[int, float]]]:
    ea = EventAccumulator(str(logdir))
    ea.Reload()
    return {t: [(e.step, e.value) for e in ea.Scalars(t)] for t in ea.Tags()["scalars"]}


def test_tensorboard_holds_step_and_eval_metrics_once_across_a_kill(tmp_path):
    exp = build_tiny(tmp_path)
    over = ["-o", "train.report_to=[tensorboard]", "-o", "train.save_every_steps=2", "-o", "train.epochs=1"]
    spec = load_experiment(exp, [o for o in over if o != "-o"]).runs[0]
    plain = load_experiment(exp, ["train.save_every_steps=2", "train.epochs=1"]).runs[0]
    assert spec.run_id == plain.run_id  # a tracker never changes which run this is
    rdir = tmp_path / "run"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    cmd = HARNESS + ["train", str(exp), *over, "--out", str(rdir)]
    killed = subprocess.run(cmd, env={**env, "HARNESS_FAULT": "train_step:3"}, capture_output=True, text=True)
    assert killed.returncode != 0  # died after logging step 3; the newest checkpoint is step 2
    rd = RunDir(rdir)
    assert [s for s, _ in rd.completed_checkpoints()] == [2]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]

    logged = [json.loads(x) for x in rd.metrics.read_text().splitlines()]
    tb = _scalars(rd.tracking / "train")
    loss = tb["train/loss"]
    assert [s for s, _ in loss] == [r["step"] for r in logged] == list(range(1, len(logged) + 1))  # each once
    assert [v for _, v in loss] == pytest.approx([r["loss"] for r in logged], rel=1e-6)
    assert {"train/lr", "train/loss_response", "train/tokens_per_s", "train/grad_norm"} <= set(tb)

    from harness.evaluation.evaluate import evaluate_run

    results = evaluate_run(rdir, spec.config)
    assert [r["step"] for r in results] == [s for s, _ in rd.completed_checkpoints()] and len(results) > 1
    tb = _scalars(rd.tracking / "eval")
    assert _scalars(rd.tracking / "train")["train/loss"] == loss  # evaluation leaves the step metrics alone
    for res in results:
        for k, v in res["metrics"].items():
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                assert (res["step"], pytest.approx(v, rel=1e-6, abs=1e-9)) in tb[f"eval/{k}"], k
