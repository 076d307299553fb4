"""`harness doctor EXP.yaml`: check an experiment before launch and say what would go wrong.

Config, model and tokenizer, data (every row parsed), mask statistics per regime of the grid (drops and why,
supervised fraction, turns without an end-of-turn marker), lm-eval task names, probe files, disk space and the
launcher (SLURM reachability). Exit code 1 when anything would fail.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import subprocess
from pathlib import Path

from harness.commands import help_line
from harness.data import load_conversations
from harness.errors import HarnessError
from harness.evaluation.lm_eval import check_tasks
from harness.fsio import is_local_path
from harness.grid import check_schema, load_experiment
from harness.masking import regime_options
from harness.preflight import check_experiment, path_note


class Report:
    def __init__(self, out=print):
        self.out = out
        self.errors = 0
        self.warnings = 0

    def ok(self, what: str) -> None:
        self.out(f"  ok    {what}")

    def warn(self, what: str) -> None:
        self.warnings += 1
        self.out(f"  warn  {what}")

    def fail(self, what: str) -> None:
        self.errors += 1
        self.out(f"  FAIL  {what}")


def _dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else 0


def disk_forecast(exp, model_bytes: int) -> tuple[int, int]:
    """(peak bytes of the whole grid, bytes a finished run keeps) from the base model's size on disk.

    A checkpoint is the weights (plus tokenizer) W and, in the newest one of a running run only, AdamW's two
    fp32 moments (2 x 4 bytes per parameter, ~2 W for fp32 weights). A run keeps: all its checkpoints (keep: all),
    one (last), two (best) or none; while it runs it briefly holds one checkpoint more and two optimizer states (the
    new one is COMPLETED before the old one is pruned). Runs that run at once (launcher.parallel or the local
    default) add that transient on top of what every run keeps."""
    W = model_bytes
    peaks, kept = [], []
    for run in exp.runs:
        tc = run.config.train
        n = max(1, math.ceil(tc.epochs)) if tc.save_every_epoch else 1
        k = {"all": n, "last": 1, "best": min(2, n), "none": 0}[tc.keep]
        kept.append(k * W)
        peaks.append(W + 2 * 2 * W)
    par = max(1, min(len(exp.runs), exp.config.launcher.parallel or os.cpu_count() or 1))
    return sum(kept) + sum(sorted(peaks)[-par:]), max(kept, default=0)


def report_parity(r: Report, a) -> None:
    """Per regime: do the trained turns follow exactly the prompt inference builds (harness/parity.py)? And what
    the data carries that is not trained as written: ignored fields, reasoning a template drops or inlines."""
    st = a.stats()[0] if a.regimes else {}
    if st.get("ignored_fields"):
        r.warn(f"data: fields the harness does not read (rows per field): {st['ignored_fields']}")
    if st.get("reasoning_dropped_turns"):
        r.warn(f"data: {st['reasoning_dropped_turns']} assistant turns whose reasoning the template drops (history "
               "before a later user query; regime.multiturn: per_turn keeps it)")
    if st.get("reasoning_inlined_turns"):
        r.ok(f"data: {st['reasoning_inlined_turns']} assistant turns' reasoning_content written inline as "
             "<think>...</think> (the template has no such field)")
    for spec, p in zip(a.regimes, a.parity):
        if p.ok:
            r.ok(f"parity {spec.label}: {p.describe()}")
        else:
            r.warn(f"parity {spec.label}: {p.describe()} (fix: regime.multiturn: per_turn or regime.turns: last, "
                   "or a template whose history renders turns as inference does)")


def doctor(path: str, overrides: list[str] | None = None, out=print) -> int:
    r = Report(out)
    out(f"harness doctor {path}")
    try:
        exp = load_experiment(path, overrides)
    except HarnessError as exc:
        r.fail(f"config: {exc}")
        return 1
    cfg = exp.config
    r.ok(f"config: {len(exp.runs)} runs, results in {exp.out_dir}")
    try:
        check_schema(exp)
    except HarnessError as exc:
        r.fail(f"results: {exc}")
    # what fails every run at start (paths, positions, tokenizer files): harness run refuses on the same
    problems = check_experiment(exp)
    for p in problems:
        r.fail(p)
    if note := path_note(exp, problems):
        out(f"        {note}")
    if not problems:
        r.ok(f"paths, max_length and tokenizer files of all {len(exp.runs)} runs")
    # model + tokenizer: torch from here on (imported here so that the config's verdict comes at once)
    from harness.inspect import RegimeSpec, audit
    from harness.modeling import tokenizer_for

    model_path = Path(cfg.model.name_or_path)
    if model_path.exists():
        r.ok(f"model: {model_path} ({_dir_size(model_path) / 1e6:.1f} MB)")
    elif not is_local_path(cfg.model.name_or_path):
        r.warn(f"model: {cfg.model.name_or_path} is a hub name; it must be downloadable or cached on the compute nodes")
    tok = None
    try:
        if model_path.exists() or cfg.model.tokenizer:
            tok = tokenizer_for(cfg)
            if tok.chat_template:
                r.ok(f"tokenizer: {len(tok)} tokens, chat template set")
            else:
                r.fail(f"tokenizer: {len(tok)} tokens, no chat template: set model.chat_template (chatml, plain "
                       "or a .jinja file)")
    except HarnessError as exc:
        r.fail(f"tokenizer: {exc}")
    except Exception as exc:  # noqa: BLE001 - offline hub names etc.
        r.warn(f"tokenizer: could not load ({type(exc).__name__}: {exc})")
    # data + masks per regime
    if tok is not None:
        specs: list[RegimeSpec] = []
        for run in exp.runs:
            s = RegimeSpec(run.config.regime.name, regime_options(run.config.regime))
            if s.label not in [x.label for x in specs]:
                specs.append(s)
        try:
            src = cfg.data.train
            convs = load_conversations(src.path, fmt=src.format, split=src.split, name=src.name, limit=src.limit,
                                       system_prompt=cfg.data.system_prompt, tools=src.tools,
                                       require_assistant=any(s.name != "prompt_only" for s in specs))
            r.ok(f"data: {len(convs)} conversations in {src.path}")
            a = audit(convs, tok, specs, max_length=cfg.data.max_length, truncation=cfg.data.truncation,
                      boundary=cfg.data.boundary, eot=cfg.data.eot, literal_content=cfg.data.literal_content,
                      template_name=cfg.model.chat_template or "")
            report_parity(r, a)
            for st in a.stats():
                line = (f"mask {st['regime']}: {st['examples']} examples, {st['supervised_tokens']} supervised "
                        f"tokens ({100 * st['supervised_fraction']:.1f}%), mask {st['mask_hash']}")
                if st["examples"] == 0:
                    r.fail(line + " -- every example dropped")
                elif st["dropped"] > 0.1 * (st["examples"] + st["dropped"]):
                    r.warn(line + f"; dropped {st['dropped']} ({st['drop_reasons']})")
                else:
                    r.ok(line + (f"; dropped {st['dropped']} ({st['drop_reasons']})" if st["dropped"] else ""))
                if st["contents_spelling_special_tokens"]:
                    r.warn(f"mask {st['regime']}: {st['contents_spelling_special_tokens']} message contents spell a "
                           "special token: tokenized as text (data.literal_content: false if they mean it)")
                if st["turns_without_eot"]:
                    r.warn(f"mask {st['regime']}: {st['turns_without_eot']} assistant turns have no end-of-turn "
                           "marker: the model never learns to stop (set data.eot)")
        except HarnessError as exc:
            r.fail(f"data: {exc}")
        if cfg.data.eval is not None:
            try:
                n = len(load_conversations(cfg.data.eval.path, fmt=cfg.data.eval.format, limit=cfg.data.eval.limit))
                r.ok(f"eval data: {n} conversations")
            except HarnessError as exc:
                r.fail(f"eval data: {exc}")
    # evaluation
    if cfg.eval.tasks:
        problems = check_tasks(cfg)
        for p in problems:
            r.fail(f"lm-eval: {p}")
        if not problems:
            r.ok(f"lm-eval tasks: {', '.join(t.name for t in cfg.eval.tasks)}")
    # disk: the peak of the whole grid under train.keep
    root = Path(cfg.results_dir)
    root.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(root).free
    need, per_run = disk_forecast(exp, _dir_size(model_path) if model_path.exists() else 0)
    if need > free:
        r.fail(f"disk: the grid needs ~{need / 1e9:.1f} GB at its peak ({per_run / 1e9:.2f} GB kept per run, train.keep: "
               f"{cfg.train.keep}), {free / 1e9:.1f} GB free in {root}: set train.keep: last (or best), or free space")
    else:
        r.ok(f"disk: {free / 1e9:.1f} GB free; the grid's peak ~{need / 1e9:.2f} GB ({per_run / 1e9:.2f} GB kept per "
             f"run, train.keep: {cfg.train.keep})")
    # launcher
    if cfg.launcher.backend == "slurm":
        if not shutil.which("sbatch"):
            r.fail("launcher: slurm backend but sbatch is not on PATH")
        else:
            res = subprocess.run(["sinfo", "-h"], capture_output=True, text=True, timeout=20)
            (r.ok if res.returncode == 0 else r.fail)(f"launcher: sinfo {'reachable' if res.returncode == 0 else res.stderr.strip()}")
    else:
        r.ok(f"launcher: {cfg.launcher.backend}, timeout {cfg.launcher.timeout_min} min per run")
    out(f"{r.errors} problem(s), {r.warnings} warning(s)")
    return 1 if r.errors else 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("doctor", help=help_line("doctor"))
    p.add_argument("experiment")
    p.add_argument("-o", "--override", action="append")
    p.set_defaults(func=lambda a: doctor(a.experiment, a.override))
