"""`harness eval RUN_DIR|CHECKPOINT|EXP.yaml [--tasks t1,t2] [--config EXP.yaml]`."""

from __future__ import annotations

import argparse
from pathlib import Path

from harness import adapters
from harness.commands import help_line
from harness.config import ExperimentConfig, apply_overrides, build, to_dict
from harness.errors import ConfigError
from harness.evaluation.evaluate import evaluate_base, evaluate_checkpoint, evaluate_run
from harness.evaluation.identity import base_dir_for, eval_hash
from harness.grid import load_experiment
from harness.layout import ExperimentDir, RunDir, base_eval_json, read_yaml, run_of_checkpoint, step_of, valid_eval


def _config_for(target: Path, config: str | None, overrides: list[str] | None) -> ExperimentConfig:
    if config:
        exp = load_experiment(config, overrides)
        return exp.runs[0].config if len(exp.runs) == 1 else exp.config
    for run_dir in (RunDir(target), run_of_checkpoint(target)):  # a run directory, or one of its checkpoints
        raw = read_yaml(run_dir.config) if run_dir is not None else None
        if raw is not None:
            return build(ExperimentConfig, apply_overrides(raw, overrides))
    raise ConfigError("no config.yaml in this run directory (or above this checkpoint)", where=str(target),
                      fix="pass --config EXP.yaml")


def _with_tasks(cfg: ExperimentConfig, names: list[str]) -> ExperimentConfig:
    """The config with eval.tasks replaced by `names` (keeping a task's options when the config has it)."""
    d = to_dict(cfg)
    known = {t["name"]: t for t in d["eval"]["tasks"]}
    d["eval"]["tasks"] = [known.get(n, {"name": n}) for n in names]
    rec = d["eval"].get("recovery") or {}
    if rec.get("tasks"):  # the recovery probe re-measures those of its tasks that are still evaluated
        rec["tasks"] = [t for t in rec["tasks"] if t in names]
        if not rec["tasks"]:  # none of them: the probe has nothing to measure here
            d["eval"]["recovery"] = {}
    d["grid"], d["stages"] = None, None
    return build(ExperimentConfig, d)


def _print_metrics(metrics: dict, title: str) -> None:
    print(title)
    for k in sorted(metrics):
        if k.endswith("_stderr"):
            continue
        v = metrics[k]
        print(f"  {k:42s} {'-' if v is None else f'{v:.4f}'}")


def _eval_cmd(args: argparse.Namespace) -> int:
    target = Path(args.target)
    if target.suffix in (".yaml", ".yml") and target.is_file():  # the experiment's base model
        exp = load_experiment(target, args.override)
        cfg = _with_tasks(exp.config, args.tasks.split(",")) if args.tasks else exp.config
        r = evaluate_base(cfg, exp.out_dir, force=args.force)
        _print_metrics(r["metrics"], f"base of {exp.config.name}: {base_eval_json(base_dir_for(exp.out_dir, cfg))}")
        return 0
    if not target.exists():
        raise ConfigError("no such run, checkpoint or experiment file", where=str(target),
                          fix="give results/<experiment>/runs/<run-id>, a checkpoints/step-NNNNNN directory, or "
                          "an experiment YAML (evaluates its base model)")
    cfg = _config_for(target, args.config, args.override)
    adhoc = bool(args.tasks)
    if args.tasks:
        cfg = _with_tasks(cfg, [t for t in args.tasks.split(",") if t])
    is_ckpt = (target / "config.json").exists() or adapters.is_adapter_dir(target) \
        or step_of(target.name) is not None
    if not is_ckpt:  # a run directory
        if adhoc:  # other tasks than the run's: written aside, so the run's rows stay comparable
            out = []
            rd = RunDir(target)
            for step, ckpt in rd.completed_checkpoints():
                out.append(evaluate_checkpoint(ckpt, cfg, rd.eval_json(step, adhoc=True),
                                               base_dir=base_dir_for(rd.experiment or ExperimentDir.of(cfg), cfg),
                                               run_id=target.name, step=step))
        else:
            out = evaluate_run(RunDir(target), cfg, force=args.force)
        print(f"evaluated {len(out)} checkpoint(s) of {target}")
        for r in out:
            _print_metrics(r["metrics"], f"step {r['step']}:")
        return 0
    run_dir = run_of_checkpoint(target)
    step = step_of(target.name)
    in_run = run_dir is not None
    if args.out:
        out_json = Path(args.out)
    elif in_run:
        out_json = run_dir.eval_json(step, adhoc=adhoc)
    else:
        out_json = target / "eval.json"
    if not args.force and not adhoc and not args.out and valid_eval(out_json, eval_hash(cfg)):
        print(f"{out_json} is up to date (use --force to redo it)")
        return 0
    r = evaluate_checkpoint(target, cfg, out_json, run_id=run_dir.name if in_run else None, step=step,
                            epoch=run_dir.epochs_by_step().get(step) if in_run else None)
    _print_metrics(r["metrics"], f"wrote {out_json} ({r['seconds']:.1f} s)")
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    """`harness eval RUN_DIR|CHECKPOINT|EXP.yaml [--tasks t1,t2] [--config EXP.yaml]`."""
    p = sub.add_parser("eval", help=help_line("eval"),
                       description="Evaluate COMPLETED checkpoints (lm-eval tasks + fixed-mask NLL, forgetting "
                       "and format probes) into eval/step-NNNNNN.json. A run directory: every checkpoint still "
                       "lacking a valid result. An experiment YAML: its base model (base/eval/step-000000.json).")
    p.add_argument("target", help="run directory, checkpoint directory, or experiment YAML (base model)")
    p.add_argument("--tasks", help="comma-separated lm-eval tasks instead of the config's (results go to "
                   "eval/adhoc/ so the run's own rows stay comparable)")
    p.add_argument("--config", help="experiment YAML (default: the run's config.yaml)")
    p.add_argument("-o", "--override", action="append", help="dotted override, e.g. eval.probe_limit=50")
    p.add_argument("--out", help="output JSON for a single checkpoint (default: the run's eval/step-NNNNNN.json)")
    p.add_argument("--force", action="store_true", help="re-evaluate even when a valid result exists")
    p.set_defaults(func=_eval_cmd)
