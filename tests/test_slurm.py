"""The launcher on a real (single-node) SLURM cluster: a grid as a job array, and preemption -> requeue -> resume.

Needs a running cluster (CI starts one with scripts/slurm/start.sh and exports SLURM_CONF); skipped otherwise.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from harness.grid import load_experiment
from harness.launch.slurm import sbatch_preview
from harness.launch.status import status_rows
from harness.launch.submit import launch
from tests.tiny import build_tiny


def _slurm_up() -> str | None:
    if not os.environ.get("SLURM_CONF") and Path("/tmp/harness-slurm/slurm.conf").exists():
        os.environ["SLURM_CONF"] = "/tmp/harness-slurm/slurm.conf"
    if not shutil.which("sinfo"):
        return "SLURM client tools are not installed (CI starts a cluster with scripts/slurm/start.sh)"
    try:
        out = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=10)
    except subprocess.TimeoutExpired:
        return "sinfo timed out"
    if out.returncode != 0 or not any(s in out.stdout for s in ("idle", "mixed", "alloc")):
        return f"no SLURM cluster reachable (sinfo: {out.stderr.strip() or out.stdout.strip()})"
    return None


reason = _slurm_up()
pytestmark = pytest.mark.skipif(reason is not None, reason=reason or "")


def _wait(pred, timeout: float, what: str):
    t0 = time.time()
    while time.time() - t0 < timeout:
        if pred():
            return
        time.sleep(1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def _read(path) -> str:
    try:
        return Path(path).read_text(errors="replace")
    except OSError:
        return ""


def _all_done(exp) -> bool:
    rows = status_rows(exp)
    failed = [r for r in rows if r["state"] == "failed"]
    assert not failed, f"run failed: {failed[0]['error']} (see its FAILED file)"
    return all(r["state"] == "done" for r in rows)


def _exp(tmp_path, extra: list[str]):
    root = tmp_path / "w"
    root.mkdir()
    p = build_tiny(root)
    return load_experiment(p, ["launcher.backend=slurm", "launcher.timeout_min=10", "launcher.mem_gb=1",
                               "launcher.cpus_per_run=1", *extra])


def test_grid_runs_as_a_slurm_array(tmp_path):
    exp = _exp(tmp_path, ["grid.regime.name=[prompt_masked, full]"])
    summary = launch(exp, wait=False, out=lambda *a: None)
    assert len(summary["results"]) == 2
    _wait(lambda: _all_done(exp), 240, "both runs DONE")
    for r in exp.runs:
        rdir = exp.out_dir / "runs" / r.run_id
        info = json.loads((rdir / "launcher.json").read_text())
        assert info["backend"] == "slurm" and "_" in info["job_id"]  # array task ids look like 12_0
    # a second launch does nothing
    again = launch(exp, wait=False, out=lambda *a: None)
    assert again["to_run"] == []


def test_preemption_requeues_and_resumes_exactly(tmp_path, monkeypatch):
    import submitit

    # the job waits after optimizer step 20 until the test has seen it receive USR2 (no race with the CPU's
    # speed): it then checkpoints at step 20, is requeued, and resumes from there
    mark = tmp_path / "at-step-20"
    monkeypatch.setenv("HARNESS_FAULT", "train_step:20:wait")
    monkeypatch.setenv("HARNESS_FAULT_MARK", str(mark))
    exp = _exp(tmp_path, ["train.epochs=150", "train.save_every_epoch=false"])
    spec = exp.runs[0]
    summary = launch(exp, wait=False, out=lambda *a: None)
    job_id = summary["results"][0]["job_id"]
    rdir = exp.out_dir / "runs" / spec.run_id
    _wait(mark.exists, 180, "training to reach step 20")
    job = submitit.SlurmJob(folder=exp.out_dir / "logs" / "%j", job_id=job_id)
    job._interrupt()  # USR2, as SLURM sends before preemption/time limit
    _wait(lambda: "SIGUSR2 received" in _read(job.paths.stderr), 60, "the job to receive USR2")
    mark.unlink()  # go on: the loop sees the signal at this step boundary
    _wait(lambda: _all_done(exp), 300, "the requeued job to finish")
    prov = json.loads((rdir / "provenance.json").read_text())
    assert prov["resumed_from"] == 20 < prov["steps"]  # it really resumed mid-run, where it was stopped
    cks = sorted(p.name for p in (rdir / "checkpoints").iterdir() if (p / "COMPLETED").exists())
    assert len(cks) == 2  # the preemption checkpoint and the final one
    # same weights as an uninterrupted run of the same config
    from harness.training.loop import train

    monkeypatch.delenv("HARNESS_FAULT")
    ref = tmp_path / "ref"
    n = train(spec, ref)["steps"]
    a = load_file(str(rdir / f"checkpoints/step-{n:06d}/model.safetensors"))
    b = load_file(str(ref / f"checkpoints/step-{n:06d}/model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_two_tasks_on_one_node_are_one_run(tmp_path):
    """launcher.tasks_per_node=2: one job for the run, whose srun starts 2 tasks (gloo on CPU) on the node. Rank 0
    holds the lock, writes the run directory and evaluates, once; the result equals one process's (the same rows
    per step, only the float summation order differs)."""
    import submitit

    exp = _exp(tmp_path, ["launcher.tasks_per_node=2", "launcher.cpus_per_run=2", "launcher.mem_gb=2",
                          "train.max_steps=6"])
    spec = exp.runs[0]
    summary = launch(exp, wait=False, out=lambda *a: None)
    job_id = summary["results"][0]["job_id"]
    _wait(lambda: _all_done(exp), 300, "the 2-task run DONE")
    job = submitit.SlurmJob(folder=exp.out_dir / "logs" / "%j", job_id=job_id, tasks=(0, 1))
    script = job.paths.submission_file.read_text()
    assert "#SBATCH --ntasks-per-node=2" in script and "--kill-on-bad-exit=1" in script
    assert script == sbatch_preview(exp, 256, 1)  # what --dry-run prints is what was submitted
    results = job.results()  # each task's own return value
    assert [(r["rank"], r["world_size"], r["status"], r["evaluated"]) for r in results] == \
        [(0, 2, "done", True), (1, 2, "done", False)]
    rdir = exp.out_dir / "runs" / spec.run_id
    prov = json.loads((rdir / "provenance.json").read_text())
    assert prov["world_size"] == 2 and prov["steps"] == 6
    assert not (rdir / "FAILED").exists()
    # the same weights and losses as one process training the same config
    from harness.training.loop import train

    ref = tmp_path / "ref"
    train(spec, ref)
    a = load_file(str(rdir / "checkpoints/step-000006/model.safetensors"))
    b = load_file(str(ref / "checkpoints/step-000006/model.safetensors"))
    assert max((a[k].float() - b[k].float()).abs().max().item() for k in a) < 1e-5
    la = [json.loads(x)["loss"] for x in (rdir / "metrics.jsonl").read_text().splitlines()]
    lb = [json.loads(x)["loss"] for x in (ref / "metrics.jsonl").read_text().splitlines()]
    assert len(la) == len(lb) == 6 and max(abs(x - y) for x, y in zip(la, lb)) < 1e-5


def test_a_chain_of_stages_is_one_slurm_job(tmp_path):
    """Stages (harness/stages.py): a run and the runs that start from it are one job, run in order."""
    import yaml

    root = tmp_path / "w"
    root.mkdir()
    p = build_tiny(root)
    raw = yaml.safe_load(p.read_text())
    raw["train"]["epochs"] = 1
    raw["stages"] = [{"name": "a"}, {"name": "b", "set": {"train.lr": 1e-3}}]
    raw["grid"] = {"train.seed": [1, 2]}
    p.write_text(yaml.safe_dump(raw))
    exp = load_experiment(p, ["launcher.backend=slurm", "launcher.timeout_min=10", "launcher.mem_gb=1",
                              "launcher.cpus_per_run=1"])
    summary = launch(exp, wait=False, out=lambda *a: None)
    assert len(summary["results"]) == 2  # two chains, two array tasks
    _wait(lambda: _all_done(exp), 240, "all four runs DONE")
    for chain in (exp.runs[:2], exp.runs[2:]):
        ids = {json.loads((exp.out_dir / "runs" / r.run_id / "launcher.json").read_text())["job_id"] for r in chain}
        assert len(ids) == 1  # both stages ran in one job
        b = exp.out_dir / "runs" / chain[1].run_id
        assert json.loads((b / "provenance.json").read_text())["init_from"]["init_from"] == f"run:{chain[0].run_id}"
        a_done = (exp.out_dir / "runs" / chain[0].run_id / "DONE").stat().st_mtime
        assert a_done <= (b / "provenance.json").stat().st_mtime  # b started after a finished
