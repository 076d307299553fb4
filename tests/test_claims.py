"""analysis/claims.py: claims on synthetic per-item results with known effects give the verdict they should."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from analysis.claims import Evidence, above, all_of, below, best, diff, extreme, judge, slope, within
from analysis.findings import findings_for

M = "task/acc"


def _items(effects: dict, *, items: int = 300, seeds=(1, 2, 3), seed_sd: float = 0.0, item_sd: float = 0.0,
           rng_seed: int = 0, metric: str = M, base: float | None = None, epochs=(1.0,)) -> pd.DataFrame:
    """Bernoulli items: config -> probability of a correct answer; each item has a difficulty shared by every
    config (so pairing by item matters), each seed a shift of `seed_sd`."""
    rng = np.random.default_rng(rng_seed)
    difficulty = rng.normal(0, item_sd, items)
    recs = []

    def draw(p):
        return (rng.random(items) < np.clip(p + difficulty, 0, 1)).astype(float)
    if base is not None:
        recs += [{"run_id": "base", "state": "done", "step": 0, "epoch": 0.0, "metric": metric, "doc_id": str(i),
                  "num": v, "den": 1.0} for i, v in enumerate(draw(base))]
    for (reg, lr), p in effects.items():
        for s in seeds:
            shift = rng.normal(0, seed_sd)
            for k, ep in enumerate(epochs):
                recs += [{"run_id": f"{reg}-{lr}-s{s}", "state": "done", "step": 10 * (k + 1), "epoch": ep,
                          "metric": metric, "doc_id": str(i), "num": v, "den": 1.0, "regime.name": reg,
                          "train.lr": lr, "train.seed": s} for i, v in enumerate(draw(p + shift))]
    return pd.DataFrame.from_records(recs)


def _claim(ev, test, a="A", b="B"):
    ca, cb = ev.cell(M, {"regime.name": a, "train.lr": 1e-3}), ev.cell(M, {"regime.name": b, "train.lr": 1e-3})
    return judge("A - B", diff(ca, cb), [ca, cb], test, "pts")


def test_true_effect_yes_no_effect_no_noisy_effect_inconclusive():
    # "A beats B by more than 10 points": a 30-point effect, none, and 10 points measured on 40 noisy items
    true = _claim(Evidence(_items({("A", 1e-3): 0.7, ("B", 1e-3): 0.4})), above(0.10))
    none = _claim(Evidence(_items({("A", 1e-3): 0.5, ("B", 1e-3): 0.5})), above(0.10))
    noisy = _claim(Evidence(_items({("A", 1e-3): 0.6, ("B", 1e-3): 0.4}, items=40, seeds=(1, 2), seed_sd=0.1,
                                   rng_seed=3)), above(0.10))
    assert (true.verdict, none.verdict, noisy.verdict) == ("yes", "no", "inconclusive")
    assert true.low > 0.10 and none.high < 0.10 and noisy.low < 0.10 < noisy.high
    assert "x the data would decide it" in noisy.decide and not true.decide
    assert true.holds is True and none.holds is False and noisy.holds is None
    # equivalence: no effect is "within 5 points" when measured on enough items, not on a handful
    assert _claim(Evidence(_items({("A", 1e-3): 0.5, ("B", 1e-3): 0.5}, items=3000)), within(0.05)).verdict == "yes"
    assert _claim(Evidence(_items({("A", 1e-3): 0.7, ("B", 1e-3): 0.4})), within(0.05)).verdict == "no"


def test_point_value_is_the_aggregate_and_numbers_are_reproducible():
    df = _items({("A", 1e-3): 0.6, ("B", 1e-3): 0.3})
    ev = Evidence(df)
    a = ev.cell(M, {"regime.name": "A"})
    want = df[df["regime.name"] == "A"].groupby("run_id")["num"].mean().mean()
    assert a.value == pytest.approx(want) and a.num.shape == (3, 300) and a.seeds == [1, 2, 3]
    one, two = _claim(Evidence(df), above(0)), _claim(Evidence(df), above(0))
    assert (one.low, one.high, one.estimate) == (two.low, two.high, two.estimate)
    # token-weighted items: the value is sum(num) / sum(den), not a mean of ratios
    w = df.assign(den=np.where(df["doc_id"].astype(int) % 2 == 0, 3.0, 1.0))
    c = Evidence(w).cell(M, {"regime.name": "A"})
    sel = w[w["regime.name"] == "A"]
    assert c.value == pytest.approx(np.mean([g["num"].sum() / g["den"].sum() for _, g in sel.groupby("run_id")]))


def test_pairing_by_item_narrows_the_ci():
    # items differ a lot in difficulty, shared by both configs: the paired difference cancels it
    df = _items({("A", 1e-3): 0.55, ("B", 1e-3): 0.45}, item_sd=0.4, rng_seed=1)
    ev = Evidence(df)
    a, b = ev.cell(M, {"regime.name": "A"}), ev.cell(M, {"regime.name": "B"})
    paired = judge("d", diff(a, b), [a, b], above(0), "pts")
    # unpaired: B's items drawn independently of A's (relabel B's metric so it gets its own item draws)
    df2 = df.copy()
    df2.loc[df2["regime.name"] == "B", "metric"] = "other/acc"
    ev2 = Evidence(df2)
    a2, b2 = ev2.cell(M, {"regime.name": "A"}), ev2.cell("other/acc", {"regime.name": "B"})
    unpaired = judge("d", diff(a2, b2), [a2, b2], above(0), "pts")
    assert paired.estimate == pytest.approx(unpaired.estimate)
    assert (paired.high - paired.low) < 0.8 * (unpaired.high - unpaired.low)


def test_seeds_dominating_is_said_and_best_is_chosen_per_draw():
    df = _items({("A", 1e-3): 0.5, ("B", 1e-3): 0.45}, items=2000, seeds=(1, 2), seed_sd=0.08, rng_seed=5)
    f = _claim(Evidence(df), above(0))
    if f.verdict == "inconclusive":
        assert "seeds dominate" in f.decide
    ev = Evidence(_items({("A", 1e-4): 0.3, ("A", 1e-3): 0.6, ("A", 1e-2): 0.5}))
    cells = [ev.cell(M, {"regime.name": "A", "train.lr": lr}) for lr in (1e-4, 1e-3, 1e-2)]
    got = judge("best", best(cells), cells, above(0.5), "pct")
    assert got.estimate == pytest.approx(max(c.value for c in cells)) and got.verdict == "yes"
    e = judge("extreme", extreme([diff(cells[0], cells[1]), diff(cells[2], cells[1])]), cells, below(0), "pts")
    assert e.estimate == pytest.approx(cells[0].value - cells[1].value)


def test_slope_and_conjunction():
    lrs = (1e-4, 1e-3, 1e-2)
    ev = Evidence(_items({("A", lr): 0.2 + 0.2 * k for k, lr in enumerate(lrs)}))
    groups = [[ev.cell(M, {"regime.name": "A", "train.lr": lr})] for lr in lrs]
    s = judge("slope", slope(np.log10(lrs), groups), [g[0] for g in groups], above(0), "nats/decade")
    assert s.verdict == "yes" and s.estimate == pytest.approx(
        np.polyfit(np.log10(lrs), [g[0].value for g in groups], 1)[0])
    flat = Evidence(_items({("A", lr): 0.5 for lr in lrs}, items=40, seeds=(1, 2), rng_seed=2))
    g2 = [[flat.cell(M, {"regime.name": "A", "train.lr": lr})] for lr in lrs]
    s2 = judge("slope", slope(np.log10(lrs), g2), [g[0] for g in g2], above(0), "nats/decade")
    assert s2.verdict in ("inconclusive", "no")
    assert all_of("both", [s, s]).verdict == "yes" and all_of("both", [s, s2]).verdict == s2.verdict
    missing = judge("x", diff(None, None), [None], above(0), "pts")
    assert missing.verdict == "n/a" and all_of("both", [s, missing]).verdict == "n/a"


def _story_frame():
    """mini_lima-shaped per-item results: masked clearly above base and full, prompt_only at the base,
    forgetting rising with LR and epochs, the format probe flipping."""
    lrs, recs = (1e-4, 3e-4, 1e-3), []
    qa = _items({("prompt_masked", 1e-4): 0.5, ("prompt_masked", 3e-4): 0.7, ("prompt_masked", 1e-3): 0.3,
                 ("full", 1e-4): 0.3, ("full", 3e-4): 0.45, ("full", 1e-3): 0.2,
                 ("prompt_only", 1e-4): 0.01, ("prompt_only", 3e-4): 0.01, ("prompt_only", 1e-3): 0.01},
                metric="world_qa/exact_match", base=0.01, epochs=(1.0, 2.0))
    recs.append(qa)
    rng = np.random.default_rng(0)
    for metric, fn in (("forgetting/pretrain_nll_delta", lambda lr, ep: 0.1 * np.log10(lr / 1e-5) * ep),
                       ("format/answered", lambda lr, ep: 0.8), ("format/continued_question", lambda lr, ep: 0.05)):
        base_v = {"forgetting/pretrain_nll_delta": 0.0, "format/answered": 0.0, "format/continued_question": 0.9}
        recs.append(pd.DataFrame([{"run_id": "base", "state": "done", "step": 0, "epoch": 0.0, "metric": metric,
                                   "doc_id": str(i), "num": float(rng.random() < base_v[metric]) if "format" in metric
                                   else 0.0, "den": 1.0} for i in range(100)]))
        for reg in ("prompt_masked", "full", "prompt_only"):
            for lr in lrs:
                for s in (1, 2, 3):
                    for k, ep in enumerate((1.0, 2.0)):
                        v = fn(lr, ep)
                        nums = rng.normal(v, 0.05, 100) if "forgetting" in metric else (rng.random(100) < v) * 1.0
                        recs.append(pd.DataFrame({"run_id": f"{reg}-{lr}-s{s}", "state": "done", "step": 10 * (k + 1),
                                                  "epoch": ep, "metric": metric, "doc_id": [str(i) for i in range(100)],
                                                  "num": nums, "den": 1.0, "regime.name": reg, "train.lr": lr,
                                                  "train.seed": s}))
    items = pd.concat(recs, ignore_index=True)
    runs = items[items["run_id"] != "base"].groupby(
        ["run_id", "step", "epoch", "metric", "regime.name", "train.lr", "train.seed"], as_index=False)["num"].mean()
    runs = runs.rename(columns={"num": "value"}).assign(state="done")
    return items, runs


def test_seed_story_verdicts_on_known_effects():
    items, runs = _story_frame()
    found = findings_for("mini_lima", runs, ev=Evidence(items, runs))
    by = {f.claim.split(" (")[0]: f for f in found}
    assert len(found) == 7
    assert all(f.verdict == "yes" for f in found), [(f.claim, f.verdict, f.observed) for f in found]
    assert "95% CI" in by["prompt_masked - base > 0"].observed
    assert "3 seeds x 300 items" in by["prompt_masked - base > 0"].observed


def test_findings_fall_back_to_run_means_without_items(tmp_path):
    """Results written before items were logged: the CI is over seeds only, and says so in the counts."""
    _, runs = _story_frame()
    base = pd.DataFrame([{"run_id": r, "state": "done", "step": 0, "epoch": 0.0, "metric": m, "value": v,
                          "regime.name": g, "train.lr": lr, "train.seed": s}
                         for (r, g, lr, s) in runs[["run_id", "regime.name", "train.lr", "train.seed"]]
                         .drop_duplicates().itertuples(index=False)
                         for m, v in (("world_qa/exact_match", 0.01), ("format/answered", 0.0),
                                      ("format/continued_question", 0.9), ("forgetting/pretrain_nll_delta", 0.0))])
    df = pd.concat([runs, base], ignore_index=True)
    found = findings_for("mini_lima", df, tmp_path)  # no samples under tmp_path
    f = next(f for f in found if f.claim.startswith("prompt_masked - base"))
    assert "3 seeds x 1 items" in f.observed and f.verdict in ("yes", "inconclusive")


def test_the_recovery_probe_metric_is_paired_with_the_task_it_re_asks():
    """recovery/k16/task/acc re-asks task/acc's questions: a difference between the two is paired by item
    (the same draws), as a difference between two configurations of one metric is."""
    df = _items({("A", 1e-3): 0.55, ("B", 1e-3): 0.45}, item_sd=0.4, rng_seed=1)
    rec = df.copy()
    rec.loc[rec["regime.name"] == "B", "metric"] = f"recovery/k16/{M}"
    ev = Evidence(rec)
    assert np.array_equal(ev.item_counts(f"recovery/k16/{M}", "both"), ev.item_counts(M, "both"))
    a, b = ev.cell(M, {"regime.name": "A"}), ev.cell(f"recovery/k16/{M}", {"regime.name": "B"})
    paired = judge("d", diff(a, b), [a, b], above(0), "pts")
    same = Evidence(df)
    ref = judge("d", diff(same.cell(M, {"regime.name": "A"}), same.cell(M, {"regime.name": "B"})),
                [a, b], above(0), "pts")
    assert (paired.low, paired.high) == pytest.approx((ref.low, ref.high))
    # another metric with other items keeps its own draws
    other = rec.copy()
    other.loc[other["metric"] == f"recovery/k16/{M}", "doc_id"] += "x"
    ev2 = Evidence(other)
    assert not np.array_equal(ev2.item_counts(f"recovery/k16/{M}", "both")[:, :5], ev2.item_counts(M, "both")[:, :5])
