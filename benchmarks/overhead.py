"""Harness overhead on the smoke grid: the share of `harness run experiments/smoke.yaml`'s wall time in which
neither training nor evaluation was running.

    .venv/bin/python benchmarks/overhead.py              # builds the test mini-world if missing
    .venv/bin/python benchmarks/overhead.py --parallel 1
    .venv/bin/python benchmarks/overhead.py --launcher debug   # in-process: what process start-up costs

The grid runs for real (local launcher: submitit processes, locks, base evaluation, every checkpoint evaluated)
into a fresh temporary results directory. Work intervals are read back from what the run directories record:

* training: ``DONE``'s ``wall_seconds`` (the whole ``train()`` call: data preparation, model load, steps,
  checkpoint writes) ending at the file's mtime;
* evaluation: each eval JSON's ``seconds`` (evaluator set-up, model load, lm-eval tasks, probes) ending at the
  JSON's mtime (base model included).

overhead = (wall - |union of work intervals|) / wall: what the launcher, process start-up (Python, torch and
transformers imports), locking, polling and result writing add. Runs may overlap (parallel > 1); the union
counts overlapped work once. The import floor (a fresh process's ``import harness.training.loop``, the trainer's
module, median of 3, measured after the grid; runs before the package reorganisation timed ``import
harness.train``, its old name) is what any trainer's first step waits for, however it is launched;
``overhead_beyond_import_floor`` subtracts it once (the workers import in parallel). With ``--parallel 1`` the
naive ``(wall - sum) / wall`` is printed as well.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, load, machine  # noqa: E402

WORLD = ROOT / "results" / "world" / "test-seed0"
IMPORT_FLOOR_MODULE = "harness.training.loop"  # what a training worker imports (train() lives there)


def union_length(intervals: list[tuple[float, float]]) -> float:
    total, end = 0.0, float("-inf")
    for a, b in sorted(intervals):
        if b <= end:
            continue
        total += b - max(a, end)
        end = b
    return total


def work_intervals(exp_dir: Path) -> list[dict]:
    out = []
    for done in exp_dir.glob("runs/*/DONE"):
        d = json.loads(done.read_text())
        end = done.stat().st_mtime
        out.append({"what": f"train {done.parent.name}", "start": end - d["wall_seconds"], "end": end,
                    "steps_s": d["train_seconds"]})
    for ev in list(exp_dir.glob("runs/*/eval/step-*.json")) + list(exp_dir.glob("base/eval/step-*.json")):
        d = json.loads(ev.read_text())
        end = ev.stat().st_mtime
        out.append({"what": f"eval {ev.parent.parent.name}/{ev.stem}", "start": end - d["seconds"], "end": end})
    return sorted(out, key=lambda x: x["start"])


def import_floor(repeats: int = 3) -> float:
    """Seconds a fresh Python process takes to `import harness.training.loop` (torch, transformers and the
    package): what any worker that trains pays before its first step, whatever launches it. Median of `repeats`."""
    times = []
    for _ in range(repeats):
        t0 = time.time()
        subprocess.run([sys.executable, "-c", f"import {IMPORT_FLOOR_MODULE}"], cwd=ROOT, check=True)
        times.append(time.time() - t0)
    return sorted(times)[len(times) // 2]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--experiment", default=str(ROOT / "experiments" / "smoke.yaml"))
    ap.add_argument("--parallel", type=int, default=None, help="harness run --parallel (default: the launcher's)")
    ap.add_argument("--launcher", default="local", choices=("local", "debug"),
                    help="local: submitit processes (the default launcher); debug: in-process, one run after another")
    ap.add_argument("--out", help="default: benchmarks/out/overhead[_debug].json")
    args = ap.parse_args()
    args.out = args.out or str(ROOT / "benchmarks" / "out" /
                               f"overhead{'' if args.launcher == 'local' else '_' + args.launcher}.json")
    harness = str(Path(sys.executable).parent / "harness")
    if not (WORLD / "model" / "config.json").exists():
        print("building the test mini-world (harness world build --size test)", flush=True)
        subprocess.run([harness, "world", "build", "--size", "test"], cwd=ROOT, check=True)
    print(f"overhead: {Path(args.experiment).name}, launcher {args.launcher}, parallel {args.parallel or 'default'}; "
          f"{load()}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [harness, "run", args.experiment, "-o", f"results_dir={tmp}", "--launcher", args.launcher]
        if args.parallel:
            cmd += ["--parallel", str(args.parallel)]
        env = {k: v for k, v in os.environ.items() if k != "TOKENIZERS_PARALLELISM"}  # as a user's shell
        t0 = time.time()
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
        t1 = time.time()
        if proc.returncode != 0:
            sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-4000:])
            raise SystemExit(f"harness run failed ({proc.returncode})")
        exp_dir = next(p for p in Path(tmp).iterdir() if p.is_dir())
        work = work_intervals(exp_dir)
    floor = import_floor()
    wall = t1 - t0
    covered = union_length([(w["start"], w["end"]) for w in work])
    total = sum(w["end"] - w["start"] for w in work)
    train_s = sum(w["end"] - w["start"] for w in work if w["what"].startswith("train"))
    eval_s = total - train_s
    steps_s = sum(w.get("steps_s", 0.0) for w in work)
    first = min(w["start"] for w in work) - t0
    last = t1 - max(w["end"] for w in work)
    res = {"machine": machine(), "experiment": args.experiment, "launcher": args.launcher, "parallel": args.parallel,
           "wall_s": wall,
           "work_union_s": covered, "train_s": train_s, "train_steps_s": steps_s, "eval_s": eval_s,
           "overhead": (wall - covered) / wall, "naive_overhead": (wall - total) / wall,
           "import_floor_s": floor, "import_floor_module": IMPORT_FLOOR_MODULE,
           "overhead_beyond_import_floor": (wall - covered - floor) / wall,
           "before_first_work_s": first, "after_last_work_s": last, "n_train": sum(w["what"].startswith("train")
                                                                                 for w in work),
           "n_eval": sum(w["what"].startswith("eval") for w in work),
           "intervals": [{**w, "start": w["start"] - t0, "end": w["end"] - t0} for w in work],
           "load_avg_end": os.getloadavg()}
    print(f"wall {wall:.1f} s; training {train_s:.1f} s ({res['n_train']} runs; optimizer steps {steps_s:.1f} s), "
          f"evaluation {eval_s:.1f} s ({res['n_eval']} evaluations); work covers {covered:.1f} s", flush=True)
    print(f"harness overhead {res['overhead']:.1%} of the wall time (start-up before the first work "
          f"{first:.1f} s, after the last {last:.1f} s); beyond the import floor ({floor:.1f} s: a fresh "
          f"`import {IMPORT_FLOOR_MODULE}`) {res['overhead_beyond_import_floor']:.1%}" +
          (f"; naive (wall - sum) / wall {res['naive_overhead']:.1%}" if args.parallel == 1 or args.launcher == "debug" else "") +
          f"; {load()}", flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
