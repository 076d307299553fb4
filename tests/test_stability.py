"""benchmarks/stability.py's pure parts: the disjoint-seed copy of an experiment file and the flip rules."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("stability", ROOT / "benchmarks" / "stability.py")
stability = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(stability)


def test_with_seeds_rewrites_every_subgrid(tmp_path):
    for name in ("mini_lima.yaml", "prompt_weight_phase.yaml"):
        path = stability.with_seeds(str(ROOT / "experiments" / name), [3, 4], tmp_path / name)
        cfg = yaml.safe_load(Path(path).read_text())
        grids = cfg["grid"] if isinstance(cfg["grid"], list) else [cfg["grid"]]
        assert all(g["train.seed"] == [3, 4] for g in grids) and cfg["name"] == yaml.safe_load(
            (ROOT / "experiments" / name).read_text())["name"]


def test_compare_flags_flips_and_moves():
    ref = {c: {"verdict": v} for c, v in (("a", "yes"), ("b", "no"), ("c", "yes"), ("d", "inconclusive"),
                                          ("e", "yes"))}
    other = {"a": {"verdict": "no"}, "b": {"verdict": "no"}, "c": {"verdict": "inconclusive"},
             "d": {"verdict": "yes"}}  # e: not rerun (--only)
    got = stability.compare(ref, other)
    assert got == {"flips": ["a"], "to_or_from_inconclusive": ["c", "d"]}
