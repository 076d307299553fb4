"""Findings: does the published shape appear in this experiment's results? One checker per shipped study,
chosen by experiment name, each returning claims with the observed numbers and whether they hold.

A finding is computed from :func:`analysis.load.load_runs` only (done runs, final checkpoint of each run unless
a claim says otherwise, means over seeds). ``holds`` is True/False, or None when the data needed is missing;
the report prints every claim with its numbers, whatever the outcome.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import pandas as pd

from analysis.questions import config_vs_base, fmt_ci, load_questions

QA, QA_TRAIN, FACTS = "world_qa/exact_match", "world_qa_train/exact_match", "world_facts/acc"
FORGET, ANSWERED, CONTINUED = "forgetting/pretrain_nll_delta", "format/answered", "format/continued_question"
NLL = "nll/response"  # fixed-mask response NLL on held-out conversations in the training data's own format


@dataclass
class Finding:
    claim: str
    observed: str
    holds: bool | None
    source: str = ""  # the paper or story the claim comes from

    def __post_init__(self):
        if self.holds is not None:
            self.holds = bool(self.holds)  # numpy bools would not survive json / `is True`

    def to_dict(self) -> dict:
        return asdict(self)


def _pct(v: float) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.1f}%"


def _done(df: pd.DataFrame, metric: str) -> pd.DataFrame:
    d = df[(df["state"] == "done") & (df["metric"] == metric) & (df["step"] > 0)].copy()
    return d


def final(df: pd.DataFrame, metric: str) -> pd.DataFrame:
    """One row per done run: its last evaluated checkpoint."""
    d = _done(df, metric)
    if d.empty:
        return d
    return d.loc[d.groupby("run_id")["step"].idxmax()]


def base_value(df: pd.DataFrame, metric: str) -> float:
    b = df[(df["metric"] == metric) & (df["step"] == 0)]["value"]
    return float(b.iloc[0]) if len(b) else math.nan


def _means(d: pd.DataFrame, by: list[str]) -> pd.Series:
    by = [c for c in by if c in d.columns]
    return d.groupby(by, dropna=False)["value"].mean() if by else pd.Series([d["value"].mean()])


def _data_label(path) -> str:
    s = str(path)
    return "long-prompt/short-answer" if "longprompt" in s else "short-prompt/long-answer" if "longanswer" in s \
        else s.rsplit("/", 1)[-1]


# ------------------------------------------------------------------------------------------------ studies


def seed_story(df: pd.DataFrame) -> list[Finding]:
    """mini_lima: the seed chapter's story, with the issue's thresholds."""
    out = []
    src = "seed chapter / mini-world"
    b = base_value(df, QA)
    out.append(Finding("base model answers <= 10% of held-out questions (chat format)", f"base {_pct(b)}",
                       None if math.isnan(b) else b <= 0.10, src))
    qa = final(df, QA)
    per = _means(qa, ["regime.name", "train.lr"]) if not qa.empty else pd.Series(dtype=float)
    for regime in ("prompt_masked", "full"):
        if regime in per.index.get_level_values(0):
            s = per.loc[regime]
            out.append(Finding(f"{regime} >= 60% held-out QA at its best learning rate",
                               f"best lr {s.idxmax():g}: {_pct(s.max())}; all: "
                               + ", ".join(f"{lr:g}: {_pct(v)}" for lr, v in s.items()), s.max() >= 0.60, src))
    if "prompt_only" in per.index.get_level_values(0):
        every = _done(df, QA)
        v = every[every["regime.name"] == "prompt_only"]["value"].max()
        out.append(Finding("prompt_only <= base + 5 points (any LR, any checkpoint)",
                           f"max {_pct(v)} vs base {_pct(b)}", bool(v <= b + 0.05), src))
    fg = final(df, FORGET)
    fg = fg[fg["regime.name"] != "prompt_only"] if not fg.empty else fg
    if not fg.empty and fg["train.lr"].nunique() > 1:
        s = _means(fg, ["train.lr"])
        out.append(Finding("forgetting (held-out pretraining NLL increase) rises with the learning rate",
                           ", ".join(f"lr {lr:g}: {v:+.3f}" for lr, v in s.items()), bool(s.is_monotonic_increasing),
                           "Biderman et al. 2024"))
    every = _done(df, FORGET)
    every = every[every["regime.name"] != "prompt_only"] if not every.empty else every
    if not every.empty and every["epoch"].round().nunique() > 1:
        # Per configuration (regime x LR, mean over seeds), last epoch vs first: a mean over all LRs would mix
        # scales (at a too-high LR forgetting overshoots at epoch 1 and partly recovers) and say little.
        every = every.assign(ep=every["epoch"].round())
        s = every.groupby("ep")["value"].mean()
        keys = [c for c in ("regime.name", "train.lr") if c in every.columns]
        per = every.groupby(keys + ["ep"])["value"].mean() if keys else s
        trend = per.groupby(level=list(range(len(keys)))).agg(lambda v: v.iloc[-1] - v.iloc[0]) if keys \
            else pd.Series([s.iloc[-1] - s.iloc[0]])
        falls = [k if isinstance(k, tuple) else (k,) for k, d in trend.items() if d <= 0]
        out.append(Finding("forgetting rises with epochs (last epoch vs first, per regime x LR, most configurations)",
                           f"rises in {int((trend > 0).sum())} of {len(trend)}"
                           + (" (not: " + "; ".join(" ".join(f"{x:g}" if isinstance(x, float) else str(x) for x in k)
                                                    for k in falls) + ")" if falls else "")
                           + "; mean over all runs by epoch: "
                           + ", ".join(f"epoch {int(e)}: {v:+.3f}" for e, v in s.items()),
                           bool((trend > 0).sum() > len(trend) / 2), "Biderman et al. 2024"))
    ba, bc = base_value(df, ANSWERED), base_value(df, CONTINUED)
    a, c = final(df, ANSWERED), final(df, CONTINUED)
    if not a.empty and not math.isnan(bc):
        a = a[a["regime.name"] == "prompt_masked"]
        c = c[c["regime.name"] == "prompt_masked"]
        best = a["value"].max() if len(a) else math.nan
        cont = c["value"].min() if len(c) else math.nan
        out.append(Finding("format probe flips: base continues a raw question with another question, prompt_masked "
                           "answers it", f"base: {_pct(bc)} continued / {_pct(ba)} answered; prompt_masked (best run): "
                           f"{_pct(best)} answered / {_pct(cont)} continued",
                           bool(bc >= 0.5 and best > cont and best > ba), src))
    return out


def prompt_weight(df: pd.DataFrame) -> list[Finding]:
    out, src = [], "Huerta-Enochian & Ko 2024"
    qa = final(df, QA)
    if qa.empty or "regime.prompt_weight" not in qa:
        return [Finding("prompt-loss weight sweep", "no finished runs", None, src)]
    qa = qa.assign(data=qa["data.train.path"].map(_data_label) if "data.train.path" in qa else "data")
    for data, d in qa.groupby("data"):
        s = d.groupby("regime.prompt_weight")["value"].mean().sort_index()
        sd = d.groupby("regime.prompt_weight")["value"].std().fillna(0.0)
        if len(s) < 3:
            continue
        text = ", ".join(f"{w:g}: {_pct(v)}" for w, v in s.items())
        if "long-prompt" in data:
            lam = s.idxmax()
            inside = 0 < lam < 1 and s.max() > s.iloc[0] and s.max() > s.iloc[-1]
            out.append(Finding(f"{data}: held-out QA is an inverted U in lambda with its optimum inside (0, 1)",
                               f"{text}; best lambda {lam:g} (+{100 * (s.max() - s.iloc[0]):.1f} pts over 0, "
                               f"+{100 * (s.max() - s.iloc[-1]):.1f} over 1; seed sd up to {100 * sd.max():.1f} pts)",
                               bool(inside), src))
        else:
            spread = s.max() - s.min()
            out.append(Finding(f"{data}: lambda barely matters (range <= 5 points)", f"{text}; range "
                               f"{100 * spread:.1f} pts", bool(spread <= 0.05), src))
    # QA above is in the short chat-question format; the same shape in the training data's own format, where
    # held-out answers are scored by their NLL (lower is better)
    nll = final(df, NLL)
    if not nll.empty and "regime.prompt_weight" in nll:
        nll = nll.assign(data=nll["data.train.path"].map(_data_label) if "data.train.path" in nll else "data")
        for data, d in nll.groupby("data"):
            s = d.groupby("regime.prompt_weight")["value"].mean().sort_index()
            if len(s) < 3 or "long-prompt" not in data:
                continue
            lam = s.idxmin()
            out.append(Finding(f"{data}: held-out response NLL (training format) is lowest at a lambda inside (0, 1)",
                               ", ".join(f"{w:g}: {v:.3f}" for w, v in s.items()) + f" nats; best lambda {lam:g}",
                               bool(0 < lam < 1 and s.min() < s.iloc[0] and s.min() < s.iloc[-1]), src))
    return out


def instruction_modelling(df: pd.DataFrame) -> list[Finding]:
    out, src = [], "Shi et al. 2024"
    qa = final(df, QA)
    if qa.empty:
        return [Finding("instruction modelling", "no finished runs", None, src)]
    qa = qa.assign(data=qa["data.train.path"].map(_data_label) if "data.train.path" in qa else "data")
    n_col = "data.train.limit" if "data.train.limit" in qa else None
    s = _means(qa, ["data", n_col, "regime.name"] if n_col else ["data", "regime.name"])
    rows = []
    for key in sorted({k[:-1] for k in s.index}):
        try:
            diff = s.loc[(*key, "full")] - s.loc[(*key, "prompt_masked")]
        except KeyError:
            continue
        rows.append((key, diff))
    for key, diff in rows:
        data = key[0]
        n = f", n={int(key[1])}" if n_col else ""
        if "long-prompt" in data:
            out.append(Finding(f"{data}{n}: loss on instructions (full) beats prompt_masked", f"full - masked = "
                               f"{100 * diff:+.1f} pts held-out QA", bool(diff > 0), src))
        else:
            out.append(Finding(f"{data}{n}: no real difference (|full - masked| <= 5 points)", f"full - masked = "
                               f"{100 * diff:+.1f} pts held-out QA", bool(abs(diff) <= 0.05), src))
    nll = final(df, NLL)  # the same comparison in the training data's own format (lower NLL is better)
    if not nll.empty:
        nll = nll.assign(data=nll["data.train.path"].map(_data_label) if "data.train.path" in nll else "data")
        s = _means(nll, ["data", n_col, "regime.name"] if n_col else ["data", "regime.name"])
        for key in sorted({k[:-1] for k in s.index}):
            try:
                f, m = s.loc[(*key, "full")], s.loc[(*key, "prompt_masked")]
            except KeyError:
                continue
            data, n = key[0], (f", n={int(key[1])}" if n_col else "")
            obs = f"response NLL full {f:.3f} vs masked {m:.3f} nats ({f - m:+.3f})"
            if "long-prompt" in data:
                out.append(Finding(f"{data}{n}: full has the lower held-out response NLL", obs, bool(f < m), src))
            else:
                out.append(Finding(f"{data}{n}: response NLL about equal (|full - masked| <= 0.05 nats)", obs,
                                   bool(abs(f - m) <= 0.05), src))
    return out


def knowledge_extraction(df: pd.DataFrame) -> list[Finding]:
    out, src = [], "Allen-Zhu & Li 2023 (Physics of LMs 3.1)"
    qa = final(df, QA)
    if qa.empty or "model.name_or_path" not in qa:
        return [Finding("knowledge extraction", "no finished runs with a model axis", None, src)]
    best = qa.groupby(["model.name_or_path", "train.lr"])["value"].mean().groupby(level=0).max()
    tr = final(df, QA_TRAIN)
    mem = tr.groupby(["model.name_or_path", "train.lr"])["value"].mean().groupby(level=0).max() if len(tr) else {}
    aug = {m: v for m, v in best.items() if "noaug" not in str(m)}
    plain = {m: v for m, v in best.items() if "noaug" in str(m)}
    if aug and plain:
        a, p = max(aug.values()), max(plain.values())
        mem_txt = "; train-half QA (memorised): " + ", ".join(
            f"{'plain' if 'noaug' in str(m) else 'augmented'} {_pct(v)}" for m, v in dict(mem).items()) if len(mem) \
            else ""
        out.append(Finding("held-out QA after SFT: augmented pretraining >> plain (extraction needs augmentation)",
                           f"augmented {_pct(a)} vs plain {_pct(p)} (best LR){mem_txt}", bool(a >= p + 0.3), src))
    return out


REAL_QA, KL = "real_qa/exact_match", "forgetting/kl_base"


def real_model_story(df: pd.DataFrame, questions: pd.DataFrame | None = None) -> list[Finding]:
    """gemma_lima: the seed chapter's story on a real pretrained base (issue thresholds), with CIs over the
    held-out questions (paired with the base: analysis/questions.py) where the per-question samples exist."""
    out, src = [], "seed chapter on gemma-3-270m"
    b = base_value(df, REAL_QA)
    out.append(Finding("base answers <= 15% of held-out chat questions", f"base {_pct(b)}",
                       None if math.isnan(b) else b <= 0.15, src))
    qa = final(df, REAL_QA)
    per = _means(qa, ["regime.name", "train.lr"]) if not qa.empty else pd.Series(dtype=float)
    regimes = set(per.index.get_level_values(0)) if len(per) else set()
    for regime in ("prompt_masked", "full"):
        if regime not in regimes:
            continue
        s = per.loc[regime]
        lr = float(s.idxmax())
        ci = config_vs_base(questions, {"regime.name": regime, "train.lr": lr}) if questions is not None else None
        txt = (f"best lr {lr:g}: " + (fmt_ci(ci) if ci else _pct(s.max())) + "; all (mean over seeds): "
               + ", ".join(f"{x:g}: {_pct(v)}" for x, v in s.items()))
        holds = s.max() >= 0.50 and (ci is not None and ci["diff_low"] > 0)
        if regime == "prompt_masked":
            out.append(Finding("prompt_masked >= 50% held-out chat QA at its best learning rate, its CI above the base",
                               txt + ("" if ci else " (no per-question samples: no CI)"), holds, src))
        else:  # reported, no threshold of its own
            out.append(Finding("full at its best learning rate (for comparison)", txt, None, src))
    if "prompt_only" in regimes:
        every = _done(df, REAL_QA)
        v = every[every["regime.name"] == "prompt_only"]["value"]
        out.append(Finding("prompt_only within 5 points of the base (any LR, any checkpoint)",
                           f"range {_pct(v.min())}..{_pct(v.max())} vs base {_pct(b)}",
                           bool((v - b).abs().max() <= 0.05), src))
    for metric, what in ((FORGET, "held-out text NLL increase"), (KL, "KL(base || tuned) on held-out text")):
        fg = final(df, metric)
        fg = fg[fg["regime.name"] != "prompt_only"] if not fg.empty else fg
        if not fg.empty and fg["train.lr"].nunique() > 1:
            m = _means(fg, ["train.lr"])
            by = fg.groupby(["regime.name", "train.lr"])["value"].mean()
            each = {r: bool(by.loc[r].is_monotonic_increasing) for r in by.index.get_level_values(0).unique()}
            out.append(Finding(f"forgetting ({what}) rises with the learning rate (prompt_masked and full)",
                               ", ".join(f"lr {x:g}: {v:.3f}" for x, v in m.items()) + "; per regime: "
                               + ", ".join(f"{r} {'rises' if ok else 'does not rise'}" for r, ok in each.items()),
                               all(each.values()), "Biderman et al. 2024"))
    ba, bc = base_value(df, ANSWERED), base_value(df, CONTINUED)
    a = final(df, ANSWERED)
    if not a.empty and not math.isnan(ba):
        a = a[a["regime.name"] == "prompt_masked"]
        best = _means(a, ["train.lr"]).max() if len(a) else math.nan
        out.append(Finding("format probe (raw questions, no template) moves towards answered under prompt_masked",
                           f"base {_pct(ba)} answered / {_pct(bc)} continued with a question; prompt_masked best LR "
                           f"{_pct(best)} answered", bool(best > ba), src))
    return out


STUDIES: dict[str, Callable[..., list[Finding]]] = {
    "mini_lima": seed_story, "prompt_weight": prompt_weight, "instruction_modelling": instruction_modelling,
    "knowledge_extraction": knowledge_extraction, "gemma_lima": real_model_story,
}
NEEDS_QUESTIONS = {"gemma_lima": "real_qa"}  # studies whose claims carry per-question CIs: their lm-eval task


def findings_for(name: str, df: pd.DataFrame, exp_dir: str | Path | None = None) -> list[Finding]:
    """The findings of a shipped study (by experiment name, also `<name>_*` variants); [] otherwise. With
    `exp_dir`, studies that need per-question results read them from the logged samples."""
    key = name if name in STUDIES else next((k for k in STUDIES if name.startswith(k + "_")), None)
    if key is None:
        return []
    if key in NEEDS_QUESTIONS:
        return STUDIES[key](df, load_questions(exp_dir, NEEDS_QUESTIONS[key]) if exp_dir is not None else None)
    return STUDIES[key](df)


def to_markdown(found: list[Finding]) -> list[str]:
    if not found:
        return []
    mark = {True: "yes", False: "**no**", None: "n/a"}
    L = ["| claim | observed | holds | source |", "|---|---|---|---|"]
    L += [f"| {f.claim} | {f.observed} | {mark[f.holds]} | {f.source} |" for f in found]
    return L
