"""Findings of the forgetting studies (issue #21's reproductions): LoRA vs full fine-tuning (Biderman et al. 2024),
pretraining replay (Bethune et al. 2025), Weighted Instruction Tuning (Chatterjee et al. 2025) and RL's Razor
(Shenfeld et al. 2025) and spurious forgetting in sequential stages (Zheng et al. 2025). Registered in
analysis/findings.py's STUDIES; the claims are statistics as everywhere (analysis/claims.py)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from analysis.claims import Evidence, Finding, above, below, best, diff, judge, mean_of, within
from analysis.study_cells import FORGET, LR, QA, W, _final, _means, _num, _values

ADAPTER, RANK = "model.adapter.method", "model.adapter.r"


def _best_lr(df: pd.DataFrame, metric: str, where: dict) -> float | None:
    """The LR with the best mean `metric` at the final checkpoint (fixed, for claims about that configuration)."""
    d = _final(df, metric)
    for k, v in where.items():
        d = d[np.isclose(d[k].astype(float), v)] if isinstance(v, float) else d[d[k] == v]
    return None if d.empty else float(d.groupby(LR)["value"].mean().idxmax())


def lora_vs_full(df: pd.DataFrame, ev: Evidence) -> list[Finding]:
    """Biderman et al. 2024 ("LoRA Learns Less and Forgets Less"): at each method's best LR, LoRA reaches less of
    the target than full fine-tuning and forgets less (held-out pretraining NLL increase); per LoRA rank."""
    src, out = "Biderman et al. 2024", []
    lrs = _values(df, LR)
    full = [ev.cell(QA, {ADAPTER: "none", LR: lr}) for lr in lrs]
    lr_full = _best_lr(df, QA, {ADAPTER: "none"})
    f_full = ev.cell(FORGET, {ADAPTER: "none", LR: lr_full}) if lr_full is not None else None
    for r in _values(df, RANK, {ADAPTER: "lora"}):
        where = {ADAPTER: "lora", RANK: float(r)}
        lora = [ev.cell(QA, {**where, LR: lr}) for lr in lrs]
        out.append(judge(f"full - LoRA r={r:g} > 0 on held-out QA at the best LR of each (LoRA learns less)",
                         lambda v, lora=lora: best(full)(v) - best(lora)(v), [*full, *lora], above(0), "pts", src,
                         f"LoRA r={r:g} by LR: " + _means(df, QA, LR, where) + "; full: "
                         + _means(df, QA, LR, {ADAPTER: "none"})))
        lr_lora = _best_lr(df, QA, where)
        f_lora = ev.cell(FORGET, {**where, LR: lr_lora}) if lr_lora is not None else None
        out.append(judge(f"full - LoRA r={r:g} forgetting > 0, each at its best LR (LoRA forgets less)",
                         diff(f_full, f_lora), [f_full, f_lora], above(0), "nats", src,
                         f"full at {_num(lr_full)}, LoRA at {_num(lr_lora)}" if lr_lora else ""))
        f_full_lrs = [ev.cell(FORGET, {ADAPTER: "none", LR: lr}) for lr in lrs]
        f_lora_lrs = [ev.cell(FORGET, {**where, LR: lr}) for lr in lrs]
        out.append(judge(f"on the learning-forgetting front, LoRA r={r:g} forgets less than full at equal learning: "
                         "full's - LoRA's least forgetting among points reaching the highest QA both reach > 0",
                         lambda v, a=(full, f_full_lrs), b=(lora, f_lora_lrs): _front_gap(v, a, b),
                         [*full, *lora, *f_full_lrs, *f_lora_lrs], above(0), "nats", src))
    return out


def _front_gap(v, a: tuple[list, list], b: tuple[list, list]) -> np.ndarray:
    """Per draw: the least forgetting of method a's points (one per LR: (learning cells, forgetting cells)) that
    reach learning level L, minus method b's, where L is the highest learning level both methods reach (the
    right end of the stretch of the Pareto front where both have points): forgetting compared at equal learning."""
    (qa_a, f_a), (qa_b, f_b) = ([np.stack([v(c) for c in cs]) for cs in m] for m in (a, b))
    level = np.minimum(qa_a.max(0), qa_b.max(0))
    least = [np.where(q >= level - 1e-12, f, np.inf).min(0) for q, f in ((qa_a, f_a), (qa_b, f_b))]
    return least[0] - least[1]


FRACTION = "data.replay.fraction"


def replay_study(df: pd.DataFrame, ev: Evidence) -> list[Finding]:
    """Bethune et al. 2025: ~1% replay of pretraining data keeps the pretraining loss nearly flat at little cost to
    the target. Per replay fraction, mean over the LRs (paired by LR, seed and item)."""
    src, out = "Bethune et al. 2025", []
    lrs = _values(df, LR)
    none_f = [ev.cell(FORGET, {FRACTION: None, LR: lr}) for lr in lrs]
    none_q = [ev.cell(QA, {FRACTION: None, LR: lr}) for lr in lrs]
    for f in _values(df, FRACTION):
        rep_f = [ev.cell(FORGET, {FRACTION: float(f), LR: lr}) for lr in lrs]
        rep_q = [ev.cell(QA, {FRACTION: float(f), LR: lr}) for lr in lrs]
        out.append(judge(f"{100 * f:g}% replay - none < 0 on the pretraining-NLL increase (less forgetting; mean "
                         "over LRs)", mean_of([diff(a, b) for a, b in zip(rep_f, none_f)]), [*rep_f, *none_f],
                         below(0), "nats", src, f"{100 * f:g}% replay by LR: " + _means(df, FORGET, LR, {FRACTION: f},
                                                                                          "nats")
                         + "; none: " + _means(df, FORGET, LR, {FRACTION: None}, "nats")))
        level = mean_of([lambda v, c=c: v(c) for c in rep_f])
        out.append(judge(f"{100 * f:g}% replay keeps the pretraining NLL from rising: increase < +0.05 nats (mean "
                         "over LRs)", level, rep_f, below(0.05), "nats", src))
        out.append(judge(f"{100 * f:g}% replay keeps the pretraining NLL flat: change within +-0.05 nats of the "
                         "base (mean over LRs)", level, rep_f, within(0.05), "nats", src))
        out.append(judge(f"{100 * f:g}% replay - none on held-out QA within +-5 points (little cost; mean over LRs)",
                         mean_of([diff(a, b) for a, b in zip(rep_q, none_q)]), [*rep_q, *none_q], within(0.05),
                         "pts", src, f"{100 * f:g}% replay by LR: " + _means(df, QA, LR, {FRACTION: f})))
    return out


RW = "regime.response_weight"


def wit_study(df: pd.DataFrame, ev: Evidence) -> list[Finding]:
    """Chatterjee et al. 2025 (Weighted Instruction Tuning): the best (lambda_p, lambda_r) cells have a low-to-
    moderate prompt weight (<= 0.5) and a high response weight (>= 0.5); and a small non-zero prompt weight beats
    prompt masking, (0, 1)."""
    src = "Chatterjee et al. 2025"
    lps, lrs = _values(df, W), _values(df, RW)
    cells = {(p, r): ev.cell(QA, {W: float(p), RW: float(r)}) for p in lps for r in lrs}
    inside = [c for (p, r), c in cells.items() if p <= 0.5 and r >= 0.5]
    outside = [c for (p, r), c in cells.items() if not (p <= 0.5 and r >= 0.5)]
    some = [c for (p, r), c in cells.items() if 0 < p <= 0.5 and r >= 0.5]
    masked = cells.get((0.0, 1.0))
    return [judge("the best cell of the region lambda_p <= 0.5, lambda_r >= 0.5 beats the best cell outside it "
                  "(held-out QA)", lambda v: best(inside)(v) - best(outside)(v), [*inside, *outside], above(0),
                  "pts", src, "by lambda_p (mean over lambda_r): " + _means(df, QA, W)),
            judge("a low-moderate prompt weight (0 < lambda_p <= 0.5, lambda_r >= 0.5) beats prompt masking (0, 1)",
                  lambda v: best(some)(v) - v(masked), [*some, masked], above(0), "pts", src,
                  "by lambda_r (mean over lambda_p): " + _means(df, QA, RW))]


KL_SFT, NLL_RESP, REGIME = "forgetting/kl_sft", "nll/response", "regime.name"


def _r2(xs: list, ys: list) -> np.ndarray:
    """Per bootstrap draw, the squared Pearson correlation across configurations of x (list of [draws]) with y."""
    x, y = np.stack([np.asarray(a, float) for a in xs]), np.stack([np.asarray(b, float) for b in ys])
    x, y = x - x.mean(0), y - y.mean(0)
    return (x * y).sum(0) ** 2 / ((x * x).sum(0) * (y * y).sum(0))


def razor_study(df: pd.DataFrame, ev: Evidence) -> list[Finding]:
    """Shenfeld et al. 2025: across regimes, methods and LRs, forgetting (held-out pretraining-NLL increase) is
    explained better by KL(base || tuned) on the fine-tuning prompts than by the fine-tuning loss (held-out response
    NLL): R^2 of forgetting on KL minus R^2 on the loss, each configuration's final checkpoint one point."""
    src = "Shenfeld et al. 2025"
    d = _final(df, FORGET)
    keys = [k for k in (REGIME, "model.adapter.method", LR) if k in d and d[k].nunique(dropna=True) > 0]
    configs = d[keys].drop_duplicates().to_dict("records") if keys else []
    cells = {m: [ev.cell(m, c) for c in configs] for m in (FORGET, KL_SFT, NLL_RESP)}
    allc = [c for m in cells for c in cells[m]]
    n = len(configs)
    r2 = lambda m: lambda v: _r2([v(c) for c in cells[m]], [v(c) for c in cells[FORGET]])  # noqa: E731
    return [judge(f"forgetting tracks KL(base || tuned) on the SFT prompts: R^2 > 0.5 across {n} configurations",
                  r2(KL_SFT), cells[KL_SFT] + cells[FORGET], above(0.5), "", src),
            judge("... better than it tracks the fine-tuning loss: R^2(KL) - R^2(response NLL) > 0",
                  lambda v: r2(KL_SFT)(v) - r2(NLL_RESP)(v), allc, above(0), "", src)]



STAGE, FROZEN = "stage", "train.freeze.bottom_layers"
TASK_A, TASK_B = "qa", "bio"  # experiments/spurious.yaml's stages: short-answer QA, then biographies
RECOVERY_K = (4, 16, 64)  # the k-shot recovery probe's k (eval.recovery.k, besides 0)


def recovery_metric(k: int, metric: str = QA) -> str:
    """The k-shot recovery probe's name for `metric` (harness/evaluation/recovery.py)."""
    return f"recovery/k{k}/{metric}"


def _steps(df: pd.DataFrame, where: dict) -> list[int]:
    d = df[(df["state"] == "done") & (df["metric"] == QA) & (df["step"] > 0)]
    for k, v in where.items():
        d = d[d[k] == v] if k in d else d.iloc[0:0]
    return sorted(int(s) for s in d["step"].unique())


def spurious_study(df: pd.DataFrame, ev: Evidence) -> list[Finding]:
    """Zheng et al. 2025 (spurious forgetting): after task A (QA), task-A accuracy collapses early in task-B
    training (biographies) and partly comes back; a handful of task-A examples restore most of it, more than the
    same examples teach the base; freezing the bottom layers in B reduces the collapse. The collapse is A's final
    accuracy minus the lowest checkpoint of B's first half (chosen again in every draw), paired by seed."""
    src, out = "Zheng et al. 2025", []
    a_final = ev.cell(QA, {STAGE: TASK_A})
    # the probe's calibration: on a checkpoint that has the task it must not take accuracy away (else it
    # measures the damage of its own fine-tuning, not what a few examples restore)
    on_a = [(k, ev.cell(recovery_metric(k), {STAGE: TASK_A})) for k in RECOVERY_K]
    on_a = [(k, c) for k, c in on_a if c is not None]
    if on_a:
        out.append(judge("the recovery probe does not damage a model that has task A: k-shot on A's final - A's "
                         "final > -3 pts at every k", best([diff(c, a_final) for _, c in on_a], lower_is_better=True),
                         [a_final, *(c for _, c in on_a)], above(-0.03), "pts", src,
                         "k-shot on A's final: " + ", ".join(f"k={k}: {100 * c.value:.1f}%" for k, c in on_a)))
    drops = {}
    for f in _values(df, FROZEN, {STAGE: TASK_B}):
        where = {STAGE: TASK_B, FROZEN: f}
        steps = _steps(df, where)
        early = [ev.cell(QA, where, step=s) for s in steps if s <= steps[-1] / 2] if steps else []
        low = best(early, lower_is_better=True) if early and all(c is not None for c in early) else None
        b_final = ev.cell(QA, where)
        frozen = f"bottom {f:g} layers frozen in B" if f else "nothing frozen"
        means = [c.value for c in early if c is not None]
        context = (f"A's final {100 * a_final.value:.1f}%; B by step: " + ", ".join(
            f"{s}: {100 * m:.1f}%" for s, m in zip(steps, means)) + (f"; B's final {100 * b_final.value:.1f}%"
                                                                      if b_final else "")) if a_final else ""
        drops[f] = (lambda v, low=low: v(a_final) - low(v)) if low is not None else None
        cells = [a_final, *early] if early else [None]
        out.append(judge(f"{frozen}: task-A accuracy collapses early in task B: A's final - the lowest checkpoint of "
                         "B's first half > 10 pts", drops[f] or (lambda v: v), cells, above(0.10), "pts", src, context))
        out.append(judge(f"{frozen}: ... and partly comes back: B's final - that lowest checkpoint > 0",
                         (lambda v, low=low, b=b_final: v(b) - low(v)) if low is not None else (lambda v: v),
                         [*cells, b_final], above(0), "pts", src))
        for k in RECOVERY_K:
            rec = ev.cell(recovery_metric(k), where)
            if rec is None and not any(recovery_metric(k) == m for m in df["metric"].unique()):
                continue  # this k was not probed
            out.append(judge(f"{frozen}: k={k} task-A examples restore most of what B lost: (k-shot - B's final) / "
                             "(A's final - B's final) > 0.5",
                             lambda v, r=rec, b=b_final: (v(r) - v(b)) / (v(a_final) - v(b)), [rec, b_final, a_final],
                             above(0.5), "", src, f"k-shot {100 * rec.value:.1f}%" if rec else ""))
            base = ev.cell(recovery_metric(k), {"run_id": "base"})
            out.append(judge(f"{frozen}: ... more than k={k} examples teach the base (recovery, not learning QA "
                             "afresh): k-shot after B - k-shot on the base > 0", diff(rec, base), [rec, base],
                             above(0), "pts", src, f"base k-shot {100 * base.value:.1f}%" if base else ""))
    frozen = [f for f in drops if f and drops[f] is not None]
    if 0 in drops and drops[0] is not None:
        for f in frozen:
            out.append(judge(f"freezing the bottom {f:g} layers in B reduces the collapse: collapse(nothing frozen) - "
                             f"collapse(bottom {f:g} frozen) > 0", lambda v, f=f: drops[0](v) - drops[f](v),
                             [a_final], above(0), "pts", src))
    return out
