"""Sequential stages (harness/stages.py): the first stage's task through a later stage's training, and the k-shot
recovery curves (Zheng et al. 2025, spurious forgetting)."""

from __future__ import annotations

import json
import re

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.lines import Line2D

from analysis import stats
from analysis.figures.common import SEED, Context, NotApplicable, Skip, _grid, ci_frame
from analysis.style import BASE_COLOUR, metric_label
from harness.layout import ExperimentDir

STAGE = "stage"
_K = re.compile(r"^recovery/k(\d+)/(.+)$")


def stage_order(ctx: Context) -> tuple[list[str], dict[str, str]]:
    """(stage names in chain order, run id -> the run it started from), from plan.json's ``after``."""
    try:
        plan = json.loads(ExperimentDir(ctx.exp_dir).plan.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return [], {}
    runs = plan.get("runs", [])
    parent = {r["run_id"]: r["after"] for r in runs if r.get("after")}
    stage = {r["run_id"]: (r.get("axes") or {}).get(STAGE) for r in runs}
    depth = {}
    for rid in stage:
        n, cur = 0, rid
        while cur in parent:
            n, cur = n + 1, parent[cur]
        depth.setdefault(stage[rid], n)
    return [s for s, _ in sorted(depth.items(), key=lambda x: x[1]) if s], parent


def _variant_keys(d: pd.DataFrame, axes: list[str]) -> list[str]:
    return [a for a in axes if a not in (STAGE, SEED) and a in d.columns and d[a].nunique(dropna=True) > 1]


def _label(row: pd.Series, keys: list[str]) -> str:
    return ", ".join(f"{k.split('.')[-1]} = {row[k]:g}" if isinstance(row[k], (int, float)) else f"{row[k]}"
                     for k in keys) or "all"


def fig_recovery_curves(ctx: Context):
    """Spurious forgetting (Zheng et al. 2025): left, the first stage's target metric through the last stage's
    training (step 0: the first stage's final checkpoint; one line per configuration, 95% bootstrap CI over
    seeds); right, the k-shot recovery probe (that metric after fine-tuning a copy on k first-stage examples) at
    the last stage's final checkpoint, beside the same probe on the first stage's final checkpoint and on the
    base. Dotted: the first stage's final level."""
    if STAGE not in ctx.axes:
        raise NotApplicable("the experiment has no stages")
    order, parent = stage_order(ctx)
    if len(order) < 2:
        raise Skip("plan.json names fewer than two stages")
    if not ctx.target:
        raise Skip("no target metric")
    d = ctx.done
    first, last = order[0], order[-1]
    tgt = d[d["metric"] == ctx.target]
    a_fin = stats.final_rows(tgt[tgt[STAGE] == first])
    b = tgt[(tgt[STAGE] == last) & (tgt["step"] > 0)]
    if b.empty or a_fin.empty:
        raise Skip(f"no {ctx.target} of both the {first} and the {last} stage")
    keys = _variant_keys(b, ctx.axes)
    start = a_fin.set_index("run_id")["value"]
    rows = [b]
    for rid, g in b.groupby("run_id"):  # step 0 of a later stage: the run it started from, at its end
        src = parent.get(rid)
        if src in start.index:
            rows.append(g.iloc[[0]].assign(step=0, value=float(start[src])))
    curve = pd.concat(rows, ignore_index=True)
    curve["variant"] = curve.apply(lambda r: _label(r, keys), axis=1)
    variants = sorted(curve["variant"].unique())
    colours = dict(zip(variants, plt.get_cmap("tab10").colors))
    rec = d[d["metric"].map(lambda m: bool((x := _K.match(m)) and x.group(2) == ctx.target))]  # its k-shot rows
    fig, axs = _grid(1, 2 if len(rec) else 1, w=3.6, h=2.8)
    ax = axs[0, 0]
    agg = ci_frame(curve, "step")
    for v in variants:
        a = agg[agg["variant"] == v].sort_values("step")
        ax.plot(a["step"], a["mean"], color=colours[v], marker="o", ms=3, lw=1.5)
        if (a["n"] > 1).any():
            ax.fill_between(a["step"], a["lo"], a["hi"], color=colours[v], alpha=0.15, lw=0)
    level = float(a_fin["value"].mean())
    ax.axhline(level, color="grey", ls=":", lw=1)
    ax.set_xlabel(f"step of stage {last!r} (0: end of {first!r})")
    ax.set_ylabel(metric_label(ctx.target))
    handles = [Line2D([], [], color=colours[v], marker="o", label=v) for v in variants]
    if len(rec):
        ax = axs[0, 1]
        rec = rec.assign(k=rec["metric"].map(lambda m: int(_K.match(m).group(1))),
                         variant=rec.apply(lambda r: _label(r, keys), axis=1))
        fin = stats.final_rows(rec[rec["step"] > 0])
        groups = [(f"after {last}: {v}", colours[v], fin[(fin[STAGE] == last) & (fin["variant"] == v)])
                  for v in variants]
        groups.append((f"after {first}", "black", fin[fin[STAGE] == first]))
        base = rec[rec["step"] == 0].drop_duplicates("metric")  # every run's step 0 is the one base model
        groups.append(("base", BASE_COLOUR, base))
        ks = sorted(rec["k"].unique())
        pos = {k: i for i, k in enumerate(ks)}  # k on an even axis: 0, 4, 16, 64 are the probe's points
        for name, col, g in groups:
            if g.empty:
                continue
            a = ci_frame(g.assign(variant=name), "k")
            ax.plot([pos[k] for k in a["k"]], a["mean"], color=col, marker="s", ms=3.5, lw=1.5,
                    ls="--" if name == "base" else "-")
            if (a["n"] > 1).any():
                ax.fill_between([pos[k] for k in a["k"]], a["lo"], a["hi"], color=col, alpha=0.12, lw=0)
            if not name.startswith(f"after {last}"):
                handles.append(Line2D([], [], color=col, marker="s", ls="--" if name == "base" else "-", label=name))
        ax.axhline(level, color="grey", ls=":", lw=1)
        ax.set_xticks(range(len(ks)), [str(k) for k in ks])
        ax.set_xlabel(f"k {first!r} examples (k-shot recovery)")
        ax.set_ylabel(metric_label(ctx.target))
        ax.set_ylim(bottom=min(0, np.nanmin(rec["value"])))
    fig.legend(handles=handles, loc="outside right center", frameon=False, title=f"stage {last!r}")
    return fig
