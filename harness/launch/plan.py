"""``plan.json``: what ``harness run`` writes before it submits (the expanded grid, each run's hashes, the study's
claims as first registered). Here, beside the launcher, not in harness/grid.py: the eval hash is evaluation's,
and the grid stays below evaluation."""

from __future__ import annotations

import json
from pathlib import Path

from harness.claims import registration
from harness.config import ExperimentConfig, to_dict
from harness.evaluation.identity import eval_hash
from harness.fsio import atomic_write_json, now_iso
from harness.grid import Experiment
from harness.layout import base_eval_json
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

    old = exp.dir.read_plan() or {}
    plan = {"schema": SCHEMA_VERSION, "experiment": exp.config.name, "experiment_file": exp.path,
            "created": now_iso(), "axes": axes, "base_eval_hash": ehash(exp.config),
            # before any run of this launch trains: a claim first seen once results exist is post hoc for good
            "claims": registration(list(exp.claims), old.get("claims"), results_exist(exp), now_iso()),
            "runs": [{"run_id": r.run_id, "axes": r.axes, "config_hash": r.config_hash, "eval_hash": ehash(r.config),
                      **({"after": a} if (a := init_run_id(r.config.model.init_from)) else {})}
                     for r in exp.runs]}
    atomic_write_json(exp.dir.plan, plan)
    return exp.dir.plan


def results_exist(exp: Experiment) -> bool:
    """Whether any result of this experiment is on disk (a checkpoint or an evaluation of a run, or the base's):
    what a claim registered now could have been written after seeing."""
    d = exp.dir
    if base_eval_json(d.base()).exists():
        return True
    return any(d.run(r).eval_files() or d.run(r).completed_checkpoints() for r in d.run_ids_on_disk())
