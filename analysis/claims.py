"""A declared claim (harness/claims.py) judged on per-item results: its statistic over cells, the calibrated
interval (analysis/intervals.py) and the verdict.

How a claim becomes a number. Its *sides* are sets of configurations (runs that differ only by seed), each a
cell per metric (analysis/evidence.py). The effect is computed **per seed** (cells paired by seed; the base has
no seed and is shared), under item weights: all ones for the estimate, the item-group bootstrap's draws for the
item variance. A side with several configurations is reduced by the claim's ``pick``; ``best`` / ``worst`` (and
``optimum``, ``range``, a checkpoint chosen as lowest in the first half) *select*, and a selection is never judged
on the items it was made on: the items are split in two folds by group, the choice is made on one fold and
judged on the other, both ways, and the two judged effects averaged (cross-fitting). The choice is made again
in every bootstrap draw, so the interval includes the selection's own variability.

Verdicts: yes (the 95% interval lies on the claim's side of its boundary), no (on the other side), inconclusive
(it spans the boundary, or one seed leaves the seed variance unknown), n/a (the runs or items it needs are
missing; the reason is given).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field, replace
from typing import Callable

import numpy as np

from analysis import intervals as IV
from analysis.evidence import Cell, Evidence, item_source
from analysis.sides import Side, Stat, View, _match, choose
from analysis.stats import lower_is_better
from harness.claims import BASE, Claim

@dataclass
class Finding:
    id: str
    claim: str
    observed: str
    verdict: str  # yes | no | inconclusive | n/a
    family: str = "secondary"
    status: str = "post hoc"  # preregistered | post hoc (harness/claims.py)
    source: str = ""
    estimate: float | None = None
    low: float | None = None
    high: float | None = None
    unit: str = ""
    kind: str = ""  # above | below | within
    bound: float | None = None  # as written, in `unit`
    p: float | None = None
    p_adjusted: float | None = None
    correction: str = ""  # holm | bh
    adjusted: str = ""  # the verdict after the multiplicity correction
    decide: str = ""  # inconclusive: the seeds / items that would decide it
    seeds: int = 0
    items: int = 0
    groups: int = 0
    nonfinite: int = 0
    parts: list = field(default_factory=list)  # pick: all: the finding at every level

    @property
    def holds(self) -> bool | None:
        return {"yes": True, "no": False}.get(self.verdict)

    def to_dict(self) -> dict:
        d = {k: getattr(self, k) for k in ("id", "claim", "observed", "verdict", "family", "status", "source",
                                            "estimate", "low", "high", "unit", "kind", "bound", "p", "p_adjusted",
                                            "correction", "adjusted", "decide", "seeds", "items", "groups",
                                            "nonfinite")}
        d["holds"] = self.holds
        d["parts"] = [p.to_dict() for p in self.parts]
        return d


def fmt(v: float | None, unit: str) -> str:
    if v is None or not math.isfinite(v):
        return "n/a"
    return {"pct": f"{100 * v:.1f}%", "pts": f"{100 * v:+.1f} pts", "nats": f"{v:+.3f} nats",
            "nats/decade": f"{v:+.3f} nats/decade", "r2": f"{v:.3f}", "ratio": f"{v:.3f}"}.get(unit, f"{v:.4g}")


class Compiler:
    """One claim (already expanded: no per / each / all) as a statistic, its cells and the item sources its
    selections read."""

    def __init__(self, ev: Evidence, claim: Claim):
        self.ev, self.c = ev, claim
        self.cells: list[Cell] = []
        self.selected: set[str] = set()
        self.missing = ""

    def _cell(self, side: Side, metric: str, config: dict) -> Cell | None:
        cell = side.cell(metric, config)
        if cell is None:
            self.missing = self.missing or f"{metric} at {side.describe()} {config or ''}: a run lacks items"
        else:
            self.cells.append(cell)
        return cell

    def side(self, spec, metric: str | None = None, pick: str | None = None) -> Callable[[View, str], np.ndarray]:
        c, pick = self.c, pick or self.c.pick
        side = Side(self.ev, spec, c.where, c.checkpoint)
        metric = metric or side.metric or c.metric
        why = side.resolve(metric)
        if why:
            self.missing = self.missing or why
            return lambda v, role="judge": np.full((len(v.seeds), 1), np.nan)
        cells = [self._cell(side, metric, cf) for cf in side.configs]
        if any(x is None for x in cells):
            return lambda v, role="judge": np.full((len(v.seeds), 1), np.nan)
        if len(cells) == 1:
            return lambda v, role="judge": v(cells[0], role)
        if pick == "mean" and not side.selects_step:
            return lambda v, role="judge": np.mean([v(x, role) for x in cells], axis=0)
        by = c.by or metric
        sel_cells = cells if by == metric else [self._cell(side, by, cf) for cf in side.configs]
        if any(x is None for x in sel_cells):
            return lambda v, role="judge": np.full((len(v.seeds), 1), np.nan)
        self.selected.add(item_source(by))
        if side.checkpoint.startswith(("lowest", "highest")):
            lower = side.checkpoint.startswith("lowest")  # the checkpoint with the lowest value, whatever is better
        else:
            lower = lower_is_better(by) == (pick != "worst")
        opts = [(lambda v, role, j=j: v(cells[j], role) if role == "judge" else v(sel_cells[j], "select"))
                for j in range(len(cells))]
        return lambda v, role="judge": choose(v, opts, lower, role)

    def levels(self, axis: str) -> list:
        d = self.ev.runs(self.c.metric)
        d = d[d["run_id"] != "base"]
        for k, v in self.c.where.items():
            d = d[_match(d[k], v)] if k in d else d.iloc[0:0]
        if axis not in d:
            return []
        vals = d[axis].dropna().unique()
        try:
            return sorted(vals, key=float)
        except (TypeError, ValueError):
            return sorted(vals, key=str)

    def statistic(self) -> Stat:
        c, spec = self.c, self.c.spec
        if c.effect == "value":
            s = self.side(spec)
            return lambda v: s(v)
        if c.effect == "compare":
            a, b = self.side(spec["a"]), self.side(spec["b"])
            return lambda v: a(v) - b(v)
        if c.effect == "contrast":
            terms = [(self.side(t["side"]), float(t["weight"])) for t in spec]
            return lambda v: sum(w * s(v) for s, w in terms)
        if c.effect == "fit":
            return self._fit(spec)
        axis, levels = spec["axis"], self.levels(spec["axis"])
        if len(levels) < (2 if c.effect != "optimum" else 3):
            self.missing = self.missing or f"{len(levels)} level(s) of {axis}: too few for {c.effect}"
            return lambda v: np.full((len(v.seeds), 1), np.nan)
        per = [self.side({axis: lv}, pick="mean" if c.effect == "trend" else None) for lv in levels]
        if c.effect == "trend":
            x = np.log10(np.asarray(levels, float)) if spec.get("log") else np.asarray(levels, float)
            x = x - x.mean()
            return lambda v: np.tensordot(x, np.stack([s(v) for s in per]), 1) / (x ** 2).sum()
        lower = lower_is_better(c.metric)
        self.selected.add(item_source(c.metric))
        if c.effect == "optimum":
            inner, ends = per[1:-1], [per[0], per[-1]]
            return lambda v: choose(v, inner, lower) - choose(v, ends, lower)
        return lambda v: choose(v, per, lower) - choose(v, per, not lower)

    def _fit(self, spec) -> Stat:
        """R^2 across configurations (each `across` combination one point: its per-seed value) of the claim's
        metric on spec['x'] (minus R^2 on spec['minus'])."""
        c = self.c
        side = Side(self.ev, {}, c.where, c.checkpoint)
        why = side.resolve(c.metric)
        if why:
            self.missing = self.missing or why
            return lambda v: np.full((len(v.seeds), 1), np.nan)
        configs = [cf for cf in side.configs]

        def r2(xm: str) -> Callable[[View], np.ndarray]:
            xs = [self._cell(side, xm, cf) for cf in configs]
            ys = [self._cell(side, c.metric, cf) for cf in configs]
            if any(x is None for x in xs + ys) or len(configs) < 3:
                self.missing = self.missing or f"{len(configs)} configurations with {xm} and {c.metric}"
                return lambda v: np.full((len(v.seeds), 1), np.nan)

            def f(v: View) -> np.ndarray:
                x, y = np.stack([v(a) for a in xs]), np.stack([v(b) for b in ys])  # [C, S, B]
                x, y = x - x.mean(0), y - y.mean(0)
                with np.errstate(invalid="ignore", divide="ignore"):
                    return (x * y).sum(0) ** 2 / ((x * x).sum(0) * (y * y).sum(0))
            return f
        first = r2(spec["x"])
        if not spec.get("minus"):
            return first
        second = r2(spec["minus"])
        return lambda v: first(v) - second(v)


# ------------------------------------------------------------------------------------------------ judging


def estimate(ev: Evidence, claim: Claim) -> tuple[IV.Interval | None, str]:
    """The claim's interval, or None and why not."""
    comp = Compiler(ev, claim)
    stat = comp.statistic()
    if comp.missing:
        return None, comp.missing
    trained = [x for x in comp.cells if not x.is_base]
    seeds = sorted(set.intersection(*[set(x.seeds) for x in trained]), key=str) if trained else [0]
    if not seeds:
        return None, "its configurations share no seed (the effect is paired by seed)"
    folds = [0, 1] if comp.selected else [None]

    def run(mode: str) -> np.ndarray:
        return np.mean([stat(View(ev, mode, seeds, f, comp.selected)) for f in folds], axis=0)  # [S, B]
    with np.errstate(invalid="ignore", divide="ignore"):
        point = run("point")[:, 0]
        boot = run("boot")
    # the judged metric's item set (a selection by another metric reads that one's items too: not counted here)
    judged = [x for x in comp.cells if x.metric == claim.metric] or comp.cells
    groups = min(ev.groups(x.metric)[1] for x in judged)
    items = min(len(ev.docs(x.metric)) for x in judged)
    iv = IV.interval(point, boot, len(seeds) if trained else 0, groups, items)
    if iv is None:
        return None, "the effect is not finite on the data (e.g. a zero denominator)"
    return iv, ""


def judge(ev: Evidence, claim: Claim) -> Finding:
    """One expanded claim's finding (no multiplicity correction yet: analysis/findings.py)."""
    f = Finding(claim.id, claim.words(), "", "n/a", claim.family, source=claim.source, unit=claim.unit,
                kind=claim.test, bound=claim.bound)
    iv, why = estimate(ev, claim)
    if iv is None:
        f.observed = f"the runs or per-item samples it needs are missing: {why}"
        return f
    b = claim.boundary
    # a rate (or an R^2) lies in [0, 1] and a difference of them in [-1, 1]: the interval is cut to where the
    # parameter can be (which keeps its coverage)
    lim = {"pct": (0.0, 1.0), "pts": (-1.0, 1.0),
           "r2": (-1.0, 1.0) if claim.effect == "fit" and claim.spec.get("minus") else (0.0, 1.0)}.get(claim.unit)
    if lim:
        iv.low, iv.high = max(iv.low, lim[0]), min(iv.high, lim[1])
    f.estimate, f.low, f.high = iv.value, iv.low, iv.high
    f.seeds, f.items, f.groups, f.nonfinite = iv.seeds, iv.items, iv.groups, iv.nonfinite
    f.verdict = IV.verdict(iv, claim.test, b)
    f.p, _ = IV.p_values(iv, claim.test, b)
    df = "inf" if not math.isfinite(iv.df) else f"{iv.df:.1f}"
    seeds = "base only" if iv.seeds == 0 else f"{iv.seeds} seed{'s' * (iv.seeds != 1)}"
    f.observed = (f"{fmt(iv.value, claim.unit)} [95% CI {fmt(iv.low, claim.unit)}, {fmt(iv.high, claim.unit)}] "
                  f"({seeds} x {iv.items} items in {iv.groups} groups, t on {df} df; SE from seeds "
                  f"{math.sqrt(iv.var_seeds):.3g}, items {math.sqrt(iv.var_items):.3g})"
                  + (f"; {iv.nonfinite} of {iv.draws + iv.nonfinite} bootstrap draws not finite" if iv.nonfinite
                     else ""))
    if not iv.seed_variance_known:
        f.decide = "one seed: the seed variance is unknown; run 2 or more seeds"
    elif f.verdict == "inconclusive":
        f.decide = _decide(iv, claim, b)
    return f


def _decide(iv: IV.Interval, claim: Claim, b: float) -> str:
    gap = abs(iv.value - b) if claim.test != "within" else abs(b - abs(iv.value))
    if gap <= 1e-12:
        return "the estimate sits on the boundary: no amount of data decides it unless the effect differs"
    seeds, items = IV.needed(iv, gap, iv.items / max(iv.groups, 1))
    s = f"~{seeds} seeds" if isinstance(seeds, int) else f"seeds: {seeds}"
    i = f"~{items} items" if isinstance(items, int) else f"items: {items}"
    return f"80% power if the effect is as estimated: {s} at these items, or {i} at these seeds"


def expand(ev: Evidence, claim: Claim) -> list[Claim | list[Claim]]:
    """`per` and pick each / all as separate claims (all: one conjunction, a list)."""
    out: list = []
    combos = [{}]
    if claim.per:
        d = ev.runs(claim.metric)
        d = d[d["run_id"] != "base"]
        for k, v in claim.where.items():
            d = d[_match(d[k], v)] if k in d else d.iloc[0:0]
        axes = [a for a in claim.per if a in d]
        combos = [dict(zip(axes, k)) for k in d[axes].dropna().drop_duplicates().itertuples(index=False, name=None)] \
            if axes and len(d) else [{}]
    for combo in combos:
        c = replace(claim, where={**claim.where, **combo},
                    id=claim.id + "".join(f"[{_short(k)}={_val(v)}]" for k, v in combo.items()),
                    text=(claim.words() + " " + ", ".join(f"{_short(k)}={_val(v)}" for k, v in combo.items()))
                    if combo else claim.text)
        if c.pick not in ("each", "all"):
            out.append(c)
            continue
        free = _free_axes(ev, c)
        levels = [dict(zip(free, k)) for k in itertools.product(*[Compiler(ev, c).levels(a) for a in free])] \
            if free else [{}]
        parts = [replace(c, where={**c.where, **lv}, pick="best",
                         id=c.id + "".join(f"[{_short(k)}={_val(v)}]" for k, v in lv.items()),
                         text=c.words() + " " + ", ".join(f"{_short(k)}={_val(v)}" for k, v in lv.items()))
                 for lv in levels]
        out.extend(parts) if c.pick == "each" else out.append(parts)
    return out


def _free_axes(ev: Evidence, c: Claim) -> list[str]:
    free: list[str] = []
    for s in c.sides() if c.effect in ("compare", "value") else []:
        if s == BASE:
            continue
        side = Side(ev, s, c.where, c.checkpoint)
        if side.resolve(c.metric) is None:
            free += [k for k in (side.configs[0] if side.configs else {}) if k != "step" and k not in free]
    return free


def _short(k: str) -> str:
    return {"data.train.limit": "n", "train.epochs": "epochs", "train.lr": "lr", "regime.prompt_weight": "w",
            "data.train.path": "data"}.get(k, k)


def _val(v) -> str:
    s = str(v)
    if "/" in s:
        s = s.rsplit("/", 1)[-1].removesuffix(".jsonl")
    try:
        f = float(v)
        return f"{f:.0e}".replace("e-0", "e-") if 0 < abs(f) < 0.01 else f"{f:g}"
    except (TypeError, ValueError):
        return s


def conjunction(parts: list[Finding], claim: Claim) -> Finding:
    """pick: all — yes if every level's interval says yes, no if any says no (an intersection-union test: no
    correction needed for 'holds at every level'); its estimate is the least favourable level's."""
    vs = [p.verdict for p in parts]
    verdict = "n/a" if not parts or "n/a" in vs else "no" if "no" in vs else "yes" if all(v == "yes" for v in vs) \
        else "inconclusive"
    f = Finding(claim.id, claim.words() + " (at every level)", "; ".join(f"{p.id}: {p.observed}" for p in parts),
                verdict, claim.family, source=claim.source, unit=claim.unit, kind=claim.test, bound=claim.bound,
                parts=parts)
    judged = [p for p in parts if p.p is not None]
    if judged:
        worst = max(judged, key=lambda p: (p.p if p.verdict != "no" else -1))
        f.estimate, f.low, f.high, f.p = worst.estimate, worst.low, worst.high, worst.p
        f.seeds, f.items, f.groups = worst.seeds, worst.items, worst.groups
        f.nonfinite = sum(p.nonfinite for p in parts)
        f.decide = "; ".join(f"{p.id}: {p.decide}" for p in parts if p.decide)
    return f
