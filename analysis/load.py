"""Read a results directory (docs/results-schema.md) into tidy pandas frames. Read-only: nothing here writes
under ``results/`` or takes a lock.

* :func:`load_runs` - evaluation metrics, one row per (run, checkpoint step, metric), base (step 0) rows
  repeated for every run, every grid axis a column, one ``metric == "state"`` row per run so that failed,
  running and pending runs are never a silent gap.
* :func:`load_training` - the training log (``metrics.jsonl``), the same tidy shape (``source == "train"``).
* :func:`run_table` - one row per run: state, why, last step, number of evaluations, axes.

Run states are harness.layout's (the one definition ``harness status`` and evaluation use too): ``done``,
``failed``, ``running`` (a live process holds the run's lock), ``partial`` (started or trained, not finished:
the ``detail`` says what is missing) and ``pending``. The lock is read from /proc/locks, never taken.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pandas as pd
import yaml

from harness.fsio import SAFE_LOADER
from harness.layout import BASES, STATES, ExperimentDir, RunDir, base_eval_json

log = logging.getLogger("analysis")

#: config keys that always get a column (from the plan's axes, the run's config.yaml or the experiment)
STANDARD_KEYS = ("regime.name", "regime.prompt_weight", "train.lr", "train.epochs", "train.seed")
#: columns from each run's provenance.json (trainable parameters: the adapter's, or all of them)
PARAM_KEYS = ("params.trainable", "params.total")
ID_COLUMNS = ["experiment", "run_id", "state", "step", "epoch", "metric", "value"]


# ------------------------------------------------------------------------------------------------ helpers


def _get_dotted(d: Any, key: str) -> Any:
    cur = d
    for part in key.split("."):
        if not isinstance(cur, dict) or part not in cur:
            return None
        cur = cur[part]
    return cur


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, dict):
            out.update(_flatten(v, key))
        else:
            out[key] = v
    return out


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        log.warning("unreadable JSON %s: %s", path, exc)
        return None


def _read_yaml(path: Path) -> dict | None:
    try:
        return yaml.load(Path(path).read_text(encoding="utf-8"), Loader=SAFE_LOADER) or {}  # libyaml: ~10x
    except FileNotFoundError:
        return None
    except (OSError, yaml.YAMLError) as exc:
        log.warning("unreadable YAML %s: %s", path, exc)
        return None


def _read_jsonl(path: Path) -> list[dict]:
    rows = []
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return rows
    for i, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except ValueError:  # a line cut by a crash: skip it, keep the rest
            log.warning("%s:%d: not JSON, skipped", path, i)
            continue
        if isinstance(obj, dict):
            rows.append(obj)
    return rows


def _num(v: Any) -> float:
    return float(v) if isinstance(v, (int, float)) else math.nan  # bool is an int: True -> 1.0


# ------------------------------------------------------------------------------------------------ discovery


def experiment_dirs(results_dir: str | Path) -> list[Path]:
    """``results/<experiment>`` itself, or every experiment directory under a ``results/`` root."""
    root = Path(results_dir)
    if not root.is_dir():
        return []
    if ExperimentDir(root).is_experiment():
        return [root]
    return sorted(p for p in root.iterdir() if p.is_dir() and ExperimentDir(p).is_experiment())


@dataclass
class RunInfo:
    """What the directory says about one run."""

    experiment: str
    run_id: str
    rd: RunDir
    state: str
    detail: str
    axes: dict = field(default_factory=dict)  # axis -> value (plan first, config.yaml for the rest)
    config: dict | None = None  # resolved config.yaml
    in_plan: bool = True
    last_step: int | None = None
    evals: list[tuple[int, Path]] = field(default_factory=list)
    eval_hash: str | None = None  # plan.json's: which base evaluation this run is compared with

    @property
    def dir(self) -> Path:
        return self.rd.path


def run_state(rd: RunDir, every_checkpoint: bool | None = None) -> tuple[str, str, int | None]:
    """(state, detail, last logged/evaluated step) of a run directory: harness.layout's state
    (eval.every_checkpoint from the run's config.yaml unless given)."""
    st = rd.state(every_checkpoint)
    return st.state, st.detail, st.last_step


def load_plan(exp_dir: str | Path) -> dict | None:
    return ExperimentDir(exp_dir).read_plan()


def discover_runs(exp_dir: str | Path, experiment: Any = None) -> tuple[list[RunInfo], list[str]]:
    """Every run of one experiment directory: the plan's runs (in plan order) and any run directory the plan does
    not list. Returns (runs, axes). ``experiment`` (an ExperimentConfig or its dict, or a loaded Experiment)
    fills config values of runs that have no config.yaml yet; otherwise they come from runs that have one
    (non-axis keys are constant over a grid). A loaded Experiment also stands in for a missing plan.json."""
    exp_dir = Path(exp_dir)
    plan = load_plan(exp_dir) or {}
    if not plan and getattr(experiment, "runs", None):  # no plan.json yet: the experiment file's grid
        plan = {"experiment": experiment.config.name,
                "axes": list(dict.fromkeys(k for r in experiment.runs for k in r.axes)),
                "runs": [{"run_id": r.run_id, "axes": dict(r.axes)} for r in experiment.runs]}
    # eval.every_checkpoint of a run whose config.yaml is missing or unreadable: its spec's, as `harness status`
    every_of = {r.run_id: r.config.eval.every_checkpoint for r in getattr(experiment, "runs", ())}
    if hasattr(experiment, "runs") and hasattr(experiment, "config"):
        experiment = experiment.config
    name = plan.get("experiment") or exp_dir.name
    axes: list[str] = list(plan.get("axes") or [])
    planned = [(r["run_id"], dict(r.get("axes") or {})) for r in plan.get("runs", []) if r.get("run_id")]
    ed = ExperimentDir(exp_dir)
    on_disk = ed.run_ids_on_disk()
    order = [rid for rid, _ in planned] + [rid for rid in on_disk if rid not in {r for r, _ in planned}]
    plan_axes = dict(planned)
    plan_hash = {r["run_id"]: r.get("eval_hash") for r in plan.get("runs", []) if r.get("run_id")}
    runs: list[RunInfo] = []
    for rid in order:
        rd = ed.run(rid)
        cfg = _read_yaml(rd.config) if rd.path.is_dir() else None
        every = _get_dotted(cfg, "eval.every_checkpoint") if cfg else every_of.get(rid)
        state, detail, last = run_state(rd, every)
        info = RunInfo(name, rid, rd, state, detail, dict(plan_axes.get(rid, {})), cfg, rid in plan_axes, last,
                       rd.eval_files(), plan_hash.get(rid))
        runs.append(info)
    # axes: the plan's, or (no plan) the config keys that vary between runs
    configs = [_flatten(r.config) for r in runs if r.config]
    if not axes and len(configs) > 1:
        skip = ("name", "description", "results_dir", "launcher.", "grid")
        keys = sorted(set().union(*configs))
        for k in keys:
            if k.startswith(skip):
                continue
            vals = {json.dumps(c.get(k), sort_keys=True, default=str) for c in configs}
            if len(vals) > 1:
                axes.append(k)
    # fill axis + standard columns from config.yaml, then constants from other runs / the experiment
    exp_dict = experiment.to_dict() if hasattr(experiment, "to_dict") else experiment
    keys = list(dict.fromkeys([*axes, *STANDARD_KEYS]))
    sources = [r.config for r in runs if r.config] + ([exp_dict] if exp_dict else [])
    constants = {k: next((v for c in sources if (v := _get_dotted(c, k)) is not None), None) for k in keys}
    # an axis of one sub-grid (a list of grids) that another sub-grid leaves at the experiment's value
    off_axis = {k: next((_get_dotted(r.config, k) for r in runs if r.config and k not in r.axes
                         and _get_dotted(r.config, k) is not None), None) for k in axes}
    for r in runs:
        prov = (_read_json(r.rd.provenance) or {}).get("params") or {}
        r.axes.update({k: prov.get(k.split(".")[1]) for k in PARAM_KEYS})
        no_adapter = (r.axes.get("model.adapter.method") or _get_dotted(r.config, "model.adapter.method")) == "none"
        for k in keys:
            if k in r.axes:
                continue
            if no_adapter and k.startswith("model.adapter."):  # rank, alpha, ... do not apply (harness/grid.py)
                r.axes[k] = None
            elif r.config:
                r.axes[k] = _get_dotted(r.config, k)
            else:  # no config.yaml yet (pending): a non-axis key has the grid's constant value
                r.axes[k] = off_axis.get(k) if k in axes else constants[k]
    return runs, axes


# ------------------------------------------------------------------------------------------------ frames


def _axis_columns(runs: list[RunInfo], axes: Iterable[str]) -> list[str]:
    cols = list(dict.fromkeys([*STANDARD_KEYS, *axes]))
    for r in runs:
        for k in r.axes:
            if k not in cols:
                cols.append(k)
    return cols


def _tidy(records: list[dict], axis_cols: list[str], extra: list[str]) -> pd.DataFrame:
    cols = ID_COLUMNS + extra + axis_cols
    df = pd.DataFrame.from_records(records, columns=cols)
    df["step"] = df["step"].astype("Int64")
    df["epoch"] = pd.to_numeric(df["epoch"], errors="coerce").astype(float)
    df["value"] = pd.to_numeric(df["value"], errors="coerce").astype(float)
    df["state"] = pd.Categorical(df["state"], categories=list(STATES))
    for c in axis_cols:  # numeric axes numeric, the rest strings (parquet wants one type per column)
        conv = pd.to_numeric(df[c], errors="coerce")
        if conv.notna().sum() == df[c].notna().sum() and not df[c].map(lambda v: isinstance(v, bool)).any():
            df[c] = conv.astype(float)
        else:
            df[c] = df[c].map(lambda v: None if v is None or (isinstance(v, float) and math.isnan(v)) else
                              (json.dumps(v) if isinstance(v, (list, dict)) else str(v))).astype("string")
    return df


def _bases(exp_dir: Path) -> tuple[dict[str, dict], dict | None]:
    """Base evaluations by eval hash: the experiment's own (``base/``) and those of runs with another base
    model or eval data (``bases/<eval_hash>/``). Returns ({hash: payload}, the experiment's own)."""
    ed = ExperimentDir(exp_dir)
    default = _read_json(base_eval_json(ed.base()))
    found = [default] + [_read_json(base_eval_json(ed.base(p.name))) for p in sorted((ed.path / BASES).iterdir())] \
        if (ed.path / BASES).is_dir() else [default]
    return {b["eval_hash"]: b for b in found if b and b.get("eval_hash")}, default


def _base_of(run: "RunInfo", bases: dict[str, dict], default: dict | None) -> dict | None:
    """The base a run is compared with: the one with the run's eval hash (from plan.json, else the run's
    own eval files), else the experiment's base."""
    h = run.eval_hash
    if h is None and run.evals:
        h = (_read_json(run.evals[-1][1]) or {}).get("eval_hash")
    return bases.get(h, default) if h else default


def load_runs(results_dir: str | Path, experiment: Any = None) -> pd.DataFrame:
    """Evaluation results as one tidy frame (see docs/results-schema.md and docs in analysis/README.md).

    Columns: ``experiment, run_id, state, step, epoch, metric, value, base_value, delta, in_plan, detail``
    and one column per grid axis plus :data:`STANDARD_KEYS` (``regime.name``, ``regime.prompt_weight``,
    ``train.lr``, ``train.epochs``, ``train.seed``) even when they are not axes. ``base_value`` is the
    same metric at step 0 (the base model) and ``delta = value - base_value``. Every run, whatever its
    state, gets the base rows (step 0) and one ``metric == "state"`` row (value NaN, step NA, ``detail`` =
    why it is not done).
    """
    frames = []
    for exp_dir in experiment_dirs(results_dir):
        runs, axes = discover_runs(exp_dir, experiment)
        cols = _axis_columns(runs, axes)
        bases, default = _bases(exp_dir)
        if default is None:
            log.warning("%s: no base evaluation (base/eval/step-000000.json): no step-0 rows, no deltas", exp_dir)
        records = []
        for r in runs:
            base = _base_of(r, bases, default)
            base_metrics = {k: _num(v) for k, v in ((base or {}).get("metrics") or {}).items()}
            base_epoch = float((base or {}).get("epoch") or 0.0)
            common = {"experiment": r.experiment, "run_id": r.run_id, "state": r.state, "in_plan": r.in_plan,
                      **{c: r.axes.get(c) for c in cols}}
            records.append({**common, "step": None, "epoch": None, "metric": "state", "value": math.nan,
                            "detail": r.detail or r.state})
            for m, v in base_metrics.items():
                records.append({**common, "step": 0, "epoch": base_epoch, "metric": m, "value": v,
                                "base_value": v})
            epochs = r.rd.epochs_by_step() if r.evals else {}
            for step, path in r.evals:
                if step == 0:
                    continue  # step 0 is the experiment's base evaluation
                ev = _read_json(path)
                if not ev:
                    continue
                ep = ev.get("epoch")
                ep = float(ep) if isinstance(ep, (int, float)) else epochs.get(step, math.nan)
                for m, v in (ev.get("metrics") or {}).items():
                    records.append({**common, "step": step, "epoch": ep, "metric": m, "value": _num(v),
                                    "base_value": base_metrics.get(m, math.nan)})
        df = _tidy(records, cols, ["in_plan", "detail", "base_value"])
        df["base_value"] = pd.to_numeric(df["base_value"], errors="coerce").astype(float)
        df["delta"] = df["value"] - df["base_value"]
        frames.append(df)
    if not frames:
        return _tidy([], list(STANDARD_KEYS), ["in_plan", "detail"]).assign(base_value=[], delta=[])
    df = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
    front = ID_COLUMNS + ["base_value", "delta", "in_plan", "detail"]
    return df[front + [c for c in df.columns if c not in front]]


def load_training(results_dir: str | Path, experiment: Any = None) -> pd.DataFrame:
    """The training logs (metrics.jsonl) in the same tidy shape as :func:`load_runs`: one row per (run, logged
    step, metric) with ``source == "train"``; ``time`` (a timestamp) is dropped, every numeric field kept
    (``loss`` is the regime's own loss and not comparable across regimes; ``loss_response`` and
    ``loss_prompt`` are)."""
    frames = []
    for exp_dir in experiment_dirs(results_dir):
        runs, axes = discover_runs(exp_dir, experiment)
        cols = _axis_columns(runs, axes)
        records = []
        for r in runs:
            common = {"experiment": r.experiment, "run_id": r.run_id, "state": r.state,
                      **{c: r.axes.get(c) for c in cols}}
            for row in _read_jsonl(r.rd.metrics) if r.dir.is_dir() else []:
                if not isinstance(row.get("step"), (int, float)):
                    continue
                for k, v in row.items():
                    if k in ("step", "epoch", "time") or isinstance(v, (str, list, dict)) or v is None:
                        continue
                    records.append({**common, "step": int(row["step"]), "epoch": row.get("epoch"), "metric": k,
                                    "value": _num(v)})
        frames.append(_tidy(records, cols, []).assign(source="train"))
    if not frames:
        return _tidy([], list(STANDARD_KEYS), []).assign(source=[])
    return pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]


def run_table(results_dir: str | Path, experiment: Any = None) -> pd.DataFrame:
    """One row per run: experiment, run_id, state, detail, last_step, evaluations, in_plan, axes."""
    rows = []
    for exp_dir in experiment_dirs(results_dir):
        runs, axes = discover_runs(exp_dir, experiment)
        for r in runs:
            rows.append({"experiment": r.experiment, "run_id": r.run_id, "state": r.state, "detail": r.detail,
                         "last_step": r.last_step, "evaluations": len([s for s, _ in r.evals if s > 0]),
                         "in_plan": r.in_plan, **{a: r.axes.get(a) for a in axes}})
    df = pd.DataFrame(rows, columns=None if rows else ["experiment", "run_id", "state", "detail", "last_step",
                                                        "evaluations", "in_plan"])
    if len(df):
        df["last_step"] = df["last_step"].astype("Int64")
    return df


# ------------------------------------------------------------------------------------------------ extras


def load_tokens(path: str | Path) -> pd.DataFrame | None:
    """A ``.tokens.parquet`` (per-token NLL of a fixed sample), or None when absent/unreadable."""
    if not (p := Path(path)).is_file():
        return None
    try:
        return pd.read_parquet(p)
    except Exception as exc:  # noqa: BLE001 - a broken side file must not stop the report
        log.warning("unreadable %s: %s", p, exc)
        return None


def load_audit(exp_dir: str | Path) -> dict | None:
    """The mask audit written by ``harness inspect --json`` to results/<exp>/audit.json, if any."""
    return _read_json(ExperimentDir(exp_dir).audit)


def is_lm_eval_metric(name: str) -> bool:
    return ("/" in name and not name.startswith(("nll/", "forgetting/", "format/"))
            and not name.endswith("_stderr") and name != "state")


def default_target_metric(metrics: Iterable[str]) -> str | None:
    """``world_qa/exact_match`` when present, else the first lm-eval metric (in order of appearance)."""
    ms = [m for m in dict.fromkeys(metrics) if isinstance(m, str)]
    return "world_qa/exact_match" if "world_qa/exact_match" in ms else next((m for m in ms if is_lm_eval_metric(m)),
                                                                            None)


def finite(x: Any) -> bool:
    try:
        return x is not None and not (isinstance(x, float) and math.isnan(x)) and np.isfinite(float(x))
    except (TypeError, ValueError):
        return False
