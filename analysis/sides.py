"""Which runs a claim's side means, and their values under one weighting of the items: the sides of a claim
(harness/claims.py) resolved to configurations and cells, the views (the estimate, the bootstrap, a cross-fitting
fold) that give each cell's per-seed values, and the choice of a best/worst option on one fold judged on the
other. Used by analysis/claims.py."""

from __future__ import annotations

import fnmatch
import math
from typing import Callable

import numpy as np
import pandas as pd

from analysis.evidence import Cell, Evidence, item_source
from analysis.stats import SEED_KEY
from harness.claims import BASE

NOT_AXES = {"run_id", "state", "step", "metric", "doc_id", "num", "den", "group", "epoch", "value", "experiment",
            "source", SEED_KEY}


def axis_columns(d: pd.DataFrame) -> list[str]:
    return [c for c in d.columns if c not in NOT_AXES]


def _match(col: pd.Series, v) -> np.ndarray:
    """Which rows of an axis column hold `v` (a list: any of them; None: unset; a glob for strings with * ? [;
    numbers compared as floats, so 1e-4 written as a string matches 0.0001)."""
    if isinstance(v, list):
        return np.logical_or.reduce([_match(col, x) for x in v]) if v else np.zeros(len(col), dtype=bool)
    if v is None:
        return col.isna().to_numpy()
    if isinstance(v, str) and any(ch in v for ch in "*?["):  # a glob: data paths by their file name
        return np.asarray([fnmatch.fnmatch(str(x), v) for x in col], dtype=bool)
    num = pd.to_numeric(col, errors="coerce")
    try:
        f = float(v)
        if num.notna().any():
            return (np.isclose(num.astype(float), f) & num.notna()).to_numpy()
    except (TypeError, ValueError):
        pass
    return (col.astype(str) == str(v)).to_numpy()


def _checkpoint(d: pd.DataFrame, checkpoint: str) -> tuple[pd.DataFrame, bool]:
    """Rows at the checkpoint; (rows, whether the step is a level to choose from)."""
    d = d[d["step"] > 0]
    if d.empty:
        return d, False
    if checkpoint == "final":
        return d[d["step"] == d.groupby("run_id")["step"].transform("max")], False
    kind, _, n = checkpoint.partition(" ")
    if kind == "epoch":
        return d[np.isclose(pd.to_numeric(d.get("epoch"), errors="coerce").astype(float), float(n))], False
    if kind == "step":
        return d[d["step"] == int(n)], False
    return d[d["step"] <= d.groupby("run_id")["step"].transform("max") / 2], True  # lowest/highest in first half


class Side:
    """A side of a claim: its configurations (axis values + step) and their cells per metric."""

    def __init__(self, ev: Evidence, spec, where: dict, checkpoint: str):
        self.ev, self.spec, self.where = ev, spec, where
        self.base = spec == BASE
        specs = [] if self.base else (spec if isinstance(spec, list) else [spec])
        self.checkpoint = next((str(s["checkpoint"]) for s in specs if "checkpoint" in s), checkpoint)
        self.metric = next((str(s["metric"]) for s in specs if "metric" in s), None)
        self.maps = [{k: v for k, v in {**where, **s}.items() if k not in ("checkpoint", "metric")} for s in specs] \
            or [dict(where)]
        self.selects_step = False
        self.configs: list[dict] = []
        self._rows: dict = {}

    def _matching(self, metric: str) -> tuple[pd.DataFrame, str | None]:
        """The trained runs' rows of `metric` that match this side (any of its maps) at its checkpoint."""
        d = self.ev.runs(metric)
        d = d[d["run_id"] != "base"]
        keep = np.zeros(len(d), dtype=bool)
        for m in self.maps:
            sel = np.ones(len(d), dtype=bool)
            for k, v in m.items():
                if k not in d.columns:
                    return d.iloc[0:0], f"no axis {k!r} in the results"
                sel &= _match(d[k], v)
            keep |= sel
        d, self.selects_step = _checkpoint(d[keep], self.checkpoint)
        return d, None

    def resolve(self, metric: str) -> str | None:
        """Find the configurations (on `metric`'s runs); a reason when there are none."""
        d = self.ev.runs(metric)
        if d.empty:
            return f"no per-item results of {metric}"
        if self.base:
            rows = d[d["run_id"] == "base"]
            self.configs = [{}] if len(rows) else []
            return None if len(rows) else f"no base evaluation of {metric}"
        d, why = self._matching(metric)
        if why:
            return why
        if d.empty:
            return f"no done runs of {metric} match {self.describe()}"
        axes = [a for a in axis_columns(d) if d[a].nunique(dropna=False) > 1] + (["step"] if self.selects_step else [])
        self.configs = [dict(zip(axes, k if isinstance(k, tuple) else (k,))) for k in
                        d[axes].drop_duplicates().itertuples(index=False, name=None)] if axes else [{}]
        return None

    def describe(self) -> str:
        if self.base:
            return "the base"
        return " or ".join(", ".join(f"{k}={v}" for k, v in m.items()) or "all runs" for m in self.maps) + \
            (f" at {self.checkpoint}" if self.checkpoint != "final" else "")

    def cell(self, metric: str, config: dict) -> Cell | None:
        key = (metric, tuple(sorted((k, str(v)) for k, v in config.items())))
        if key not in self._rows:
            if self.base:
                d = self.ev.runs(metric)
                self._rows[key] = self.ev.cell(metric, d[d["run_id"] == "base"], {})
                return self._rows[key]
            d, _ = self._matching(metric)
            for k, v in config.items():
                if k == "step":
                    d = d[d["step"] == v]
                elif v is None or (isinstance(v, float) and math.isnan(v)):
                    d = d[d[k].isna()]
                else:
                    d = d[_match(d[k], v)]
            self._rows[key] = self.ev.cell(metric, d, config)
        return self._rows[key]


# ------------------------------------------------------------------------------------------------ views


class View:
    """Per-seed values [S, B] of cells under one weighting: the estimate ('point') or the bootstrap ('boot'), on
    all items, or in cross-fitting fold k (select on fold k's items, judge on the others')."""

    def __init__(self, ev: Evidence, mode: str, seeds: list, fold: int | None, selected: set[str]):
        self.ev, self.mode, self.seeds, self.fold, self.selected = ev, mode, seeds, fold, selected

    def weights(self, metric: str, role: str) -> np.ndarray:
        n = self.ev.groups(metric)[1]
        w = np.ones((1, n)) if self.mode == "point" else self.ev.counts(metric)
        if self.fold is None or item_source(metric) not in self.selected:
            return w
        f = self.ev.folds(metric)
        return w * ((f == self.fold) if role == "select" else (f != self.fold))

    def __call__(self, cell: Cell, role: str = "judge") -> np.ndarray:
        v = cell.values(self.weights(cell.metric, role))
        if cell.is_base:
            return np.broadcast_to(v, (len(self.seeds), v.shape[1]))
        return v[[cell.seeds.index(s) for s in self.seeds]]


Stat = Callable[[View], np.ndarray]  # -> [S, B]


def choose(view: View, options: list[Callable[[View, str], np.ndarray]], lower: bool,
           role: str = "judge") -> np.ndarray:
    """The option with the lowest (or highest) seed-mean on the selection items, per draw, and its values on the
    items of `role` (a choice nested in another one's selection is judged on the selection items too)."""
    scores = np.stack([o(view, "select").mean(0) for o in options])  # [C, B]
    with np.errstate(invalid="ignore"):
        idx = np.nanargmin(np.where(np.isnan(scores), np.inf, scores), 0) if lower else \
            np.nanargmax(np.where(np.isnan(scores), -np.inf, scores), 0)
    vals = np.stack([o(view, role) for o in options])  # [C, S, B]
    return vals[idx, :, np.arange(vals.shape[2])].T
