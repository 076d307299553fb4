"""Fault injection on real processes: kill -9 during a step, during a checkpoint write, of the launcher
mid-grid, and two launchers at once. After a rerun, results equal an uninterrupted run's, bit for bit."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from harness.grid import load_experiment
from harness.layout import RunDir
from harness.training.loop import train
from tests.tiny import build_tiny

HARNESS = [sys.executable, "-m", "harness.cli"]
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("faults")
    return root, build_tiny(root)


def _env(**extra):
    env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    env.update(extra)
    return env


def _exp_file(tiny, tmp_path, name: str, extra: str = "") -> Path:
    root, base = tiny
    text = base.read_text().replace("name: tiny", f"name: {name}").replace(
        f"results_dir: {root}/results", f"results_dir: {tmp_path}/results") + extra
    p = tmp_path / f"{name}.yaml"
    p.write_text(text)
    return p


def _final_weights(rdir: Path) -> dict:
    step = max(int(p.name[5:]) for p in (rdir / "checkpoints").iterdir() if (p / "COMPLETED").exists())
    return load_file(str(rdir / f"checkpoints/step-{step:06d}/model.safetensors"))


def _metrics(rdir: Path) -> list[dict]:
    rows = [json.loads(x) for x in (rdir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in ("time", "tokens_per_s")} for r in rows]


def _reference(exp_path: Path, tmp_path: Path, idx: int = 0) -> Path:
    spec = load_experiment(exp_path).runs[idx]
    ref = tmp_path / f"ref-{idx}"
    train(spec, ref)
    return ref


def _same(rdir: Path, ref: Path) -> None:
    a, b = _final_weights(rdir), _final_weights(ref)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert _metrics(rdir) == _metrics(ref)  # no duplicated or missing log rows either


@pytest.mark.parametrize("point", ["checkpoint_write", "checkpoint_rename", "eval_write"])
def test_kill_during_checkpoint_write(tiny, tmp_path, point):
    exp = _exp_file(tiny, tmp_path, "ckfault")
    r = subprocess.run(HARNESS + ["run", str(exp), "--launcher", "debug"], env=_env(HARNESS_FAULT=f"{point}:1"),
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 137
    spec = load_experiment(exp).runs[0]
    rdir = tmp_path / "results" / "ckfault" / "runs" / spec.run_id
    if point == "eval_write":  # killed while evaluating (the base, first): side files may exist, the JSON not
        assert not (rdir.parents[1] / "base" / "eval" / "step-000000.json").exists()
    else:
        partial = [p for p in (rdir / "checkpoints").iterdir()]
        assert partial and not any((p / "COMPLETED").exists() for p in partial)  # half checkpoint, never trusted
    r = subprocess.run(HARNESS + ["run", str(exp), "--launcher", "debug"], env=_env(), capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    _same(rdir, _reference(exp, tmp_path))
    assert not RunDir(rdir).missing_evals()  # every checkpoint evaluated after the rerun
    assert json.loads((rdir.parents[1] / "base" / "eval" / "step-000000.json").read_text())["metrics"]


def _wait_for(mark: Path, proc: subprocess.Popen, timeout: float = 300) -> None:
    """Block until the process reaches its fault point (it creates `mark`) — a condition the test controls,
    whatever the CPU's speed; fail clearly if it exits first or never gets there."""
    t0 = time.monotonic()
    while not mark.exists():
        if proc.poll() is not None:
            pytest.fail(f"the process exited ({proc.returncode}) before reaching its fault point")
        if time.monotonic() - t0 > timeout:
            os.killpg(proc.pid, signal.SIGKILL)
            pytest.fail(f"the process did not reach its fault point within {timeout} s")
        time.sleep(0.02)


def test_kill_9_mid_training_then_rerun(tiny, tmp_path):
    exp = _exp_file(tiny, tmp_path, "killstep", "\n".join(["", "grid:", "  train.epochs: [6]", ""]))
    spec = load_experiment(exp).runs[0]
    rdir = tmp_path / "results" / "killstep" / "runs" / spec.run_id
    mark = tmp_path / "at-step-20"
    # held after optimizer step 20, past the epoch checkpoints at steps 8 and 16, then killed there
    p = subprocess.Popen(HARNESS + ["run", str(exp), "--launcher", "debug"], stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, start_new_session=True,
                         env=_env(HARNESS_FAULT="train_step:20:wait", HARNESS_FAULT_MARK=str(mark)))
    _wait_for(mark, p)
    assert len((rdir / "metrics.jsonl").read_text().splitlines()) == 20
    assert [s for s, _ in RunDir(rdir).completed_checkpoints()] == [8, 16]
    os.killpg(p.pid, signal.SIGKILL)
    p.wait()
    assert not (rdir / "DONE").exists()
    r = subprocess.run(HARNESS + ["run", str(exp), "--launcher", "debug"], env=_env(), capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads((rdir / "provenance.json").read_text())["resumed_from"] == 16
    _same(rdir, _reference(exp, tmp_path))


def test_kill_9_of_launcher_and_jobs_mid_grid(tiny, tmp_path):
    grid = "\n".join(["", "launcher: {backend: local, timeout_min: 10}", "grid:",
                      "  regime.name: [prompt_masked, full, prompt_only]", "  train.epochs: [4]", ""])
    exp = _exp_file(tiny, tmp_path, "killgrid", grid)
    exp.write_text(exp.read_text().replace("launcher: {backend: debug}\n", ""))
    runs = load_experiment(exp).runs
    out = tmp_path / "results" / "killgrid" / "runs"
    mark = tmp_path / "second-run-checkpointed"
    # one worker trains the runs in order, a checkpoint per epoch: its 5th COMPLETED checkpoint is the second
    # run's first. Held right there, the launcher and its worker are killed: run 1 done and evaluated, run 2
    # mid-way with a checkpoint to resume from, run 3 not started.
    p = subprocess.Popen(HARNESS + ["run", str(exp), "--parallel", "1"], stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, start_new_session=True,
                         env=_env(HARNESS_FAULT="checkpoint_done:5:wait", HARNESS_FAULT_MARK=str(mark)))
    _wait_for(mark, p)
    assert (out / runs[0].run_id / "DONE").exists() and not RunDir(out / runs[0].run_id).missing_evals()
    assert [s for s, _ in RunDir(out / runs[1].run_id).completed_checkpoints()] == [8]
    assert not (out / runs[1].run_id / "DONE").exists() and not (out / runs[2].run_id / "metrics.jsonl").exists()
    os.killpg(p.pid, signal.SIGKILL)  # the launcher and the jobs it started (one session)
    p.wait()
    r = subprocess.run(HARNESS + ["run", str(exp), "--parallel", "1"], env=_env(), capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert json.loads((out / runs[1].run_id / "provenance.json").read_text())["resumed_from"] == 8
    for i, run in enumerate(runs):
        _same(out / run.run_id, _reference(exp, tmp_path, i))
    again = subprocess.run(HARNESS + ["run", str(exp)], env=_env(), capture_output=True, text=True, timeout=300)
    assert "all 3 runs are done" in again.stdout


def test_two_launchers_at_once_train_each_run_once(tiny, tmp_path):
    exp = _exp_file(tiny, tmp_path, "twice", "\n".join(["", "grid:", "  regime.name: [prompt_masked, full]",
                                                        "  train.epochs: [4]", ""]))
    procs = [subprocess.Popen(HARNESS + ["run", str(exp), "--launcher", "debug"], env=_env(),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    codes = sorted(p.returncode for p in procs)
    assert codes[0] == 0
    refused = [o for p, o in zip(procs, outs) if p.returncode != 0]
    for o in refused:
        assert "another `harness run` is launching" in o[1]
    for i, run in enumerate(load_experiment(exp).runs):
        rdir = tmp_path / "results" / "twice" / "runs" / run.run_id
        prov = json.loads((rdir / "provenance.json").read_text())
        assert prov["resumed_from"] is None  # trained once, from scratch, never restarted
        _same(rdir, _reference(exp, tmp_path, i))


def test_a_worker_that_dies_fails_only_its_run(tiny, tmp_path):
    """Local workers die (kill -9 at their first checkpoint write): each death fails the run that worker held
    (FAILED says so), a new worker takes the runs nobody took yet, and the launcher ends with exit code 1.
    The rerun resumes them all to the uninterrupted result."""
    grid = "\n".join(["", "launcher: {backend: local, timeout_min: 10}", "grid:",
                      "  regime.name: [prompt_masked, full]", "  train.epochs: [2]", ""])
    exp = _exp_file(tiny, tmp_path, "workerdies", grid)
    exp.write_text(exp.read_text().replace("launcher: {backend: debug}\n", ""))
    runs = load_experiment(exp).runs
    out = tmp_path / "results" / "workerdies" / "runs"
    r = subprocess.run(HARNESS + ["run", str(exp), "--parallel", "1"], env=_env(HARNESS_FAULT="checkpoint_write:1"),
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 1, r.stdout[-2000:] + r.stderr[-2000:]
    workers = {json.loads((out / run.run_id / "launcher.json").read_text())["job_id"] for run in runs}
    assert len(workers) == 2  # the second run went to a new worker
    for run in runs:
        assert "died while running this run" in (out / run.run_id / "FAILED").read_text()
        assert f"{run.run_id}: FAILED (worker" in r.stdout
    r = subprocess.run(HARNESS + ["run", str(exp), "--parallel", "1"], env=_env(), capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    for i, run in enumerate(runs):
        assert not (out / run.run_id / "FAILED").exists()
        _same(out / run.run_id, _reference(exp, tmp_path, i))
