"""Synthetic results directories that follow docs/results-schema.md, for the analysis tests.

``make_results(root)`` writes ``root/<name>/`` with a plan (regimes x learning rates x seeds, plus a
prompt-loss-weight sweep), a base evaluation, done runs with two evaluated checkpoints (epochs 1 and 2), and
three runs that are not done: a *missing* run (in the plan, no directory), a *failed* run (``FAILED``, one
evaluation) and an *incomplete* run (no ``DONE``, one evaluation). It returns a :class:`Synthetic` with every
value it wrote, so tests can compare the analysis against the ground truth.
"""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

REGIMES = ("prompt_masked", "full", "prompt_only")
ABBREV = {"prompt_masked": "masked", "full": "full", "prompt_only": "promptonly", "prompt_weight": "plw"}
LRS = (1e-4, 3e-4)
SEEDS = (1, 2, 3)
PLW_WEIGHTS = (0.01, 0.1, 0.5)
PLW_SEEDS = (1, 2)
STEPS = (2, 4)  # two optimizer steps per epoch, two epochs

BASE_CONFIG = {
    "name": "synth", "description": "Synthetic results for the analysis tests.", "results_dir": "results",
    "model": {"name_or_path": "results/world/test-seed0/model"},
    "data": {"train": {"path": "results/world/test-seed0/data/sft_train.jsonl"}, "max_length": 256},
    "regime": {"name": "prompt_masked", "turns": "all", "prompt_weight": 0.0, "eot": True, "template": False},
    "train": {"seed": 1, "lr": 0.0002, "epochs": 2.0, "batch_tokens": 4096},
    "eval": {"tasks": [{"name": "world_qa"}, {"name": "world_facts"}, {"name": "hellaswag"}]},
}

BASE_METRICS = {
    "world_qa/exact_match": 0.05, "world_qa/exact_match_stderr": 0.01, "world_facts/acc": 0.70,
    "hellaswag/acc_norm": 0.30, "nll/response": 4.0, "nll/prompt": 2.0, "nll/template": 6.0,
    "forgetting/pretrain_nll": 1.0, "forgetting/pretrain_nll_delta": 0.0, "forgetting/kl_base": 0.0,
    "format/answered": 0.10, "format/continued_question": 0.80, "format/other": 0.10, "format/unfinished": 0.2,
}

TOKENS = ["<|im_start|>", "user", "\n", "When", " was", " Ada", " born", "?", "<|im_end|>", "\n",
          "<|im_start|>", "assistant", "\n", "10", " May", " 1815", ".", "<|im_end|>"]
SEGMENTS = ["template"] * 3 + ["user"] * 5 + ["template"] * 5 + ["assistant"] * 4 + ["eot"]


@dataclass
class Synthetic:
    root: Path  # the results root (contains <name>/)
    exp_dir: Path
    name: str
    plan: dict
    values: dict = field(default_factory=dict)  # (run_id, step, metric) -> value
    epochs: dict = field(default_factory=dict)  # (run_id, step) -> epoch
    states: dict = field(default_factory=dict)  # run_id -> state
    axes: dict = field(default_factory=dict)  # run_id -> {axis: value}
    base: dict = field(default_factory=dict)
    missing: str = ""
    failed: str = ""
    incomplete: str = ""
    training: dict = field(default_factory=dict)  # (run_id, step, metric) -> value

    def experiment_yaml(self, path: Path) -> Path:
        """An experiment file whose results land in this directory (for `harness report EXP.yaml`)."""
        cfg = copy.deepcopy(BASE_CONFIG)
        cfg["name"], cfg["results_dir"] = self.name, str(self.root)
        cfg["eval"] = {"tasks": [{"name": t["name"]} for t in BASE_CONFIG["eval"]["tasks"]]}
        cfg["grid"] = [{"regime.name": list(REGIMES), "train.lr": list(LRS), "train.seed": list(SEEDS)},
                       {"regime.name": ["prompt_weight"], "regime.prompt_weight": list(PLW_WEIGHTS),
                        "train.lr": [LRS[0]], "train.seed": list(PLW_SEEDS)}]
        Path(path).write_text(yaml.safe_dump(cfg, sort_keys=False), encoding="utf-8")
        return Path(path)


def _run_id(axes: dict) -> str:
    parts = [ABBREV[axes["regime.name"]]]
    if "regime.prompt_weight" in axes:
        parts.append(f"plw{axes['regime.prompt_weight']:g}")
    parts += [f"lr{axes['train.lr']:.0e}".replace("e-0", "e-"), f"s{axes['train.seed']}"]
    h = hashlib.sha256(json.dumps(axes, sort_keys=True).encode()).hexdigest()[:8]
    return "-".join(parts) + f"-{h}"


def _metrics(axes: dict, step: int, rng: np.random.Generator) -> dict:
    """Plausible, regime-dependent numbers with seed noise (exact values are recorded, not derived)."""
    r, lr, ep = axes["regime.name"], axes["train.lr"], step / 2
    w = axes.get("regime.prompt_weight", {"prompt_masked": 0.0, "full": 1.0, "prompt_only": 0.0}.get(r, 0.0))
    learn = {"prompt_masked": 0.6, "full": 0.5, "prompt_only": 0.1, "prompt_weight": 0.55 + 0.3 * w - 0.5 * w * w}[r]
    forget = {"prompt_masked": 0.10, "full": 0.05, "prompt_only": 0.02, "prompt_weight": 0.08 - 0.04 * w}[r]
    scale = (lr / 1e-4) ** 0.5 * ep / 2
    n = lambda s: float(rng.normal(0, s))  # noqa: E731
    qa = min(1.0, max(0.0, 0.05 + learn * scale + n(0.03)))
    ans = min(0.95, 0.1 + 0.8 * learn + n(0.02))
    cont = max(0.0, (0.9 - ans) * 0.8)
    delta = forget * scale + n(0.01)
    return {
        "world_qa/exact_match": qa, "world_qa/exact_match_stderr": 0.02, "world_facts/acc": 0.70 - 0.5 * delta,
        "hellaswag/acc_norm": 0.30 - 0.2 * delta + n(0.005), "nll/response": 4.0 - 2.5 * learn * scale + n(0.05),
        "nll/prompt": 2.0 + (0.5 - w) * scale + n(0.05), "nll/template": None,
        "forgetting/pretrain_nll": 1.0 + delta, "forgetting/pretrain_nll_delta": delta,
        "forgetting/kl_base": 0.3 * scale + forget + n(0.01),
        "format/answered": ans, "format/continued_question": cont, "format/other": 1 - ans - cont,
        "format/unfinished": 0.1,
    }


def _write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=1), encoding="utf-8")


def _tokens(rng: np.random.Generator, scale: float) -> pd.DataFrame:
    rows = []
    for ex in range(2):
        for j, (t, s) in enumerate(zip(TOKENS, SEGMENTS)):
            rows.append({"example": ex, "position": j, "token": t, "token_id": 100 + j, "segment": s,
                         "turn": 0 if j < 10 else 1, "nll": float("nan") if j == 0 else float(rng.uniform(0, 8) * scale)})
    return pd.DataFrame(rows)


def make_results(root: str | Path, name: str = "synth", seed: int = 0, audit: bool = True,
                 tokens: bool = True) -> Synthetic:
    root = Path(root)
    exp = root / name
    rng = np.random.default_rng(seed)
    points = [{"regime.name": r, "train.lr": lr, "train.seed": s} for r in REGIMES for lr in LRS for s in SEEDS]
    points += [{"regime.name": "prompt_weight", "regime.prompt_weight": w, "train.lr": LRS[0], "train.seed": s}
               for w in PLW_WEIGHTS for s in PLW_SEEDS]
    axes_order = ["regime.name", "train.lr", "train.seed", "regime.prompt_weight"]
    runs = [{"run_id": _run_id(p), "axes": p, "config_hash": _run_id(p)[-8:]} for p in points]
    plan = {"schema": 1, "experiment": name, "experiment_file": f"experiments/{name}.yaml",
            "created": "2026-11-26T18:00:00Z", "axes": axes_order, "runs": runs}
    _write_json(exp / "plan.json", plan)
    syn = Synthetic(root, exp, name, plan, base=dict(BASE_METRICS))
    _write_json(exp / "base" / "eval" / "step-000000.json",
                {"schema": 1, "run_id": "base", "step": 0, "epoch": 0.0, "checkpoint": "model", "seconds": 1.0,
                 "metrics": BASE_METRICS, "lm_eval": {"results": {}}})
    if tokens:
        _tokens(rng, 1.0).to_parquet(exp / "base" / "eval" / "step-000000.tokens.parquet", index=False)

    by_axes = {json.dumps(r["axes"], sort_keys=True): r["run_id"] for r in runs}
    pick = lambda **a: by_axes[json.dumps(a, sort_keys=True)]  # noqa: E731
    syn.missing = pick(**{"regime.name": "full", "train.lr": 3e-4, "train.seed": 3})
    syn.failed = pick(**{"regime.name": "prompt_only", "train.lr": 1e-4, "train.seed": 2})
    syn.incomplete = pick(**{"regime.name": "full", "train.lr": 1e-4, "train.seed": 3})

    for r in runs:
        rid, axes = r["run_id"], r["axes"]
        syn.axes[rid] = axes
        if rid == syn.missing:
            syn.states[rid] = "pending"
            continue
        rdir = exp / "runs" / rid
        cfg = copy.deepcopy(BASE_CONFIG)
        cfg["name"] = name
        for k, v in axes.items():
            sec, key = k.split(".")
            cfg[sec][key] = v
        rdir.mkdir(parents=True)
        (rdir / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False), encoding="utf-8")
        _write_json(rdir / "provenance.json", {
            "git": {"commit": "0123456789abcdef0123456789abcdef01234567", "dirty": False},
            "packages": {"harness": "0.1.0", "torch": "2.13.0+cpu", "pandas": "3.1.1"}, "python": "3.11.7",
            "platform": "Linux", "host": "testhost", "cuda": None, "run_id": rid, "config_hash": r["config_hash"],
            "data": {"train": cfg["data"]["train"]["path"], "sha256": "ab" * 32},
            "mask": {"regime": axes["regime.name"], "mask_hash": "feedface0001"}})
        steps = STEPS[:1] if rid in (syn.failed, syn.incomplete) else STEPS
        lines = []
        for step in range(1, steps[-1] + 1):
            row = {"step": step, "epoch": step / 2, "lr": axes["train.lr"], "loss": 5.0 - step * 0.5,
                   "loss_response": 4.0 - step * 0.4, "loss_prompt": 2.0 + 0.1 * step, "supervised_tokens": 500 * step,
                   "tokens": 2000 * step, "tokens_per_s": 1000.0, "grad_norm": 1.5, "time": "2026-11-26T18:14:32Z"}
            lines.append(json.dumps(row))
            for k, v in row.items():
                if k not in ("step", "epoch", "time"):
                    syn.training[(rid, step, k)] = float(v)
        (rdir / "metrics.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
        for step in steps:
            m = _metrics(axes, step, rng)
            ep = step / 2
            _write_json(rdir / "eval" / f"step-{step:06d}.json",
                        {"schema": 1, "run_id": rid, "step": step, "epoch": ep,
                         "checkpoint": f"checkpoints/step-{step:06d}", "seconds": 1.0, "metrics": m,
                         "lm_eval": {"results": {}}})
            ck = rdir / "checkpoints" / f"step-{step:06d}"
            ck.mkdir(parents=True)
            (ck / "COMPLETED").write_text("")
            if tokens and step == steps[-1]:
                _tokens(rng, 0.5).to_parquet(rdir / "eval" / f"step-{step:06d}.tokens.parquet", index=False)
            for k, v in m.items():
                syn.values[(rid, step, k)] = float("nan") if v is None else float(v)
            syn.epochs[(rid, step)] = ep
        if rid == syn.failed:
            (rdir / "FAILED").write_text("Traceback (most recent call last):\n  ...\nRuntimeError: CUDA error: "
                                         "an illegal memory access was encountered\n", encoding="utf-8")
            syn.states[rid] = "failed"
        elif rid == syn.incomplete:
            syn.states[rid] = "partial"  # started, no live lock: resumable
        else:
            (rdir / "DONE").write_text("")
            syn.states[rid] = "done"
    if audit:
        weights = {
            "prompt_masked": [0.0] * 13 + [1.0] * 5, "full": [1.0] * 18,
            "prompt_only": [0.0] * 3 + [1.0] * 5 + [0.0] * 10, "prompt_weight": [0.1] * 13 + [1.0] * 5}
        _write_json(exp / "audit.json", {
            "source": "synthetic", "stats": [],
            "segment_colours": {"template": "#999999", "system": "#CC79A7", "user": "#0072B2",
                                "assistant": "#009E73", "eot": "#E69F00", "tool": "#56B4E9"},
            "examples": [{"source": "synthetic", "tokens": TOKENS, "segments": SEGMENTS,
                          "regimes": {k: {"labels": [], "weights": w} for k, w in weights.items()}}]})
    return syn
