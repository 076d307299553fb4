"""Statistics behind the tables and figures: bootstrap CIs over seeds, per-configuration summaries, best
configuration per regime, paired regime comparisons, Pareto fronts and the prompt-loss-weight quadratic fit.

Conventions
* A *configuration* is a point of the grid without its seed: every axis except ``train.seed``. Its seeds are
  the replicates; CIs are percentile bootstraps of the mean over seeds (``B`` resamples, RNG seed
  :data:`BOOT_SEED`, so every number is reproducible). One seed gives no CI (NaN).
* The comparison unit is the *variant*: the regime name, or ``prompt_weight (w=0.1)`` when the grid varies
  ``regime.prompt_weight`` (each weight is its own variant; colours stay the regime's).
* Only ``done`` runs enter tables and figures; the others are listed by the report.
* "Final" means each run's last evaluated checkpoint.
"""

from __future__ import annotations

import math
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

BOOT_SEED = 0
N_BOOT = 2000
#: exponent of Huerta-Enochian & Ko's prompt-loss-weight transform: w = weight ** log10(2)
PLW_EXPONENT = 0.30103
SEED_KEY = "train.seed"
REGIME_KEY = "regime.name"
WEIGHT_KEY = "regime.prompt_weight"
ADAPTER_KEY, RANK_KEY = "model.adapter.method", "model.adapter.r"
_ADAPTER_LABELS = {"lora": "LoRA", "dora": "DoRA"}

_LOWER_IS_BETTER_PREFIX = ("nll/", "forgetting/", "loss")
_LOWER_IS_BETTER = {"format/continued_question", "format/other", "format/unfinished", "retention_drop"}


def lower_is_better(metric: str) -> bool:
    return metric.startswith(_LOWER_IS_BETTER_PREFIX) or metric in _LOWER_IS_BETTER or metric.endswith("_stderr")


def bootstrap_ci(values: Sequence[float], *, n_boot: int = N_BOOT, level: float = 0.95,
                 seed: int = BOOT_SEED) -> tuple[float, float, float, int]:
    """(mean, low, high, n) with a percentile bootstrap CI of the mean; NaNs are ignored; n < 2 -> no CI."""
    x = np.asarray([v for v in values if v is not None and np.isfinite(v)], dtype=float)
    n = len(x)
    if n == 0:
        return math.nan, math.nan, math.nan, 0
    mean = float(x.mean())
    if n < 2:
        return mean, math.nan, math.nan, n
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, n, size=(n_boot, n))].mean(axis=1)
    a = (1 - level) / 2
    lo, hi = np.quantile(means, [a, 1 - a])
    return mean, float(lo), float(hi), n


# ------------------------------------------------------------------------------------------------ framing


def config_axes(df: pd.DataFrame, axes: Iterable[str]) -> list[str]:
    """Axis columns that identify a configuration (all but the seed), in the plan's order."""
    return [a for a in axes if a != SEED_KEY and a in df.columns]


def add_variant(df: pd.DataFrame) -> pd.DataFrame:
    """Add ``variant``: the regime, split by prompt-loss weight when the grid varies it within a regime, and by
    adapter (``prompt_masked + LoRA r=8``) when the grid has runs with one (no suffix: full fine-tuning)."""
    df = df.copy()
    reg = df[REGIME_KEY].astype("string").fillna("?") if REGIME_KEY in df else pd.Series("?", index=df.index)
    variant = reg.astype(object)
    if WEIGHT_KEY in df:
        for r in reg.dropna().unique():
            sel = reg == r
            if df.loc[sel, WEIGHT_KEY].nunique(dropna=True) > 1:
                variant[sel] = [f"{r} (w={w:g})" for w in df.loc[sel, WEIGHT_KEY]]
    if ADAPTER_KEY in df:
        method = df[ADAPTER_KEY].astype("string")
        sel = (method.notna() & (method != "none")).to_numpy(dtype=bool)
        if sel.any():
            suffix = " + " + method[sel].map(lambda m: _ADAPTER_LABELS.get(m, m)).astype(str)
            if RANK_KEY in df:
                r = pd.to_numeric(df.loc[sel, RANK_KEY], errors="coerce")
                suffix = suffix + r.map(lambda x: f" r={int(x)}" if x == x else "")
            variant[sel] = variant[sel].astype(str) + suffix
    df["variant"] = variant.astype(str)
    return df


def final_rows(df: pd.DataFrame) -> pd.DataFrame:
    """Each run's rows at its last evaluated step (> 0)."""
    ev = df[(df["metric"] != "state") & (df["step"] > 0)]
    if ev.empty:
        return ev
    last = ev.groupby("run_id")["step"].transform("max")
    return ev[ev["step"] == last]


def done_eval(df: pd.DataFrame) -> pd.DataFrame:
    """Evaluation rows (base rows included) of done runs, with ``variant``."""
    sub = df[(df["state"] == "done") & (df["metric"] != "state")]
    return add_variant(sub)


# ------------------------------------------------------------------------------------------------ tables


def summary(df: pd.DataFrame, metrics: Sequence[str], axes: Sequence[str]) -> pd.DataFrame:
    """Per configuration (variant + non-seed axes), at each run's final checkpoint: for every metric the mean,
    CI low/high and number of seeds. Long format: one row per (configuration, metric)."""
    fin = add_variant(final_rows(df[df["state"] == "done"]))
    keys = ["variant"] + [a for a in config_axes(fin, axes) if a != REGIME_KEY]
    rows = []
    for metric in metrics:
        sub = fin[fin["metric"] == metric]
        for key, g in sub.groupby(keys, dropna=False, sort=False):
            key = key if isinstance(key, tuple) else (key,)
            mean, lo, hi, n = bootstrap_ci(g["value"].to_numpy())
            rows.append({**dict(zip(keys, key)), REGIME_KEY: g[REGIME_KEY].iloc[0], "metric": metric,
                         "mean": mean, "ci_low": lo, "ci_high": hi, "n": n, "runs": ",".join(sorted(g["run_id"]))})
    cols = keys + [REGIME_KEY, "metric", "mean", "ci_low", "ci_high", "n", "runs"]
    out = pd.DataFrame(rows, columns=list(dict.fromkeys(cols)))
    return out


def base_summary(df: pd.DataFrame, metrics: Sequence[str]) -> dict[str, float]:
    b = df[(df["step"] == 0) & df["metric"].isin(metrics)].drop_duplicates(["experiment", "metric"])
    return dict(zip(b["metric"], b["value"]))


def best_per_regime(summ: pd.DataFrame, target: str) -> pd.DataFrame:
    """The configuration with the best mean ``target`` for each regime (rows of ``summ`` for that config,
    all metrics), ordered by regime."""
    t = summ[(summ["metric"] == target) & summ["mean"].notna()]
    if t.empty:
        return summ.iloc[0:0]
    asc = lower_is_better(target)
    best = t.sort_values("mean", ascending=asc, kind="stable").groupby(REGIME_KEY, sort=False).head(1)
    keys = [c for c in summ.columns if c not in ("metric", "mean", "ci_low", "ci_high", "n", "runs")]
    merged = summ.merge(best[keys], on=keys, how="inner")
    return merged


def paired(df: pd.DataFrame, metrics: Sequence[str], axes: Sequence[str],
           variants: Sequence[str] | None = None) -> pd.DataFrame:
    """Paired differences A - B between variants at the final checkpoint, pairing runs that share every other
    axis (learning rate, epochs, seed, ...). One row per (metric, A, B) with n_pairs, mean diff and CI."""
    fin = add_variant(final_rows(df[df["state"] == "done"]))
    match = [a for a in axes if a not in (REGIME_KEY, WEIGHT_KEY) and a in fin.columns]
    if SEED_KEY in fin.columns and SEED_KEY not in match:
        match.append(SEED_KEY)
    vs = list(variants) if variants is not None else list(dict.fromkeys(fin["variant"]))
    rows = []
    for metric in metrics:
        sub = fin[fin["metric"] == metric]
        if sub.empty:
            continue
        wide = sub.pivot_table(index=match, columns="variant", values="value", aggfunc="mean", dropna=False) \
            if match else sub.groupby("variant")["value"].mean().to_frame().T
        for i, a in enumerate(vs):
            for b in vs[i + 1:]:
                if a not in wide or b not in wide:
                    continue
                d = (wide[a] - wide[b]).dropna()
                mean, lo, hi, n = bootstrap_ci(d.to_numpy())
                if n == 0:
                    continue
                rows.append({"metric": metric, "A": a, "B": b, "n_pairs": n, "mean_diff": mean, "ci_low": lo,
                             "ci_high": hi, "matched_on": ", ".join(match)})
    return pd.DataFrame(rows, columns=["metric", "A", "B", "n_pairs", "mean_diff", "ci_low", "ci_high",
                                       "matched_on"])


# ------------------------------------------------------------------------------------------------ fits


def pareto_front(x: Sequence[float], y: Sequence[float]) -> np.ndarray:
    """Indices of the points not dominated when minimising x (forgetting) and maximising y (learning), ordered
    by x."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    ok = np.flatnonzero(np.isfinite(x) & np.isfinite(y))
    order = ok[np.lexsort((-y[ok], x[ok]))]
    front, best = [], -np.inf
    for i in order:
        if y[i] > best:
            front.append(i)
            best = y[i]
    return np.asarray(front, dtype=int)


def plw_transform(weight: np.ndarray | float) -> np.ndarray:
    return np.power(np.asarray(weight, float), PLW_EXPONENT)


def quadratic_fit(weight: Sequence[float], value: Sequence[float], *, maximise: bool = True) -> dict | None:
    """Fit value = a (w - b)^2 + c with w = weight ** 0.30103 (Huerta-Enochian & Ko). Returns a, b, c, r2, the
    fitted optimum inside the observed weight range (``weight_opt``, ``value_opt``, ``interior``: whether it is
    the vertex rather than an end of the range), or None with fewer than 3 distinct weights."""
    wt, v = np.asarray(weight, float), np.asarray(value, float)
    ok = np.isfinite(wt) & np.isfinite(v) & (wt >= 0)
    wt, v = wt[ok], v[ok]
    if len(np.unique(wt)) < 3:
        return None
    w = plw_transform(wt)
    p2, p1, p0 = np.polyfit(w, v, 2)
    if p2 == 0:
        return None
    a, b = p2, -p1 / (2 * p2)
    c = p0 - a * b * b
    pred = a * (w - b) ** 2 + c
    ss_res, ss_tot = float(((v - pred) ** 2).sum()), float(((v - v.mean()) ** 2).sum())
    lo, hi = float(w.min()), float(w.max())
    vertex_ok = (a < 0) == maximise and lo <= b <= hi
    if vertex_ok:
        w_opt = b
    else:
        ends = np.array([lo, hi])
        fv = a * (ends - b) ** 2 + c
        w_opt = float(ends[np.argmax(fv) if maximise else np.argmin(fv)])
    return {"a": float(a), "b": float(b), "c": float(c), "r2": 1 - ss_res / ss_tot if ss_tot > 0 else math.nan,
            "w_opt": float(w_opt), "weight_opt": float(w_opt ** (1 / PLW_EXPONENT)) if w_opt > 0 else 0.0,
            "value_opt": float(a * (w_opt - b) ** 2 + c), "interior": bool(vertex_ok), "n": int(len(v))}
