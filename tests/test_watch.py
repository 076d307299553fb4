"""What `harness run` shows while it waits: the progress file training writes (harness/progress.py), the view and
its two renderings (harness/launch/watch.py) on constructed states, and a real launch read through a pipe."""

from __future__ import annotations

import io
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from rich.console import Console

from harness import progress
from harness.launch.watch import GridView, RunView, _Lines, _Live, events, reporter, table
from harness.layout import ExperimentDir, RunDir
from tests.tiny import build_tiny

ROOT = Path(__file__).resolve().parents[1]


def _view(*runs: RunView, base=None, elapsed=75.0) -> GridView:
    return GridView("smoke", tuple(runs), base, elapsed)


TRAINING = RunView("lr1e-4-abc", "running", "training", 12, 40, 2.31456, 1530.4, 41.2)
EVALUATING = RunView("lr3e-4-def", "running", "evaluating", 40, checkpoint=1, of=2)
DONE = RunView("full-123", "done")
FAILED = RunView("po-456", "failed", detail="RuntimeError: boom")


def test_a_running_run_says_step_loss_speed_and_eta():
    assert TRAINING.doing() == "step 12/40 (30%) loss 2.3146 1,530 tok/s ETA 0:41"
    assert EVALUATING.doing() == "evaluating checkpoint 1/2 (step 40)"
    assert RunView("x", "running").doing() == "starting"  # locked, no progress file yet
    assert DONE.doing() == "" and RunView("x", "partial", "training", 3, 40).doing() == ""  # a killed run's file
    view = _view(TRAINING, EVALUATING, DONE, FAILED, base="done", elapsed=3725)
    assert view.header() == "smoke: 1 done · 1 failed · 2 running of 4 runs · base done · 1:02:05"


def test_the_table_shows_every_run_and_what_it_does():
    console = Console(file=io.StringIO(), width=160, record=True, color_system=None)
    console.print(table(_view(TRAINING, EVALUATING, DONE, FAILED)))
    text = console.export_text()
    for r in (TRAINING, EVALUATING, DONE, FAILED):
        assert r.run_id in text and r.state in text
    assert "step 12/40 (30%) loss 2.3146 1,530 tok/s ETA 0:41" in text
    assert "evaluating checkpoint 1/2" in text and "RuntimeError: boom" in text


def test_a_pipe_gets_one_line_per_event():
    start = RunView("a", "pending")
    seq = [_view(start, DONE),
           _view(RunView("a", "running", "training", 1, 40, 3.0), DONE, base="evaluating"),
           _view(RunView("a", "running", "training", 2, 40, 2.9), DONE, base="evaluating"),  # same tenth: nothing
           _view(RunView("a", "running", "training", 4, 40, 2.8), DONE, base="done"),
           _view(RunView("a", "running", "evaluating", 40, checkpoint=1, of=1), DONE, base="done"),
           _view(RunView("a", "done"), DONE, base="done")]
    lines, before = [], None
    for v in seq:
        lines.append(events(before, v))
        before = v
    assert lines[0] == []  # the launch's own summary says what is pending and done
    assert lines[1] == ["  base: evaluating", "  a: step 1/40 (2%) loss 3.0000",
                        "[smoke: 1 done · 1 running of 2 runs · base evaluating · 1:15]"]
    assert lines[2] == []
    assert lines[3] == ["  base: done", "  a: step 4/40 (10%) loss 2.8000"]
    assert lines[4] == ["  a: evaluating checkpoint 1/1 (step 40)"]
    assert lines[5] == ["[smoke: 2 done of 2 runs · base done · 1:15]"]  # how it ended: the launcher's line


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_terminal_gets_a_live_table_and_a_pipe_gets_lines():
    out: list[str] = []
    piped = reporter(out.append, io.StringIO())
    assert isinstance(piped, _Lines)
    piped.update(_view(RunView("a", "pending")))
    piped.update(_view(TRAINING))
    assert out == [f"  {TRAINING.run_id}: {TRAINING.doing()}", "[smoke: 1 running of 1 runs · 1:15]"]
    tty = _Tty()
    live = reporter(out.append, tty)
    assert isinstance(live, _Live)
    live.update(_view(TRAINING, DONE))
    live.close()
    screen = tty.getvalue()
    assert "step 12/40" in screen and DONE.run_id in screen and "\x1b[" in screen  # drawn with cursor control
    assert len(out) == 2  # nothing went to the line printer


def test_training_progress_is_throttled_and_atomic(tmp_path):
    now = [100.0]
    rd = RunDir(tmp_path / "run")
    rd.path.mkdir()
    w = progress.TrainingProgress(rd, total=10, start=4, tokens=4000, every=1.0, clock=lambda: now[0])
    now[0] += 0.5
    assert w.step(5, 4500, loss=2.0)  # the first step of this attempt: always written
    assert progress.read(rd) | {"time": None} == {"phase": "training", "step": 5, "total": 10, "loss": 2.0,
                                                  "tokens_per_s": 1000.0, "eta_s": 2.5, "resumed_from": 4,
                                                  "time": None}
    now[0] += 0.5
    assert not w.step(6, 5000)  # within a second of the last write
    now[0] += 0.6
    assert w.step(7, 5600)
    d = progress.read(rd)
    assert (d["step"], d["loss"], d["tokens_per_s"], d["eta_s"]) == (7, 2.0, 1000.0, 1.6)  # 1.6 s for 3 steps, 3 to go
    assert w.step(10, 9000, loss=1.5)  # the last step: always written
    assert not list(rd.path.glob("*.tmp"))
    rd.progress.write_text("{torn")
    assert progress.read(rd) == {}


# ------------------------------------------------------------------------------------------ a real launch, piped


def _lines_of(proc: subprocess.Popen) -> "queue.Queue[str | None]":
    q: queue.Queue = queue.Queue()

    def pump():
        for line in proc.stdout:
            q.put(line.rstrip("\n"))
        q.put(None)

    threading.Thread(target=pump, daemon=True).start()
    return q


def _until(q, proc, pred, seen: list[str], timeout: float = 300) -> str:
    """Read the launcher's lines until one satisfies `pred` (fails if it exits first or takes `timeout`)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            line = q.get(timeout=max(0.1, deadline - time.monotonic()))
        except queue.Empty:
            os.killpg(proc.pid, signal.SIGKILL)
            pytest.fail("no such line within the timeout:\n" + "\n".join(seen[-30:]))
        if line is None:
            pytest.fail(f"the launcher exited ({proc.wait()}) first:\n" + "\n".join(seen[-30:]))
        seen.append(line)
        if pred(line):
            return line


def test_harness_run_through_a_pipe_prints_the_progress_of_its_runs(tmp_path):
    """`harness run | cat`: the run's training step comes through while it trains (held at its first step by
    the fault hook, so the line's arrival does not depend on the CPU's speed), then the end and the counts."""
    exp = build_tiny(tmp_path)
    exp.write_text(exp.read_text().replace("launcher: {backend: debug}", "launcher: {backend: local}"))
    mark = tmp_path / "held"
    env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1",
               HARNESS_FAULT="train_step:1:wait", HARNESS_FAULT_MARK=str(mark))
    proc = subprocess.Popen([sys.executable, "-m", "harness.cli", "run", str(exp), "--parallel", "1"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            start_new_session=True)
    q, seen = _lines_of(proc), []
    try:
        line = _until(q, proc, lambda s: ": step 1/" in s, seen)  # the worker is held right after step 1
        assert "loss" in line and "ETA" in line, line
        assert mark.exists()
        mark.unlink()  # let it go on
        _until(q, proc, lambda s: s.startswith("[tiny: 1 done of 1 runs"), seen)
        assert proc.wait(timeout=300) == 0, "\n".join(seen[-30:])
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    while (line := q.get(timeout=30)) is not None:
        seen.append(line)
    text = "\n".join(seen)
    assert "\x1b[" not in text  # a pipe gets plain lines, no terminal control
    run_id = json.loads((tmp_path / "results" / "tiny" / "plan.json").read_text())["runs"][0]["run_id"]
    assert f"  {run_id}: done" in text
    ed = ExperimentDir(tmp_path / "results" / "tiny")
    assert not ed.job_logs.exists()  # submitit's empty logs/%j folder is gone
    log = Path(ed.run(run_id).launcher_info()["stderr"])  # what `harness status` names: the training log
    assert log.name.endswith("_log.err") and "loss" in log.read_text()


def test_a_slurm_launch_that_waits_shows_the_runs_until_every_job_ends(monkeypatch):
    """On SLURM, `harness run` (waiting) reads the same files while the cluster runs the jobs: each change is a
    line in a pipe, and it stops when every job has ended (stand-ins, done at their 3rd and 4th poll: the second
    is polled once the first is done, so 5 polls, then the final view)."""
    from harness.launch import submit

    class Job:
        def __init__(self, polls: int):
            self.polls = polls

        def done(self) -> bool:
            self.polls -= 1
            return self.polls < 0

    views = iter([_view(RunView("a", "pending")), _view(TRAINING), _view(EVALUATING)] + [_view(DONE)] * 3)
    monkeypatch.setattr(submit, "read_view", lambda *a, **k: next(views))
    monkeypatch.setattr(submit.time, "sleep", lambda s: None)
    out: list[str] = []
    submit._watch_jobs(None, [], [Job(2), Job(3)], out.append, base=False)
    assert out == [f"  {TRAINING.run_id}: {TRAINING.doing()}", "[smoke: 1 running of 1 runs · 1:15]",
                   f"  {EVALUATING.run_id}: {EVALUATING.doing()}",
                   "[smoke: 1 done of 1 runs · 1:15]"]
