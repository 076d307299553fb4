"""``harness replicate EXP --seeds 3,4,5``: rerun a study's grid on new seeds and judge every declared claim on the
new seeds alone, against the original verdicts.

The replication is an experiment of its own, ``<name>_rep_s3-4-5`` beside the original in the results directory
(its own base evaluation and plan; its runs differ from the original's by seed only), so it resumes and skips
like any run and `harness report` draws it. Pooling the new seeds with the original ones would judge the claims
partly on the data that suggested them; a replication is judged on what it adds alone.

Per claim: **confirmed** (the original said yes or no, the replication says the same), **not confirmed** (the
replication says the opposite), **inconclusive** (the replication cannot decide it; or the original could not);
a claim about the base alone is re-measured on the same model and items, so it is listed apart.
Writes ``replication.json`` and ``replication.md`` into the replication's report folder.
"""

from __future__ import annotations

import argparse
import copy
import sys

from harness.commands import help_line
from harness.errors import ConfigError
from harness.fsio import atomic_write_json, atomic_write_text
from harness.grid import Experiment, load_experiment
from harness.layout import REPLICATION_JSON, REPLICATION_MD


def with_seeds(raw: dict, seeds: list[int]) -> dict:
    """The experiment with `seeds` as the train.seed axis of every (sub)grid, renamed ``<name>_rep_s<seeds>``."""
    raw = copy.deepcopy(raw)
    grid = raw.get("grid")
    grids = grid if isinstance(grid, list) else [grid] if isinstance(grid, dict) else []
    if not grids:
        raw["grid"] = {"train.seed": list(seeds)}
    for g in grids:
        g["train.seed"] = list(seeds)
    raw["name"] = f"{raw.get('name', 'experiment')}_rep_s{'-'.join(str(s) for s in seeds)}"
    return raw


def original_seeds(exp: Experiment) -> set:
    return {r.config.train.seed for r in exp.runs}


def judged(exp: Experiment) -> dict:
    """{claim id: finding dict} of an experiment's results (as harness report judges them)."""
    from analysis.findings import claim_metrics, evidence, judge_all
    from analysis.load import load_plan, load_runs

    if not exp.out_dir.is_dir():
        return {}
    df = load_runs(exp.out_dir, exp)
    ev = evidence(df, exp.out_dir, claim_metrics(exp.claims))
    return {f.id: f.to_dict() for f in judge_all(exp.claims, ev, (load_plan(exp.out_dir) or {}).get("claims"))}


def compare(original: dict, replication: dict) -> list[dict]:
    rows = []
    for cid, f in original.items():
        r = replication.get(cid, {})
        was, now = f.get("verdict"), r.get("verdict", "n/a")
        if f.get("seeds") == 0:
            outcome = "base only (the same model and items: nothing to replicate)"
        elif was in ("yes", "no") and now == was:
            outcome = "confirmed"
        elif was in ("yes", "no") and now in ("yes", "no"):
            outcome = "not confirmed"
        else:
            outcome = "inconclusive"
        rows.append({"id": cid, "claim": f.get("claim"), "family": f.get("family"), "original": was,
                     "original_observed": f.get("observed"), "replication": now,
                     "replication_observed": r.get("observed", "missing"), "outcome": outcome})
    return rows


def to_markdown(rows: list[dict], seeds: list[int], ref_seeds: list) -> str:
    L = [f"# Replication on seeds {', '.join(map(str, seeds))} (original: {', '.join(map(str, ref_seeds))})", "",
         "Every claim judged on the new seeds alone (analysis/replicate.py).", "",
         "| claim | family | original | replication (new seeds alone) | outcome |", "|---|---|---|---|---|"]
    L += [f"| `{r['id']}`: {r['claim']} | {r['family']} | {r['original']} | {r['replication']}: "
          f"{r['replication_observed']} | **{r['outcome']}** |" for r in rows]
    n = {k: sum(r["outcome"].startswith(k) for r in rows) for k in ("confirmed", "not confirmed", "inconclusive",
                                                                     "base only")}
    return "\n".join(L + ["", f"{n['confirmed']} confirmed, {n['not confirmed']} not confirmed, "
                              f"{n['inconclusive']} inconclusive, {n['base only']} about the base alone."]) + "\n"


def run_replicate(args: argparse.Namespace) -> int:
    from harness.launch.submit import launch

    seeds = [int(s) for s in str(args.seeds).split(",") if s.strip()]
    exp = load_experiment(args.experiment)
    if not exp.claims:
        raise ConfigError("the experiment declares no claims: there is nothing to replicate", where=args.experiment,
                          fix="declare claims: in the experiment file (harness config --explain)")
    used = original_seeds(exp)
    if not seeds or set(seeds) & used:
        raise ConfigError(f"--seeds {args.seeds}: a replication needs new seeds (the study used {sorted(used)})",
                          where="--seeds", fix="e.g. --seeds " + ",".join(str(max(used) + i) for i in (1, 2, 3)))
    rep = load_experiment(args.experiment, edit=lambda raw: with_seeds(raw, seeds))
    summary = launch(rep, backend=args.backend, parallel=args.parallel, dry_run=args.dry_run, watch=True)
    if args.dry_run:
        return 0
    failed = [r for r in summary.get("results", []) if isinstance(r, dict) and r.get("status") == "failed"]
    rows = compare(judged(exp), judged(rep))
    out = rep.dir.report
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / REPLICATION_JSON, {"experiment": exp.config.name, "replication": rep.config.name,
                                                 "seeds": seeds, "original_seeds": sorted(used), "claims": rows})
    md = to_markdown(rows, seeds, sorted(used))
    atomic_write_text(out / REPLICATION_MD, md)
    print(md)
    print(f"written: {out / REPLICATION_MD}", file=sys.stderr)
    return 1 if failed else 0


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("replicate", help=help_line("replicate"),
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("experiment", help="experiment YAML with claims:")
    p.add_argument("--seeds", required=True, help="new seeds, comma-separated (e.g. 4,5,6)")
    p.add_argument("--backend", choices=["local", "slurm", "debug"], help="default: the experiment's launcher")
    p.add_argument("--parallel", type=int, help="runs at once (local)")
    p.add_argument("--dry-run", action="store_true", help="show the replication's runs, run nothing")
    p.set_defaults(func=run_replicate)
    return p
