"""What every tracker is given (:class:`Context`) and what the run directory says it must hold (:meth:`history`).

A tracker mirrors files the run directory already holds: ``metrics.jsonl`` (the step metrics, truncated by a
resumed run to the checkpoint it resumes from) and ``eval/step-NNNNNN.json`` (each checkpoint's metrics). A tracker
whose own store can lose or keep the wrong rows across a kill (wandb and trackio buffer the last rows in memory; a
killed attempt has logged steps past its checkpoint) brings itself back to that history when it opens, then
follows the live calls: every step appears once, with the value of the attempt that finished.
"""

from __future__ import annotations

import json
import math
import numbers
import os
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from harness.errors import ConfigError
from harness.fsio import atomic_write_text
from harness.layout import RunDir, read_jsonl, read_yaml, valid_eval

IDENTITY = "run.json"  # RunDir.tracking/run.json: the run id and axes training was given, for evaluation
KINDS = ("train", "eval")  # metric prefixes: harness/training/loop.py logs "train/...", evaluate.py "eval/..."


def finite(metrics: dict, prefix: str = "") -> dict[str, float]:
    """The finite numbers of `metrics` (no bools, strings, NaN or inf), keys prefixed."""
    return {f"{prefix}{k}": float(v) for k, v in metrics.items()
            if isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)}


def missing_extra(tracker: str, package: str, exc: Exception) -> ConfigError:
    return ConfigError(f"train.report_to has {tracker} but {package} cannot be imported ({exc})",
                       where="train.report_to", fix=f'pip install -e ".[{tracker}]" (or drop {tracker})')


def _read_json(path: Path) -> dict | None:
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return d if isinstance(d, dict) else None


@contextmanager
def env(name: str, value: str):
    """`name`=`value` in the environment for the block only (unless already set: the user's value wins)."""
    if name in os.environ:
        yield
        return
    os.environ[name] = value
    try:
        yield
    finally:
        os.environ.pop(name, None)


@dataclass
class Context:
    """One opening of a run's trackers. `logdir` is ``RunDir.tracking``; `exp_dir` is the experiment directory
    (``results/<experiment>``), or `logdir` itself for a run outside one (``harness train --out DIR``)."""

    run_dir: RunDir
    logdir: Path  # run_dir.tracking
    run_id: str
    axes: dict
    config: dict
    kind: str  # "train" (harness/training/loop.py) or "eval" (harness/evaluation/evaluate.py)
    purge_step: int | None  # train: the first step this attempt logs (a resumed run's checkpoint + 1)
    experiment: str
    exp_dir: Path
    _history: list | None = field(default=None, repr=False)

    def history(self) -> list[tuple[str, int, dict[str, float]]]:
        """(kind, step, metrics) the tracker must hold before this attempt logs: the training log's rows before
        `purge_step` (all of them when evaluating) and the valid evaluations on disk, prefixed as logged."""
        if self._history is None:
            upto = (self.purge_step or 1) if self.kind == "train" else None
            rows = [("train", r["step"], finite(r, "train/")) for r in read_jsonl(self.run_dir.metrics)
                    if isinstance(r.get("step"), int) and (upto is None or r["step"] < upto)]
            for step, path in self.run_dir.eval_files():
                if valid_eval(path):
                    rows.append(("eval", step, finite(json.loads(path.read_text(encoding="utf-8"))["metrics"],
                                                      "eval/")))
            self._history = rows
        return self._history


def context(rd: RunDir, run_id: str, axes: dict, config: dict, kind: str, purge_step: int | None,
            experiment: str | None) -> Context:
    """The caller's values, completed from the run directory: evaluation passes no config, axes or run id (the
    directory's name), so they come from the run's ``config.yaml`` and what training left in ``run.json`` (or the
    experiment's ``plan.json``), and every opening of a tracker run carries the same ones."""
    logdir = rd.tracking
    exp = rd.experiment
    in_exp = exp is not None
    exp_dir = exp.path if in_exp else logdir
    config = dict(config or read_yaml(rd.config) or {})
    ident = logdir / IDENTITY
    if kind == "train":  # training's names, kept for the evaluations that follow (also outside an experiment)
        known = json.loads(json.dumps({"run_id": run_id, "axes": axes or {}}, default=str))
        if _read_json(ident) != known:
            logdir.mkdir(parents=True, exist_ok=True)
            atomic_write_text(ident, json.dumps(known) + "\n")
    else:  # evaluation: the run as training named it (evaluate.py passes the directory's name and no axes)
        known = _read_json(ident) or {}
        run_id, axes = known.get("run_id") or run_id, known.get("axes")
        if not axes and in_exp:  # a run trained before the identity file existed
            plan = exp.read_plan() or {}
            axes = next((r.get("axes") or {} for r in plan.get("runs", []) if r.get("run_id") == run_id), {})
    name = experiment or config.get("name") or (exp_dir.name if in_exp else "harness")
    return Context(rd, logdir, run_id, dict(axes or {}), config, kind, purge_step, str(name), exp_dir)


class Trackers:
    """The configured trackers of one run, as one: ``log(metrics, step)`` fans out the finite numbers; no
    trackers is a no-op."""

    def __init__(self, writers: list):
        self.writers = writers

    def log(self, metrics: dict, step: int, prefix: str = "") -> None:
        flat = finite(metrics, prefix)
        for w in self.writers:
            w.log(flat, step)

    def close(self) -> None:
        for w in self.writers:
            w.close()

    def __enter__(self) -> "Trackers":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
