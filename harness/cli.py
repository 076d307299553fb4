"""The `harness` command line: world, inspect, run, status, report, ...

Each subcommand lives beside the code it drives; this module only wires argparse and turns
`HarnessError` into a clean message (no traceback) and exit code 2.
"""

from __future__ import annotations

import argparse
import sys

from harness.errors import HarnessError
from harness.fsio import exit_without_teardown


def _add_world(sub: argparse._SubParsersAction) -> None:
    from harness.world.cli import add_parser

    add_parser(sub)


def _add_inspect(sub: argparse._SubParsersAction) -> None:
    from harness.inspect import add_parser

    add_parser(sub)


def _add_config(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("config", help="show an experiment's resolved config and runs, or explain every key")
    p.add_argument("experiment", nargs="?", help="experiment YAML")
    p.add_argument("-o", "--override", action="append", help="dotted override, e.g. train.lr=1e-5")
    p.add_argument("--explain", action="store_true", help="list every config key with its type, default and doc")
    p.set_defaults(func=_config)


def _config(args: argparse.Namespace) -> int:
    import yaml

    from harness.config import explain, to_dict
    from harness.grid import load_experiment

    if args.explain or not args.experiment:
        from harness.claims import EXPLAIN

        print("# relative paths in an experiment file resolve against the file's folder joined with its root: "
              "(harness/config/paths.py); errors name the absolute path")
        for key, tp, default, doc in explain():
            print(f"{key:34s} {tp:22s} {default:28s} {doc}")
        print("\nclaims: a list of claims, each {id, metric, one effect, test: {above|below|within: x}, unit: "
              "pts|pct|nats|nats/decade|ratio|r2, family: primary|secondary, checkpoint, where, per, pick, by, text, "
              "source}. Effects:" + EXPLAIN.rstrip())
        return 0
    exp = load_experiment(args.experiment, args.override)
    print(yaml.safe_dump(to_dict(exp.config), sort_keys=False).rstrip())
    print(f"# {len(exp.runs)} run(s):")
    for run in exp.runs:
        print(f"#   {run.run_id}  {run.axes}")
    return 0


def _add_launch(sub: argparse._SubParsersAction) -> None:
    from harness.launch.cli import add_parsers

    add_parsers(sub)


def _add_eval(sub: argparse._SubParsersAction) -> None:
    from harness.evaluation.cli import add_parser

    add_parser(sub)


def _add_report(sub: argparse._SubParsersAction) -> None:
    from analysis.cli import add_parser

    add_parser(sub)


def _add_doctor(sub: argparse._SubParsersAction) -> None:
    from harness.doctor import add_parser

    add_parser(sub)


def _add_model(sub: argparse._SubParsersAction) -> None:
    from harness.realmodels import add_parser

    add_parser(sub)


def _add_realdata(sub: argparse._SubParsersAction) -> None:
    from harness.realdata import add_parser

    add_parser(sub)


def _add_train(sub: argparse._SubParsersAction) -> None:
    from harness.training.loop import add_parser

    add_parser(sub)


def _add_export(sub: argparse._SubParsersAction) -> None:
    from harness.export import add_parser

    add_parser(sub)


def _add_replicate(sub: argparse._SubParsersAction) -> None:
    from analysis.replicate import add_parser

    add_parser(sub)


# Subcommand registrars; each adds a parser whose `func(args) -> int` runs it.
_REGISTRARS = [_add_world, _add_model, _add_realdata, _add_inspect, _add_config, _add_launch, _add_train, _add_eval,
               _add_export, _add_report, _add_replicate, _add_doctor]


# Which registrar defines each command: `harness run` then imports the launcher only, not torch, transformers,
# pandas and lm-eval for the other commands (seconds of start-up per call, and per launcher). This is why the
# registrars import their modules inside the function: for start-up time, never to hide an import circle.
_COMMANDS = {"world": _add_world, "inspect": _add_inspect, "config": _add_config, "run": _add_launch,
             "status": _add_launch, "cancel": _add_launch, "train": _add_train, "eval": _add_eval,
             "report": _add_report, "doctor": _add_doctor, "model": _add_model,
             "realdata": _add_realdata, "export": _add_export, "replicate": _add_replicate}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The whole CLI, or only the parser of `command` (plus `demo`) when it names a known command."""
    parser = argparse.ArgumentParser(
        prog="harness", description="SFT loss-masking research harness."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    registrars = [_COMMANDS[command]] if command in _COMMANDS else _REGISTRARS
    for register in registrars:
        register(sub)
    demo = sub.add_parser("demo", help="run the embedded mini-LIMA study end to end (world, grid, report)")
    demo.add_argument("--experiment", default="experiments/mini_lima.yaml")
    demo.add_argument("--size", default="demo", help="mini-world size (default demo)")
    demo.add_argument("--parallel", type=int, default=None)
    demo.set_defaults(func=_demo)
    return parser


def _demo(args: argparse.Namespace) -> int:
    """world build -> mask audit -> run the grid -> report; every step is skipped when already done."""
    import time

    from harness.grid import load_experiment
    from harness.launch.status import print_status
    from harness.launch.submit import launch
    from harness.preflight import check_experiment, refuse
    from harness.world import build_world

    t0 = time.perf_counter()
    print(f"[1/4] mini-world ({args.size})", flush=True)
    build_world(args.size, seed=0)
    exp = load_experiment(args.experiment)
    print(f"[2/4] mask audit -> {exp.out_dir / 'audit.json'}", flush=True)
    exp.out_dir.mkdir(parents=True, exist_ok=True)
    main(["inspect", args.experiment, "--n", "2", "--json", str(exp.out_dir / "audit.json"),
          "--html", str(exp.out_dir / "audit.html")])
    print(f"[3/4] grid: {len(exp.runs)} runs", flush=True)
    refuse(exp, check_experiment(exp))
    summary = launch(exp, parallel=args.parallel)
    print_status(exp)
    print("[4/4] report", flush=True)
    rc = main(["report", args.experiment])
    print(f"demo finished in {time.perf_counter() - t0:.0f} s; report: {exp.out_dir / 'report' / 'report.html'}")
    failed = [r for r in summary.get("results", []) if isinstance(r, dict) and r.get("status") == "failed"]
    return 1 if failed or rc else 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(argv[0] if argv else None)
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except HarnessError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def entry() -> None:
    """The `harness` console script: :func:`main`, then, once torch is loaded, exit without tearing the
    interpreter down module by module (unloading torch, transformers and lm-eval takes seconds and frees nothing
    the OS does not; benchmarks/NOTES.md). atexit handlers (logging, temporary directories, libraries' cleanup) still
    run first; only the module teardown is skipped. Python callers of main() are unaffected."""
    rc = main()
    if "torch" in sys.modules:
        exit_without_teardown(rc)
    sys.exit(rc)


if __name__ == "__main__":
    entry()
