"""Targeted probes: the prompt-loss-weight sweep with its quadratic fit, Weighted Instruction Tuning's
(lambda_p, lambda_r) heatmap, and the raw-question format probe."""

from __future__ import annotations

import math

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.lines import Line2D

from analysis import stats
from analysis.figures.common import (LR, REGIME, WEIGHT, Context, NotApplicable, Skip, _grid, _legend, _lr_label,
                                     ci_frame)
from analysis.style import BASE_COLOUR, FORMAT_LABELS, fmt_num, metric_label


RESPONSE_WEIGHT = "regime.response_weight"


def fig_weight_heatmap(ctx: Context):
    """Weighted Instruction Tuning's heatmap (Chatterjee et al. 2025): the target metric at the final checkpoint
    (mean over seeds) over the prompt weight lambda_p x the response weight lambda_r; the best cell is outlined."""
    if WEIGHT not in ctx.axes or RESPONSE_WEIGHT not in ctx.axes:  # not a WIT grid: the figure does not belong
        raise NotApplicable("the grid does not vary both regime.prompt_weight and regime.response_weight")
    if not ctx.target:
        raise Skip("no target metric")
    fin = stats.final_rows(ctx.done)
    d = fin[fin["metric"] == ctx.target]
    if d.empty:
        raise Skip(f"no final checkpoint has {ctx.target}")
    pct = ctx.target.endswith(("exact_match", "acc"))
    piv = d.groupby([RESPONSE_WEIGHT, WEIGHT])["value"].mean().unstack(WEIGHT).sort_index(ascending=False)
    fig, ax = plt.subplots(figsize=(4.8, 3.6), layout="constrained")
    sns.heatmap(piv * (100 if pct else 1), annot=True, fmt=".1f" if pct else ".3f", cmap="viridis", ax=ax,
                cbar_kws={"label": metric_label(ctx.target)}, linewidths=0.5, linecolor="white")
    best = piv.stack().idxmax() if not stats.lower_is_better(ctx.target) else piv.stack().idxmin()
    r, c = list(piv.index).index(best[0]), list(piv.columns).index(best[1])
    ax.add_patch(plt.Rectangle((c, r), 1, 1, fill=False, edgecolor="white", lw=2.5))
    ax.set_xlabel("prompt weight λp")
    ax.set_ylabel("response weight λr")
    ax.set_title("Weighted instruction tuning (final checkpoint, mean over seeds)", fontsize=9)
    return fig


def fig_forgetting_vs_kl(ctx: Context):
    """RL's Razor (Shenfeld et al. 2025): forgetting (held-out pretraining-NLL increase) against KL(base || tuned)
    on the fine-tuning prompts, and against the fine-tuning loss (held-out response NLL); one point per
    configuration's final checkpoint (mean over seeds), least-squares line and R^2 per panel."""
    fin = stats.final_rows(ctx.done)
    have = set(fin["metric"])
    if "forgetting/kl_sft" not in have:  # eval.kl_sft off: not this kind of experiment
        raise NotApplicable("no forgetting/kl_sft (eval.kl_sft: false)")
    if "forgetting/pretrain_nll_delta" not in have:
        raise Skip("no forgetting/pretrain_nll_delta (eval.pretrain_text unset)")
    keys = [k for k in ["variant", *stats.config_axes(fin, ctx.axes)] if k in fin.columns]
    piv = fin.pivot_table(index=keys, columns="metric", values="value", aggfunc="mean").reset_index()
    xs = [m for m in ("forgetting/kl_sft", "nll/response") if m in piv]
    fig, axs = _grid(1, len(xs), w=3.4, h=2.9)
    for j, m in enumerate(xs):
        ax, d = axs[0, j], piv.dropna(subset=[m, "forgetting/pretrain_nll_delta"])
        for v in [v for v in ctx.order if v in set(d["variant"])]:
            p = d[d["variant"] == v]
            ax.scatter(p[m], p["forgetting/pretrain_nll_delta"], color=ctx.palette[v], s=24, edgecolor="white", lw=0.5)
        if len(d) >= 3:
            x, y = d[m].to_numpy(float), d["forgetting/pretrain_nll_delta"].to_numpy(float)
            a, b = np.polyfit(x, y, 1)
            r2 = np.corrcoef(x, y)[0, 1] ** 2
            grid = np.linspace(x.min(), x.max(), 50)
            ax.plot(grid, a * grid + b, color="black", lw=1.2, ls="--")
            ax.set_title(f"R² = {r2:.2f} ({len(d)} configurations)", fontsize=9)
        ax.set_xlabel(metric_label(m))
        ax.set_ylabel(metric_label("forgetting/pretrain_nll_delta") if j == 0 else "")
    _legend(fig, [v for v in ctx.order if v in set(piv["variant"])], ctx.palette, line=False)
    return fig


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
