"""Findings: does the published shape appear in this experiment's results? One checker per shipped study,
chosen by experiment name (also ``<name>_*`` variants), each returning claims as statistics (analysis/claims.py):
an effect with a bootstrap CI over seeds and items, tested against a decision boundary, verdict yes / no /
inconclusive.

Cells are done runs at their last evaluated checkpoint unless a claim says otherwise. Per-item values come from
the logged samples (analysis/items.py); a metric without them (results written before items were logged) falls
back to the run means, a bootstrap over seeds only, and the observed text says so.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from analysis.claims import (Evidence, Finding, above, all_of, below, best, diff, extreme, judge, mean_of, slope,
                             within)
from analysis.forgetting_studies import (RECOVERY_K, lora_vs_full, razor_study, recovery_metric, replay_study,
                                        spurious_study, wit_study)
from analysis.items import load_items
from analysis.study_cells import (ANSWERED, CONTINUED, FORGET, KL, LR, NLL, OWN, OWN_REAL, QA, QA_TRAIN, REAL_QA, REG,
                                  SEED, W, _data_label, _means, _num, _values)

PHASE_AXES = ("data.train.path", "data.train.limit", "train.epochs", "train.lr")


def _conditions(df: pd.DataFrame, free: tuple[str, ...]) -> list[dict]:
    """The grid's conditions: each combination of the axes other than `free` and the seed (data path as
    its label), for the studies whose claims are made per condition (the phase diagrams)."""
    d = df[(df["state"] == "done") & (df["step"] > 0) & (df["metric"] != "state")]
    # the phase axes always (a claim keeps its name when a rerun covers one cell: benchmarks/stability.py
    # --only), any other axis when it varies
    fixed = [c for c in PHASE_AXES if c in d.columns and c not in free and d[c].notna().any()]
    axes = fixed + [c for c in d.columns if c.startswith(("data.", "train.", "regime.", "model."))
                    and c not in free and c not in fixed and c != SEED and d[c].nunique(dropna=True) > 1]
    if not axes:
        return [{}]
    return [dict(zip(axes, k if isinstance(k, tuple) else (k,))) for k in
            d[axes].drop_duplicates().sort_values(axes).itertuples(index=False, name=None)]


def _label(cond: dict) -> str:
    short = {"data.train.limit": "n", "train.epochs": "epochs", "train.lr": "lr"}
    parts = []
    for k, v in cond.items():
        if k == "data.train.path":
            parts.insert(0, _data_label(v))
        elif k.startswith("data.eval") or v is None or (isinstance(v, float) and math.isnan(v)):
            continue
        else:
            parts.append(f"{short.get(k, k)}={_num(v)}" if isinstance(v, float) else f"{short.get(k, k)}={v}")
    return ", ".join(parts)


# ------------------------------------------------------------------------------------------------ studies


def seed_story(df: pd.DataFrame, ev: Evidence) -> list[Finding]:
    """mini_lima: the seed chapter's story, each claim a comparison with a CI."""
    src = "seed chapter / mini-world"
    lrs = _values(df, LR)
    cell = lambda m, reg, lr, at="final": ev.cell(m, {REG: reg, LR: lr}, at)
    masked = [cell(QA, "prompt_masked", lr) for lr in lrs]
    full = [cell(QA, "full", lr) for lr in lrs]
    only = [cell(QA, "prompt_only", lr) for lr in lrs]
    b = ev.base(QA)
    out = [judge("base answers < 10% of held-out questions (chat format)", lambda v: v(b), [b], below(0.10), "pct",
                 src),
           judge("prompt_masked - base > 0 (held-out QA, best LR)", lambda v: best(masked)(v) - v(b), [b, *masked],
                 above(0), "pts", src, "prompt_masked by LR: " + _means(df, QA, LR, {REG: "prompt_masked"})),
           judge("prompt_masked - full > 0 at the best LR of each (paired by seed and question)",
                 lambda v: best(masked)(v) - best(full)(v), [*masked, *full], above(0), "pts", src,
                 "full by LR: " + _means(df, QA, LR, {REG: "full"})),
           judge("prompt_only - base within +-5 points (the LR where it moves most)",
                 extreme([diff(c, b) for c in only]), [b, *only], within(0.05), "pts", src)]
    learners = ("prompt_masked", "full")
    groups = _present([[cell(FORGET, r, lr) for r in learners] for lr in lrs])
    out.append(judge("forgetting (held-out pretraining NLL increase) rises with the LR (slope over log10 LR, "
                     "prompt_masked and full)", slope(np.log10(lrs), groups), [c for g in groups for c in g],
                     above(0), "nats/decade", "Biderman et al. 2024",
                     "by LR (mean of prompt_masked and full): "
                     + _means(df, FORGET, LR, {REG: list(learners)}, "nats")))
    eps = sorted({round(e) for e in _values(df, "epoch")})
    if len(eps) > 1:
        pairs = [(cell(FORGET, r, lr, eps[-1]), cell(FORGET, r, lr, eps[0])) for r in learners for lr in lrs]
        pairs = [p for p in pairs if None not in p] or [(None, None)]  # the configurations the grid has
        out.append(judge(f"forgetting rises with epochs (epoch {eps[-1]} - epoch {eps[0]}, mean over regime x LR)",
                         mean_of([diff(a, c) for a, c in pairs]), [x for p in pairs for x in p], above(0), "nats",
                         "Biderman et al. 2024"))
    ba, bc = ev.base(ANSWERED), ev.base(CONTINUED)
    ans = [cell(ANSWERED, "prompt_masked", lr) for lr in lrs]
    cont = [cell(CONTINUED, "prompt_masked", lr) for lr in lrs]
    out.append(all_of("format probe flips: the base continues a raw question with another question, prompt_masked "
                      "answers it", [
                          judge("base continued > 50%", lambda v: v(bc), [bc], above(0.5), "pct"),
                          judge("prompt_masked answered - base answered (best LR)", lambda v: best(ans)(v) - v(ba),
                                [ba, *ans], above(0), "pts"),
                          judge("prompt_masked answered - continued (best LR)",
                                best([diff(a, c) for a, c in zip(ans, cont)]), [*ans, *cont], above(0), "pts")], src))
    return out


def _present(groups: list[list]) -> list[list]:
    """Each LR's cells without the regimes the grid lacks; a group left empty stays [None] (claim n/a)."""
    return [[c for c in g if c is not None] or [None] for g in groups]


def _shape_metrics(df: pd.DataFrame, data: str) -> list[tuple[str, bool]]:
    """(metric, lower is better) to judge a data variant on: its own-format task where evaluated, the
    training format's response NLL, and chat QA (which neither variant teaches) last."""
    seen = set(df["metric"])
    return [(m, low) for m, low in ((OWN.get(data, ""), False), (OWN_REAL.get(data, ""), False), (NLL, True),
                                    (QA, False)) if m in seen]


def prompt_weight(df: pd.DataFrame, ev: Evidence) -> list[Finding]:
    """Huerta-Enochian & Ko 2024: an inverted U in lambda (optimum inside (0, 1)) on short completions, flat
    on long ones; judged per condition of the grid (data x size x epochs x LR: the phase diagram)."""
    src, out = "Huerta-Enochian & Ko 2024", []
    for cond in _conditions(df, (W,)):
        ws = _values(df, W, cond)
        if len(ws) < 3:
            continue
        data = _data_label(cond.get("data.train.path", df.get("data.train.path", pd.Series([""])).iloc[0]))
        for m, low in _shape_metrics(df, data):
            cells = {w: ev.cell(m, {**cond, W: w}) for w in ws}
            ends = [cells[w] for w in ws if w in (0.0, 1.0)]
            inside = [cells[w] for w in ws if 0 < w < 1]
            ctx = "by lambda: " + _means(df, m, W, cond, "pct" if not low else "nats")
            name = f"{_label(cond)} [{m}]"
            if "long-prompt" in data or "longprompt" in name:
                gap = (lambda v, i=inside, e=ends, lo=low: best(i, lo)(v) - best(e, lo)(v))
                out.append(judge(f"{name}: inverted U, best lambda inside (0, 1) beats both ends",
                                 gap, [*ends, *inside], below(0) if low else above(0), "nats" if low else "pts", src,
                                 ctx))
            else:
                rng = (lambda v, c=list(cells.values()): best(c)(v) - best(c, True)(v))
                out.append(judge(f"{name}: lambda barely matters (range within 5 points)" if not low else
                                 f"{name}: lambda barely matters (range within 0.05 nats)", rng, list(cells.values()),
                                 within(0.05), "nats" if low else "pts", src, ctx))
    return out or [Finding("prompt-loss weight sweep", "no condition with 3 or more weights", "n/a", src)]


def instruction_modelling(df: pd.DataFrame, ev: Evidence) -> list[Finding]:
    """Shi et al. 2024: loss on instructions (full) beats prompt_masked when prompts are long relative to the
    answers and data is small; no difference otherwise. Per condition of the grid."""
    src, out = "Shi et al. 2024", []
    for cond in _conditions(df, (REG,)):
        data = _data_label(cond.get("data.train.path", df.get("data.train.path", pd.Series([""])).iloc[0]))
        for m, low in _shape_metrics(df, data):
            f, k = ev.cell(m, {**cond, REG: "full"}), ev.cell(m, {**cond, REG: "prompt_masked"})
            if f is None and k is None:
                continue
            name = f"{_label(cond)} [{m}]"
            ctx = "by regime: " + _means(df, m, REG, cond, "pct" if not low else "nats")
            if "long-prompt" in data:
                out.append(judge(f"{name}: full beats prompt_masked", diff(f, k), [f, k],
                                 below(0) if low else above(0), "nats" if low else "pts", src, ctx))
            else:
                out.append(judge(f"{name}: no real difference (|full - masked| within 5 points / 0.05 nats)",
                                 diff(f, k), [f, k], within(0.05), "nats" if low else "pts", src, ctx))
    return out or [Finding("instruction modelling", "no finished runs", "n/a", src)]


def knowledge_extraction(df: pd.DataFrame, ev: Evidence) -> list[Finding]:
    src = "Allen-Zhu & Li 2023 (Physics of LMs 3.1)"
    models = _values(df, "model.name_or_path")
    aug = [m for m in models if "noaug" not in str(m)]
    plain = [m for m in models if "noaug" in str(m)]
    if not aug or not plain:
        return [Finding("knowledge extraction", "no finished runs with an augmented and a plain base", "n/a", src)]
    cells = {m: [ev.cell(QA, {"model.name_or_path": m, LR: lr}) for lr in _values(df, LR, {"model.name_or_path": m})]
             for m in models}
    a = [c for m in aug for c in cells[m]]
    p = [c for m in plain for c in cells[m]]
    mem = ", ".join(f"{'plain' if 'noaug' in str(m) else 'augmented'} {_means(df, QA_TRAIN, LR, {'model.name_or_path': m})}"
                    for m in models)
    return [judge("held-out QA after SFT: augmented - plain pretraining > 0 (best LR of each)",
                  lambda v: best(a)(v) - best(p)(v), [*a, *p], above(0), "pts", src,
                  f"train-half QA (memorised) by LR: {mem}")]


def real_model_story(df: pd.DataFrame, ev: Evidence) -> list[Finding]:
    """gemma_lima: the seed chapter's story on a real pretrained base."""
    src = "seed chapter on gemma-3-270m"
    lrs = _values(df, LR)
    cell = lambda m, reg, lr: ev.cell(m, {REG: reg, LR: lr})
    b = ev.base(REAL_QA)
    masked = [cell(REAL_QA, "prompt_masked", lr) for lr in lrs]
    full = [cell(REAL_QA, "full", lr) for lr in lrs]
    only = [cell(REAL_QA, "prompt_only", lr) for lr in lrs]
    out = [judge("base answers < 15% of held-out chat questions", lambda v: v(b), [b], below(0.15), "pct", src),
           judge("prompt_masked - base > 0 (held-out chat QA, best LR)", lambda v: best(masked)(v) - v(b),
                 [b, *masked], above(0), "pts", src, "by LR: " + _means(df, REAL_QA, LR, {REG: "prompt_masked"})),
           judge("prompt_masked - full > 0 at the best LR of each", lambda v: best(masked)(v) - best(full)(v),
                 [*masked, *full], above(0), "pts", src, "full by LR: " + _means(df, REAL_QA, LR, {REG: "full"})),
           judge("prompt_only - base within +-5 points (the LR where it moves most)",
                 extreme([diff(c, b) for c in only]), [b, *only], within(0.05), "pts", src)]
    for metric, what in ((FORGET, "held-out text NLL increase"), (KL, "KL(base || tuned) on held-out text")):
        groups = _present([[cell(metric, r, lr) for r in ("prompt_masked", "full")] for lr in lrs])
        out.append(judge(f"forgetting ({what}) rises with the LR (slope over log10 LR, prompt_masked and full)",
                         slope(np.log10(lrs), groups), [c for g in groups for c in g], above(0), "nats/decade",
                         "Biderman et al. 2024", "by LR (mean of prompt_masked and full): "
                         + _means(df, metric, LR, {REG: ["prompt_masked", "full"]}, "nats")))
    ba = ev.base(ANSWERED)
    ans = [cell(ANSWERED, "prompt_masked", lr) for lr in lrs]
    out.append(judge("format probe (raw questions, no template): prompt_masked answered - base answered > 0 (best LR)",
                     lambda v: best(ans)(v) - v(ba), [ba, *ans], above(0), "pts", src))
    return out


STUDIES: dict[str, tuple[Callable[[pd.DataFrame, Evidence], list[Finding]], tuple[str, ...]]] = {
    "wit": (wit_study, (QA, FORGET)),
    "spurious": (spurious_study, (QA, *(recovery_metric(k) for k in RECOVERY_K), FORGET)),
    "razor": (razor_study, (FORGET, "forgetting/kl_sft", NLL)),
    "replay": (replay_study, (QA, FORGET)),
    "lora_vs_full": (lora_vs_full, (QA, FORGET)),
    "mini_lima": (seed_story, (QA, FORGET, ANSWERED, CONTINUED)),
    "prompt_weight": (prompt_weight, (QA, NLL, *OWN.values(), *OWN_REAL.values())),
    "instruction_modelling": (instruction_modelling, (QA, NLL, *OWN.values())),
    "knowledge_extraction": (knowledge_extraction, (QA,)),
    "gemma_lima": (real_model_story, (REAL_QA, FORGET, KL, ANSWERED)),
}


def evidence(df: pd.DataFrame, exp_dir: str | Path | None, metrics) -> Evidence:
    """Per-item evidence of `metrics`; a metric without logged items falls back to the run means (one 'item'
    per run: the bootstrap then resamples seeds only)."""
    items = load_items(exp_dir, metrics) if exp_dir is not None else pd.DataFrame()
    have = set(items["metric"]) if len(items) else set()
    fallback = df[df["metric"].isin([m for m in metrics if m not in have]) & (df["metric"] != "state")]
    if len(fallback):
        fb = fallback.assign(doc_id="run mean", num=fallback["value"].astype(float), den=1.0)
        fb.loc[fb["step"] == 0, ["run_id", "state"]] = ["base", "done"]
        fb = fb.drop_duplicates(["run_id", "step", "metric"])
        items = pd.concat([items, fb.drop(columns=["value"])], ignore_index=True)
    return Evidence(items, df)


def study_metrics(name: str) -> tuple[str, ...]:
    key = name if name in STUDIES else next((k for k in STUDIES if name.startswith(k + "_")), None)
    return STUDIES[key][1] if key else ()


def with_item_cis(summ: pd.DataFrame, ev: Evidence) -> pd.DataFrame:
    """The summary table's CIs over seeds and items (Evidence.runs_ci) where per-item results exist; the
    seeds-only bootstrap stays where they do not."""
    summ = summ.copy()
    for i, r in summ.iterrows():
        got = ev.runs_ci(r["metric"], str(r["runs"]).split(",")) if r.get("runs") else None
        if got:
            summ.loc[i, ["ci_low", "ci_high"]] = got[:2]
    return summ


def findings_for(name: str, df: pd.DataFrame, exp_dir: str | Path | None = None,
                 ev: Evidence | None = None) -> list[Finding]:
    """The findings of a shipped study (by experiment name, also `<name>_*` variants); [] otherwise."""
    key = name if name in STUDIES else next((k for k in STUDIES if name.startswith(k + "_")), None)
    if key is None:
        return []
    check, metrics = STUDIES[key]
    return check(df, ev if ev is not None else evidence(df, exp_dir, metrics))


FINDINGS_NOTE = ("Each claim is an effect with a 95% percentile-bootstrap CI that resamples seeds and evaluation "
                 "items together (paired across runs that share them; a best LR is chosen again in every draw). "
                 "yes / no: the CI lies on one side of the decision boundary; inconclusive: it spans the boundary, "
                 "and the verdict says what would decide it (analysis/claims.py).")


def to_markdown(found: list[Finding]) -> list[str]:
    if not found:
        return []
    mark = {"yes": "yes", "no": "**no**", "inconclusive": "*inconclusive*", "n/a": "n/a"}
    L = ["| claim | observed (effect [95% CI]) | verdict | source |", "|---|---|---|---|"]
    L += [f"| {f.claim} | {f.observed} | {mark[f.verdict]}{' (' + f.decide + ')' if f.decide else ''} | {f.source} |"
          for f in found]
    return L
