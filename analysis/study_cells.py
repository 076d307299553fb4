"""The cells the findings checkers read (analysis/findings.py, analysis/forgetting_studies.py): metric and axis
names, each run's final checkpoint, the grid's values of an axis, and the means beside a claim's CI."""

from __future__ import annotations

import pandas as pd

QA, QA_TRAIN, FACTS = "world_qa/exact_match", "world_qa_train/exact_match", "world_facts/acc"
FORGET, KL = "forgetting/pretrain_nll_delta", "forgetting/kl_base"
ANSWERED, CONTINUED = "format/answered", "format/continued_question"
NLL = "nll/response"  # fixed-mask response NLL on held-out conversations in the training data's own format
OWN = {"long-prompt/short-answer": "world_longprompt/exact_match", "short-prompt/long-answer": "world_longanswer/facts"}
OWN_REAL = {"long-prompt/short-answer": "real_longprompt/exact_match"}  # the same format on real facts
REAL_QA = "real_qa/exact_match"
REG, LR, W, SEED = "regime.name", "train.lr", "regime.prompt_weight", "train.seed"


def _data_label(path) -> str:
    s = str(path)
    return "long-prompt/short-answer" if "longprompt" in s else "short-prompt/long-answer" if "longanswer" in s \
        else s.rsplit("/", 1)[-1]


def _final(df: pd.DataFrame, metric: str) -> pd.DataFrame:
    d = df[(df["state"] == "done") & (df["metric"] == metric) & (df["step"] > 0)]
    return d.loc[d.groupby("run_id")["step"].idxmax()] if len(d) else d


def _values(df: pd.DataFrame, key: str, where: dict | None = None) -> list:
    d = df[(df["state"] == "done") & (df["step"] > 0)]
    for k, v in (where or {}).items():
        d = d[d[k] == v] if k in d else d.iloc[0:0]
    return sorted(d[key].dropna().unique()) if key in d else []


def _means(df: pd.DataFrame, metric: str, by: str, where: dict | None = None, unit: str = "pct") -> str:
    """'1e-4: 54.3%, 3e-4: 65.0%' (final checkpoint, mean over seeds): context beside a claim's CI."""
    d = _final(df, metric)
    for k, v in (where or {}).items():
        d = (d[d[k].isna()] if v is None else d[d[k].isin(v)] if isinstance(v, (list, tuple)) else d[d[k] == v]) \
            if k in d else d.iloc[0:0]
    if d.empty or by not in d:
        return ""
    s = d.groupby(by)["value"].mean()
    f = (lambda v: f"{100 * v:.1f}%") if unit == "pct" else (lambda v: f"{v:+.3f}")
    return ", ".join(f"{_num(k)}: {f(v)}" if isinstance(k, float) else f"{k}: {f(v)}" for k, v in s.items())


def _num(x: float) -> str:
    """1e-4, 3e-4, 0.01, 0.1, 1: learning rates as people write them."""
    return f"{x:.0e}".replace("e-0", "e-") if 0 < abs(x) < 0.01 else f"{x:g}"
