"""The `harness` command line: world, inspect, run, status, report, ...

Each subcommand lives beside the code it drives; this module only wires argparse and turns
`HarnessError` into a clean message (no traceback) and exit code 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from harness.commands import COMMANDS, help_line
from harness.errors import HarnessError
from harness.fsio import exit_without_teardown


def _add_config(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("config", help=help_line("config"))
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


def _add_demo(sub: argparse._SubParsersAction) -> None:
    demo = sub.add_parser("demo", help=help_line("demo"))
    demo.add_argument("--experiment", default="experiments/mini_lima.yaml")
    demo.add_argument("--size", default="demo", help="mini-world size (default demo)")
    demo.add_argument("--parallel", type=int, default=None)
    demo.add_argument("--pretrain", action="store_true",
                      help="pretrain the world here even when its weights are shipped (harness/world/prebuilt.py)")
    demo.set_defaults(func=_demo)


def _register(sub: argparse._SubParsersAction, module: str) -> None:
    """Add the parsers `module` defines (its add_parser, or add_parsers for the launcher's three commands).
    Imported here, inside the function, for start-up time (never to hide an import circle): `harness run`
    then imports the launcher only, not torch, transformers, pandas and lm-eval for the other commands."""
    if module == __name__:
        return
    mod = importlib.import_module(module)
    (getattr(mod, "add_parsers", None) or mod.add_parser)(sub)


_OWN = {"config": _add_config, "demo": _add_demo}  # the commands this module defines


def build_parser(command: str | None = None, *, listing: bool = False) -> argparse.ArgumentParser:
    """The whole CLI; only the parser of `command` when it names a known command; with `listing` (``harness``,
    ``harness --help``), each command's name and line (harness/commands.py) without importing any module."""
    parser = argparse.ArgumentParser(prog="harness", description="SFT loss-masking research harness.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    names = [command] if command in COMMANDS else list(COMMANDS)
    done: set[str] = set()
    for name in names:
        module = COMMANDS[name][0]
        if listing:
            sub.add_parser(name, help=help_line(name))
        elif name in _OWN:
            _OWN[name](sub)
        elif module not in done:
            done.add(module)
            _register(sub, module)
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
    build_world(args.size, seed=0, pretrain_here=args.pretrain)
    exp = load_experiment(args.experiment)
    print(f"[2/4] mask audit -> {exp.dir.audit}", flush=True)
    exp.out_dir.mkdir(parents=True, exist_ok=True)
    main(["inspect", args.experiment, "--n", "2", "--json", str(exp.dir.audit), "--html", str(exp.dir.audit_html)])
    print(f"[3/4] grid: {len(exp.runs)} runs", flush=True)
    refuse(exp, check_experiment(exp))
    summary = launch(exp, parallel=args.parallel, watch=True)
    print_status(exp)
    print("[4/4] report", flush=True)
    rc = main(["report", args.experiment])
    print(f"demo finished in {time.perf_counter() - t0:.0f} s; report: {exp.dir.report_html}")
    failed = [r for r in summary.get("results", []) if isinstance(r, dict) and r.get("status") == "failed"]
    return 1 if failed or rc else 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    command = argv[0] if argv else None
    parser = build_parser(command, listing=command not in COMMANDS)  # `harness --help`, or no or a wrong command
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
