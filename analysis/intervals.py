"""Intervals that keep their coverage with few seeds: variance components, a t quantile on the seed degrees of
freedom, p-values, the multiplicity corrections and the data a claim would need.

Why not the percentile bootstrap over seeds: with S seeds it has few distinct resamples (S = 2: three), so its
seed part is about the range of the seed means, which covers the true mean ~50% of the time at S = 2; simulated
studies gave 71% coverage of a "95%" interval at a 12-point seed SD (benchmarks/coverage.py).

The estimator. A claim's effect is computed per seed, e_s (its cells paired by seed; the base, which has no
seed, is shared), and the estimate is their mean. Its variance has two components:

* items: the variance of the seed-mean effect over a bootstrap of the evaluation items *by group* (all items of
  one person or subject drawn together; G groups), the seeds held fixed. It includes the seed-by-item
  interaction's share of the seed mean;
* seeds: Var(e_s) / S from the S per-seed effects (S - 1 degrees of freedom), less that interaction, which
  Var(e_s) holds too (estimated from the per-seed bootstrap variances: the crossed-design correction).

SE = sqrt(v_seed + v_items); the interval is estimate +- t SE with t on the *seed* degrees of freedom, S - 1
(the base alone: G - 1). Welch-Satterthwaite's df for the sum was tried first and fails exactly where it matters:
with 2 seeds, when the two seed effects happen to lie close, it reads the seed variance as negligible, takes
t ~ 2 instead of 12.7, and the "95%" interval covered 82% (seed SD 12 points, benchmarks/coverage.py). On S - 1
df the interval is wide when seeds are few, as it must be, and conservative when the items dominate.
One seed gives no seed variance: such an interval covers the items only and its claim stays inconclusive.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats as st

LEVEL = 0.95
POWER = 0.80


@dataclass
class Interval:
    value: float
    low: float
    high: float
    se: float
    df: float
    var_seeds: float  # Var(e_s) / S: the seed component of SE^2 (0 when every cell is the base)
    var_items: float  # the item-group bootstrap's variance of the seed mean
    seeds: int  # seeds the effect was computed on (0: the base alone)
    groups: int  # item groups resampled (the smallest over the claim's item sets)
    items: int
    draws: int  # finite bootstrap draws
    nonfinite: int  # bootstrap draws that were not finite (counted, reported, never silently dropped)

    @property
    def seed_variance_known(self) -> bool:
        return self.seeds != 1

    def t(self, level: float = LEVEL) -> float:
        return float(st.t.ppf(0.5 + level / 2, self.df)) if math.isfinite(self.df) else float(st.norm.ppf(
            0.5 + level / 2))


def interval(per_seed: np.ndarray, boot: np.ndarray, seeds: int, groups: int, items: int,
             level: float = LEVEL) -> Interval | None:
    """From the per-seed effects at the full data (``per_seed`` [S]; S = 1 with ``seeds=0`` for the base alone)
    and the per-seed effects in each item-group bootstrap draw (``boot`` [S, B])."""
    per_seed = np.asarray(per_seed, float)
    boot = np.atleast_2d(np.asarray(boot, float))
    ok = np.isfinite(boot).all(0)
    if not np.isfinite(per_seed).all() or ok.sum() < 2:
        return None
    value = float(per_seed.mean())
    s = len(per_seed)
    v_item = float(boot[:, ok].mean(0).var(ddof=1))
    v_seed = 0.0
    if s > 1:
        # Var(e_s) / S also holds the seed-by-item interaction, which the item bootstrap of the seed mean counts
        # too; the per-seed bootstrap variances measure it (their mean exceeds the seed mean's by (S-1)/S of it)
        within = float(boot[:, ok].var(axis=1, ddof=1).mean())
        v_resid = max(within - v_item, 0.0) / (s - 1)
        v_seed = max(float(per_seed.var(ddof=1)) / s - v_resid, 0.0)
    se = math.sqrt(v_seed + v_item)
    df = float(s - 1) if s > 1 else float(max(groups - 1, 1)) if seeds == 0 else math.inf
    iv = Interval(value, math.nan, math.nan, se, df, v_seed, v_item, seeds, groups, items, int(ok.sum()),
                  int((~ok).sum()))
    half = iv.t(level) * se
    iv.low, iv.high = value - half, value + half
    return iv


# ------------------------------------------------------------------------------------------------ tests


def one_sided(iv: Interval, bound: float) -> tuple[float, float]:
    """(p that the effect is above `bound`, p that it is below): each the one-sided p-value of the t test."""
    if iv.se == 0:
        return (0.0, 1.0) if iv.value > bound else (1.0, 0.0) if iv.value < bound else (1.0, 1.0)
    t = (iv.value - bound) / iv.se
    dist = st.t(iv.df) if math.isfinite(iv.df) else st.norm()
    return float(dist.sf(t)), float(dist.cdf(t))


def p_values(iv: Interval, kind: str, bound: float) -> tuple[float, str]:
    """(two-sided p, the direction it supports: 'yes' or 'no') for a test of the claim against its boundary.
    above/below: the t test of effect = bound. within +-m: TOST for 'yes' (inside), the nearer one-sided test
    for 'no' (outside). p < 0.05 exactly when the 95% interval lies on that side, so raw verdicts and p agree."""
    if kind in ("above", "below"):
        p_above, p_below = one_sided(iv, bound)
        p_yes, p_no = (p_above, p_below) if kind == "above" else (p_below, p_above)
    else:
        up, _ = one_sided(iv, -bound)  # effect > -m
        _, down = one_sided(iv, bound)  # effect < m
        p_yes = max(up, down)
        out_hi, _ = one_sided(iv, bound)  # effect > m
        _, out_lo = one_sided(iv, -bound)  # effect < -m
        p_no = min(out_hi, out_lo)
    return (min(1.0, 2 * p_yes), "yes") if p_yes <= p_no else (min(1.0, 2 * p_no), "no")


def verdict(iv: Interval, kind: str, bound: float) -> str:
    lo, hi, b = iv.low, iv.high, bound
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return "n/a"
    if kind == "above":
        v = "yes" if lo > b else "no" if hi < b else "inconclusive"
    elif kind == "below":
        v = "yes" if hi < b else "no" if lo > b else "inconclusive"
    else:
        v = "yes" if -b <= lo and hi <= b else "no" if lo > b or hi < -b else "inconclusive"
    return v if iv.seed_variance_known else "inconclusive"


def holm(p: list[float]) -> list[float]:
    """Holm's step-down adjusted p-values (family-wise error of the primary family)."""
    n = len(p)
    order = np.argsort(p, kind="stable")
    adj, run = [0.0] * n, 0.0
    for rank, i in enumerate(order):
        run = max(run, min(1.0, (n - rank) * p[i]))
        adj[i] = run
    return adj


def benjamini_hochberg(p: list[float]) -> list[float]:
    """Benjamini-Hochberg adjusted p-values (false discovery rate of the secondary claims)."""
    n = len(p)
    order = np.argsort(p, kind="stable")[::-1]
    adj, run = [0.0] * n, 1.0
    for k, i in enumerate(order):
        run = min(run, p[i] * n / (n - k))
        adj[i] = run
    return adj


# ------------------------------------------------------------------------------------------------ power


def needed(iv: Interval, gap: float, items_per_group: float, level: float = LEVEL,
           power: float = POWER) -> tuple[int | str, int | str]:
    """(seeds, items) for `power` at `level` to decide an effect `gap` away from the boundary, from the estimated
    variance components: seeds with the items as they are, items (whole groups) with the seeds as they are. Where
    that kind of data alone cannot get there, a reason instead (the other component alone is already too large,
    or more than 10,000 seeds / 1000x the items)."""
    if not (gap > 0 and iv.se > 0):
        return "n/a", "n/a"
    z = st.norm.ppf(power)
    q = 0.5 + level / 2
    per_seed = iv.var_seeds * max(iv.seeds, 1)  # Var(e_s)
    if iv.seeds < 2:
        seeds: int | str = "unknown (one seed: no seed variance)"
    elif (st.norm.ppf(q) + z) * math.sqrt(iv.var_items) >= gap:
        seeds = "none would (the item variance alone is too large)"
    else:
        s = np.arange(max(iv.seeds, 2), 10_001, dtype=float)
        v = per_seed / s
        ok = (st.t.ppf(q, s - 1) + z) * np.sqrt(v + iv.var_items) <= gap
        seeds = int(s[ok.argmax()]) if ok.any() else "more than 10,000"
    per_group = iv.var_items * iv.groups  # variance of the seed mean ~ 1 / groups
    if (iv.t(level) + z) * math.sqrt(iv.var_seeds) >= gap:
        items: int | str = "none would (the seed variance alone is too large)"
    else:
        g = np.unique(np.round(np.geomspace(max(iv.groups, 2), 1000 * max(iv.groups, 2), 4000)))
        v = per_group / g
        df = g - 1 if iv.seeds == 0 else np.full_like(g, iv.df)
        ok = (st.t.ppf(q, df) + z) * np.sqrt(iv.var_seeds + v) <= gap
        items = int(math.ceil(g[ok.argmax()] * items_per_group)) if ok.any() else "more than 1000x"
    return seeds, items
