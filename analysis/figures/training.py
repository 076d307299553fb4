"""How the losses move during training: fixed-mask held-out NLL and training-batch NLL vs optimizer step (vs
epoch when the runs of one configuration differ in step counts: see common.shared_x)."""

from __future__ import annotations

import math

import numpy as np

from analysis import stats
from analysis.figures.common import (LR, Context, Skip, _grid, _legend, _lineplot, _lr_label, _only_max_epochs,
                                     on_common_grid, shared_x)
from analysis.style import metric_label


def fig_nll_vs_step(ctx: Context):
    """Fixed-mask response and prompt NLL on held-out conversations vs optimizer step (step 0 = base)."""
    ms = [m for m in ("nll/response", "nll/prompt") if m in ctx.metrics()]
    if not ms:
        raise Skip("no fixed-mask NLL metrics (nll/response, nll/prompt) in the evaluations")
    d, note = _only_max_epochs(ctx, ctx.done[ctx.done["metric"].isin(ms) & ctx.done["value"].notna()])
    x = shared_x(d, ["variant", LR, "metric"])  # checkpoints by epoch when seeds differ in step counts
    lrs = sorted(d[LR].dropna().unique()) or [math.nan]
    fig, axs = _grid(len(ms), len(lrs), sharex=True)
    for i, m in enumerate(ms):
        for j, lr in enumerate(lrs):
            ax = axs[i, j]
            sub = d[(d["metric"] == m) & ((d[LR] == lr) if np.isfinite(lr) else True)]
            _lineplot(ax, sub, x, ctx.palette, ctx.order)
            ax.set_ylabel(metric_label(m) if j == 0 else "")
            ax.set_xlabel(("optimizer step" if x == "step" else "epoch") if i == len(ms) - 1 else "")
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
    x = shared_x(t, ["variant", LR, "metric"])
    if x != "step":  # seeds logged at different steps: each run interpolated onto one epoch grid, then averaged
        t = on_common_grid(t, ["variant", LR])
    lrs = sorted(t[LR].dropna().unique()) or [math.nan]
    fig, axs = _grid(len(ms), len(lrs), sharex=True)
    for i, m in enumerate(ms):
        for j, lr in enumerate(lrs):
            ax = axs[i, j]
            sub = t[(t["metric"] == m) & ((t[LR] == lr) if np.isfinite(lr) else True)]
            _lineplot(ax, sub, x, ctx.palette, ctx.order, marker="")
            ax.set_ylabel(metric_label(m) if j == 0 else "")
            ax.set_xlabel(("optimizer step" if x == "step" else "epoch (interpolated per run)")
                          if i == len(ms) - 1 else "")
            ax.set_title(_lr_label(lr) if i == 0 else "")
    fig.suptitle("Training-batch NLL by segment" + note)
    _legend(fig, [v for v in ctx.order if v in set(t["variant"])], ctx.palette)
    return fig
