"""What the learning-rate and epoch sweeps show: the target metric and forgetting vs learning rate and epochs,
and learning vs forgetting with each regime's Pareto front."""

from __future__ import annotations

import math

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.lines import Line2D

from analysis import stats
from analysis.figures.common import (
    EPOCHS,
    LR,
    REGIME,
    Context,
    Skip,
    _grid,
    _legend,
    _lineplot,
    _lr_axis,
    _lr_label,
    _only_max_epochs,
    _wrap,
)
from analysis.load import is_lm_eval_metric
from analysis.style import BASE_COLOUR, metric_label, variant_family


def _forgetting_frame(ctx: Context) -> pd.DataFrame:
    """Forgetting measures as metrics: pretraining-NLL increase, fact-retention drop (base - tuned), KL to base,
    and the delta vs base of every other lm-eval benchmark (target and retention metric excluded)."""
    d = ctx.done
    parts = []
    for m in ("forgetting/pretrain_nll_delta",):
        parts.append(d[d["metric"] == m])
    if ctx.retention:
        r = d[d["metric"] == ctx.retention].copy()
        r["value"] = r["base_value"] - r["value"]
        r["metric"] = f"retention_drop:{ctx.retention}"
        parts.append(r)
    parts.append(d[d["metric"] == "forgetting/kl_base"])
    for m in ctx.metrics():
        if is_lm_eval_metric(m) and m not in (ctx.target, ctx.retention):
            r = d[d["metric"] == m].copy()
            r["value"] = r["delta"]
            r["metric"] = f"delta:{m}"
            parts.append(r)
    out = pd.concat(parts, ignore_index=True) if parts else d.iloc[0:0]
    return out[out["value"].notna()]


def _epoch_facets(ctx: Context, d: pd.DataFrame) -> tuple[pd.DataFrame, str, str]:
    """(rows, facet column, facet label): final checkpoints by train.epochs when it is an axis, else every
    evaluated checkpoint by its epoch."""
    if ctx.varies(EPOCHS, d):
        return stats.final_rows(d), EPOCHS, "epochs"
    d = d[d["step"] > 0].copy()
    d["epoch_facet"] = d["epoch"].round(3)
    return d, "epoch_facet", "epoch"


def fig_target_vs_lr(ctx: Context):
    """Target metric vs learning rate, one facet per epoch count, base model as a dashed line."""
    if not ctx.target:
        raise Skip("no target metric (no lm-eval metric in the evaluations; pass --metric)")
    d = ctx.done[(ctx.done["metric"] == ctx.target) & ctx.done["value"].notna()]
    if d[d["step"] > 0].empty:
        raise Skip(f"no evaluated checkpoint has {ctx.target}")
    d, col, label = _epoch_facets(ctx, d)
    facets = sorted(d[col].dropna().unique())
    fig, axs = _grid(1, len(facets), sharey=True)
    base = ctx.df.loc[(ctx.df["metric"] == ctx.target) & (ctx.df["step"] == 0), "value"]
    for j, f in enumerate(facets):
        ax = axs[0, j]
        _lineplot(ax, d[d[col] == f], LR, ctx.palette, ctx.order)
        if len(base):
            ax.axhline(base.iloc[0], color=BASE_COLOUR, ls="--", lw=1)
        _lr_axis(ax, d[LR])
        ax.set_title(f"{label} = {f:g}")
        ax.set_ylabel(metric_label(ctx.target) if j == 0 else "")
    fig.suptitle(f"{metric_label(ctx.target)} vs learning rate")
    extra = [Line2D([], [], color=BASE_COLOUR, ls="--", label="base model")] if len(base) else []
    _legend(fig, [v for v in ctx.order if v in set(d["variant"])], ctx.palette, extra=extra)
    return fig


def fig_forgetting_vs_lr(ctx: Context):
    """Forgetting measures at each run's final checkpoint vs learning rate."""
    f = _forgetting_frame(ctx)
    f = stats.final_rows(f)
    if f.empty:
        raise Skip("no forgetting metrics (forgetting/*, retention metric, other benchmarks) in the evaluations")
    ms = list(dict.fromkeys(f["metric"]))
    style = EPOCHS if ctx.varies(EPOCHS, f) else None
    ncol = min(len(ms), 3 if len(ms) > 4 else (2 if len(ms) == 4 else len(ms)))
    nrow = math.ceil(len(ms) / ncol)
    fig, axs = _grid(nrow, ncol, w=2.9)
    for ax in axs.flat[len(ms):]:
        ax.set_visible(False)
    for j, m in enumerate(ms):
        ax = axs.flat[j]
        _lineplot(ax, f[f["metric"] == m], LR, ctx.palette, ctx.order, style=style)
        ax.axhline(0, color=BASE_COLOUR, lw=0.8, ls="--")
        _lr_axis(ax, f[LR])
        ax.set_ylabel("")
        ax.set_title(_wrap(metric_label(m), 40), fontsize=8.5)
    fig.suptitle("Forgetting at the final checkpoint vs learning rate (0 = base model)")
    _legend(fig, [v for v in ctx.order if v in set(f["variant"])], ctx.palette)
    return fig


def fig_forgetting_vs_epochs(ctx: Context):
    """Forgetting measures vs epoch (0 = base model), one column per learning rate."""
    f = _forgetting_frame(ctx)
    if f[f["step"] > 0].empty:
        raise Skip("no forgetting metrics (forgetting/*, retention metric, other benchmarks) in the evaluations")
    f, note = _only_max_epochs(ctx, f)
    ms = list(dict.fromkeys(f["metric"]))
    lrs = sorted(f[LR].dropna().unique()) or [math.nan]
    fig, axs = _grid(len(ms), len(lrs), h=2.0, sharex=True)
    for i, m in enumerate(ms):
        for j, lr in enumerate(lrs):
            ax = axs[i, j]
            sub = f[(f["metric"] == m) & ((f[LR] == lr) if np.isfinite(lr) else True)]
            _lineplot(ax, sub, "epoch", ctx.palette, ctx.order)
            ax.axhline(0, color=BASE_COLOUR, lw=0.8, ls="--")
            ax.set_ylabel(_wrap(metric_label(m), 26) if j == 0 else "", fontsize=7.5)
            ax.set_xlabel("epoch" if i == len(ms) - 1 else "")
            ax.set_title(_lr_label(lr) if i == 0 else "")
    fig.suptitle("Forgetting vs epochs" + note)
    _legend(fig, [v for v in ctx.order if v in set(f["variant"])], ctx.palette)
    return fig


def _forgetting_axis(ctx: Context) -> tuple[pd.DataFrame, str] | None:
    f = _forgetting_frame(ctx)
    for m in ("forgetting/pretrain_nll_delta", "forgetting/kl_base", f"retention_drop:{ctx.retention}"):
        sub = f[(f["metric"] == m) & (f["step"] > 0)]
        if len(sub):
            return sub, m
    return None


def fig_learning_vs_forgetting(ctx: Context):
    """Target metric vs forgetting for every configuration and checkpoint (mean over seeds), with each regime's
    Pareto front (more learning, less forgetting)."""
    if not ctx.target:
        raise Skip("no target metric")
    fa = _forgetting_axis(ctx)
    if fa is None:
        raise Skip("no forgetting metric to put on the x axis")
    fx, xm = fa
    ty = ctx.done[(ctx.done["metric"] == ctx.target) & (ctx.done["step"] > 0)]
    if ty.empty:
        raise Skip(f"no evaluated checkpoint has {ctx.target}")
    keys = ["variant", REGIME] + [a for a in stats.config_axes(ctx.done, ctx.axes) if a != REGIME] + ["step"]
    keys = list(dict.fromkeys(k for k in keys if k in ctx.done.columns))
    agg = lambda d: d.groupby(keys, dropna=False)["value"].mean()  # noqa: E731
    pts = pd.concat([agg(fx).rename("x"), agg(ty).rename("y")], axis=1).dropna().reset_index()
    if pts.empty:
        raise Skip("no checkpoint has both the target and the forgetting metric")
    fig, ax = plt.subplots(figsize=(7.2, 3.9), layout="constrained")
    for v in [v for v in ctx.order if v in set(pts["variant"])]:
        p = pts[pts["variant"] == v]
        ax.scatter(p["x"], p["y"], color=ctx.palette[v], s=22, alpha=0.75, edgecolor="white", lw=0.5, zorder=3)
    # one front per family: a regime, or a regime's adapter method over its ranks (harness/adapters.py)
    family = pts["variant"].map(variant_family)
    for r in dict.fromkeys(variant_family(v) for v in ctx.order if v in set(pts["variant"])):
        p = pts[family == r]
        sign = -1.0 if stats.lower_is_better(ctx.target) else 1.0  # the front keeps the better target
        idx = stats.pareto_front(p["x"].to_numpy(), sign * p["y"].to_numpy())
        if len(idx):
            col = ctx.palette.get(r, ctx.palette[p["variant"].iloc[0]])
            fx_, fy_ = p["x"].to_numpy()[idx], p["y"].to_numpy()[idx]
            ax.step(fx_, fy_, where="post", color=col, lw=1.6, zorder=2)
            ax.scatter(fx_, fy_, s=60, facecolor="none", edgecolor=col, lw=1.2, zorder=4)  # a 1-point front too
    base = ctx.df.loc[(ctx.df["metric"] == ctx.target) & (ctx.df["step"] == 0), "value"]
    extra = [Line2D([], [], color="black", lw=1.6, label="Pareto front")]
    if len(base):
        ax.scatter([0.0], [base.iloc[0]], marker="*", s=90, color=BASE_COLOUR, zorder=4)
        extra.append(Line2D([], [], color=BASE_COLOUR, marker="*", lw=0, markersize=9, label="base model"))
    ax.set_xlabel(metric_label(xm) + "  (← less forgetting)")
    ax.set_ylabel(metric_label(ctx.target) + ("  (↓ better)" if stats.lower_is_better(ctx.target) else "  (↑ better)"))
    ax.set_title("Learning vs forgetting\n(each point: configuration × checkpoint, mean over seeds)", fontsize=9)
    shown = [v for v in ctx.order if v in set(pts["variant"])]
    _legend(fig, shown, {**ctx.palette}, extra=extra, line=False, labels=_trained_share(ctx.done, shown))
    return fig


def _trained_share(d: pd.DataFrame, variants: list[str]) -> dict[str, str]:
    """Legend labels with the share of the weights each variant trains, when the variants differ in it (adapters)."""
    if "params.trainable" not in d or d["params.trainable"].nunique(dropna=True) < 2:
        return {}
    share = (d["params.trainable"] / d["params.total"]).groupby(d["variant"]).median()
    return {v: f"{v}\n({100 * share[v]:.3g}% of weights trained)" for v in variants
            if v in share and share[v] == share[v]}
