"""Claims as statistics: an effect size, a bootstrap CI over seeds *and* items, and a verdict.

A finding used to be a threshold on a mean ("prompt_masked >= 60%"), set from one machine's outcome; with two
seeds and a hundred questions a change of CPU moved the means across such thresholds. Here a claim is a
statistic of one or more *cells* (a configuration's runs at one checkpoint: seeds x items) and a test of it:

* ``above(b)``: the effect is larger than ``b`` (yes: CI low > b; no: CI high < b),
* ``below(b)``: smaller than ``b``,
* ``within(m)``: inside [-m, m] (yes: the CI lies inside; no: the CI lies wholly outside).

Anything else is **inconclusive**, a legitimate answer: the CI spans the decision boundary. The verdict then
says what would decide it: how much more data the CI's half-width asks for if the effect is what it looks like,
and whether seeds or items dominate the uncertainty (the same bootstrap with only one of them resampled).

The bootstrap (percentile, ``N_BOOT`` draws, a fixed RNG seed, so every number is reproducible) resamples, in
each draw, the items of a metric once for all cells (paired: every cell answered the same questions) and the
seed positions once for all cells with the same seeds (paired by seed: seed s of regime A with seed s of
regime B). Statistics that pick a best configuration (the best LR of a regime) pick it again in each draw, so
the CI includes the selection. With few seeds the seed part is coarse (2 seeds: 3 distinct resamples); the
report prints the number of seeds and items beside every CI.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import pandas as pd

from analysis.stats import BOOT_SEED, N_BOOT, SEED_KEY

MAX_SEEDS = 64
_RECOVERY = re.compile(r"^recovery/k\d+/")  # the k-shot recovery probe's metrics (harness/evaluation/recovery.py)
MODES = ("both", "items", "seeds")


@dataclass(frozen=True)
class Test:
    kind: str  # above | below | within
    bound: float

    def verdict(self, lo: float, hi: float) -> str:
        if not (math.isfinite(lo) and math.isfinite(hi)):
            return "n/a"
        b = self.bound
        if self.kind == "above":
            return "yes" if lo > b else "no" if hi < b else "inconclusive"
        if self.kind == "below":
            return "yes" if hi < b else "no" if lo > b else "inconclusive"
        return "yes" if -b <= lo and hi <= b else "no" if lo > b or hi < -b else "inconclusive"

    def gap(self, value: float) -> float:
        """Distance of the point estimate from the decision boundary (what the CI half-width must beat)."""
        return abs(value - self.bound) if self.kind != "within" else abs(self.bound - abs(value))


def above(b: float = 0.0) -> Test:
    return Test("above", b)


def below(b: float = 0.0) -> Test:
    return Test("below", b)


def within(m: float) -> Test:
    return Test("within", m)


class Cell:
    """One configuration's runs at one checkpoint: ``num``/``den`` of shape [seeds, items] on the metric's
    common item order. Its value is the mean over seeds of sum(num)/sum(den) over items."""

    def __init__(self, ev: "Evidence", metric: str, seeds: list, num: np.ndarray, den: np.ndarray, label: str):
        self.ev, self.metric, self.seeds, self.num, self.den, self.label = ev, metric, seeds, num, den, label
        self._draws: dict[str, np.ndarray] = {}

    def draws(self, mode: str) -> np.ndarray:
        """The cell's value per bootstrap draw ([N_BOOT]), or its point value ([1]) for mode 'point'."""
        if mode in self._draws:
            return self._draws[mode]
        if mode == "point":
            out = np.array([np.mean(self.num.sum(1) / self.den.sum(1))])
        else:
            counts = self.ev.item_counts(self.metric, mode)  # [B, I]
            ratio = (self.num @ counts.T) / (self.den @ counts.T)  # [S, B]
            idx = self.ev.seed_index(len(self.seeds), mode)  # [B, S]
            out = np.take_along_axis(ratio.T, idx, axis=1).mean(axis=1)
        self._draws[mode] = out  # on the cell itself: a cache keyed by id() would outlive a collected cell
        return out

    @property
    def value(self) -> float:
        return float(self.draws("point")[0])


class Evidence:
    """The per-item results of one experiment (analysis/items.py) and the bootstrap's shared draws."""

    def __init__(self, items: pd.DataFrame, epochs: pd.DataFrame | None = None, *, n_boot: int = N_BOOT,
                 seed: int = BOOT_SEED):
        self.items = items if items is not None else pd.DataFrame()
        if epochs is not None and not self.items.empty and "epoch" not in self.items:
            ep = epochs[["run_id", "step", "epoch"]].drop_duplicates(["run_id", "step"])
            self.items = self.items.merge(ep, on=["run_id", "step"], how="left")
        self.n_boot, self.seed = n_boot, seed
        rng = np.random.default_rng(seed)
        self._seed_u = rng.random((n_boot, MAX_SEEDS))
        self._docs: dict[str, list[str]] = {}
        self._counts: dict[str, np.ndarray] = {}

    # ---- shared draws

    def docs(self, metric: str) -> list[str]:
        """The items every evaluation of `metric` answered (their intersection), in a fixed order."""
        if metric not in self._docs:
            d = self.items[self.items["metric"] == metric] if not self.items.empty else self.items
            if d.empty:
                self._docs[metric] = []
            else:
                per = d.groupby(["run_id", "step"])["doc_id"].agg(set)
                self._docs[metric] = sorted(set.intersection(*per.tolist()), key=lambda x: (len(x), x))
        return self._docs[metric]

    def item_counts(self, metric: str, mode: str) -> np.ndarray:
        """[B, I] how often each item appears in each draw (all ones when items are not resampled). A metric
        that asks the same items as another (the k-shot recovery probe's ``recovery/k16/world_qa/exact_match``
        re-asks ``world_qa``'s questions) shares its draws: a difference between the two is paired by item."""
        n = len(self.docs(metric))
        if mode == "seeds":
            return np.ones((self.n_boot, n))
        same = _RECOVERY.sub("", metric)
        if same != metric and self.docs(same) == self.docs(metric):
            return self.item_counts(same, mode)
        if metric not in self._counts:
            # a stream per metric, derived from the one seed: adding a metric changes no other metric's draws
            rng = np.random.default_rng([self.seed, sum(map(ord, metric)), len(metric)])
            idx = rng.integers(0, n, size=(self.n_boot, n))
            counts = np.zeros((self.n_boot, n))
            np.add.at(counts, (np.arange(self.n_boot)[:, None], idx), 1.0)
            self._counts[metric] = counts
        return self._counts[metric]

    def seed_index(self, n_seeds: int, mode: str) -> np.ndarray:
        """[B, S] resampled seed positions; the same for every cell with S seeds (paired by seed)."""
        if mode == "items" or n_seeds == 1:
            return np.tile(np.arange(n_seeds), (self.n_boot, 1))
        return np.minimum((self._seed_u[:, :n_seeds] * n_seeds).astype(int), n_seeds - 1)

    # ---- cells

    def cell(self, metric: str, where: dict | None = None, at: str | float = "final",
             step: int | None = None) -> Cell | None:
        """The runs matching `where` (axis -> value, None: unset; every other axis free) at their last evaluated step
        (``at="final"``), at epoch `at`, or at optimizer step `step`; the base with ``where={"run_id": "base"}``.
        None if nothing matches."""
        docs = self.docs(metric)
        if not docs:
            return None
        d = self.items[(self.items["metric"] == metric) & (self.items["state"] == "done")]
        for k, v in (where or {}).items():
            if k not in d.columns:
                return None
            d = d[d[k].isna()] if v is None else d[np.isclose(d[k], v)] if isinstance(v, float) else d[d[k] == v]
        if (where or {}).get("run_id") != "base":
            d = d[d["run_id"] != "base"]
        if d.empty:
            return None
        if step is not None:
            d = d[d["step"] == step]
        elif at == "final":
            d = d[d["step"] == d.groupby("run_id")["step"].transform("max")]
        else:
            d = d[np.isclose(d["epoch"].astype(float), float(at))]
        runs = sorted(d["run_id"].unique(), key=lambda r: (_seed_of(d, r), r))
        if not runs or len(runs) > MAX_SEEDS:
            return None
        m = _matrices(d, runs, docs)
        if m is None:
            return None
        label = ", ".join(f"{k}={v}" for k, v in (where or {}).items())
        return Cell(self, metric, [_seed_of(d, r) for r in runs], *m, label)

    def base(self, metric: str) -> Cell | None:
        return self.cell(metric, {"run_id": "base"})

    def runs_ci(self, metric: str, run_ids: Sequence[str], level: float = 0.95) -> tuple[float, float, int] | None:
        """(low, high, items) of the mean over `run_ids` (seeds of one configuration, final checkpoints),
        resampling seeds and items; None without per-item results for all of them."""
        if not self.docs(metric) or self.items.empty:
            return None
        d = self.items[(self.items["metric"] == metric) & self.items["run_id"].isin(list(run_ids))]
        if d.empty or d["run_id"].nunique() != len(set(run_ids)) or (d["doc_id"] == "run mean").all():
            return None
        c = self.cell(metric, {"run_id": run_ids[0]}) if len(run_ids) == 1 else None
        if c is None:
            d = d[d["step"] == d.groupby("run_id")["step"].transform("max")]
            runs = sorted(d["run_id"].unique())
            m = _matrices(d, runs, self.docs(metric))
            if m is None:
                return None
            c = Cell(self, metric, runs, *m, ",".join(runs))
        x = c.draws("both")
        a = (1 - level) / 2
        lo, hi = np.quantile(x, [a, 1 - a])
        return float(lo), float(hi), int(c.num.shape[1])


def _matrices(d: pd.DataFrame, runs: list, docs: list) -> tuple[np.ndarray, np.ndarray] | None:
    """(num, den) as [runs, items] arrays on the metric's item order; None if a run lacks an item."""
    num, den = (d.pivot_table(index="run_id", columns="doc_id", values=v, aggfunc="first").reindex(
        index=runs, columns=docs) for v in ("num", "den"))
    if num.isna().any().any() or den.isna().any().any():
        return None
    return num.to_numpy(float), den.to_numpy(float)


def _seed_of(d: pd.DataFrame, run: str):
    if SEED_KEY not in d.columns:
        return 0
    v = d.loc[d["run_id"] == run, SEED_KEY].iloc[0]
    return 0 if pd.isna(v) else v


# ------------------------------------------------------------------------------------------------ estimates


@dataclass
class Estimate:
    value: float
    low: float
    high: float
    width_seeds: float  # CI width with only seeds resampled
    width_items: float  # CI width with only items resampled
    seeds: int
    items: int


def estimate(stat: Callable[[Callable[[Cell], np.ndarray]], np.ndarray], cells: Sequence[Cell],
             level: float = 0.95) -> Estimate | None:
    """Evaluate `stat` (a function of a cell -> draws accessor, returning one value per draw) on the data and
    under each resampling mode."""
    cells = [c for c in cells if c is not None]
    if not cells:
        return None
    a = (1 - level) / 2
    point = float(np.asarray(stat(lambda c: c.draws("point")))[0])
    widths = {}
    lo = hi = math.nan
    for mode in MODES:
        x = np.asarray(stat(lambda c, m=mode: c.draws(m)), dtype=float)
        x = x[np.isfinite(x)]
        if len(x) == 0:
            return None
        q_lo, q_hi = np.quantile(x, [a, 1 - a])
        widths[mode] = float(q_hi - q_lo)
        if mode == "both":
            lo, hi = float(q_lo), float(q_hi)
    return Estimate(point, lo, hi, widths["seeds"], widths["items"], max(len(c.seeds) for c in cells),
                    min(c.num.shape[1] for c in cells))


def advice(est: Estimate, test: Test) -> str:
    """What would decide an inconclusive claim: the data factor that shrinks the CI's half-width to the
    estimate's distance from the boundary (CI width ~ 1/sqrt(n)), and which resampling dominates."""
    half, gap = (est.high - est.low) / 2, test.gap(est.value)
    more = "seeds" if est.width_seeds >= est.width_items else "items"
    if gap <= 1e-12:
        return f"the estimate sits on the boundary: no amount of data decides it unless the effect differs ({more} " \
               f"dominate the uncertainty)"
    factor = (half / gap) ** 2
    return (f"~{max(factor, 1.0):.0f}x the data would decide it if the effect is as estimated; {more} dominate the "
            f"uncertainty (CI width {est.width_seeds:.3g} from seeds alone, {est.width_items:.3g} from items alone, "
            f"{est.seeds} seeds, {est.items} items)")


# ---- statistics used by the studies (functions of the draws accessor `v`)


def diff(a: Cell, b: Cell):
    return lambda v: v(a) - v(b)


def _draws(x, v):
    return v(x) if isinstance(x, Cell) else x(v)


def best(cells: Sequence, lower_is_better: bool = False):
    """The best of cells (or of statistics, e.g. differences), chosen again in every draw."""
    cells = [c for c in cells if c is not None]
    return lambda v: (np.min if lower_is_better else np.max)(np.stack([_draws(c, v) for c in cells]), axis=0)


def extreme(stats: Sequence):
    """The statistic with the largest |value|, chosen again in every draw (a 'within' claim over several LRs)."""
    def f(v):
        x = np.stack([_draws(s, v) for s in stats])
        return np.take_along_axis(x, np.abs(x).argmax(0)[None], 0)[0]
    return f


def slope(xs: Sequence[float], groups: Sequence[Sequence[Cell]]):
    """Least-squares slope of the mean of each group of cells against x (e.g. forgetting vs log10 LR)."""
    x = np.asarray(xs, dtype=float)
    x = x - x.mean()

    def f(v):
        ys = np.stack([np.mean([v(c) for c in g], axis=0) for g in groups])  # [X, B]
        ys = ys - ys.mean(axis=0)
        return (x[:, None] * ys).sum(0) / (x ** 2).sum()
    return f


def mean_of(stats: Sequence[Callable]):
    return lambda v: np.mean([s(v) for s in stats], axis=0)


# ------------------------------------------------------------------------------------------------ findings


@dataclass
class Finding:
    claim: str
    observed: str
    verdict: str  # yes | no | inconclusive | n/a (the data the claim needs is missing)
    source: str = ""  # the paper or story the claim comes from
    estimate: float | None = None
    low: float | None = None
    high: float | None = None
    decide: str = ""  # for an inconclusive verdict: what would decide it
    unit: str = ""  # pct | pts | nats | nats/decade (how estimate, low, high and bound read)
    kind: str = ""  # the test: above | below | within
    bound: float | None = None  # its decision boundary (the margin for within)

    @property
    def holds(self) -> bool | None:
        return {"yes": True, "no": False}.get(self.verdict)

    def to_dict(self) -> dict:
        return {"claim": self.claim, "observed": self.observed, "verdict": self.verdict, "holds": self.holds,
                "source": self.source, "estimate": self.estimate, "low": self.low, "high": self.high,
                "decide": self.decide, "unit": self.unit, "test": self.kind, "bound": self.bound}


def fmt(v: float, unit: str) -> str:
    if v is None or not math.isfinite(v):
        return "n/a"
    return {"pct": f"{100 * v:.1f}%", "pts": f"{100 * v:+.1f} pts", "nats": f"{v:+.3f} nats",
            "nats/decade": f"{v:+.3f} nats/decade of LR"}.get(unit, f"{v:.4g}")


def judge(claim: str, stat, cells: Sequence[Cell | None], test: Test, unit: str, source: str = "",
          context: str = "") -> Finding:
    """A Finding from a statistic of cells and its test; n/a when a cell is missing."""
    if any(c is None for c in cells):
        return Finding(claim, "the runs or per-item samples it needs are missing" + (f"; {context}" if context else ""),
                       "n/a", source)
    est = estimate(stat, cells)
    if est is None:
        return Finding(claim, "no finite bootstrap draws (e.g. a slope over fewer than two learning rates)", "n/a",
                       source)
    verdict = test.verdict(est.low, est.high)
    bare = "pts" if unit == "pts" else "nats" if unit.startswith("nats") else unit  # the bounds without the unit
    lo, hi = (fmt(x, bare).replace(" pts", "").replace(" nats", "").replace("%", "") for x in (est.low, est.high))
    observed = (f"{fmt(est.value, unit)} [95% CI {lo}, {hi}] ({est.seeds} seed{'s' * (est.seeds != 1)} x "
                f"{est.items} items)" + (f"; {context}" if context else ""))
    return Finding(claim, observed, verdict, source, est.value, est.low, est.high,
                   advice(est, test) if verdict == "inconclusive" else "", unit, test.kind, test.bound)


def all_of(claim: str, parts: Sequence[Finding], source: str = "") -> Finding:
    """A conjunction: yes if every part is yes, no if any is no, else inconclusive (n/a if any is n/a)."""
    vs = [p.verdict for p in parts]
    verdict = "n/a" if "n/a" in vs else "no" if "no" in vs else "yes" if all(v == "yes" for v in vs) \
        else "inconclusive"
    observed = "; ".join(f"{p.claim}: {p.observed} -> {p.verdict}" for p in parts)
    decide = "; ".join(p.decide for p in parts if p.decide)
    return Finding(claim, observed, verdict, source, decide=decide)
