"""Per-question results: lm-eval's logged samples as a tidy frame, and the paired bootstrap over questions.

A checkpoint's accuracy is a mean over questions, and the same questions are asked of the base and of every
checkpoint. So the uncertainty that matters for "is this better than the base" is over *questions*, paired:
resample questions, recompute (tuned - base) each time. Seeds of one configuration are averaged per question
first (each resample keeps a question's seeds together).
"""

from __future__ import annotations

import gzip
import json
import math
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from analysis.load import discover_runs
from analysis.stats import BOOT_SEED, N_BOOT
from harness.layout import ExperimentDir, base_eval_json, eval_side_file


def _rows(path: Path, task: str, metric: str) -> dict[str, float]:
    """doc_id -> the metric of each sample of `task` in one samples file ({} if missing/unreadable)."""
    out: dict[str, float] = {}
    try:
        with gzip.open(path, "rt", encoding="utf-8") as fh:
            for line in fh:
                r = json.loads(line)
                if r.get("task") == task and metric in r:
                    out[str(r.get("doc_id"))] = float(r[metric])
    except (OSError, ValueError, EOFError):
        return {}
    return out


def load_questions(exp_dir: str | Path, task: str, metric: str = "exact_match") -> pd.DataFrame:
    """One row per (run, evaluated step, question): ``run_id, state, step, doc_id, value`` plus the run's axes;
    the base model is ``run_id == "base"``, step 0. Empty when no samples were logged."""
    exp_dir = Path(exp_dir)
    recs: list[dict] = []
    base = base_eval_json(ExperimentDir(exp_dir).base())
    for doc, v in _rows(eval_side_file(base, "samples"), task, metric).items():
        recs.append({"run_id": "base", "state": "done", "step": 0, "doc_id": doc, "value": v})
    runs, _ = discover_runs(exp_dir)
    for r in runs:
        for step, path in r.evals:
            if step == 0:
                continue
            for doc, v in _rows(eval_side_file(path, "samples"), task, metric).items():
                recs.append({"run_id": r.run_id, "state": r.state, "step": step, "doc_id": doc, "value": v,
                             **r.axes})
    return pd.DataFrame.from_records(recs)


def paired_bootstrap(tuned: Sequence[Sequence[float]], base: Sequence[float], *, n_boot: int = N_BOOT,
                     level: float = 0.95, seed: int = BOOT_SEED) -> dict:
    """`tuned`: per seed, per question (same question order as `base`). Returns the tuned mean with its CI and
    the paired difference (tuned - base) with its CI, resampling questions."""
    t = np.asarray(tuned, dtype=float).mean(axis=0)  # seeds averaged per question
    b = np.asarray(base, dtype=float)
    if t.shape != b.shape or len(b) < 2:
        raise ValueError(f"need the same >= 2 questions for tuned and base, got {t.shape} and {b.shape}")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(b), size=(n_boot, len(b)))
    a = (1 - level) / 2
    lo, hi = np.quantile(t[idx].mean(axis=1), [a, 1 - a])
    dlo, dhi = np.quantile((t - b)[idx].mean(axis=1), [a, 1 - a])
    return {"mean": float(t.mean()), "low": float(lo), "high": float(hi), "diff": float((t - b).mean()),
            "diff_low": float(dlo), "diff_high": float(dhi), "questions": int(len(b)), "seeds": int(len(tuned))}


def config_vs_base(q: pd.DataFrame, where: dict, step: str = "final") -> dict | None:
    """The paired bootstrap of one configuration (its runs: rows matching `where`, e.g. regime and LR; each
    run's last evaluated step with `step="final"`) against the base, over the questions all of them answered."""
    if q.empty:
        return None
    d = q[(q["run_id"] != "base") & (q["state"] == "done")]
    for k, v in where.items():
        if k not in d.columns:
            return None
        d = d[d[k] == v]
    if d.empty:
        return None
    if step == "final":
        d = d[d["step"] == d.groupby("run_id")["step"].transform("max")]
    base = q[q["run_id"] == "base"].set_index("doc_id")["value"]
    table = d.pivot_table(index="doc_id", columns="run_id", values="value").join(base.rename("base"), how="inner")
    table = table.dropna()
    if len(table) < 2 or table.shape[1] < 2:
        return None
    seeds = [table[c].to_numpy() for c in table.columns if c != "base"]
    out = paired_bootstrap(seeds, table["base"].to_numpy())
    out["base"] = float(table["base"].mean())
    return out


def fmt_ci(r: dict | None) -> str:
    if not r:
        return "n/a"
    pct = (lambda v: "n/a" if v is None or math.isnan(v) else f"{100 * v:.1f}%")
    return (f"{pct(r['mean'])} [95% CI {pct(r['low'])}, {pct(r['high'])}], vs base {r['diff'] * 100:+.1f} points "
            f"[{r['diff_low'] * 100:+.1f}, {r['diff_high'] * 100:+.1f}] ({r['questions']} questions x "
            f"{r['seeds']} seeds, paired bootstrap)")
