"""Curves over training when the seeds of one configuration differ in step counts (issue #18, item 4): the
figures average like with like (per epoch, or interpolated per run), never joining points of different runs."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from analysis.figures.common import Context, on_common_grid, shared_x
from analysis.figures.training import fig_nll_vs_step, fig_training_curves

AX = {"regime.name": "prompt_masked", "train.lr": 1e-4, "train.epochs": 2.0}


def _eval_rows(run, seed, steps_per_epoch, values):
    rows = [{"run_id": run, "state": "done", "step": 0, "epoch": 0.0, "metric": "nll/response", "value": 3.0,
             "train.seed": seed, **AX}]
    for ep, v in zip((1, 2), values):
        rows.append({"run_id": run, "state": "done", "step": ep * steps_per_epoch, "epoch": float(ep),
                     "metric": "nll/response", "value": v, "train.seed": seed, **AX})
    return rows


def _train_rows(run, seed, steps):
    return [{"run_id": run, "state": "done", "step": s, "epoch": 2.0 * s / steps, "metric": "loss_response",
             "value": 3.0 - 2.0 * s / steps, "train.seed": seed, "source": "train", **AX} for s in range(1, steps + 1)]


def _frame(rows):
    return pd.DataFrame.from_records(rows).astype({"step": "Int64"})


def test_unequal_seeds_are_drawn_by_epoch_and_averaged_like_with_like(tmp_path):
    # seed 1: 108 steps per epoch, seed 2: 110 (its data packs into more rows); same epochs, same values
    df = _frame(_eval_rows("a-s1", 1, 108, [2.0, 1.0]) + _eval_rows("a-s2", 2, 110, [2.2, 1.2]))
    tr = _frame(_train_rows("a-s1", 1, 216) + _train_rows("a-s2", 2, 219))
    ctx = Context(df, tr, ["train.seed"], tmp_path, "nll/response")
    assert shared_x(ctx.done, ["variant", "train.lr", "metric"]) == "epoch"
    fig = fig_nll_vs_step(ctx)
    line = fig.axes[0].lines[0]
    assert list(line.get_xdata()) == [0.0, 1.0, 2.0]  # three points, not five zig-zagging ones
    np.testing.assert_allclose(line.get_ydata(), [3.0, 2.1, 1.1])  # each the mean of the two seeds there
    assert fig.axes[0].get_xlabel() == "epoch"
    plt.close(fig)
    fig = fig_training_curves(ctx)
    line = fig.axes[0].lines[0]
    x, y = np.asarray(line.get_xdata()), np.asarray(line.get_ydata())
    assert np.all(np.diff(x) > 0) and np.all(np.diff(y) < 0)  # a monotone curve: no step-order zig-zag
    np.testing.assert_allclose(y, 3.0 - x, atol=1e-9)  # both runs are 3 - epoch: so is their mean
    plt.close(fig)


def test_equal_step_counts_keep_the_optimizer_step_axis(tmp_path):
    df = _frame(_eval_rows("a-s1", 1, 108, [2.0, 1.0]) + _eval_rows("a-s2", 2, 108, [2.2, 1.2]))
    ctx = Context(df, _frame(_train_rows("a-s1", 1, 216) + _train_rows("a-s2", 2, 216)), ["train.seed"], tmp_path,
                  "nll/response")
    assert shared_x(ctx.done, ["variant", "train.lr", "metric"]) == "step"
    fig = fig_nll_vs_step(ctx)
    assert list(fig.axes[0].lines[0].get_xdata()) == [0, 108, 216] and fig.axes[0].get_xlabel() == "optimizer step"
    plt.close(fig)


def test_common_grid_interpolates_each_run_within_the_shared_range():
    t = _frame(_train_rows("a-s1", 1, 4) + _train_rows("a-s2", 2, 5)).assign(variant="prompt_masked")
    g = on_common_grid(t, ["variant", "train.lr"])
    per_run = g.groupby("run_id")["epoch"].apply(list)
    assert per_run["a-s1"] == per_run["a-s2"]  # one grid for both runs
    assert min(per_run["a-s1"]) == 0.5 and max(per_run["a-s1"]) == 2.0  # where both runs have data (0.5 = 1/4*2)
    np.testing.assert_allclose(g["value"], 3.0 - g["epoch"])


def test_weight_heatmap_means_over_seeds_and_outlines_the_best_cell(tmp_path):
    from analysis.figures.probes import fig_weight_heatmap

    qa = {(0.0, 1.0): 0.50, (0.1, 1.0): 0.62, (1.0, 1.0): 0.40, (0.0, 0.5): 0.45, (0.1, 0.5): 0.55, (1.0, 0.5): 0.30}
    rows = []
    for (lp, lr), v in qa.items():
        for seed, dv in ((1, -0.02), (2, +0.02)):
            ax = {"regime.name": "weighted", "regime.prompt_weight": lp, "regime.response_weight": lr,
                  "train.seed": seed}
            rows.append({"run_id": f"{lp}-{lr}-{seed}", "state": "done", "step": 30, "epoch": 3.0,
                         "metric": "world_qa/exact_match", "value": v + dv, **ax})
    ctx = Context(_frame(rows), _frame(rows).iloc[0:0], ["regime.prompt_weight", "regime.response_weight",
                                                           "train.seed"], tmp_path, "world_qa/exact_match")
    fig = fig_weight_heatmap(ctx)
    texts = sorted(t.get_text() for t in fig.axes[0].texts)
    assert texts == sorted(f"{100 * v:.1f}" for v in qa.values())  # each cell: the mean of its seeds, in %
    (box,) = [p for p in fig.axes[0].patches if not p.get_fill()]
    assert box.get_xy() == (1, 0)  # lambda_p = 0.1 (column 1), lambda_r = 1 (top row): the best cell
    plt.close(fig)


def test_forgetting_vs_kl_fits_each_panel(tmp_path):
    from analysis.figures.probes import fig_forgetting_vs_kl

    rows = []
    for i, lr in enumerate((1e-4, 3e-4, 1e-3, 3e-3)):
        for seed in (1, 2):
            ax = {"regime.name": "prompt_masked", "train.lr": lr, "train.seed": seed}
            vals = {"forgetting/kl_sft": 0.5 * (i + 1), "forgetting/pretrain_nll_delta": 0.2 * (i + 1),
                    "nll/response": 1.0 + (i % 2)}
            rows += [{"run_id": f"{lr}-{seed}", "state": "done", "step": 30, "epoch": 3.0, "metric": m, "value": v,
                      **ax} for m, v in vals.items()]
    ctx = Context(_frame(rows), _frame(rows).iloc[0:0], ["train.lr", "train.seed"], tmp_path, None)
    fig = fig_forgetting_vs_kl(ctx)
    kl, loss = fig.axes[0], fig.axes[1]
    assert kl.get_title().startswith("R² = 1.00 (4 configurations)")  # forgetting is linear in the KL here
    assert loss.get_title().startswith("R² = 0.20")  # and only weakly follows the loss
    plt.close(fig)
