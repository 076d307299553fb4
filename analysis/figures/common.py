"""Shared by every figure: :class:`Context` (the frames a figure draws from), :class:`Skip`, the grid-axis
column names, seeded bootstrap CI frames and the axes/legend/line helpers (the conventions they implement are
in the package docstring, analysis/figures/__init__.py)."""

from __future__ import annotations

import textwrap
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib.pyplot as plt  # noqa: E402  (analysis.style selected the Agg backend)
import numpy as np
import pandas as pd
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from analysis import stats
from analysis.style import regime_colours, variant_colours, variant_order, variant_regime

N_BOOT = 1000
LR, EPOCHS, SEED, REGIME, WEIGHT = "train.lr", "train.epochs", "train.seed", "regime.name", "regime.prompt_weight"


class Skip(Exception):
    """A figure that cannot be drawn from these results; the message says why."""


class NotApplicable(Skip):
    """A figure that does not belong to this kind of experiment (e.g. findings of a study that is not shipped):
    left out of the report, not listed as skipped."""


@dataclass
class Context:
    df: pd.DataFrame  # load_runs()
    training: pd.DataFrame  # load_training()
    axes: list[str]  # grid axes (plan order)
    exp_dir: Path
    target: str | None
    retention: str | None = None
    summary: pd.DataFrame | None = None  # stats.summary over the report metrics
    notes: dict = field(default_factory=dict)  # figure name -> extra text for the report (fits, truncation)
    findings: list = field(default_factory=list)  # analysis.claims.Finding of a shipped study
    done: pd.DataFrame = field(init=False)
    palette: dict = field(init=False)
    order: list = field(init=False)

    def __post_init__(self):
        self.done = stats.done_eval(self.df)
        self.order = variant_order(self.done["variant"].unique()) if len(self.done) else []
        self.palette = {**regime_colours(variant_regime(v) for v in self.order), **variant_colours(self.order)}

    def metrics(self) -> list[str]:
        return list(dict.fromkeys(self.done["metric"]))

    def varies(self, col: str, frame: pd.DataFrame | None = None) -> bool:
        f = self.done if frame is None else frame
        return col in f.columns and f[col].nunique(dropna=True) > 1


# ------------------------------------------------------------------------------------------------ helpers


def _legend(fig, variants, palette, title="regime", extra: list | None = None, line=True,
            labels: dict | None = None) -> None:
    lab = labels or {}
    handles = [Line2D([], [], color=palette[v], marker="o", lw=2 if line else 0, label=lab.get(v, v)) if line else
               Patch(facecolor=palette[v], label=lab.get(v, v)) for v in variants]
    handles += extra or []
    fig.legend(handles=handles, title=title, loc="outside right center", frameon=False)


def _wrap(text: str, width: int = 28) -> str:
    return "\n".join(textwrap.wrap(text, width)) or text


def _lr_label(lr: float) -> str:
    return f"lr = {lr:.0e}".replace("e-0", "e-") if np.isfinite(lr) else "lr = ?"


def _lr_axis(ax, lrs) -> None:
    """Log-scale learning-rate axis with ticks at the grid's learning rates only."""
    from matplotlib.ticker import FixedLocator, NullLocator

    lrs = sorted(v for v in set(lrs) if v == v and v > 0)
    ax.set_xscale("log")
    if lrs:
        ax.xaxis.set_major_locator(FixedLocator(lrs))
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_xticklabels([f"{v:.0e}".replace("e-0", "e-") for v in lrs])
        if len(lrs) == 1:
            ax.set_xlim(lrs[0] / 2, lrs[0] * 2)
    ax.set_xlabel("learning rate")


def _grid(nrows: int, ncols: int, w: float = 2.8, h: float = 2.3, **kw):
    fig, axs = plt.subplots(nrows, ncols, figsize=(w * ncols + 1.6, h * nrows + 0.5), squeeze=False,
                            layout="constrained", **kw)
    return fig, axs


def _only_max_epochs(ctx: Context, d: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    """When train.epochs is a grid axis, step/epoch curves use the longest budget only (noted)."""
    if ctx.varies(EPOCHS, d):
        m = d[EPOCHS].max()
        return d[d[EPOCHS] == m], f" (runs with train.epochs = {m:g})"
    return d, ""


def ci_frame(d: pd.DataFrame, x: str, by: str = "variant") -> pd.DataFrame:
    """Mean and 95% bootstrap CI (over the rows, i.e. seeds) of ``value`` per (by, x) - vectorised, seeded."""
    rows = []
    for (v, xv), g in d.dropna(subset=["value"]).groupby([by, x], sort=True):
        mean, lo, hi, n = stats.bootstrap_ci(g["value"].to_numpy(), n_boot=N_BOOT)
        rows.append({by: v, x: xv, "mean": mean, "lo": lo, "hi": hi, "n": n})
    return pd.DataFrame(rows, columns=[by, x, "mean", "lo", "hi", "n"])


def _lineplot(ax, d, x, palette, order, style: str | None = None, marker: str = "o"):
    """One line per variant (mean over seeds) with a 95% bootstrap CI band; ``style`` splits lines by dashes."""
    groups = [(None, d)] if not style else list(d.groupby(style, sort=True))
    dashes = ["-", "--", ":", "-."]
    for k, (sv, sub) in enumerate(groups):
        agg = ci_frame(sub, x)
        for v in [v for v in order if v in set(agg["variant"])]:
            a = agg[agg["variant"] == v].sort_values(x)
            col = palette.get(v, "black")
            ax.plot(a[x], a["mean"], color=col, marker=marker or "o" if len(a) == 1 else marker, markersize=3.5,
                    lw=1.5, ls=dashes[k % 4])
            if len(a) == 1 and (a["n"] > 1).any():  # a single x: whisker instead of a band
                ax.errorbar(a[x], a["mean"], yerr=[a["mean"] - a["lo"], a["hi"] - a["mean"]], color=col, lw=1,
                            capsize=2)
            elif (a["n"] > 1).any():
                ax.fill_between(a[x], a["lo"], a["hi"], color=col, alpha=0.15, lw=0)


def shared_x(d: pd.DataFrame, by: list[str], x: str = "step") -> str:
    """`x` when every run of a group (`by`, e.g. variant and LR) has its points at the same `x` values as the
    group's other runs, else ``"epoch"``. Seeds whose data packs into different step counts (216 vs 219) have
    their per-epoch checkpoints at different steps: a mean over seeds at each raw step would join points of
    different runs into a zig-zag, while at each epoch it averages like with like."""
    if "epoch" not in d.columns or d["epoch"].isna().any():  # logs without epochs: nothing better to align on
        return x
    d = d.dropna(subset=[x])
    keys = [c for c in by if c in d.columns]
    per_run = d.groupby(keys + ["run_id"], dropna=False)[x].agg(lambda s: tuple(sorted(set(s.astype(float)))))
    if not keys:
        return x if per_run.nunique() <= 1 else "epoch"
    same = per_run.groupby(level=list(range(len(keys))), dropna=False).nunique() <= 1
    return x if bool(same.all()) else "epoch"


def on_common_grid(d: pd.DataFrame, by: list[str], x: str = "epoch", points: int | None = None) -> pd.DataFrame:
    """Each run's curve linearly interpolated onto one grid of `x` per group (`by` + metric), spanning the
    range all of the group's runs cover, with about as many points as a run has: runs logged at different
    steps can then be averaged point by point."""
    out = []
    keys = [c for c in by if c in d.columns] + ["metric"]
    for _, g in d.dropna(subset=[x, "value"]).groupby(keys, dropna=False):
        runs = [r.sort_values(x) for _, r in g.groupby("run_id")]
        lo, hi = max(r[x].min() for r in runs), min(r[x].max() for r in runs)
        n = points or int(np.median([len(r) for r in runs]))
        grid = np.linspace(lo, hi, max(2, n)) if hi > lo else np.asarray([lo])
        for r in runs:
            row = r.iloc[0]
            vals = np.interp(grid, r[x].astype(float), r["value"].astype(float))
            out.append(pd.DataFrame({**{c: row[c] for c in r.columns if c not in (x, "value", "step")},
                                     x: grid, "value": vals}))
    return pd.concat(out, ignore_index=True) if out else d.iloc[0:0]
