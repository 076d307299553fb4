"""``plan.json``: what ``harness run`` writes before it submits (the expanded grid and each run's hashes). Here,
beside the launcher, not in harness/grid.py: the eval hash is evaluation's, and the grid stays below it."""

from __future__ import annotations

import json
from pathlib import Path

from harness.config import ExperimentConfig, to_dict
from harness.evaluation.identity import eval_hash
from harness.fsio import atomic_write_json, now_iso
from harness.grid import Experiment
from harness.stages import init_run_id
from harness.versions import SCHEMA_VERSION


def write_plan(exp: Experiment) -> Path:
    """``plan.json``: the expanded grid with each run's config hash and eval hash (the base it is compared with)."""
    axes: list[str] = list(dict.fromkeys(k for r in exp.runs for k in r.axes))
    hashes: dict[str, str] = {}

    def ehash(cfg: ExperimentConfig) -> str:  # memoised: it fingerprints the probe and model files
        d = to_dict(cfg)
        key = json.dumps([d["model"], d["data"], d["eval"]], sort_keys=True, default=str)
        if key not in hashes:
            hashes[key] = eval_hash(cfg)
        return hashes[key]

    plan = {"schema": SCHEMA_VERSION, "experiment": exp.config.name, "experiment_file": exp.path,
            "created": now_iso(), "axes": axes, "base_eval_hash": ehash(exp.config),
            "runs": [{"run_id": r.run_id, "axes": r.axes, "config_hash": r.config_hash, "eval_hash": ehash(r.config),
                      **({"after": a} if (a := init_run_id(r.config.model.init_from)) else {})}
                     for r in exp.runs]}
    atomic_write_json(exp.dir.plan, plan)
    return exp.dir.plan
