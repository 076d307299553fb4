"""analysis/findings.py: each study's claims on per-item results with known shapes (yes where the shape is
built in, no where its opposite is), through the same bootstrap as the report (analysis/claims.py)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from analysis.claims import Evidence
from analysis.findings import findings_for, to_markdown

N = 200


def _vals(v: float, kind: str, rng, seed: int = 0) -> np.ndarray:
    if kind == "acc":  # exactly round(v * N) correct items, the easiest first in a per-seed item order: the
        x = np.zeros(N)  # configurations of one seed agree on which items are easy (paired, as real runs are)
        x[: int(round(v * N))] = 1.0
        order = np.random.default_rng(seed).permutation(N)
        return x[np.argsort(order)]
    return rng.normal(v, 0.05, N)  # an NLL-like per-item value around v


def _study(cells: dict, base: dict | None = None, seeds=(1, 2), epochs=(1.0,)):
    """cells: (axes as tuple of pairs, metric) -> value or [value per epoch]. Returns (items, runs) frames."""
    rng = np.random.default_rng(0)
    items, runs = [], []
    for m, v in (base or {}).items():
        kind = "acc" if m.endswith(("exact_match", "acc", "facts", "answered", "question")) else "nll"
        items.append(pd.DataFrame({"run_id": "base", "state": "done", "step": 0, "epoch": 0.0, "metric": m,
                                   "doc_id": [str(i) for i in range(N)], "num": _vals(v, kind, rng), "den": 1.0}))
    for (axes, m), vs in cells.items():
        vs = vs if isinstance(vs, list) else [vs]
        kind = "acc" if m.endswith(("exact_match", "acc", "facts", "answered", "question")) else "nll"
        for s in seeds:
            ax = {**dict(axes), "train.seed": s}
            run = "-".join(f"{v}" for v in ax.values())
            for k, v in enumerate(vs):
                step, ep = 10 * (k + 1), epochs[k] if k < len(epochs) else float(k + 1)
                x = _vals(v, kind, rng, s)
                items.append(pd.DataFrame({"run_id": run, "state": "done", "step": step, "epoch": ep, "metric": m,
                                           "doc_id": [str(i) for i in range(N)], "num": x, "den": 1.0, **ax}))
                runs.append({"run_id": run, "state": "done", "step": step, "epoch": ep, "metric": m,
                             "value": float(x.mean()), **ax})
    items = pd.concat(items, ignore_index=True)
    return items, pd.DataFrame(runs)


def _found(name, cells, base=None, **kw):
    items, runs = _study(cells, base, **kw)
    return findings_for(name, runs, ev=Evidence(items, runs))


LP, LA = "x/sft_train_longprompt_large.jsonl", "x/sft_train_longanswer_large.jsonl"
OWN_LP, OWN_LA = "world_longprompt/exact_match", "world_longanswer/facts"


def test_prompt_weight_inverted_u_per_condition_and_flat_long_answers():
    u = {0.0: 0.30, 0.01: 0.45, 0.1: 0.50, 1.0: 0.25}  # the published shape at n=25
    mono = {0.0: 0.60, 0.01: 0.45, 0.1: 0.40, 1.0: 0.30}  # best at lambda 0: no inverted U at n=400
    cells = {}
    for n, curve in ((25, u), (400, mono)):
        for w, v in curve.items():
            cells[((("data.train.path", LP), ("data.train.limit", n), ("regime.name", "prompt_weight"),
                    ("regime.prompt_weight", w)), OWN_LP)] = v
    for w in (0.0, 0.1, 1.0):
        cells[((("data.train.path", LA), ("data.train.limit", 25), ("regime.name", "prompt_weight"),
                ("regime.prompt_weight", w)), OWN_LA)] = 0.6
    found = _found("prompt_weight_phase", cells)
    by = {f.claim: f for f in found}
    small = next(f for c, f in by.items() if "n=25" in c and "long-prompt" in c)
    large = next(f for c, f in by.items() if "n=400" in c)
    flat = next(f for c, f in by.items() if "short-prompt/long-answer" in c)
    assert (small.verdict, large.verdict) == ("yes", "no"), (small.observed, large.observed)
    assert "by lambda: 0: 30.0%, 0.01: 45.0%, 0.1: 50.0%, 1: 25.0%" in small.observed
    assert abs(small.estimate - 0.20) < 1e-9  # best inside (0.1: 50%) - best end (0: 30%)
    assert flat.verdict == "yes"
    md = to_markdown(found)
    assert md[0].startswith("| claim | observed") and any("**no**" in line for line in md)
    assert findings_for("some_other_study", pd.DataFrame()) == []


def test_lower_is_better_metrics_judge_the_other_way():
    """The training format's response NLL: a U in NLL is the inverted U in quality."""
    cells = {((("data.train.path", LP), ("regime.name", "prompt_weight"), ("regime.prompt_weight", w)),
              "nll/response"): v for w, v in {0.0: 1.45, 0.05: 1.30, 0.5: 1.6, 1.0: 2.1}.items()}
    f = next(f for f in _found("prompt_weight", cells) if "nll/response" in f.claim)
    assert f.verdict == "yes" and f.estimate < 0
    im = {}
    for data, (full, masked) in {LP: (2.17, 1.46), LA: (0.64, 0.63)}.items():
        for reg, v in (("full", full), ("prompt_masked", masked)):
            im[((("data.train.path", data), ("data.train.limit", 250), ("regime.name", reg)), "nll/response")] = v
    by = {f.claim: f for f in _found("instruction_modelling", im)}
    lp = next(f for c, f in by.items() if "long-prompt" in c)
    la = next(f for c, f in by.items() if "long-answer" in c)
    assert lp.verdict == "no" and abs(lp.estimate - 0.71) < 0.02  # masked wins here: the published shape fails
    assert la.verdict == "yes"  # 0.01 nats apart: within 0.05


def test_forgetting_vs_epochs_mean_over_configurations():
    def claim(curves):
        cells = {((("regime.name", r), ("train.lr", lr)), "forgetting/pretrain_nll_delta"): ys
                 for (r, lr), ys in curves.items()}
        found = _found("mini_lima", cells, epochs=(1.0, 2.0, 3.0))
        return next(f for f in found if "epochs" in f.claim)

    rising = {("prompt_masked", 3e-4): [0.2, 0.3, 0.4], ("full", 3e-4): [0.3, 0.5, 0.6],
              ("full", 1e-3): [1.1, 0.7, 0.9]}  # the too-high LR overshoots at epoch 1; the mean still rises
    f = claim(rising)
    assert f.verdict == "yes" and "epoch 3 - epoch 1" in f.claim and abs(f.estimate - (0.2 + 0.3 - 0.2) / 3) < 0.01
    assert claim({k: v[::-1] for k, v in rising.items()}).verdict == "no"


def test_real_model_story_verdicts():
    cells, lrs = {}, (1e-5, 5e-5)
    qa = {("prompt_masked", 1e-5): 0.6, ("prompt_masked", 5e-5): 0.5, ("full", 1e-5): 0.3, ("full", 5e-5): 0.25,
          ("prompt_only", 1e-5): 0.0, ("prompt_only", 5e-5): 0.01}
    for (reg, lr), v in qa.items():
        ax = (("regime.name", reg), ("train.lr", lr))
        cells[(ax, "real_qa/exact_match")] = v
        cells[(ax, "format/answered")] = 0.5
        cells[(ax, "forgetting/pretrain_nll_delta")] = lr * 1e4
        cells[(ax, "forgetting/kl_base")] = lr * 5e3
    base = {"real_qa/exact_match": 0.0, "format/answered": 0.65, "forgetting/pretrain_nll_delta": 0.0,
            "forgetting/kl_base": 0.0}
    by = {f.claim.split(" (")[0]: f for f in _found("gemma_lima", cells, base)}
    assert by["base answers < 15% of held-out chat questions"].verdict == "yes"
    assert by["prompt_masked - base > 0"].verdict == "yes"
    assert by["prompt_masked - full > 0 at the best LR of each"].verdict == "yes"
    assert by["prompt_only - base within +-5 points"].verdict == "yes"
    assert all(f.verdict == "yes" for c, f in by.items() if c.startswith("forgetting"))
    # the real base already answers 65% of raw questions; the tuned 50%: the claim fails, and says so
    fmt = by["format probe"]
    assert fmt.verdict == "no" and abs(fmt.estimate + 0.15) < 1e-9


def test_findings_figure_draws_every_verdict(tmp_path):
    from analysis.figures.common import Context
    from analysis.figures.findings import fig_findings

    cells = {((("data.train.path", LP), ("data.train.limit", n), ("regime.name", "prompt_weight"),
               ("regime.prompt_weight", w)), OWN_LP): v
             for n, curve in ((25, {0.0: 0.3, 0.1: 0.5, 1.0: 0.25}), (400, {0.0: 0.6, 0.1: 0.4, 1.0: 0.3}),
                              (100, {0.0: 0.40, 0.1: 0.41, 1.0: 0.39}))
             for w, v in curve.items()}
    found = _found("prompt_weight_phase", cells)
    assert {f.verdict for f in found} >= {"yes", "no"}
    ctx = Context(df=pd.DataFrame(columns=["state", "metric", "step"]), training=pd.DataFrame(), axes=[],
                  exp_dir=tmp_path, target=None, findings=found)
    fig = fig_findings(ctx)
    fig.savefig(tmp_path / "f.png")
    assert (tmp_path / "f.png").stat().st_size > 5000
    assert len(fig.axes[0].get_yticklabels()) == len(found)


def test_lora_vs_full_learns_less_and_forgets_less_only_when_built_in():
    QA, F = "world_qa/exact_match", "forgetting/pretrain_nll_delta"
    A, R, LRK = "model.adapter.method", "model.adapter.r", "train.lr"

    def cells(lora_qa, lora_forget):
        out = {}
        for lr, (fq, ff) in {1e-4: (0.6, 0.1), 1e-3: (0.3, 0.8)}.items():  # full: best at 1e-4
            out[(((A, "none"), (R, np.nan), (LRK, lr)), QA)] = fq
            out[(((A, "none"), (R, np.nan), (LRK, lr)), F)] = ff
        for lr, q in {1e-4: lora_qa - 0.2, 1e-3: lora_qa}.items():  # LoRA: best at 1e-3
            out[(((A, "lora"), (R, 8.0), (LRK, lr)), QA)] = q
            out[(((A, "lora"), (R, 8.0), (LRK, lr)), F)] = lora_forget
        return out

    shape = {f.claim: f.verdict for f in _found("lora_vs_full", cells(0.45, 0.02))}  # the published shape
    assert set(shape.values()) == {"yes"} and len(shape) == 3
    opposite = {f.claim: f.verdict for f in _found("lora_vs_full", cells(0.75, 0.4))}  # learns more, forgets more
    assert set(opposite.values()) == {"no"}
    assert any("LoRA r=8" in c for c in shape)


def test_lora_forgets_less_at_equal_learning_only_if_the_front_says_so():
    """Full fine-tuning at a low LR learns as much as LoRA's best with almost no forgetting: at each method's best
    LR LoRA forgets less, but on the front, at equal learning, it forgets more."""
    QA, F = "world_qa/exact_match", "forgetting/pretrain_nll_delta"
    A, R, LRK = "model.adapter.method", "model.adapter.r", "train.lr"
    cells = {}
    for lr, (q, f) in {1e-5: (0.4, 0.01), 1e-4: (0.6, 0.5)}.items():
        cells[(((A, "none"), (R, np.nan), (LRK, lr)), QA)], cells[(((A, "none"), (R, np.nan), (LRK, lr)), F)] = q, f
    for lr, (q, f) in {1e-5: (0.2, 0.05), 1e-4: (0.4, 0.1)}.items():
        cells[(((A, "lora"), (R, 8.0), (LRK, lr)), QA)], cells[(((A, "lora"), (R, 8.0), (LRK, lr)), F)] = q, f
    got = {f.claim: f for f in _found("lora_vs_full", cells)}
    best_lr = next(f for c, f in got.items() if "each at its best LR" in c)
    front = next(f for c, f in got.items() if "at equal learning" in c)
    assert best_lr.verdict == "yes" and front.verdict == "no"
    assert front.estimate == pytest.approx(0.01 - 0.1, abs=0.02)


def test_replay_keeps_pretraining_nll_flat_only_when_built_in():
    QA, F, FR, LRK = "world_qa/exact_match", "forgetting/pretrain_nll_delta", "data.replay.fraction", "train.lr"

    def cells(rep_forget, rep_qa):
        out = {}
        for lr in (1e-4, 1e-3):
            out[(((FR, np.nan), (LRK, lr)), F)] = 0.5
            out[(((FR, np.nan), (LRK, lr)), QA)] = 0.6
            out[(((FR, 0.01), (LRK, lr)), F)] = rep_forget
            out[(((FR, 0.01), (LRK, lr)), QA)] = rep_qa
        return out

    shape = {f.claim: f.verdict for f in _found("replay", cells(0.01, 0.59))}
    assert len(shape) == 4 and set(shape.values()) == {"yes"}, shape
    better = [f.verdict for f in _found("replay", cells(-0.5, 0.59))]  # replay lowers the NLL below the base's
    assert better == ["yes", "yes", "no", "yes"]  # less forgetting, does not rise, but not flat
    opposite = {f.claim: f.verdict for f in _found("replay", cells(0.55, 0.3))}
    assert set(opposite.values()) == {"no"}, opposite


def test_razor_forgetting_tracks_kl_on_sft_prompts_only_when_built_in():
    F, K, N = "forgetting/pretrain_nll_delta", "forgetting/kl_sft", "nll/response"
    rng = np.random.default_rng(3)
    configs = [(r, m, lr) for r in ("prompt_masked", "full") for m in ("none", "lora") for lr in (3e-4, 1e-3, 3e-3)]

    def cells(follows_kl: bool):
        out = {}
        for r, m, lr in configs:
            kl, loss = rng.uniform(0.2, 3.0), rng.uniform(1.0, 2.0)
            ax = (("regime.name", r), ("model.adapter.method", m), ("train.lr", lr))
            out[(ax, K)], out[(ax, N)] = kl, loss
            out[(ax, F)] = 0.3 * kl if follows_kl else 0.5 * loss
        return out

    shape = [f.verdict for f in _found("razor", cells(True))]
    assert shape == ["yes", "yes"], shape
    opposite = [f.verdict for f in _found("razor", cells(False))]
    assert opposite[1] == "no", opposite  # forgetting follows the loss here: KL explains less than the loss


def test_spurious_forgetting_collapse_recovery_and_freezing_only_when_built_in():
    """Zheng et al. 2025 in two stages: task-A accuracy through stage B (a value per checkpoint), the k-shot
    recovery probe at B's final checkpoint and on the base."""
    QA, S, FZ = "world_qa/exact_match", "stage", "train.freeze.bottom_layers"
    R4, R16 = "recovery/k4/world_qa/exact_match", "recovery/k16/world_qa/exact_match"

    def cells(b0, b2):
        return {(((S, "qa"), (FZ, 0)), QA): [0.6],
                (((S, "bio"), (FZ, 0)), QA): b0, (((S, "bio"), (FZ, 2)), QA): b2,
                (((S, "bio"), (FZ, 0)), R4): [0.46], (((S, "bio"), (FZ, 0)), R16): [0.58],
                (((S, "bio"), (FZ, 2)), R4): [0.6], (((S, "bio"), (FZ, 2)), R16): [0.6],
                (((S, "qa"), (FZ, 0)), R4): [0.6], (((S, "qa"), (FZ, 0)), R16): [0.61]}

    base = {R4: 0.1, R16: 0.2}
    got = {f.claim: f.verdict for f in _found("spurious", cells([0.3, 0.25, 0.4, 0.45], [0.55, 0.55, 0.58, 0.58]),
                                              base, seeds=(1, 2, 3))}
    nothing = {c: v for c, v in got.items() if c.startswith("nothing frozen")}
    assert list(nothing.values()) == ["yes", "yes", "no", "yes", "yes", "yes"], nothing  # k=4 restores a tenth
    assert [v for c, v in got.items() if "collapses early" in c and "bottom 2" in c] == ["no"]
    assert [v for c, v in got.items() if c.startswith("freezing the bottom 2")] == ["yes"]
    assert [v for c, v in got.items() if c.startswith("the recovery probe does not damage")] == ["yes"]
    flat = {f.claim: f.verdict for f in _found("spurious", cells([0.6] * 4, [0.3, 0.2, 0.3, 0.3]), base,
                                               seeds=(1, 2, 3))}
    assert [v for c, v in flat.items() if "collapses early" in c] == ["no", "yes"]
    assert [v for c, v in flat.items() if c.startswith("freezing")] == ["no"]  # freezing made it worse here
