"""``harness run``, ``harness status``, ``harness cancel``."""

from __future__ import annotations

import argparse
import os
import sys
import time

from harness.commands import help_line
from harness.grid import load_experiment, match_runs
from harness.launch.status import cancel, print_status
from harness.launch.submit import launch
from harness.preflight import check_experiment, path_note, refuse


def _run_cmd(args: argparse.Namespace) -> int:
    if hasattr(sys.stdout, "reconfigure"):  # a pipe (`harness run ... | tee log`) gets each line when it happens
        sys.stdout.reconfigure(line_buffering=True)
    exp = load_experiment(args.experiment, args.override)
    problems = check_experiment(exp, match_runs(exp.runs, args.only))  # doctor's fast part, before any worker
    if problems and args.dry_run:
        lines = problems + ([note] if (note := path_note(exp, problems)) else [])
        print("# harness run would refuse to start:\n#   " + "\n#   ".join(lines))
    else:
        refuse(exp, problems)
    summary = launch(exp, backend=args.launcher, parallel=args.parallel, dry_run=args.dry_run, only=args.only,
                     wait=not args.no_wait, accept_changed_inputs=args.accept_changed_inputs, watch=True)
    failed = [r for r in summary.get("results", []) if isinstance(r, dict) and r.get("status") == "failed"]
    if not args.dry_run:
        print_status(exp)
    return 1 if failed else 0


def _status_cmd(args: argparse.Namespace) -> int:
    exp = load_experiment(args.experiment, args.override)
    if not args.watch:
        print_status(exp)
        return 0
    try:
        while True:
            os.system("clear" if sys.stdout.isatty() else "true")
            counts = print_status(exp)
            if set(counts) <= {"done", "failed", "changed"}:  # nothing left that will move by itself
                return 0
            time.sleep(args.interval)
    except KeyboardInterrupt:
        return 0


def _cancel_cmd(args: argparse.Namespace) -> int:
    cancel(load_experiment(args.experiment, args.override))
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help=help_line("run"))
    p.add_argument("experiment")
    p.add_argument("-o", "--override", action="append", help="dotted override, e.g. train.lr=1e-5")
    p.add_argument("--launcher", choices=("local", "slurm", "debug"), help="default: launcher.backend")
    p.add_argument("--parallel", type=int, help="runs at once (default: from cores and threads per run)")
    p.add_argument("--dry-run", action="store_true",
                   help="print the plan (and, for slurm, the sbatch script the runs get), submit nothing")
    p.add_argument("--only", help="run ids matching this glob / substring")
    p.add_argument("--no-wait", action="store_true", help="slurm: submit and return")
    p.add_argument("--accept-changed-inputs", action="store_true",
                   help="keep the results of runs whose data, model or probe files changed since they read them "
                        "(recorded in each run's inputs.json); without it such runs stop the launch")
    p.set_defaults(func=_run_cmd)
    s = sub.add_parser("status", help=help_line("status"))
    s.add_argument("experiment")
    s.add_argument("-o", "--override", action="append")
    s.add_argument("--watch", action="store_true", help="refresh until every run is done or failed")
    s.add_argument("--interval", type=float, default=5.0)
    s.set_defaults(func=_status_cmd)
    c = sub.add_parser("cancel", help=help_line("cancel"))
    c.add_argument("experiment")
    c.add_argument("-o", "--override", action="append")
    c.set_defaults(func=_cancel_cmd)
