"""Do the findings' intervals keep their coverage with few seeds? Simulated studies in the results schema, judged by
the code path of `harness report` (analysis/findings.py's judge_all on an Evidence of per-item rows).

Each simulated study: two regimes (A, B) x S seeds, one evaluation of G groups x 5 items (items of a group share a
difficulty: a person's five questions), Bernoulli outcomes. Item p = clip(0.5 + group + item + run + effect [A]),
group ~ N(0, 0.12), item ~ N(0, 0.08), run ~ N(0, seed SD) independently per (regime, seed): the seed effect
the intervals must cover. The true effect is E[p_A - p_B] over groups, items and seeds (Monte Carlo, 400k
draws, clipping included). The claim: compare A - B, test above 0 (pts).

Reported per cell (seed SD x seeds x true effect): coverage of the 95% interval, the share of yes / no verdicts
(under no effect every yes or no is false), mean interval half-width.

    python benchmarks/coverage.py [--repeats 200] [--out benchmarks/out/coverage.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from analysis.evidence import Evidence  # noqa: E402
from analysis.findings import judge_all  # noqa: E402
from harness.claims import parse_claims  # noqa: E402

METRIC = "sim/exact_match"
GROUP_SD, ITEM_SD, PER_GROUP = 0.12, 0.08, 5
CLAIM = parse_claims([{"id": "a_minus_b", "metric": METRIC, "compare": {"a": {"regime.name": "A"},
                                                                       "b": {"regime.name": "B"}},
                       "test": {"above": 0}, "unit": "pts", "family": "primary"}])


def true_effect(effect: float, seed_sd: float, n: int = 400_000, seed: int = 12345) -> float:
    rng = np.random.default_rng(seed)
    base = 0.5 + rng.normal(0, GROUP_SD, n) + rng.normal(0, ITEM_SD, n)
    pa = np.clip(base + rng.normal(0, seed_sd, n) + effect, 0, 1)
    pb = np.clip(base + rng.normal(0, seed_sd, n), 0, 1)
    return float((pa - pb).mean())


def study(rng: np.random.Generator, seeds: int, seed_sd: float, effect: float, groups: int = 80) -> pd.DataFrame:
    """Per-item rows of one simulated study, as analysis/items.py's load_items returns them."""
    g = np.repeat(rng.normal(0, GROUP_SD, groups), PER_GROUP)
    p0 = 0.5 + g + rng.normal(0, ITEM_SD, len(g))
    docs = [str(i) for i in range(len(g))]
    names = [f"g{i // PER_GROUP}" for i in range(len(g))]
    rows = []
    for regime in ("A", "B"):
        for s in range(1, seeds + 1):
            p = np.clip(p0 + rng.normal(0, seed_sd) + (effect if regime == "A" else 0.0), 0, 1)
            x = (rng.random(len(p)) < p).astype(float)
            rows.append(pd.DataFrame({"run_id": f"{regime}-s{s}", "state": "done", "step": 10, "metric": METRIC,
                                      "doc_id": docs, "num": x, "den": 1.0, "group": names, "regime.name": regime,
                                      "train.seed": s}))
    return pd.concat(rows, ignore_index=True)


def cell(seed_sd: float, seeds: int, effect: float, repeats: int, rng: np.random.Generator, n_boot: int) -> dict:
    truth = true_effect(effect, seed_sd)
    covered, yes, no, half = 0, 0, 0, []
    for _ in range(repeats):
        f = judge_all(CLAIM, Evidence(study(rng, seeds, seed_sd, effect), n_boot=n_boot), None)[0]
        covered += f.low <= truth <= f.high
        yes += f.verdict == "yes"
        no += f.verdict == "no"
        half.append((f.high - f.low) / 2)
    return {"seed_sd_pts": round(100 * seed_sd), "seeds": seeds, "effect_pts": round(100 * effect, 1),
            "true_effect_pts": round(100 * truth, 2), "repeats": repeats, "coverage": covered / repeats,
            "yes": yes / repeats, "no": no / repeats, "false_decisions": (yes + no) / repeats if effect == 0 else None,
            "mean_half_width_pts": float(100 * np.mean(half))}


def run(repeats: int, seed_sds=(0.02, 0.06, 0.12), seeds=(2, 3, 5), effects=(0.0, 0.05), n_boot: int = 2000,
        seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [cell(sd, s, e, repeats, rng, n_boot) for e in effects for sd in seed_sds for s in seeds]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=200)
    ap.add_argument("--out", default="benchmarks/out/coverage.json")
    ap.add_argument("--seed-sds", default="2,6,12", help="seed SDs in points")
    ap.add_argument("--seeds", default="2,3,5")
    ap.add_argument("--effects", default="0,5", help="true effects in points")
    ap.add_argument("--rng", type=int, default=0, help="the simulation's RNG seed")
    args = ap.parse_args()
    t0 = time.perf_counter()
    nums = (lambda x: [float(v) for v in x.split(",")])
    cells = run(args.repeats, tuple(v / 100 for v in nums(args.seed_sds)), tuple(int(v) for v in nums(args.seeds)),
                tuple(v / 100 for v in nums(args.effects)), seed=args.rng)
    out = {"benchmark": "coverage", "repeats": args.repeats, "groups": 80, "items_per_group": PER_GROUP,
           "seconds": round(time.perf_counter() - t0, 1), "cells": cells,
           "targets": {"coverage_min": 0.93, "false_decisions_max": 0.05},
           "pass": all(c["coverage"] >= 0.93 and (c["false_decisions"] is None or c["false_decisions"] <= 0.05)
                       for c in cells)}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    for c in cells:
        print(c)
    print("pass" if out["pass"] else "FAIL", f"({out['seconds']} s)")
    return 0 if out["pass"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
