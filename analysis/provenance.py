"""What produced an experiment's results, as the report shows it: the configuration, and the provenance of its
runs (code, packages, machine, data) with a warning where runs disagree on code or data."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable

import pandas as pd
import yaml

from harness.fsio import read_json
from harness.layout import ExperimentDir


def load_provenance(exp_dir: str | Path, run_ids: Iterable[str] | None = None) -> dict | None:
    """provenance.json of the first run (in ``run_ids`` order, else directory order) that has one."""
    ed = ExperimentDir(exp_dir)
    ids = list(run_ids) if run_ids is not None else ed.run_ids_on_disk()
    for rid in ids:
        if p := read_json(ed.run(rid).provenance):
            return p
    return None


def config_text(experiment: Any, exp_dir: Path, runs: pd.DataFrame) -> str:
    if experiment is not None and hasattr(experiment, "to_dict"):
        return yaml.safe_dump(experiment.to_dict(), sort_keys=False)
    if isinstance(experiment, dict):
        return yaml.safe_dump(experiment, sort_keys=False)
    for rid in (runs["run_id"] if len(runs) else []):
        p = ExperimentDir(exp_dir).run(rid).config
        if p.is_file():
            return f"# config.yaml of run {rid} (the experiment file was not given)\n" + p.read_text(encoding="utf-8")
    return "# no config available\n"


def provenance_rows(prov: dict | None, exp_dir: Path, runs: pd.DataFrame) -> list[tuple[str, str]]:
    if not prov:
        return [("provenance", "no run has a provenance.json yet")]
    g = prov.get("git") or {}
    rows = [("git commit", f"{g.get('commit')}" + (" (dirty working tree)" if g.get("dirty") else "")),
            ("python", str(prov.get("python"))), ("platform", str(prov.get("platform"))),
            ("host", str(prov.get("host"))), ("accelerator", str(prov.get("cuda") or "CPU"))]
    pk = prov.get("packages") or {}
    rows.append(("packages", ", ".join(f"{k} {v}" for k, v in pk.items() if v)))
    d = prov.get("data") or {}
    if d:
        rows.append(("training data", f"{d.get('train')} (sha256 {str(d.get('sha256'))[:16]}…)"))
    # do all runs agree on code and data?
    commits, shas, masks = set(), set(), {}
    for rid in (runs["run_id"] if len(runs) else []):
        p = ExperimentDir(exp_dir).run(rid).provenance
        try:
            pj = json.loads(p.read_text())
        except (OSError, ValueError):
            continue
        commits.add(((pj.get("git") or {}).get("commit"), (pj.get("git") or {}).get("dirty")))
        shas.add((pj.get("data") or {}).get("sha256"))
        m = pj.get("mask") or {}
        if m.get("mask_hash"):
            masks.setdefault(m.get("regime"), set()).add(m["mask_hash"])
    if len(commits) > 1:
        rows.append(("WARNING", f"runs come from {len(commits)} different code versions: "
                                + "; ".join(f"{c} dirty={dy}" for c, dy in sorted(commits, key=str))))
    if len(shas) > 1:
        rows.append(("WARNING", f"runs trained on {len(shas)} different training-data files (sha256 differ)"))
    if masks:
        rows.append(("mask hashes", "; ".join(f"{r}: {', '.join(sorted(h))}" for r, h in masks.items())))
    return rows
