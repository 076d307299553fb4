"""Targeted probes: the prompt-loss-weight sweep with its quadratic fit, and the raw-question format probe."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.lines import Line2D

from analysis import stats
from analysis.figures.common import LR, REGIME, WEIGHT, Context, Skip, _grid, _legend, _lr_label, ci_frame
from analysis.style import BASE_COLOUR, FORMAT_LABELS, fmt_num, metric_label


def fig_prompt_weight_fit(ctx: Context):
    """Metric vs prompt-loss weight with the quadratic fit metric = a(w - b)^2 + c in w = weight^0.30103
    (Huerta-Enochian & Ko), fitted on every seed's final checkpoint; the fitted optimum is starred."""
    if WEIGHT not in ctx.axes:
        raise Skip("the grid has no regime.prompt_weight axis")
    fin = stats.final_rows(ctx.done)
    regs = [r for r in fin[REGIME].dropna().unique() if fin.loc[fin[REGIME] == r, WEIGHT].nunique() >= 3]
    if not regs:
        raise Skip("fewer than 3 distinct prompt-loss weights among done runs")
    fin = fin[fin[REGIME].isin(regs)]
    ms = [m for m in (ctx.target, "nll/response") if m and m in set(fin["metric"])]
    if not ms:
        raise Skip("neither the target metric nor nll/response was evaluated for the weight sweep")
    lrs = sorted(fin[LR].dropna().unique()) or [math.nan]
    lr_cols = dict(zip(lrs, sns.color_palette("dark:" + ctx.palette.get(regs[0], "#E69F00"),
                                              n_colors=len(lrs) + 1)[1:]))
    fig, axs = _grid(1, len(ms), w=3.4, h=2.8)
    fits = []
    for j, m in enumerate(ms):
        ax = axs[0, j]
        for lr in lrs:
            d = fin[(fin["metric"] == m) & ((fin[LR] == lr) if np.isfinite(lr) else True)].dropna(subset=["value"])
            col = lr_cols[lr]
            w = stats.plw_transform(d[WEIGHT].to_numpy())
            ax.scatter(w, d["value"], color=col, s=14, alpha=0.6, zorder=3)
            means = d.groupby(WEIGHT)["value"].mean()
            ax.scatter(stats.plw_transform(means.index.to_numpy()), means.to_numpy(), color=col, s=30, marker="D",
                       edgecolor="black", lw=0.5, zorder=4)
            fit = stats.quadratic_fit(d[WEIGHT].to_numpy(), d["value"].to_numpy(),
                                      maximise=not stats.lower_is_better(m))
            if fit is None:
                continue
            fits.append({"metric": m, LR: lr, **fit})
            grid = np.linspace(w.min(), w.max(), 200)
            ax.plot(grid, fit["a"] * (grid - fit["b"]) ** 2 + fit["c"], color=col, lw=1.4)
            ax.scatter([fit["w_opt"]], [fit["value_opt"]], marker="*", s=160, color=col, edgecolor="black", lw=0.6,
                       zorder=5)
            ax.annotate(f"opt. weight {fmt_num(fit['weight_opt'])}", (fit["w_opt"], fit["value_opt"]),
                        textcoords="offset points", xytext=(4, 6), fontsize=7)
        ws = np.sort(fin[WEIGHT].dropna().unique())
        ax.set_xticks(stats.plw_transform(ws))
        ax.set_xticklabels([f"{w:g}" for w in ws], rotation=45)
        ax.set_xlabel("prompt-loss weight (axis: weight^0.30103)")
        ax.set_ylabel(metric_label(m))
    ctx.notes["prompt_weight_fit"] = "; ".join(
        f"{f['metric']} at {_lr_label(f[LR])}: a={f['a']:.3g}, b={f['b']:.3g}, c={f['c']:.3g}, R²={f['r2']:.2f}, "
        f"optimum weight {fmt_num(f['weight_opt'])} ({'vertex' if f['interior'] else 'end of the range'}) "
        f"-> {fmt_num(f['value_opt'])}" for f in fits) or "no fit (fewer than 3 weights per learning rate)"
    fig.suptitle(f"Prompt-loss weight sweep ({', '.join(regs)}): quadratic fit in weight^0.30103")
    handles = [Line2D([], [], color=lr_cols[lr], marker="D", label=_lr_label(lr)) for lr in lrs]
    handles += [Line2D([], [], color="black", marker="*", lw=0, markersize=10, label="fitted optimum"),
                Line2D([], [], color="grey", marker="o", lw=0, alpha=0.6, label="one seed")]
    fig.legend(handles=handles, loc="outside right center", frameon=False)
    return fig


def fig_format_probe(ctx: Context):
    """Raw-question format probe: rates of answering, continuing the question and other outputs, base model vs
    each regime at the final checkpoint (bars: mean over runs, whiskers: 95% CI over seeds)."""
    ms = [m for m in FORMAT_LABELS if m in ctx.metrics()]
    if not ms:
        raise Skip("no format-probe metrics (format/answered, format/continued_question, format/other)")
    fin = stats.final_rows(ctx.done[ctx.done["metric"].isin(ms)])
    if fin.empty:
        raise Skip("no evaluated checkpoint has format-probe metrics")
    base = ctx.df[(ctx.df["step"] == 0) & ctx.df["metric"].isin(ms)].drop_duplicates("metric")
    lrs = sorted(fin[LR].dropna().unique()) or [math.nan]
    rows = []
    for lr in lrs:
        sub = fin[(fin[LR] == lr) if np.isfinite(lr) else np.ones(len(fin), bool)]
        rows.append(sub.assign(model=sub["variant"], lr_facet=lr))
        rows.append(base.assign(model="base", lr_facet=lr))
    d = pd.concat(rows, ignore_index=True)
    d["outcome"] = d["metric"].map(FORMAT_LABELS)
    hue_order = ["base"] + [v for v in ctx.order if v in set(fin["variant"])]
    fig, axs = _grid(1, len(lrs), w=3.6, h=2.6, sharey=True)
    outcomes = [FORMAT_LABELS[m] for m in ms]
    width = 0.8 / len(hue_order)
    for j, lr in enumerate(lrs):
        ax = axs[0, j]
        agg = ci_frame(d[d["lr_facet"] == lr] if np.isfinite(lr) else d, "outcome", by="model")
        for k, mdl in enumerate(hue_order):
            a = agg[agg["model"] == mdl].set_index("outcome").reindex(outcomes)
            xs = np.arange(len(outcomes)) - 0.4 + width * (k + 0.5)
            err = np.vstack([a["mean"] - a["lo"], a["hi"] - a["mean"]])
            ax.bar(xs, a["mean"].fillna(0), width=width * 0.95, color=ctx.palette.get(mdl, BASE_COLOUR))
            if np.isfinite(err).any():
                ax.errorbar(xs, a["mean"], yerr=np.nan_to_num(err), fmt="none", ecolor="black", elinewidth=0.8,
                            capsize=1.5)
        ax.set_xticks(np.arange(len(outcomes)))
        ax.set_xticklabels(outcomes)
        ax.grid(axis="x", visible=False)
        ax.set_ylim(0, 1)
        ax.set_xlabel("")
        ax.set_ylabel("fraction of raw questions" if j == 0 else "")
        ax.set_title(_lr_label(lr))
    fig.suptitle("Format probe on raw questions (final checkpoint)")
    _legend(fig, hue_order, ctx.palette, title="model", line=False)
    return fig
