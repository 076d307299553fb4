"""Launcher logic without training: plan, idempotence, locks, failure isolation, dry-run (fake train/eval)."""

import json
import sys
import types
from pathlib import Path

import pytest

from harness.errors import HarnessError
from harness.evaluation.identity import base_dir_for
from harness.fsio import try_lock
from harness.grid import load_experiment
from harness.launch.slurm import slurm_parameters
from harness.launch.status import status_rows
from harness.launch.submit import launch
from harness.layout import RunDir, base_eval_json
from harness.versions import EVAL_SCHEMA

EXP = """\
name: fake
results_dir: {root}
data: {{train: {{path: d.jsonl}}}}
train: {{epochs: 1}}
launcher: {{backend: debug, partition: gpu, account: lab, gpus_per_run: 2, extra_sbatch: ["--exclude=node1"]}}
grid:
  regime.name: [prompt_masked, full]
  train.lr: [1e-4, 2e-4]
"""


@pytest.fixture
def fake_pipeline(monkeypatch):
    """A stand-in train()/evaluate_run() that writes the run-dir contract and counts calls."""
    calls = {"train": [], "eval": []}
    train_mod = types.ModuleType("harness.training.loop")

    def train(spec, rdir, should_stop=None):
        calls["train"].append(spec.run_id)
        if spec.config.train.lr == 2e-4 and spec.config.regime.name == "full":
            raise RuntimeError("boom: injected failure")
        ck = Path(rdir) / "checkpoints" / "step-000003"
        ck.mkdir(parents=True, exist_ok=True)
        (ck / "COMPLETED").write_text("")
        (Path(rdir) / "metrics.jsonl").write_text(json.dumps({"step": 3, "epoch": 1.0, "loss": 0.5}) + "\n")
        (Path(rdir) / "DONE").write_text("")
        return {"status": "done"}

    eval_mod = types.ModuleType("harness.evaluation.evaluate")

    def evaluate_run(rdir, config):
        calls["eval"].append(Path(rdir).name)
        rd = RunDir(rdir)
        for step, _ in rd.missing_evals(config.eval.every_checkpoint):
            rd.eval_dir.mkdir(exist_ok=True)  # a result as the evaluator writes it: its schema and metrics
            rd.eval_json(step).write_text(json.dumps({"schema": EVAL_SCHEMA, "step": step, "metrics": {}}))

    def evaluate_base(config, exp_dir):
        p = base_eval_json(base_dir_for(exp_dir, config))
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(json.dumps({"schema": EVAL_SCHEMA, "step": 0, "metrics": {}}))

    train_mod.train, eval_mod.evaluate_run, eval_mod.evaluate_base = train, evaluate_run, evaluate_base
    monkeypatch.setitem(sys.modules, "harness.training.loop", train_mod)
    monkeypatch.setitem(sys.modules, "harness.evaluation.evaluate", eval_mod)
    return calls


def _exp(tmp_path):
    p = tmp_path / "fake.yaml"
    p.write_text(EXP.format(root=tmp_path / "results"))
    return load_experiment(p)


def test_debug_launch_is_idempotent_and_isolates_failures(tmp_path, fake_pipeline):
    exp = _exp(tmp_path)
    out = []
    s = launch(exp, out=out.append)
    assert len(fake_pipeline["train"]) == 4
    assert sorted(r["status"] for r in s["results"]) == ["done", "done", "done", "failed"]
    states = {r["run_id"]: r["state"] for r in status_rows(exp)}
    failed = [k for k, v in states.items() if v == "failed"]
    assert len(failed) == 1 and failed[0].startswith("full-lr2e-4")
    assert "boom: injected failure" in (exp.run_dir(exp.runs[3]).path / "FAILED").read_text()
    assert sum(v == "done" for v in states.values()) == 3
    plan = json.loads((exp.out_dir / "plan.json").read_text())
    assert [r["run_id"] for r in plan["runs"]] == [r.run_id for r in exp.runs]
    assert (exp.out_dir / "base" / "eval" / "step-000000.json").exists()
    # second invocation: only the failed run is retried, the done ones are skipped
    launch(exp, out=out.append)
    assert len(fake_pipeline["train"]) == 5 and fake_pipeline["train"][-1] == failed[0]


def test_missing_eval_makes_a_done_run_rerun_its_evaluation(tmp_path, fake_pipeline):
    exp = _exp(tmp_path)
    launch(exp, only="masked-lr1e-4", out=lambda *_: None)
    rdir = exp.run_dir(exp.runs[0]).path
    (rdir / "eval" / "step-000003.json").write_text('{"half": ')  # a half-written eval JSON
    assert status_rows(exp)[0]["state"] == "partial"
    launch(exp, only="masked-lr1e-4", out=lambda *_: None)
    assert fake_pipeline["train"].count(exp.runs[0].run_id) == 1  # not retrained
    assert fake_pipeline["eval"].count(exp.runs[0].run_id) == 2
    assert status_rows(exp)[0]["state"] == "done"


def test_locked_run_is_skipped_and_launch_lock_refuses(tmp_path, fake_pipeline):
    exp = _exp(tmp_path)
    rdir = exp.run_dir(exp.runs[0]).path
    with try_lock(rdir / ".lock") as got:
        assert got
        assert status_rows(exp)[0]["state"] == "running"
        s = launch(exp, only="masked-lr1e-4", out=lambda *_: None)
        assert s["running_elsewhere"] == [exp.runs[0].run_id] and s["to_run"] == []
    with try_lock(exp.out_dir / ".launch.lock") as got:
        assert got
        with pytest.raises(HarnessError, match="another `harness run` is launching"):
            launch(exp, out=lambda *_: None)


def test_dry_run_prints_plan_and_sbatch(tmp_path, fake_pipeline):
    exp = _exp(tmp_path)
    out = []
    launch(exp, backend="slurm", dry_run=True, out=out.append)
    text = "\n".join(out)
    assert "#SBATCH --partition=gpu" in text and "#SBATCH --account=lab" in text
    assert "#SBATCH --gpus-per-node=2" in text and "#SBATCH --exclude=node1" in text
    assert "#SBATCH --array=0-3" in text and "#SBATCH --signal=USR2@120" in text
    assert not fake_pipeline["train"] and not (exp.out_dir / "plan.json").exists()
    p = slurm_parameters(exp, None)
    assert p["ntasks_per_node"] == 2 and p["cpus_per_task"] == 1  # one task per GPU for torch.distributed


def test_completed_checkpoint_detection(tmp_path):
    ck = tmp_path / "checkpoints"
    (ck / "step-000001").mkdir(parents=True)
    (ck / "step-000002").mkdir()
    (ck / "step-000002" / "COMPLETED").write_text("")
    (ck / ".tmp-step-000003").mkdir()
    assert [s for s, _ in RunDir(tmp_path).completed_checkpoints()] == [2]


def test_local_workers_share_one_run_list(tmp_path, fake_pipeline):
    """Two LocalWorkers over one list (what `harness run` starts locally): a run another process holds is left
    to it, every other run is trained once by whichever worker takes it first, a failing run does not stop its
    worker, and each run's launcher.json says which worker took it in which launch and how it ended."""
    from harness.launch.jobs import LocalWorker

    exp = _exp(tmp_path)
    exp.out_dir.mkdir(parents=True)
    from harness.launch.plan import write_plan

    write_plan(exp)
    specs, rdirs = list(exp.runs), [exp.run_dir(r) for r in exp.runs]
    held = Path(rdirs[0])
    with try_lock(held / ".lock") as got:  # another worker is training run 0
        assert got
        first = LocalWorker(specs, rdirs, 1, "launch-1", base=(exp.config, exp.dir))()
    assert [r["run_id"] for r in first] == [r.run_id for r in specs[1:]]
    assert {r["run_id"]: r["status"] for r in first}[specs[3].run_id] == "failed"
    assert "boom: injected failure" in (Path(rdirs[3]) / "FAILED").read_text()
    assert (exp.out_dir / "base" / "eval" / "step-000000.json").exists()  # base first
    info = json.loads((Path(rdirs[1]) / "launcher.json").read_text())
    assert info["launch"] == "launch-1" and info["status"] == "done" and info["job_id"]
    assert not (held / "launcher.json").exists()
    second = LocalWorker(specs, rdirs, 1, "launch-1")()  # run 0 is free now; the done ones are skipped
    assert [r["run_id"] for r in second] == [specs[0].run_id, specs[3].run_id]
    assert sorted(fake_pipeline["train"]) == sorted([r.run_id for r in specs] + [specs[3].run_id])


def test_local_parallelism_fits_in_memory(tmp_path, monkeypatch):
    import harness.launch.submit as S

    model = tmp_path / "model"
    model.mkdir()
    (model / "model.safetensors").write_bytes(b"\0" * 1000)
    p = tmp_path / "m.yaml"
    p.write_text(EXP.format(root=tmp_path / "results") + f"model: {{name_or_path: {model}}}\n")
    exp = load_experiment(p)
    monkeypatch.setattr(S, "_cores", lambda: 2)
    monkeypatch.setattr(S, "available_memory_bytes", lambda: 10**9)
    assert S.resources(exp, 4, None) == (2, 1)  # plenty of memory: one run per core
    said = []
    monkeypatch.setattr(S, "available_memory_bytes", lambda: 6000)  # room for one run of 1000 x 4 x 1.25 bytes
    assert S.resources(exp, 4, None, said.append) == (1, 2) and "parallel 1" in said[0] and "memory-bound" in said[0]
    said.clear()
    monkeypatch.setattr(S, "available_memory_bytes", lambda: 10**9)
    assert S.resources(exp, 4, None, said.append) == (2, 1) and said[0].startswith("parallel 2 (2 cores, 4 runs;")
    assert S.resources(exp, 4, 2) == (2, 1)  # --parallel wins


def test_cancel_stops_local_workers_that_hold_no_run(tmp_path):
    """A worker evaluating the base (or between runs) holds no run lock; `harness cancel` still stops it, by
    the pid submitit names its log folder with, and leaves other processes alone."""
    import subprocess

    from harness.launch.status import cancel, local_workers

    exp = _exp(tmp_path)
    logs = exp.out_dir / "logs"
    # a stand-in worker: like LocalWorker it makes SIGINT interruptible first (a background job of a shell without
    # job control, e.g. this suite run as `... &` in a script, starts with SIGINT ignored)
    sleeper = ("import signal, time\nsignal.signal(signal.SIGINT, signal.default_int_handler)\ntry:\n"
               "    print('ready', flush=True)\n    time.sleep(120)\nexcept KeyboardInterrupt:\n    raise SystemExit(3)\n")
    worker, other = (subprocess.Popen([sys.executable, "-c", sleeper, "submitit.core._submit", str(d / "%j")],
                                      stdout=subprocess.PIPE, text=True) for d in (logs, tmp_path / "elsewhere"))
    try:
        for p in (worker, other):
            assert p.stdout.readline() == "ready\n"  # SIGINT now raises KeyboardInterrupt in it
            (logs / str(p.pid)).mkdir(parents=True, exist_ok=True)
        (logs / "%j").mkdir()
        assert local_workers(exp) == [worker.pid]
        said = []
        assert cancel(exp, out=said.append) == 0  # no run was running
        assert worker.wait(timeout=30) == 3 and f"  stopped worker {worker.pid}" in said
        assert other.poll() is None
    finally:
        for p in (worker, other):
            p.kill()
            p.wait()


def test_workers_are_interruptible_even_when_started_with_sigint_ignored():
    import signal

    from harness.launch.jobs import interruptible

    before = signal.getsignal(signal.SIGINT)
    try:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # what a background job of a non-interactive shell inherits
        interruptible()
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
        custom = lambda *a: None  # noqa: E731 - a handler somebody installed on purpose stays
        signal.signal(signal.SIGINT, custom)
        interruptible()
        assert signal.getsignal(signal.SIGINT) is custom
    finally:
        signal.signal(signal.SIGINT, before)


def test_a_cancelled_worker_says_so_and_not_that_it_completed(tmp_path, fake_pipeline, monkeypatch, capsys):
    """`harness cancel` (SIGINT -> KeyboardInterrupt in the run): the worker's log says the run stops and resumes
    next time; submitit's closing "Job completed successfully" is kept out of that log."""
    import logging

    from harness.launch import jobs

    def interrupted(spec, rdir, should_stop=None):
        raise KeyboardInterrupt

    monkeypatch.setattr(sys.modules["harness.training.loop"], "train", interrupted)
    exp = _exp(tmp_path)
    logger = logging.getLogger("submitit")
    try:
        got = jobs.LocalWorker(list(exp.runs), [exp.run_dir(r) for r in exp.runs], 1, "launch-1")()
        assert got == [{"run_id": exp.runs[0].run_id, "status": "cancelled"}]
        assert f"cancelled: {exp.runs[0].run_id} stops here and resumes" in capsys.readouterr().err
        done = logger.makeRecord("submitit", logging.INFO, __file__, 1, "Job completed successfully", (), None)
        other = logger.makeRecord("submitit", logging.INFO, __file__, 1, "Starting with JobEnvironment", (), None)
        assert not logger.filter(done) and logger.filter(other)
        assert exp.run_dir(exp.runs[0]).launcher_info()["status"] == "cancelled"
    finally:
        logger.removeFilter(jobs._not_success)


def test_the_status_log_column_names_the_training_log(tmp_path, fake_pipeline):
    """A worker's training log is its stderr (submitit's *_log.err); *_log.out holds only submitit's lines."""
    exp = _exp(tmp_path)
    rd = exp.run_dir(exp.runs[0])
    rd.path.mkdir(parents=True)
    rd.launcher.write_text(json.dumps({"backend": "local", "job_id": "7", "stdout": "/l/7_0_log.out",
                                       "stderr": "/l/7_0_log.err"}))
    assert status_rows(exp)[0]["log"] == "/l/7_0_log.err"


def test_cancel_finds_the_worker_under_submitits_controller(tmp_path):
    """Real local jobs: the log folder is named by the pid of submitit's controller (`submitit.local._local`,
    which forwards SIGTERM only); the worker is its child. `harness cancel` stops the child."""
    import subprocess

    from harness.launch.status import cancel, local_workers

    exp = _exp(tmp_path)
    logs = exp.out_dir / "logs"
    worker = ("import signal, time\nsignal.signal(signal.SIGINT, signal.default_int_handler)\ntry:\n"
              "    print('ready', flush=True)\n    time.sleep(120)\nexcept KeyboardInterrupt:\n    raise SystemExit(3)\n")
    controller = ("import subprocess, sys\n"
                  f"p = subprocess.Popen([sys.executable, '-c', {worker!r}, 'submitit.core._submit', sys.argv[2]])\n"
                  "sys.exit(p.wait())\n")
    parent = subprocess.Popen([sys.executable, "-c", controller, "submitit.local._local", str(logs / "%j")],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout.readline() == "ready\n"  # the child inherited stdout and handles SIGINT now
        (logs / str(parent.pid)).mkdir(parents=True)
        found = local_workers(exp)
        assert len(found) == 1 and found[0] != parent.pid
        said = []
        cancel(exp, out=said.append)
        assert parent.wait(timeout=30) == 3 and f"  stopped worker {found[0]}" in said
    finally:
        parent.kill()
        parent.wait()
