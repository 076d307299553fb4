"""analysis/claims.py + analysis/intervals.py: declared claims on synthetic per-item results with known effects give
the verdict they should, with intervals that keep their coverage (the fast version of benchmarks/coverage.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from analysis import intervals as IV
from analysis.evidence import Evidence
from analysis.findings import judge_all
from harness.claims import parse_claims, registration

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import coverage as COV  # noqa: E402

M = "task/acc"


def items(configs: dict, *, groups: int = 60, per_group: int = 5, seeds=(1, 2, 3), seed_sd: float = 0.0,
          rng_seed: int = 0, metric: str = M, base: float | None = None, steps=(10,), kind: str = "acc"):
    """configs: tuple of (axis, value) pairs -> value (or {step: value}). Items come in groups sharing a
    difficulty; each run gets a seed shift of `seed_sd`. kind acc: Bernoulli; nll: per-item normal values."""
    rng = np.random.default_rng(rng_seed)
    diff = np.repeat(rng.normal(0, 0.1, groups), per_group) + rng.normal(0, 0.05, groups * per_group)
    names = [f"p{i // per_group}" for i in range(groups * per_group)]
    docs = [str(i) for i in range(groups * per_group)]

    def draw(v):
        if kind == "acc":
            return (rng.random(len(diff)) < np.clip(v + diff, 0, 1)).astype(float)
        return v + diff + rng.normal(0, 0.05, len(diff))
    recs = []
    if base is not None:
        recs.append(pd.DataFrame({"run_id": "base", "state": "done", "step": 0, "epoch": 0.0, "metric": metric,
                                  "doc_id": docs, "num": draw(base), "den": 1.0, "group": names}))
    for axes, v in configs.items():
        for s in seeds:
            shift = rng.normal(0, seed_sd)
            for k, step in enumerate(steps):
                val = v[step] if isinstance(v, dict) else v
                recs.append(pd.DataFrame({"run_id": "-".join(f"{b}" for _, b in axes) + f"-s{s}", "state": "done",
                                          "step": step, "epoch": float(k + 1), "metric": metric, "doc_id": docs,
                                          "num": draw(val + shift), "den": 1.0, "group": names, **dict(axes),
                                          "train.seed": s}))
    return pd.concat(recs, ignore_index=True)


def found(df, *claims, registry=None):
    return {f.id: f for f in judge_all(parse_claims(list(claims)), Evidence(df, n_boot=400), registry)}


def cmp(a, b, test, unit="pts", **kw):
    return {"id": kw.pop("id", "c"), "metric": kw.pop("metric", M), "compare": {"a": a, "b": b}, "test": test,
            "unit": unit, **kw}


R = "regime.name"


def test_a_true_effect_is_yes_none_is_no_and_noise_is_inconclusive():
    big = items({((R, "A"),): 0.7, ((R, "B"),): 0.4}, groups=200)
    same = items({((R, "A"),): 0.5, ((R, "B"),): 0.5}, groups=300, seeds=(1, 2, 3, 4, 5))
    noisy = items({((R, "A"),): 0.6, ((R, "B"),): 0.5}, seeds=(1, 2), seed_sd=0.05, rng_seed=3)  # on the boundary
    claim = cmp({R: "A"}, {R: "B"}, {"above": 10})
    f_big, f_same, f_noisy = (found(d, claim)["c"] for d in (big, same, noisy))
    assert (f_big.verdict, f_same.verdict, f_noisy.verdict) == ("yes", "no", "inconclusive")
    assert f_big.low > 0.10 and f_same.high < 0.10
    assert "80% power" in f_noisy.decide and not f_big.decide
    # 5 pts is 0.05 of a rate: within +-5 pts holds for no effect on many items, not for a 30-point one
    assert found(same, cmp({R: "A"}, {R: "B"}, {"within": 5}))["c"].verdict == "yes"
    assert found(big, cmp({R: "A"}, {R: "B"}, {"within": 5}))["c"].verdict == "no"


def test_the_estimate_is_the_aggregate_and_reproducible():
    df = items({((R, "A"),): 0.6, ((R, "B"),): 0.3})
    f = found(df, cmp({R: "A"}, {R: "B"}, {"above": 0}))["c"]
    per = df.groupby(["regime.name", "train.seed"])["num"].mean().unstack(0)
    assert f.estimate == pytest.approx(float((per["A"] - per["B"]).mean()), abs=1e-12)
    assert f.to_dict() == found(df, cmp({R: "A"}, {R: "B"}, {"above": 0}))["c"].to_dict()


def test_two_seeds_with_a_large_seed_sd_give_a_t_interval_on_one_df():
    df = items({((R, "A"),): 0.5, ((R, "B"),): 0.5}, seeds=(1, 2), seed_sd=0.12, rng_seed=5)
    f = found(df, cmp({R: "A"}, {R: "B"}, {"above": 0}))["c"]
    assert f.verdict == "inconclusive" and "t on 1.0 df" in f.observed or "t on 1.1 df" in f.observed
    assert (f.high - f.low) > 0.2  # ~12.7 SE: no false "yes" from two seeds


def test_one_seed_never_decides_a_trained_claim_but_the_base_alone_can_be():
    df = items({((R, "A"),): 0.9}, seeds=(1,), base=0.1)
    out = found(df, cmp({R: "A"}, "base", {"above": 0}, id="trained"),
                {"id": "base_low", "metric": M, "value": "base", "test": {"below": 30}, "unit": "pct"})
    assert out["trained"].verdict == "inconclusive" and "one seed" in out["trained"].decide
    assert out["base_low"].verdict == "yes" and out["base_low"].seeds == 0


def test_items_are_resampled_by_group():
    """Items of a group share most of their value: resampling them one by one would understate the variance."""
    df = items({((R, "A"),): 0.5, ((R, "B"),): 0.5}, groups=40, per_group=10)
    ev = Evidence(df, n_boot=400)
    codes, n = ev.groups(M)
    assert n == 40 and len(codes) == 400
    c = ev.counts(M)
    assert c.shape == (400, 40) and np.all(c.sum(1) == 40)  # draws of whole groups, G per draw
    assert set(np.unique(ev.folds(M))) == {0, 1} and len(ev.folds(M)) == 40  # folds split groups
    cell = ev.cell(M, ev.runs(M)[ev.runs(M)["regime.name"] == "A"], {})
    w = np.zeros((1, 40))
    w[0, 3] = 2.0  # group 3 drawn twice: its 10 items, and only they, count
    x = cell.values(w)[:, 0]
    per_item = cell.num[:, codes == 3].sum(1) / cell.den[:, codes == 3].sum(1)
    assert np.allclose(x, per_item)


def test_best_lr_is_chosen_on_one_fold_and_judged_on_the_other():
    """No true difference at any LR: choosing the best of 4 LRs on the same items would inflate the max of
    noise; cross-fitting keeps the estimate centred on zero."""
    lrs = (1e-4, 3e-4, 1e-3, 3e-3)
    ests = []
    for rs in range(12):
        df = items({((R, "A"), ("train.lr", lr)): 0.5 for lr in lrs} | {((R, "B"), ("train.lr", 1e-4)): 0.5},
                   groups=30, seeds=(1, 2, 3), rng_seed=rs)
        ests.append(found(df, cmp({R: "A"}, {R: "B"}, {"above": 0}, pick="best"))["c"].estimate)
    assert abs(np.mean(ests)) < 0.02  # the in-sample max of 4 noisy LRs is biased up by ~3 points here


def test_trend_optimum_range_and_contrast():
    lrs = {1e-4: 0.1, 1e-3: 0.3, 1e-2: 0.5}
    df = items({((R, "A"), ("train.lr", lr)): v for lr, v in lrs.items()}, kind="nll",
               metric="forgetting/pretrain_nll_delta")
    out = found(df, {"id": "t", "metric": "forgetting/pretrain_nll_delta", "trend": {"axis": "train.lr", "log": True},
                     "test": {"above": 0}, "unit": "nats/decade"})
    assert out["t"].verdict == "yes" and out["t"].estimate == pytest.approx(0.2, abs=0.02)
    w = {0.0: 0.3, 0.1: 0.6, 0.5: 0.5, 1.0: 0.25}
    df = items({((R, "pw"), ("regime.prompt_weight", k)): v for k, v in w.items()})
    flat = items({((R, "pw"), ("regime.prompt_weight", k)): 0.5 for k in w}, groups=400, seeds=(1, 2, 3, 4, 5))
    opt = {"id": "o", "metric": M, "optimum": {"axis": "regime.prompt_weight"}, "test": {"above": 0}, "unit": "pts"}
    rng_ = {"id": "r", "metric": M, "range": {"axis": "regime.prompt_weight"}, "test": {"within": 5}, "unit": "pts"}
    assert found(df, opt)["o"].verdict == "yes" and found(df, opt)["o"].estimate == pytest.approx(0.3, abs=0.05)
    assert found(df, rng_)["r"].verdict == "no" and found(flat, rng_)["r"].verdict == "yes"
    # k-shot - (A + B) / 2 > 0: the share of what was lost that comes back is > 1/2
    st = {(("stage", "a"),): 0.8, (("stage", "b"),): 0.2, (("stage", "k"),): 0.7}
    con = {"id": "k", "metric": M, "contrast": [{"side": {"stage": "k"}, "weight": 1},
                                                {"side": {"stage": "a"}, "weight": -0.5},
                                                {"side": {"stage": "b"}, "weight": -0.5}],
           "test": {"above": 0}, "unit": "pts"}
    assert found(items(st), con)["k"].verdict == "yes"


def test_checkpoints_epochs_and_the_lowest_early_checkpoint():
    df = items({((R, "A"),): {10: 0.3, 20: 0.1, 30: 0.2, 40: 0.6}}, steps=(10, 20, 30, 40))
    out = found(df, cmp({R: "A", "checkpoint": "epoch 4"}, {R: "A", "checkpoint": "epoch 1"}, {"above": 0},
                        id="e"),
                cmp({R: "A"}, {R: "A", "checkpoint": "lowest in first half"}, {"above": 30}, id="low"))
    assert out["e"].estimate == pytest.approx(0.3, abs=0.05) and out["e"].verdict == "yes"
    assert out["low"].estimate == pytest.approx(0.5, abs=0.05) and out["low"].verdict == "yes"


def test_per_each_and_all_expand():
    df = items({((R, "A"), ("data.train.path", d), ("train.lr", lr)): v for d, v in (("x", 0.6), ("y", 0.5))
                for lr in (1e-3, 1e-2)} | {((R, "B"), ("data.train.path", d), ("train.lr", lr)): 0.5 for d in "xy"
                                           for lr in (1e-3, 1e-2)}, groups=300, seeds=(1, 2, 3, 4, 5))
    per = found(df, cmp({R: "A"}, {R: "B"}, {"above": 0}, per="data.train.path"))
    assert set(per) == {"c[data=x]", "c[data=y]"} and per["c[data=x]"].verdict == "yes"
    allf = found(df, cmp({R: "A"}, {R: "B"}, {"within": 5}, where={"data.train.path": "y"}, pick="all"))["c"]
    assert len(allf.parts) == 2 and allf.verdict == "yes"
    each = found(df, cmp({R: "A"}, {R: "B"}, {"above": 0}, where={"data.train.path": "x"}, pick="each"))
    assert len(each) == 2 and all(f.verdict == "yes" for f in each.values())


def test_fit_r2_across_configurations():
    cfgs = {((R, r), ("train.lr", lr)): x for r, lr, x in
            (("A", 1e-3, 0.1), ("A", 1e-2, 0.4), ("B", 1e-3, 0.2), ("B", 1e-2, 0.6))}
    kl = items(cfgs, kind="nll", metric="forgetting/kl_sft")
    forget = items({k: 2 * v for k, v in cfgs.items()}, kind="nll", metric="forgetting/pretrain_nll_delta",
                   rng_seed=1)
    noise = items({k: 0.5 for k in cfgs}, kind="nll", metric="nll/response", rng_seed=2)
    df = pd.concat([kl, forget, noise], ignore_index=True)
    fit = {"id": "f", "metric": "forgetting/pretrain_nll_delta",
           "fit": {"x": "forgetting/kl_sft", "across": [R, "train.lr"]}, "test": {"above": 0.5}, "unit": "r2"}
    f = found(df, fit)["f"]
    assert f.verdict == "yes" and f.estimate > 0.9
    g = found(df, {**fit, "fit": {**fit["fit"], "minus": "nll/response"}, "test": {"above": 0}})["f"]
    assert g.estimate < f.estimate  # minus the R^2 of forgetting on an unrelated metric


def test_missing_runs_are_na_with_the_reason():
    df = items({((R, "A"),): 0.5})
    f = found(df, cmp({R: "A"}, {R: "Z"}, {"above": 0}))["c"]
    assert f.verdict == "n/a" and "no done runs" in f.observed


def test_multiplicity_holm_for_primary_bh_for_the_rest_and_post_hoc_apart():
    df = items({((R, "A"),): 0.56, ((R, "B"),): 0.5}, groups=200, rng_seed=1)
    claims = [cmp({R: "A"}, {R: "B"}, {"above": 0}, id=f"p{i}", family="primary") for i in range(6)]
    reg = registration(parse_claims(claims), None, False, "t0")
    out = found(df, *claims, registry=reg)
    f = out["p0"]
    assert f.status == "preregistered" and f.correction == "holm"
    assert f.p_adjusted == pytest.approx(min(1.0, 6 * f.p))  # six equal p-values: Holm multiplies by six
    edited = dict(claims[0], text="edited after the results")
    after = registration(parse_claims([edited]), reg, True, "t1")
    g = found(df, edited, registry=after)["p0"]
    assert g.status == "post hoc" and g.correction == "bh"
    assert IV.holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert IV.benjamini_hochberg([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.04, 0.04])


def test_power_gives_seeds_and_items_separately():
    iv = IV.interval(np.array([0.02, 0.05, 0.08]), np.random.default_rng(0).normal(0.05, 0.01, (3, 1000)), 3, 100,
                     500)
    seeds, items_ = IV.needed(iv, 0.05, 5.0)
    assert isinstance(seeds, int) and seeds >= 3
    assert items_ == "none would (the seed variance alone is too large)" or isinstance(items_, int)
    shared = np.tile(np.random.default_rng(0).normal(0.05, 0.03, 1000), (3, 1))  # the items' noise, every seed
    small = IV.interval(np.array([0.05, 0.051, 0.049]), shared, 3, 50, 250)
    s2, i2 = IV.needed(small, 0.05, 5.0)
    assert isinstance(i2, int) and i2 > 250 and s2 == "none would (the item variance alone is too large)"


def test_nonfinite_draws_are_counted():
    iv = IV.interval(np.array([0.1, 0.2]), np.array([[0.1, np.nan, 0.2, 0.3, 0.15], [0.1, 0.2, 0.2, np.inf, 0.1]]),
                     2, 10, 50)
    assert iv.nonfinite == 2 and iv.draws == 3


def test_coverage_fast():
    """The fast version of benchmarks/coverage.py: the cell where the percentile bootstrap failed worst (2 seeds,
    seed SD 12 points, no effect) and a decided one; the same judging code as harness report."""
    rng = np.random.default_rng(7)
    worst = COV.cell(0.12, 2, 0.0, 40, rng, n_boot=300)
    assert worst["coverage"] >= 0.93 and worst["false_decisions"] <= 0.05
    five = COV.cell(0.02, 5, 0.10, 25, rng, n_boot=300)
    assert five["coverage"] >= 0.88 and five["yes"] >= 0.8  # a 10-point effect, 5 seeds: found, covered
