"""Multi-node / multi-task runs without a cluster: the sbatch script --dry-run prints for 2 nodes x 8 GPUs, the
launcher config checks, SLURM node lists and the rendezvous, and the once-per-run bookkeeping of a run's tasks
(two forked gloo processes standing in for srun's tasks; tests/test_slurm.py runs them on a real cluster)."""

from __future__ import annotations

import json
import multiprocessing as mp
import socket
import sys
import types
from pathlib import Path

import pytest

from harness.errors import ConfigError
from harness.fsio import try_lock
from harness.grid import load_experiment
from harness.launch.slurm import slurm_parameters
from harness.launch.submit import launch
from harness.layout import RunDir
from harness.training.distributed import env_ranks, expand_nodelist, first_host, rendezvous
from harness.versions import EVAL_SCHEMA

EXP = """\
name: big
results_dir: {root}
data: {{train: {{path: d.jsonl}}}}
launcher: {{backend: slurm, partition: gpu, account: lab, qos: high, constraint: h100, timeout_min: 600,
           cpus_per_run: 128, mem_gb: 512, extra_sbatch: ["--exclude=node1"]{extra}}}
"""


def _exp(tmp_path, extra: str = "", overrides: list[str] | None = None):
    p = tmp_path / "big.yaml"
    p.write_text(EXP.format(root=tmp_path / "results", extra=extra))
    return load_experiment(p, overrides or [])


def test_dry_run_prints_the_sbatch_script_of_a_2x8_run(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no srun, sbatch or scontrol: nothing can be submitted
    exp = _exp(tmp_path, ", nodes: 2, gpus_per_node: 8")
    out: list[str] = []
    s = launch(exp, dry_run=True, out=out.append)
    text = "\n".join(out)
    script = text[text.index("#!/bin/bash"):]
    for line in ("--nodes=2", "--ntasks-per-node=8", "--gpus-per-node=8", "--cpus-per-task=8", "--mem=512GB",
                 "--time=600", "--partition=gpu", "--account=lab", "--qos=high", "--constraint=h100",
                 "--exclude=node1", "--signal=USR2@120"):
        assert f"#SBATCH {line}\n" in script, line
    assert "--array" not in script  # one run: one job (submitit makes an array only for several)
    srun = [ln for ln in script.splitlines() if ln.startswith("srun ")]
    assert len(srun) == 1 and "--kill-on-bad-exit=1" in srun[0] and srun[0].endswith(
        f"-u -m submitit.core._submit {exp.out_dir / 'logs' / '%j'}")
    assert "2 nodes x 8 tasks (world size 16), 16 GPU" in text
    assert s["to_run"] and not (exp.out_dir / "plan.json").exists()  # nothing written, nothing submitted
    two = _exp(tmp_path, ", nodes: 2, gpus_per_run: 16", ["grid.train.lr=[1e-4, 2e-4]"])
    out.clear()
    launch(two, dry_run=True, out=out.append)
    assert "#SBATCH --array=0-1%2" in "\n".join(out) and "#SBATCH --ntasks-per-node=8" in "\n".join(out)


def test_base_evaluation_is_one_task(tmp_path):
    exp = _exp(tmp_path, ", nodes: 2, gpus_per_node: 8")
    p, b = slurm_parameters(exp, None), slurm_parameters(exp, None, base=True)
    assert (p["nodes"], p["ntasks_per_node"], p["gpus_per_node"], p["cpus_per_task"]) == (2, 8, 8, 8)
    assert (b["nodes"], b["ntasks_per_node"], b["gpus_per_node"], b["cpus_per_task"]) == (1, 1, 1, 64)
    assert "srun_args" not in b
    single = _exp(tmp_path)  # a one-process run keeps its one task and all its CPUs
    q = slurm_parameters(single, None)
    assert (q["nodes"], q["ntasks_per_node"], q["cpus_per_task"]) == (1, 1, 128) and "srun_args" not in q


def test_launcher_config_checks(tmp_path):
    lc = _exp(tmp_path, ", nodes: 2, gpus_per_run: 16").config.launcher
    assert (lc.node_gpus, lc.node_tasks, lc.world_size) == (8, 8, 16)
    lc = _exp(tmp_path, ", tasks_per_node: 2").config.launcher
    assert (lc.node_gpus, lc.node_tasks, lc.world_size) == (0, 2, 2)
    lc = _exp(tmp_path, ", gpus_per_run: 4").config.launcher
    assert (lc.nodes, lc.node_gpus, lc.world_size) == (1, 4, 4)
    bad = [(", nodes: 2", ["launcher.backend=local"], "nodes=2 needs the slurm backend"),
           (", tasks_per_node: 2", ["launcher.backend=debug"], "tasks_per_node=2 needs the slurm backend"),
           (", nodes: 2, gpus_per_node: 4, gpus_per_run: 16", [], "is not nodes x gpus_per_node = 2 x 4"),
           (", nodes: 2, gpus_per_run: 3", [], "does not split evenly over 2 nodes"),
           (", gpus_per_node: 8, tasks_per_node: 2", [], "one task per GPU"),
           (", nodes: 0", [], "must be > 0"), (", tasks_per_node: 0", [], "must be > 0")]
    for extra, overrides, msg in bad:
        with pytest.raises(ConfigError, match=msg):
            _exp(tmp_path, extra, overrides)
    # the launcher is not part of what a run computes: same run ids
    assert [r.run_id for r in _exp(tmp_path, ", nodes: 2, gpus_per_node: 8").runs] == \
        [r.run_id for r in _exp(tmp_path).runs]


def test_nodelist_expansion_and_first_host(tmp_path, monkeypatch):
    assert expand_nodelist("node[01-03,07]") == ["node01", "node02", "node03", "node07"]
    assert expand_nodelist("a,b") == ["a", "b"]
    assert expand_nodelist("gpu-[1-2]x") == ["gpu-1x", "gpu-2x"]
    assert expand_nodelist("n[9-11],r[1-2]n[3-4]") == ["n9", "n10", "n11", "r1n3", "r1n4", "r2n3", "r2n4"]
    assert expand_nodelist("solo") == ["solo"]
    with pytest.raises(ValueError, match="unbalanced"):
        expand_nodelist("node[01-03")
    monkeypatch.setenv("PATH", str(tmp_path))  # no scontrol: the parser
    assert first_host("node[07-09],a") == "node07"
    fake = tmp_path / "scontrol"  # scontrol that rejects the list (22.05 does for gpu-[1-2]x): the parser
    fake.write_text("#!/bin/sh\necho 'Invalid hostlist' >&2\nexit 1\n")
    fake.chmod(0o755)
    assert first_host("gpu-[1-2]x") == "gpu-1x"
    fake.write_text("#!/bin/sh\nprintf 'from-scontrol\\nother\\n'\n")
    assert first_host("node[01-02]") == "from-scontrol"


def test_rendezvous_from_slurm_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    slurm = {"SLURM_JOB_ID": "123456", "SLURM_JOB_NODELIST": "gpu[03-04]", "SLURM_STEP_ID": "0",
             "SLURM_PROCID": "9", "SLURM_NTASKS": "16", "SLURM_LOCALID": "1"}
    assert rendezvous(slurm) == ("gpu03", str(10000 + 123456 % 20000))
    assert rendezvous({**slurm, "SLURM_JOB_ID": "123457"})[1] != rendezvous(slurm)[1]  # concurrent jobs
    assert rendezvous({**slurm, "SLURM_STEP_NODELIST": "gpu04"})[0] == "gpu04"
    assert rendezvous({**slurm, "MASTER_ADDR": "head", "MASTER_PORT": "1234"}) == ("head", "1234")  # user's
    assert rendezvous({}) == ("127.0.0.1", "29500")
    assert env_ranks(slurm) == (9, 16, 1)
    # the batch script itself (no step): one process, though SLURM_NTASKS counts the allocation
    assert env_ranks({"SLURM_JOB_ID": "5", "SLURM_PROCID": "0", "SLURM_NTASKS": "4"}) == (0, 1, 0)


# ------------------------------------------------------------------------------ a run's tasks, once per run


def _fake_pipeline(log: Path):
    """train()/evaluate_run() stand-ins that append what they did, rank by rank, to `log`."""
    import os

    def note(what: str) -> None:
        with open(log, "a") as fh:
            fh.write(f"{what} {os.environ['SLURM_PROCID']}\n")

    def train(spec, rdir, should_stop=None):
        note("train")
        if os.environ.get("FAIL_RANK") == os.environ["SLURM_PROCID"]:
            raise RuntimeError("boom on this rank")
        if os.environ["SLURM_PROCID"] == "0":
            ck = Path(rdir) / "checkpoints" / "step-000003"
            ck.mkdir(parents=True, exist_ok=True)
            (ck / "COMPLETED").write_text("")
            (Path(rdir) / "DONE").write_text("{}")
        return {"status": "done", "steps": 3}

    def evaluate_run(rdir, config):
        note("eval")
        rd = RunDir(rdir)
        for step, _ in rd.missing_evals(config.eval.every_checkpoint):
            rd.eval_dir.mkdir(exist_ok=True)
            rd.eval_json(step).write_text(json.dumps({"schema": EVAL_SCHEMA, "step": step, "metrics": {}}))

    t, e = types.ModuleType("harness.training.loop"), types.ModuleType("harness.evaluation.evaluate")
    t.train, e.evaluate_run = train, evaluate_run
    return t, e


def _task(rank, port, spec, rdir, fail_rank, q):
    import os

    os.environ.update(SLURM_PROCID=str(rank), SLURM_NTASKS="2", SLURM_LOCALID=str(rank), SLURM_JOB_ID="77",
                      SLURM_STEP_ID="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), FAIL_RANK=fail_rank)
    from harness.launch.jobs import execute_run

    try:
        q.put(execute_run(spec, RunDir(rdir)))
    except Exception as exc:
        q.put({"rank": rank, "status": "raised", "error": str(exc)})


def _two_tasks(spec, rdir, fail_rank: str = "") -> list[dict]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("fork")  # the forked tasks inherit the fake pipeline
    q = ctx.Queue()
    procs = [ctx.Process(target=_task, args=(r, port, spec, str(rdir), fail_rank, q)) for r in (0, 1)]
    for p in procs:
        p.start()
    out = [q.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    return sorted(out, key=lambda r: r["rank"])


def test_a_runs_tasks_do_its_bookkeeping_once(tmp_path, monkeypatch):
    (tmp_path / "d.jsonl").write_text("")
    log = tmp_path / "calls.log"
    t, e = _fake_pipeline(log)
    monkeypatch.setitem(sys.modules, "harness.training.loop", t)
    monkeypatch.setitem(sys.modules, "harness.evaluation.evaluate", e)
    exp = _exp(tmp_path, ", tasks_per_node: 2")
    spec, rdir = exp.runs[0], exp.run_dir(exp.runs[0]).path
    res = _two_tasks(spec, rdir)
    assert [(r["rank"], r["status"], r["evaluated"]) for r in res] == [(0, "done", True), (1, "done", False)]
    assert sorted(log.read_text().split("\n")[:-1]) == ["eval 0", "train 0", "train 1"]  # evaluated once
    # done: rank 0 says so, nobody trains again; another launcher holds the run: both ranks leave it alone
    log.write_text("")
    (rdir / "eval" / "step-000003.json").unlink()
    assert [r["status"] for r in _two_tasks(spec, rdir)] == ["done", "done"]
    assert log.read_text() == "eval 0\n"
    (rdir / "DONE").unlink()
    log.write_text("")
    with try_lock(RunDir(rdir).lock) as got:
        assert got
        assert [r["status"] for r in _two_tasks(spec, rdir)] == ["skipped", "skipped"]
    assert log.read_text() == "" and not (rdir / "FAILED").exists()
    # a failing rank writes FAILED (rank 0 holds the lock and would write it for its own failure)
    res = _two_tasks(spec, rdir, fail_rank="1")
    assert [r["status"] for r in res] == ["done", "raised"]
    failed = (rdir / "FAILED").read_text()
    assert "(rank 1 of 2)" in failed and "boom on this rank" in failed
