"""The evidence a claim is judged on: per-item results (analysis/items.py) as *cells* (one configuration's runs at
one checkpoint: seeds x items) and the item-group bootstrap they share.

Each metric is a ratio of sums over items, ``sum(num) / sum(den)`` per run; a cell's value for seed s is that
ratio over its items. Resampling is by *group* (the items of one person or subject together; an item without a
group is its own): a draw picks G groups with replacement and weights every item by how often its group was
picked. Metrics asked of the same items (``recovery/k16/world_qa/...`` re-asks ``world_qa``; format/answered and
format/continued_question are the same probe's questions) share their draws, so a difference between them is
paired by item. Groups also split the items into two folds (by a hash of the group: stable, no RNG) for
selections that must not be judged on the items they were chosen on (analysis/claims.py)."""

from __future__ import annotations

import hashlib
import re

import numpy as np
import pandas as pd

from analysis.items import DELTAS
from analysis.stats import BOOT_SEED, N_BOOT, SEED_KEY

_RECOVERY = re.compile(r"^recovery/k\d+/")  # the k-shot recovery probe's metrics (harness/evaluation/recovery.py)
_PROBES = {"nll/": "probe/nll", "forgetting/kl_sft": "probe/kl_sft", "forgetting/": "probe/pretrain",
           "format/": "probe/format"}


def item_source(metric: str) -> str:
    """The items a metric is measured on (metrics with the same source share bootstrap draws and folds)."""
    metric = _RECOVERY.sub("", DELTAS.get(metric, metric))
    for prefix, src in _PROBES.items():
        if metric.startswith(prefix):
            return src
    return metric.split("/", 1)[0]


def fold_of(group: str) -> int:
    return hashlib.sha256(str(group).encode()).digest()[0] & 1


class Cell:
    """One configuration's runs at one checkpoint: ``num``/``den`` [seeds, items] on the metric's item order.
    ``seeds`` is None for the base (no seed: it is shared by every seed of a claim)."""

    def __init__(self, ev: "Evidence", metric: str, seeds: list | None, num: np.ndarray, den: np.ndarray,
                 config: dict):
        self.ev, self.metric, self.seeds, self.num, self.den, self.config = ev, metric, seeds, num, den, config
        self._sums: tuple[np.ndarray, np.ndarray] | None = None

    @property
    def is_base(self) -> bool:
        return self.seeds is None

    def values(self, weights: np.ndarray) -> np.ndarray:
        """[S, B] the per-seed value under group weights [B, G] (every item of a group weighs the same: the
        bootstrap draws groups, the folds split groups), from the per-group sums; a zero denominator gives NaN."""
        if self._sums is None:
            codes, n = self.ev.groups(self.metric)
            self._sums = tuple(np.stack([np.bincount(codes, weights=row, minlength=n) for row in m])
                               for m in (self.num, self.den))
        num, den = self._sums
        with np.errstate(invalid="ignore", divide="ignore"):
            return (num @ weights.T) / (den @ weights.T)

    @property
    def mean(self) -> float:
        return float(np.mean(self.num.sum(1) / self.den.sum(1)))


class Evidence:
    """The per-item results of one experiment and the bootstrap draws its claims share."""

    def __init__(self, items: pd.DataFrame, epochs: pd.DataFrame | None = None, *, n_boot: int = N_BOOT,
                 seed: int = BOOT_SEED):
        self.items = items if items is not None else pd.DataFrame()
        if epochs is not None and not self.items.empty and "epoch" not in self.items and "epoch" in epochs:
            ep = epochs[["run_id", "step", "epoch"]].drop_duplicates(["run_id", "step"])
            self.items = self.items.merge(ep, on=["run_id", "step"], how="left")
        if not self.items.empty and "group" not in self.items:
            self.items = self.items.assign(group=None)
        if not self.items.empty:
            src = {m: item_source(m) for m in self.items["metric"].unique()}
            self.items = self.items.assign(source=self.items["metric"].map(src))
        self._runs: dict[str, pd.DataFrame] = {}
        self.n_boot, self.seed = n_boot, seed
        self._docs: dict[str, list[str]] = {}
        self._groups: dict[str, tuple[np.ndarray, int]] = {}
        self._folds: dict[str, np.ndarray] = {}
        self._counts: dict[str, np.ndarray] = {}

    # ---- items, groups, draws

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

    def groups(self, metric: str) -> tuple[np.ndarray, int]:
        """(group index of each item in docs order, number of groups). A metric whose rows carry no group takes
        those of another metric on the same items (the recovery probe's rows, the forgetting delta's)."""
        if metric not in self._groups:
            docs = self.docs(metric)
            src = item_source(metric)
            d = self.items[self.items["source"] == src] if docs else self.items.iloc[0:0]
            g = d.dropna(subset=["group"]).drop_duplicates("doc_id").set_index("doc_id")["group"] if len(d) else \
                pd.Series(dtype=object)
            names = [str(g[x]) if x in g.index else f"item:{x}" for x in docs]
            codes, uniq = pd.factorize(pd.Series(names, dtype=object))
            self._groups[metric] = (np.asarray(codes), len(uniq))
            self._folds[metric] = np.asarray([fold_of(n) for n in uniq], dtype=int)
        return self._groups[metric]

    def counts(self, metric: str) -> np.ndarray:
        """[B, G] how often each item group is drawn in each bootstrap draw; shared by the metrics of one item
        source (same items, same groups), so their differences are paired by item."""
        docs = self.docs(metric)
        key = (item_source(metric), tuple(docs))
        if key not in self._counts:
            _, n_groups = self.groups(metric)
            # one stream per item source, derived from the one seed: adding a metric changes no other draws
            rng = np.random.default_rng([self.seed, *hashlib.sha256(key[0].encode()).digest()[:4]])
            picks = rng.integers(0, n_groups, size=(self.n_boot, n_groups))
            per_group = np.zeros((self.n_boot, n_groups))
            np.add.at(per_group, (np.arange(self.n_boot)[:, None], picks), 1.0)
            self._counts[key] = per_group
        return self._counts[key]

    def folds(self, metric: str) -> np.ndarray:
        """[G] 0/1: each group's fold, for selections judged on the other fold."""
        self.groups(metric)
        return self._folds[metric]

    # ---- configurations and cells

    def runs(self, metric: str) -> pd.DataFrame:
        """Done runs' rows of `metric` (the base's included)."""
        if self.items.empty:
            return self.items
        if metric not in self._runs:
            self._runs[metric] = self.items[(self.items["metric"] == metric) & (self.items["state"] == "done")]
        return self._runs[metric]

    def cell(self, metric: str, rows: pd.DataFrame, config: dict) -> Cell | None:
        """The cell of the runs in `rows` (one configuration, one step per run), or None if a run lacks an item."""
        docs = self.docs(metric)
        if rows.empty or not docs:
            return None
        base = (rows["run_id"] == "base").all()
        seed_of = rows.drop_duplicates("run_id").set_index("run_id")[SEED_KEY] if SEED_KEY in rows else None
        seed = (lambda r: 0 if seed_of is None or pd.isna(seed_of[r]) else seed_of[r])
        runs = sorted(rows["run_id"].unique(), key=lambda r: (seed(r), r))
        pos = {x: i for i, x in enumerate(docs)}
        num, den = np.full((len(runs), len(docs)), np.nan), np.full((len(runs), len(docs)), np.nan)
        row_of = {r: i for i, r in enumerate(runs)}
        ri = rows["run_id"].map(row_of).to_numpy()
        ci = rows["doc_id"].map(pos)
        keep = ci.notna().to_numpy()
        ci = ci.to_numpy()[keep].astype(int)
        num[ri[keep], ci] = rows["num"].to_numpy(float)[keep]
        den[ri[keep], ci] = rows["den"].to_numpy(float)[keep]
        if np.isnan(num).any() or np.isnan(den).any():
            return None
        seeds = None if base else [seed(r) for r in runs]
        if seeds is not None and len(set(seeds)) != len(seeds):
            return None  # two runs of one configuration with one seed: not one cell
        return Cell(self, metric, seeds, num, den, config)
