"""Do a study's verdicts survive a change that leaves its design alone? (issue #18)

Reruns an experiment under perturbations that change the randomness or the floating-point path but not what is
compared, and prints every finding's verdict under each, flagging the ones that flip:

* ``seeds``: a disjoint seed set (``--seeds``, default 3,4 for a study run with seeds 1,2);
* ``pooled seeds``: the reference and the disjoint seed set together (twice the seeds; reported, not a
  perturbation: it says what a larger study would conclude where the two disagree);
* ``threads``: each run with a different number of torch threads (``--threads``, default 2, one run at a time,
  against the launcher's default of 1 thread per run with two runs at once on 2 cores): the matmul reductions
  split differently, so every number moves in the last bits and then further through training.

The reference is the study's own results directory (run with ``harness run`` first, or ``--run-reference``).
Each perturbation is an ordinary ``harness run`` with ``-o`` overrides into ``results/stability/<name>/<what>``,
so it resumes and skips like any run. A yes <-> no flip is a failure; a change to or from inconclusive is
reported (a verdict near its boundary may move into or out of the CI's reach) and counted separately.

    python benchmarks/stability.py experiments/mini_lima.yaml
    python benchmarks/stability.py experiments/prompt_weight_phase.yaml --only '*n25-ep12*'

Writes benchmarks/out/stability_<name>.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from analysis.claims import Evidence  # noqa: E402
from analysis.findings import evidence, findings_for, study_metrics  # noqa: E402
from analysis.load import load_runs  # noqa: E402
from harness.grid import load_experiment  # noqa: E402

HARNESS = [sys.executable, "-m", "harness.cli"]


def _run(exp: str, results_dir: str | None, overrides: list[str], only: str | None) -> float:
    cmd = HARNESS + ["run", exp] + [x for o in overrides for x in ("-o", o)]
    if results_dir:
        cmd += ["-o", f"results_dir={results_dir}"]
    if only:
        cmd += ["--only", only]
    print("$", " ".join(cmd[2:]), flush=True)
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=ROOT, env={**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"})
    return time.perf_counter() - t0


def with_seeds(experiment: str, seeds: list[int], out_dir: Path) -> str:
    """A copy of the experiment file whose every (sub)grid has `seeds` as its train.seed axis (`-o grid.*`
    cannot override an axis of a list of grids)."""
    cfg = yaml.safe_load(Path(experiment).read_text(encoding="utf-8"))
    grids = cfg.get("grid") if isinstance(cfg.get("grid"), list) else [cfg.setdefault("grid", {})]
    for g in grids:
        g["train.seed"] = list(seeds)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / Path(experiment).name
    path.write_text(yaml.safe_dump(cfg, sort_keys=False), encoding="utf-8")
    return str(path)


def verdicts(exp_dirs: list[Path], name: str) -> dict[str, dict]:
    """The findings of one results directory, or of several pooled (their runs together: the seeds of the
    reference and of the disjoint set as one larger sample; the base rows are the same model's)."""
    dfs = [load_runs(d) for d in exp_dirs]
    df = pd.concat(dfs, ignore_index=True)
    metrics = study_metrics(name)
    items = pd.concat([evidence(x, d, metrics).items for x, d in zip(dfs, exp_dirs)], ignore_index=True)
    items = items.drop_duplicates(["run_id", "step", "metric", "doc_id"])
    return {f.claim: {"verdict": f.verdict, "observed": f.observed, "estimate": f.estimate, "low": f.low,
                      "high": f.high} for f in findings_for(name, df, ev=Evidence(items, df))}


def compare(ref: dict, other: dict) -> dict:
    flips, moves = [], []
    for claim, r in ref.items():
        o = other.get(claim, {}).get("verdict", "n/a")
        if o == "n/a" and r["verdict"] != "n/a":
            continue  # not rerun (--only) or not computable there: nothing to compare
        if {r["verdict"], o} == {"yes", "no"}:
            flips.append(claim)
        elif r["verdict"] != o:
            moves.append(claim)
    return {"flips": flips, "to_or_from_inconclusive": moves}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("experiment")
    ap.add_argument("--seeds", default="3,4", help="the disjoint seed set (comma-separated)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads per run in the threads perturbation")
    ap.add_argument("--only", default=None, help="restrict every run to run ids matching this glob")
    ap.add_argument("--perturbations", default="seeds,threads")
    ap.add_argument("--run-reference", action="store_true", help="run (or resume) the reference study first")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    exp = load_experiment(args.experiment)
    name, ref_dir = exp.config.name, exp.out_dir
    root = Path(exp.config.results_dir) / "stability" / name
    seconds = {}
    if args.run_reference:
        seconds["reference"] = _run(args.experiment, None, [], args.only)
    seeds = [int(x) for x in args.seeds.split(",")]
    plans = {"seeds": [], "threads": [f"train.threads={args.threads}", f"eval.threads={args.threads}",
                                      "launcher.parallel=1"]}
    results = {"reference": verdicts([ref_dir], name)}
    dirs = {"reference": str(ref_dir)}
    for what in [p for p in args.perturbations.split(",") if p]:
        out = root / what
        file = with_seeds(args.experiment, seeds, out) if what == "seeds" else args.experiment
        seconds[what] = _run(file, str(out), plans[what], args.only)
        results[what] = verdicts([out / name], name)
        dirs[what] = str(out / name)
        if what == "seeds":  # both seed sets as one sample: what the study says with twice the seeds
            results["pooled seeds"] = verdicts([ref_dir, out / name], name)
    cmp = {k: compare(results["reference"], v) for k, v in results.items() if k not in ("reference", "pooled seeds")}
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor())
    report = {"experiment": args.experiment, "name": name, "machine": {"cpu": cpu, "cores": os.cpu_count()},
              "date": time.strftime("%Y-%m-%d"),
              "perturbations": {**plans, "seeds": f"train.seed: {seeds} in every grid"}, "dirs": dirs, "seconds": seconds,
              "verdicts": results, "compare": cmp,
              "yes_no_flips": sum(len(c["flips"]) for c in cmp.values())}
    out = Path(args.out or ROOT / "benchmarks" / "out" / f"stability_{name}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n")
    cols = list(results)
    print(f"\n| claim | {' | '.join(cols)} |\n|---|{'---|' * len(cols)}")
    for claim in results["reference"]:
        row = [results[c].get(claim, {}).get("verdict", "not rerun") for c in cols]
        flag = " **flip**" if any(claim in c["flips"] for c in cmp.values()) else ""
        print(f"| {claim}{flag} | {' | '.join(row)} |")
    print(f"\nyes/no flips: {report['yes_no_flips']}; moves to/from inconclusive: "
          f"{sum(len(c['to_or_from_inconclusive']) for c in cmp.values())}; written {out}")
    return 1 if report["yes_no_flips"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
