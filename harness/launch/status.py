"""Where a grid stands: each run's state (THE state of harness.layout, plus its progress, last loss and job),
``harness status``'s table, and ``harness cancel``."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table

from harness import inputs
from harness.fsio import lock_holder
from harness.grid import Experiment, RunSpec
from harness.layout import RunDir
from harness.stages import waits_for


@dataclass
class RunStatus:
    run: RunSpec
    dir: RunDir
    state: str  # harness.layout.STATES
    detail: str = ""  # why it is in that state
    step: int | None = None
    epoch: float | None = None
    progress: float | None = None  # 0..1 of the epoch budget
    last: dict | None = None  # last metrics.jsonl row
    job: dict | None = None  # launcher.json
    error: str | None = None  # last line of FAILED
    waiting: str | None = None  # a later stage that cannot start yet: why
    changes: tuple = ()  # harness.inputs.Change: inputs that differ from what the run read (state "changed")


def run_status(exp: Experiment, run: RunSpec) -> RunStatus:
    rd = exp.run_dir(run)
    rs = rd.state(run.config.eval.every_checkpoint)
    st = RunStatus(run, rd, rs.state, rs.detail, job=rd.launcher_info() or None, last=rd.last_metrics())
    if st.last:
        st.step, st.epoch = st.last.get("step"), st.last.get("epoch")
        if st.epoch is not None and run.config.train.budget == "epochs":
            st.progress = min(1.0, float(st.epoch) / float(run.config.train.epochs))
    if rs.state == "done":
        st.progress = 1.0
    elif rs.state == "failed":
        st.error = rs.detail
    elif rs.state == "pending":  # a later stage: why it has not started
        st.waiting = waits_for(run, rd)
    if rs.state != "running" and (found := inputs.changes(rd, run.config)):
        # never done, never resumed on other data: harness run refuses it until the user chooses (inputs.py)
        st.state, st.changes, st.progress = "changed", tuple(found), None
        st.detail = "inputs changed: " + "; ".join(c.describe() for c in found)
    return st


def print_plan(exp: Experiment, statuses, backend: str, par: int, threads: int, out) -> None:
    out(f"# plan for {exp.config.name} ({exp.path}): {len(statuses)} runs, backend {backend}, "
        f"parallel {par}, {threads} threads/run, results in {exp.out_dir}")
    for s in statuses:
        axes = " ".join(f"{k}={v}" for k, v in s.run.axes.items())
        out(f"  {s.run.run_id:40s} {s.state:8s} {axes}")
    lc = exp.config.launcher
    shape = (f"{lc.nodes} nodes x {lc.node_tasks} tasks (world size {lc.world_size}), " if lc.world_size > 1
             else "")
    out(f"# resources per run: {shape}{lc.nodes * lc.node_gpus} GPU, {lc.cpus_per_run} CPU, {lc.mem_gb} GB"
        f"{' per node' if lc.nodes > 1 else ''}, time limit {lc.timeout_min} min")


def status_rows(exp: Experiment) -> list[dict]:
    rows = []
    for r in exp.runs:
        s = run_status(exp, r)
        last = s.last or {}
        rows.append({"run_id": r.run_id, "axes": r.axes, "state": s.state,
                     "progress": None if s.progress is None else round(100 * s.progress),
                     "step": s.step, "loss": last.get("loss"), "loss_response": last.get("loss_response"),
                     "job_id": (s.job or {}).get("job_id"),
                     "log": (s.job or {}).get("stderr") or (s.job or {}).get("stdout"),  # stderr: the training log
                     "error": s.error, "detail": s.detail, "waiting": s.waiting})
    return rows


def print_status(exp: Experiment, console=None) -> dict:
    console = console or Console(width=None if sys.stdout.isatty() else 200)
    rows = status_rows(exp)
    table = Table(title=f"{exp.config.name}: {exp.out_dir}")
    for col in ("run id", "axes", "state", "progress", "step", "loss", "job", "log / error"):
        table.add_column(col)
    colours = {"done": "green", "failed": "red", "running": "cyan", "partial": "yellow", "pending": "white",
               "changed": "magenta"}
    for r in rows:
        table.add_row(r["run_id"], " ".join(f"{k.split('.')[-1]}={v}" for k, v in r["axes"].items()),
                      f"[{colours[r['state']]}]{r['state']}[/]",
                      "" if r["progress"] is None else f"{r['progress']}%", str(r["step"] or ""),
                      "" if r["loss"] is None else f"{r['loss']:.4f}", r["job_id"] or "",
                      (r["detail"] if r["state"] == "changed" else "") or r["error"] or r["waiting"]
                      or (r["detail"] if r["state"] == "partial" else "") or r["log"] or "")
    console.print(table)
    counts = Counter(r["state"] for r in rows)
    console.print(" · ".join(f"{n} {s}" for s, n in counts.items()) + f" · {len(rows)} runs")
    if counts.get("changed"):
        console.print(f"{counts['changed']} run(s) read inputs that have changed since; {inputs.RERUN_FIX}",
                      markup=False)
    return dict(counts)


def cancel(exp: Experiment, out=print) -> int:
    """Stop the experiment's running jobs: scancel on SLURM, SIGINT to local training processes."""
    n = 0
    for r in exp.runs:
        s = run_status(exp, r)
        if s.state != "running":
            continue
        job = s.job or {}
        if job.get("backend") == "slurm" and job.get("job_id"):
            subprocess.run(["scancel", str(job["job_id"])], check=False)
        else:
            holder = lock_holder(s.dir.lock).split()
            if holder and holder[0].isdigit():
                try:  # SIGINT: the run stops (no FAILED file) and resumes from its checkpoint next time
                    os.kill(int(holder[0]), signal.SIGINT)
                except ProcessLookupError:
                    pass
        out(f"  cancelled {r.run_id}")
        n += 1
    for pid in local_workers(exp):  # the others: evaluating the base, or between runs (they would take the next)
        try:
            os.kill(pid, signal.SIGINT)
            out(f"  stopped worker {pid}")
        except ProcessLookupError:
            pass
    out(f"{n} run(s) cancelled")
    return n


def local_workers(exp: Experiment) -> list[int]:
    """PIDs of this experiment's live local workers: submitit names a local job's log folder by the pid of the
    job's controller (``<experiment>/logs/<pid>/``, a ``submitit.local._local`` process that forwards SIGTERM
    only), whose child is the worker (``submitit.core._submit``); both command lines name the experiment's log
    folder. The pid itself is taken when it is the worker."""
    logs = exp.dir.logs.resolve()  # submitit starts the worker with the absolute folder
    pids = []
    for d in sorted(logs.glob("*")) if logs.is_dir() else []:
        if not d.name.isdigit() or int(d.name) == os.getpid():
            continue
        pid = int(d.name)
        for p in [pid, *_children(pid)]:
            cmd = _cmdline(p)
            if "submitit.core._submit" in cmd and any(c.startswith(str(logs)) for c in cmd):
                pids.append(p)
    return pids


def _cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:  # gone (or no /proc: nothing to find)
        return []


def _children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except (OSError, ValueError):
        return []
