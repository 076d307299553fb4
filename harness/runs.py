"""Run directories: where each run lives, what state it is in, atomic writes and the locks that make
`harness run` idempotent.

A run is *done* when its directory has ``DONE`` (training finished) and every checkpoint that must be
evaluated has its ``eval/step-NNNNNN.json``; *failed* when it has ``FAILED`` (the traceback); *running*
while a process holds its lock (``flock`` on ``.lock``, released by the kernel even on kill -9); *partial*
when it has a COMPLETED checkpoint to resume from; *pending* otherwise. See docs/results-schema.md.
"""

from __future__ import annotations

import datetime as _dt
import fcntl
import json
import os
import re
import sys
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from harness.config import SCHEMA_VERSION, Experiment, RunSpec, to_dict

STATES = ("done", "failed", "running", "partial", "pending")
_STEP = re.compile(r"step-(\d{6})$")


def atomic_write_text(path: Path, text: str) -> None:
    """Write via a temp file in the same directory + rename, so readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def runs_root(exp: Experiment) -> Path:
    return exp.out_dir / "runs"


def run_dir(exp: Experiment, run: RunSpec) -> Path:
    return runs_root(exp) / run.run_id


def completed_checkpoints(rdir: Path) -> list[tuple[int, Path]]:
    """(step, path) of every checkpoint with a COMPLETED sentinel, oldest first."""
    out = []
    ck = Path(rdir) / "checkpoints"
    if ck.is_dir():
        for p in ck.iterdir():
            m = _STEP.search(p.name)
            if m and p.is_dir() and (p / "COMPLETED").exists():
                out.append((int(m.group(1)), p))
    return sorted(out)


def eval_json(rdir: Path, step: int) -> Path:
    return Path(rdir) / "eval" / f"step-{step:06d}.json"


def valid_json(path: Path) -> bool:
    try:
        json.loads(Path(path).read_text(encoding="utf-8"))
        return True
    except (OSError, ValueError):
        return False


def missing_evals(rdir: Path, every_checkpoint: bool = True) -> list[tuple[int, Path]]:
    """COMPLETED checkpoints that still need an evaluation (a half-written eval JSON counts as missing)."""
    cks = completed_checkpoints(rdir)
    if not every_checkpoint:
        cks = cks[-1:]
    return [(s, p) for s, p in cks if not valid_json(eval_json(rdir, s))]


def is_locked(path: Path) -> bool:
    """True when another process holds the flock on `path`."""
    if not Path(path).exists():
        return False
    with open(path, "a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return True
        fcntl.flock(fh, fcntl.LOCK_UN)
    return False


@contextmanager
def try_lock(path: Path) -> Iterator[bool]:
    """Non-blocking exclusive flock; yields whether we got it. The kernel drops it if we die."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fh = open(path, "a+")
    try:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            yield False
            return
        fh.seek(0)
        fh.truncate()
        fh.write(f"{os.getpid()} {os.uname().nodename} {now_iso()}\n")
        fh.flush()
        try:
            yield True
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
    finally:
        fh.close()


def lock_holder(path: Path) -> str:
    try:
        return Path(path).read_text().strip() or "unknown"
    except OSError:
        return "unknown"


@dataclass
class RunStatus:
    run: RunSpec
    dir: Path
    state: str
    step: int | None = None
    epoch: float | None = None
    progress: float | None = None  # 0..1 of the epoch budget
    last: dict | None = None  # last metrics.jsonl row
    job: dict | None = None  # launcher.json
    error: str | None = None  # last line of FAILED


def _last_jsonl(path: Path) -> dict | None:
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - 8192))
            lines = fh.read().decode("utf-8", "replace").strip().splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        try:
            return json.loads(line)
        except ValueError:
            continue
    return None


def run_status(exp: Experiment, run: RunSpec) -> RunStatus:
    d = run_dir(exp, run)
    st = RunStatus(run, d, "pending")
    if (d / "launcher.json").exists():
        try:
            st.job = json.loads((d / "launcher.json").read_text())
        except ValueError:
            st.job = None
    st.last = _last_jsonl(d / "metrics.jsonl")
    if st.last:
        st.step, st.epoch = st.last.get("step"), st.last.get("epoch")
        if st.epoch is not None and run.config.train.budget == "epochs":
            st.progress = min(1.0, float(st.epoch) / float(run.config.train.epochs))
    if is_locked(d / ".lock"):
        st.state = "running"
    elif (d / "DONE").exists() and not missing_evals(d, run.config.eval.every_checkpoint):
        st.state, st.progress = "done", 1.0
    elif (d / "FAILED").exists():
        st.state = "failed"
        lines = (d / "FAILED").read_text(errors="replace").strip().splitlines()
        st.error = lines[-1] if lines else "failed"
    elif completed_checkpoints(d) or (d / "DONE").exists():
        st.state = "partial"
    return st


def write_plan(exp: Experiment) -> Path:
    axes: list[str] = []
    for r in exp.runs:
        for k in r.axes:
            if k not in axes:
                axes.append(k)
    from harness.evalid import eval_hash

    hashes: dict[str, str] = {}

    def ehash(cfg) -> str:  # memoised: it fingerprints the probe and model files
        d = to_dict(cfg)
        key = json.dumps([d["model"], d["data"], d["eval"]], sort_keys=True, default=str)
        if key not in hashes:
            hashes[key] = eval_hash(cfg)
        return hashes[key]

    plan = {"schema": SCHEMA_VERSION, "experiment": exp.config.name, "experiment_file": exp.path,
            "created": now_iso(), "axes": axes, "base_eval_hash": ehash(exp.config),
            "runs": [{"run_id": r.run_id, "axes": r.axes, "config_hash": r.config_hash,
                      "eval_hash": ehash(r.config)} for r in exp.runs]}
    path = exp.out_dir / "plan.json"
    atomic_write_json(path, plan)
    return path


def exit_without_teardown(rc: int = 0) -> None:
    """Exit the process now, skipping only the interpreter's module-by-module teardown (with torch,
    transformers and lm-eval loaded: 1-2 s on this machine, freeing nothing the OS does not). The atexit
    handlers (logging, temporary directories, libraries' cleanup) run first, then stdout/stderr are flushed.
    Never call it from inside an atexit handler that is still registered (it would run again)."""
    import atexit

    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe or stream: nothing left to flush
            pass
    os._exit(rc)
