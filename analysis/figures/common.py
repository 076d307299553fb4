"""The report's figures. Each ``fig_*`` takes a :class:`Context` and returns a matplotlib Figure, or raises
:class:`Skip` with the reason (missing metrics or files) - the report lists skipped figures and why.

Common choices: only ``done`` runs are plotted; one colour per regime everywhere (``analysis.style``);
error bands/bars are 95% bootstrap CIs over seeds (seaborn, fixed bootstrap seed) when a configuration has
several seeds; learning rates on a log axis; legends outside the axes.
"""

from __future__ import annotations

import io
import logging
import math
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import matplotlib.pyplot as plt  # noqa: E402  (analysis.style selected the Agg backend)
import numpy as np
import pandas as pd
import seaborn as sns  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import Patch, Rectangle  # noqa: E402

from analysis import stats
from analysis.load import is_lm_eval_metric, load_audit, load_tokens
from analysis.style import (
    BASE_COLOUR,
    FORMAT_LABELS,
    SEGMENT_COLOURS,
    fmt_num,
    metric_label,
    paper_style,
    regime_colours,
    variant_colours,
    variant_order,
    variant_regime,
)

log = logging.getLogger("analysis")

N_BOOT = 1000
LR, EPOCHS, SEED, REGIME, WEIGHT = "train.lr", "train.epochs", "train.seed", "regime.name", "regime.prompt_weight"
MAX_TOKENS = 64
PNG_DPI = 150


class Skip(Exception):
    """A figure that cannot be drawn from these results; the message says why."""


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


def _legend(fig, variants, palette, title="regime", extra: list | None = None, line=True) -> None:
    handles = [Line2D([], [], color=palette[v], marker="o", lw=2 if line else 0, label=v) if line else
               Patch(facecolor=palette[v], label=v) for v in variants]
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


# ------------------------------------------------------------------------------------------------ figures


def fig_nll_vs_step(ctx: Context):
    """Fixed-mask response and prompt NLL on held-out conversations vs optimizer step (step 0 = base)."""
    ms = [m for m in ("nll/response", "nll/prompt") if m in ctx.metrics()]
    if not ms:
        raise Skip("no fixed-mask NLL metrics (nll/response, nll/prompt) in the evaluations")
    d, note = _only_max_epochs(ctx, ctx.done[ctx.done["metric"].isin(ms) & ctx.done["value"].notna()])
    lrs = sorted(d[LR].dropna().unique()) or [math.nan]
    fig, axs = _grid(len(ms), len(lrs), sharex=True)
    for i, m in enumerate(ms):
        for j, lr in enumerate(lrs):
            ax = axs[i, j]
            sub = d[(d["metric"] == m) & ((d[LR] == lr) if np.isfinite(lr) else True)]
            _lineplot(ax, sub, "step", ctx.palette, ctx.order)
            ax.set_ylabel(metric_label(m) if j == 0 else "")
            ax.set_xlabel("optimizer step" if i == len(ms) - 1 else "")
            ax.set_title(_lr_label(lr) if i == 0 else "")
    fig.suptitle("Fixed-mask NLL on held-out conversations" + note)
    _legend(fig, ctx.order, ctx.palette)
    return fig


def fig_training_curves(ctx: Context):
    """Training-batch response/prompt NLL (metrics.jsonl) vs step: comparable across regimes, unlike `loss`."""
    t = ctx.training
    ms = [m for m in ("loss_response", "loss_prompt") if len(t) and m in set(t["metric"])]
    if not ms:
        raise Skip("no training logs with loss_response/loss_prompt (metrics.jsonl)")
    t = stats.add_variant(t[(t["state"] == "done") & t["metric"].isin(ms)])
    t, note = _only_max_epochs(ctx, t)
    if t.empty:
        raise Skip("no done run has a training log")
    lrs = sorted(t[LR].dropna().unique()) or [math.nan]
    fig, axs = _grid(len(ms), len(lrs), sharex=True)
    for i, m in enumerate(ms):
        for j, lr in enumerate(lrs):
            ax = axs[i, j]
            sub = t[(t["metric"] == m) & ((t[LR] == lr) if np.isfinite(lr) else True)]
            _lineplot(ax, sub, "step", ctx.palette, ctx.order, marker="")
            ax.set_ylabel(metric_label(m) if j == 0 else "")
            ax.set_xlabel("optimizer step" if i == len(ms) - 1 else "")
            ax.set_title(_lr_label(lr) if i == 0 else "")
    fig.suptitle("Training-batch NLL by segment" + note)
    _legend(fig, [v for v in ctx.order if v in set(t["variant"])], ctx.palette)
    return fig


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
    fig, ax = plt.subplots(figsize=(6.6, 3.9), layout="constrained")
    for v in [v for v in ctx.order if v in set(pts["variant"])]:
        p = pts[pts["variant"] == v]
        ax.scatter(p["x"], p["y"], color=ctx.palette[v], s=22, alpha=0.75, edgecolor="white", lw=0.5, zorder=3)
    regimes = list(dict.fromkeys(variant_regime(v) for v in ctx.order if v in set(pts["variant"])))
    for r in regimes:
        p = pts[pts[REGIME] == r]
        sign = -1.0 if stats.lower_is_better(ctx.target) else 1.0  # the front keeps the better target
        idx = stats.pareto_front(p["x"].to_numpy(), sign * p["y"].to_numpy())
        if len(idx):
            col = ctx.palette.get(r, ctx.palette[p["variant"].iloc[0]])
            ax.step(p["x"].to_numpy()[idx], p["y"].to_numpy()[idx], where="post", color=col, lw=1.6, zorder=2)
    base = ctx.df.loc[(ctx.df["metric"] == ctx.target) & (ctx.df["step"] == 0), "value"]
    extra = [Line2D([], [], color="black", lw=1.6, label="Pareto front")]
    if len(base):
        ax.scatter([0.0], [base.iloc[0]], marker="*", s=90, color=BASE_COLOUR, zorder=4)
        extra.append(Line2D([], [], color=BASE_COLOUR, marker="*", lw=0, markersize=9, label="base model"))
    ax.set_xlabel(metric_label(xm) + "  (← less forgetting)")
    ax.set_ylabel(metric_label(ctx.target) + ("  (↓ better)" if stats.lower_is_better(ctx.target) else "  (↑ better)"))
    ax.set_title("Learning vs forgetting (each point: configuration × checkpoint, mean over seeds)", fontsize=9)
    pal = {**ctx.palette}
    _legend(fig, [v for v in ctx.order if v in set(pts["variant"])], pal, extra=extra, line=False)
    return fig


def fig_mask_audit(ctx: Context):
    """One training example's tokens coloured by segment under each regime (from `harness inspect --json`):
    bold and opaque = in the loss (opacity grows with the weight), faded = context only."""
    audit = load_audit(ctx.exp_dir)
    if not audit:
        raise Skip(f"no mask audit at {ctx.exp_dir / 'audit.json'} (write one with: harness inspect EXP.yaml "
                   f"--json {ctx.exp_dir / 'audit.json'})")
    exs = audit.get("examples") or []
    if not exs:
        raise Skip("the mask audit has no examples")
    ex = exs[0]
    toks, segs = ex.get("tokens") or [], ex.get("segments") or []
    regs = {k: v for k, v in (ex.get("regimes") or {}).items() if v}
    if not toks or not regs:
        raise Skip("the mask audit's first example has no tokens or no regimes")
    colours = {**SEGMENT_COLOURS, **(audit.get("segment_colours") or {})}
    n = min(len(toks), 160)
    if n < len(toks):
        ctx.notes["mask_audit"] = f"first {n} of {len(toks)} tokens shown"
    width = 78  # characters per line at most
    layout, x, y = [], 0, 0
    for j in range(n):
        t = toks[j].replace("\n", "⏎")
        w = max(len(t), 1)
        if x + w > width and x > 0:
            x, y = 0, y + 1
        layout.append((j, t, x, y, w))
        x += w
        if toks[j].endswith("\n"):
            x, y = 0, y + 1
    lines = y + 1
    width = max(x0 + w for _, _, x0, _, w in layout)
    names = list(regs)
    fig, axs = plt.subplots(len(names), 1, figsize=(0.085 * width + 2.6, 0.3 * lines * len(names) + 0.5 * len(names) + 0.5),
                            squeeze=False, layout="constrained")
    for i, name in enumerate(names):
        ax = axs[i, 0]
        weights = regs[name].get("weights") or [0.0] * len(toks)
        for j, t, x0, y0, w in layout:
            wt = float(weights[j]) if j < len(weights) else 0.0
            alpha = 0.18 if wt <= 0 else 0.45 + 0.55 * min(wt, 1.0)
            ax.add_patch(Rectangle((x0, -y0 - 0.9), w, 0.8, facecolor=colours.get(segs[j], "#DDDDDD"), alpha=alpha,
                                   edgecolor="black" if wt > 0 else "none", lw=0.6))
            ax.text(x0 + w / 2, -y0 - 0.5, t, ha="center", va="center", fontsize=6.5, family="monospace",
                    fontweight="bold" if wt > 0 else "normal", color="black" if wt > 0 else "#555555")
        sup = sum(1 for w in weights[:len(toks)] if w > 0)
        ax.set_xlim(0, width)
        ax.set_ylim(-lines - 0.1, 0.1)
        ax.axis("off")
        ax.set_title(f"{name}: {sup}/{len(toks)} tokens in the loss", loc="left", fontsize=8.5,
                     color=ctx.palette.get(name, "black"))
    handles = [Patch(facecolor=c, label=s) for s, c in colours.items() if s in set(segs)]
    handles.append(Patch(facecolor="white", edgecolor="black", label="in loss (outlined, bold)"))
    fig.legend(handles=handles, title="segment", loc="outside right center", frameon=False)
    fig.suptitle("Mask audit: which tokens each regime trains on")
    return fig


def _representatives(ctx: Context) -> list[tuple[str, str, int]]:
    """(label, run_id, final step) per regime: the best configuration's first done seed (by the target), or the
    regime's first done run."""
    fin = stats.final_rows(ctx.done)
    out = []
    best = None
    if ctx.summary is not None and ctx.target:
        best = stats.best_per_regime(ctx.summary, ctx.target)
    for r in dict.fromkeys(variant_regime(v) for v in ctx.order):
        rows = fin[fin[REGIME] == r]
        if best is not None and len(best):
            b = best[(best[REGIME] == r) & (best["metric"] == ctx.target)]
            if len(b):
                runs = b["runs"].iloc[0].split(",")
                rows = rows[rows["run_id"].isin(runs)]
        if rows.empty:
            continue
        rid = sorted(rows["run_id"].unique())[0]
        out.append((rows.loc[rows["run_id"] == rid, "variant"].iloc[0], rid,
                    int(rows.loc[rows["run_id"] == rid, "step"].max())))
    return out


def fig_token_loss(ctx: Context):
    """Per-token NLL of one held-out conversation (eval/step-N.tokens.parquet): base model vs each regime's
    best configuration at its final checkpoint; bars coloured by segment."""
    base = load_tokens(ctx.exp_dir / "base" / "eval" / "step-000000.tokens.parquet")
    if base is None or base.empty:
        raise Skip("no per-token losses of the base model (base/eval/step-000000.tokens.parquet)")
    panels = [("base model (step 0)", base, BASE_COLOUR)]
    used = []
    for label, rid, step in _representatives(ctx):
        t = load_tokens(ctx.exp_dir / "runs" / rid / "eval" / f"step-{step:06d}.tokens.parquet")
        if t is not None and len(t):
            panels.append((f"{label} (step {step})", t, ctx.palette.get(label, "black")))
            used.append(f"{label}: {rid} step {step}")
    if len(panels) < 2:
        raise Skip("no tuned run has per-token losses (eval/step-NNNNNN.tokens.parquet)")
    ex = int(base["example"].min())
    b0 = base[base["example"] == ex].sort_values("position")
    n = min(len(b0), MAX_TOKENS)
    ctx.notes["token_loss"] = ("Runs shown (best configuration per regime, first seed): " + "; ".join(used) + "."
                               + (f" First {n} of {len(b0)} tokens of example {ex}." if n < len(b0) else ""))
    fig, axs = plt.subplots(len(panels), 1, figsize=(min(0.16 * n + 2.0, 12), 1.35 * len(panels) + 1.0),
                            sharex=True, sharey=True, squeeze=False, layout="constrained")
    segs_seen: list[str] = []
    for i, (label, t, col) in enumerate(panels):
        ax = axs[i, 0]
        e = t[t["example"] == ex].sort_values("position").head(n)
        colours = [SEGMENT_COLOURS.get(s, "#DDDDDD") for s in e["segment"]]
        segs_seen += list(e["segment"])
        ax.bar(e["position"], e["nll"].fillna(0.0), color=colours, width=0.85)
        resp = e[e["segment"].isin(["assistant", "eot"])]["nll"].mean()
        ax.set_title(label, loc="left", fontsize=8, color=col)
        ax.set_title(f"mean response NLL {fmt_num(resp)}", loc="right", fontsize=7.5, color="#444444")
        ax.set_ylabel("NLL (nats)")
        ax.grid(axis="x", visible=False)
    e = b0.head(n)
    axs[-1, 0].set_xticks(e["position"])
    axs[-1, 0].set_xticklabels([s.replace("\n", "⏎") for s in e["token"]], rotation=90, fontsize=6.5,
                               family="monospace")
    axs[-1, 0].set_xlabel("token (position in the conversation)")
    handles = [Patch(facecolor=SEGMENT_COLOURS.get(s, "#DDDDDD"), label=s) for s in dict.fromkeys(segs_seen)]
    fig.legend(handles=handles, title="segment", loc="outside right center", frameon=False)
    fig.suptitle(f"Per-token loss of held-out example {ex}: base vs tuned")
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


#: (file stem, function) in report order
FIGURES: list[tuple[str, Callable[[Context], object]]] = [
    ("nll_vs_step", fig_nll_vs_step),
    ("training_curves", fig_training_curves),
    ("target_vs_lr", fig_target_vs_lr),
    ("forgetting_vs_lr", fig_forgetting_vs_lr),
    ("forgetting_vs_epochs", fig_forgetting_vs_epochs),
    ("learning_vs_forgetting", fig_learning_vs_forgetting),
    ("prompt_weight_fit", fig_prompt_weight_fit),
    ("format_probe", fig_format_probe),
    ("mask_audit", fig_mask_audit),
    ("token_loss", fig_token_loss),
]


@dataclass
class FigureResult:
    name: str
    caption: str
    files: list[Path] = field(default_factory=list)
    png: bytes | None = None  # for the self-contained HTML
    skipped: str | None = None  # the reason, when not drawn


def render_all(ctx: Context, out_dir: Path, formats: tuple[str, ...] = ("pdf", "png"),
               only: list[str] | None = None) -> list[FigureResult]:
    """Draw every figure into ``out_dir/figures/`` (each format), skipping those whose inputs are missing."""
    fig_dir = Path(out_dir) / "figures"
    fig_dir.mkdir(parents=True, exist_ok=True)
    results = []
    for name, fn in FIGURES:
        if only and name not in only:
            continue
        caption = " ".join((fn.__doc__ or "").split())
        res = FigureResult(name, caption)
        with paper_style():
            try:
                fig = fn(ctx)
            except Skip as exc:
                res.skipped = str(exc)
                log.info("figure %s skipped: %s", name, exc)
                results.append(res)
                continue
            try:
                for k, fmt in enumerate(formats):
                    path = fig_dir / f"{name}.{fmt}"
                    fig.savefig(path, dpi=PNG_DPI)
                    res.files.append(path)
                    if k == 0 and fig.get_layout_engine() is not None:
                        fig.set_layout_engine("none")  # keep the positions just computed: lay out once, not per file
                if "png" in formats:
                    res.png = (fig_dir / f"{name}.png").read_bytes()
                else:
                    buf = io.BytesIO()
                    fig.savefig(buf, format="png", dpi=110)
                    res.png = buf.getvalue()
            finally:
                plt.close(fig)
        results.append(res)
    return results
