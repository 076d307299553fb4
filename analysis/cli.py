"""``harness report EXP.yaml [--out DIR] [--format pdf,png] [--metric M]``: figures, tables, report.html.

EXP may also be a results directory (``results/<experiment>``) when the experiment file is not at hand.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from harness.commands import help_line
from harness.errors import HarnessError
from harness.layout import FIGURES, FINDINGS


def run_report(args: argparse.Namespace) -> int:
    """Entry point of ``harness report`` (argparse Namespace -> exit code)."""
    from analysis.report import build_report

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    target = Path(args.experiment)
    experiment = None
    experiment_file = None
    if target.is_dir():
        results_dir = target
    else:
        from harness.grid import load_experiment

        exp = load_experiment(target, getattr(args, "override", None))
        experiment, experiment_file = exp, str(target)
        results_dir = exp.out_dir
        if not results_dir.is_dir():
            raise HarnessError("no results for this experiment yet", where=str(results_dir),
                               fix=f"run it first: harness run {target}")
    formats = [f for part in (args.format or "pdf,png").split(",") for f in [part.strip()] if f]
    only = [n.strip() for n in args.only.split(",")] if getattr(args, "only", None) else None
    rep = build_report(results_dir, args.out, formats=formats, target=args.metric, retention=args.retention,
                       experiment=experiment, experiment_file=experiment_file, only=only)
    drawn = [f for f in rep.figures if not f.skipped]
    print(f"figures ({len(drawn)} drawn, {len(rep.skipped)} skipped) in {rep.out_dir / FIGURES}:",
          file=sys.stderr)
    for f in rep.figures:
        if f.skipped:
            print(f"  - {f.name}: skipped ({f.skipped})", file=sys.stderr)
        else:
            print(f"  - {f.name}: {', '.join(p.name for p in f.files)}", file=sys.stderr)
    s = rep.states
    if s.get("failed") or s.get("running") or s.get("partial") or s.get("pending"):
        print(f"runs not done: {s.get('failed', 0)} failed, {s.get('running', 0)} running, "
              f"{s.get('partial', 0)} partial, "
              f"{s.get('pending', 0)} pending (listed in the report)", file=sys.stderr)
    if rep.findings:
        n = {v: sum(f.verdict == v for f in rep.findings) for v in ("yes", "no", "inconclusive", "n/a")}
        print(f"findings: {n['yes']} yes, {n['no']} no, {n['inconclusive']} inconclusive"
              + (f", {n['n/a']} n/a" if n["n/a"] else "") + f" ({rep.out_dir / FINDINGS})", file=sys.stderr)
        for f in rep.findings:
            print(f"  {f.verdict:12s} {f.claim}", file=sys.stderr)
    print(rep.markdown, file=sys.stderr)
    print(rep.html)  # stdout: the path, for scripts
    return 0


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("report", help=help_line("report"),
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("experiment", help="experiment YAML (or a results/<experiment> directory)")
    p.add_argument("--out", help="output directory (default: results/<experiment>/report/)")
    p.add_argument("--format", default="pdf,png", help="figure formats, comma-separated: pdf, png, svg")
    p.add_argument("--metric", help="target metric (default: world_qa/exact_match, else the first lm-eval metric)")
    p.add_argument("--retention", help="fact-retention metric (default: world_facts/acc when present)")
    p.add_argument("--only", help="draw only these figures (comma-separated names)")
    p.add_argument("-o", "--override", action="append", help="dotted override of the experiment, e.g. name=x")
    p.set_defaults(func=run_report)
    return p
