"""Per-item results: what one evaluation measured on each question, text or conversation, as a tidy frame.

A checkpoint's metric is a mean over items (questions, probe texts, conversations), and every checkpoint and
the base are asked the same items. The findings' bootstrap (analysis/claims.py) resamples these items, paired
across runs, and the seeds of each configuration. This module only reads: the ``samples.jsonl.gz`` beside each
evaluation JSON (lm-eval's logged samples, plus one row per item from the harness's own probes).

Each metric is a ratio of sums over items, ``sum(num) / sum(den)``: ``den`` is 1 for a per-question score and
the token count for a token-weighted NLL, so a resample reproduces the aggregate exactly (tests/test_claims.py).
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Callable, Iterable

import pandas as pd

from analysis.load import discover_runs
from harness.evaluation.groups import item_group
from harness.layout import ExperimentDir, base_eval_json, eval_side_file

#: metric -> (sample task, how one sample row gives (num, den)); lm-eval tasks "<task>/<metric>" are generic
PROBES: dict[str, tuple[str, Callable[[dict], tuple[float, float]]]] = {
    "nll/response": ("probe/nll", lambda r: (r["response_sum"], r["response_tokens"])),
    "nll/prompt": ("probe/nll", lambda r: (r["prompt_sum"], r["prompt_tokens"])),
    "forgetting/pretrain_nll": ("probe/pretrain", lambda r: (r["nll_sum"], r["nll_tokens"])),
    "forgetting/kl_base": ("probe/pretrain", lambda r: (r["kl_sum"], r["kl_tokens"])),
    "forgetting/kl_sft": ("probe/kl_sft", lambda r: (r["kl_sum"], r["kl_tokens"])),
    **{f"format/{c}": ("probe/format", (lambda c: lambda r: (float(r["class"] == c), 1.0))(c))
       for c in ("answered", "continued_question", "other")},
}
#: metrics that are another metric minus the base's value of the same item (same denominators)
DELTAS = {"forgetting/pretrain_nll_delta": "forgetting/pretrain_nll"}


def _source(metric: str) -> tuple[str, Callable[[dict], tuple[float, float]]]:
    metric = DELTAS.get(metric, metric)
    if metric in PROBES:
        return PROBES[metric]
    if metric.startswith("recovery/"):  # recovery/k16/world_qa/exact_match: the task is recovery/k16/world_qa
        task, _, name = metric.rpartition("/")
        return task, (lambda r: (float(r[name]), 1.0))
    task, _, name = metric.partition("/")
    if not name:
        raise ValueError(f"{metric!r} is not a per-item metric (expected <task>/<metric> or one of {list(PROBES)})")
    return task, (lambda r: (float(r[name]), 1.0))


def _group(r: dict) -> str | None:
    """The item's cluster (harness/evaluation/evaluator.py writes ``group``; an lm-eval sample written before that
    still has its document's ``person`` / ``subject``); None: the item is its own group."""
    if r.get("group") not in (None, ""):
        return str(r["group"])
    return item_group(r.get("doc"))


def read_items(path: Path, metrics: Iterable[str]) -> list[dict]:
    """(metric, doc_id, num, den) rows of one samples file; [] if missing or unreadable."""
    want: dict[str, list[tuple[str, Callable]]] = {}
    for m in metrics:
        task, get = _source(m)
        want.setdefault(task, []).append((m, get))
    out: list[dict] = []
    seen: dict[str, int] = {}  # rows per task: the item index of rows written before they carried a doc_id
    try:
        with gzip.open(path, "rt", encoding="utf-8") as fh:
            for line in fh:
                r = json.loads(line)
                k = seen[r.get("task")] = seen.get(r.get("task"), -1) + 1
                if "doc_id" not in r:
                    r["doc_id"] = k
                for metric, get in want.get(r.get("task"), ()):
                    try:
                        num, den = get(r)
                    except (KeyError, TypeError, ValueError):
                        continue
                    out.append({"metric": metric, "doc_id": str(r.get("doc_id")), "num": float(num),
                                "den": float(den), "group": _group(r)})
    except (OSError, ValueError, EOFError):
        return []
    return out


def load_items(exp_dir: str | Path, metrics: Iterable[str]) -> pd.DataFrame:
    """One row per (run, evaluated step, metric, item): ``run_id, state, step, metric, doc_id, num, den`` plus
    the run's axes; the base model is ``run_id == "base"`` at step 0. A delta metric (DELTAS) has the base's
    ``num`` of the same item subtracted, so base rows of it are zero. Empty when no samples were logged."""
    exp_dir, metrics = Path(exp_dir), list(dict.fromkeys(metrics))
    raw = sorted({DELTAS.get(m, m) for m in metrics})
    recs: list[dict] = []
    for row in read_items(eval_side_file(base_eval_json(ExperimentDir(exp_dir).base()), "samples"), raw):
        recs.append({"run_id": "base", "state": "done", "step": 0, **row})
    runs, _ = discover_runs(exp_dir)
    for r in runs:
        for step, path in r.evals:
            if step == 0:
                continue
            for row in read_items(eval_side_file(path, "samples"), raw):
                recs.append({"run_id": r.run_id, "state": r.state, "step": step, **row, **r.axes})
    df = pd.DataFrame.from_records(recs)
    if df.empty:
        return df
    parts = [df[df["metric"].isin(metrics)]]
    for delta, of in DELTAS.items():
        if delta not in metrics:
            continue
        d = df[df["metric"] == of].copy()
        base = d[d["run_id"] == "base"].set_index("doc_id")["num"]
        d = d[d["doc_id"].isin(base.index)]
        if d.empty:  # no per-item rows of it (results written before items were logged)
            continue
        d["num"] = d["num"] - d["doc_id"].map(base)
        parts.append(d.assign(metric=delta))
    return pd.concat(parts, ignore_index=True)
