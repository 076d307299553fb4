"""What a results directory holds: every file name and path, and THE function that says what state a run is in.

Training, evaluation, the launcher (``harness run`` / ``status``) and ``analysis/`` all read run directories
through this module, so they can never disagree about a run. ``docs/results-schema.md`` embeds
:func:`describe` (a test keeps the two equal).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.fsio import is_locked, read_jsonl, read_yaml  # noqa: F401 (the readers of results files)
from harness.fsio import read_json as _read_json
from harness.versions import EVAL_SCHEMA

# ------------------------------------------------------------------------------------------ names

PLAN = "plan.json"
LAUNCH_LOCK = ".launch.lock"
RUNS = "runs"
BASE = "base"
BASES = "bases"
LOGS = "logs"
REPORT = "report"
CONFIG = "config.yaml"
PROVENANCE = "provenance.json"
METRICS = "metrics.jsonl"
TRACKING = "tracking"
CHECKPOINTS = "checkpoints"
COMPLETED = "COMPLETED"
TRAINER_STATE = "trainer_state.pt"
SHARDED_STATE = "dcp"  # train.parallel: fsdp: torch.distributed.checkpoint shards (harness/training/fsdp.py)
EVAL = "eval"
ADHOC = "adhoc"
DONE = "DONE"
FAILED = "FAILED"
LOCK = ".lock"
LAUNCHER = "launcher.json"
INPUTS = "inputs.json"
PROGRESS = "progress.json"
AUDIT = "audit.json"
AUDIT_HTML = "audit.html"
REPORT_HTML = "report.html"
# what harness report (and harness replicate) write into report/: the document, the findings, the data behind them
REPORT_MD = "report.md"
FINDINGS = "findings.json"
REPLICATION_JSON, REPLICATION_MD = "replication.json", "replication.md"
FIGURES, TABLES = "figures", "tables"
RUNS_CSV, RUNS_PARQUET = "runs.csv", "runs.parquet"
TRAINING_CSV, TRAINING_PARQUET = "training.csv", "training.parquet"
RUN_STATES_CSV = "run_states.csv"
EVAL_LOCK = ".eval.lock"  # base/: held while the base is evaluated (a concurrent evaluator waits, then reuses it)
CACHE_LOCK = ".logprobs.lock"  # base/: held while the base's log-prob caches are computed
JOB_LOGS = "%j"  # submitit's placeholder for the job id: logs/<job-id>/
BASE_CACHES = {"logprobs": "base_logprobs", "kl_sft": "base_kl_sft"}  # base/eval/<name>-<eval_hash>.npz

STATES = ("done", "failed", "running", "partial", "pending")
_STEP = re.compile(r"^step-(\d{6})$")  # THE spelling of a checkpoint's (and an eval file's) step

# (path, written by, what it holds): the table of docs/results-schema.md
FILES = (
    (PLAN, "harness run", "the expanded grid: schema, axes, each run's id, config hash and eval hash, "
                          "base_eval_hash (the experiment's own base); with stages, each later stage's `after` "
                          "(the run it starts from)"),
    (LAUNCH_LOCK, "harness run", "flock held while one launcher submits the grid (a second one is refused)"),
    (f"{BASE}/{EVAL}/step-000000.json", "evaluation", "the base model, evaluated once per experiment "
                                                       "(+ .samples.jsonl.gz, .tokens.parquet, base_logprobs-*.npz, "
                                                       f"base_kl_sft-*.npz; {BASE}/{EVAL_LOCK} and "
                                                       f"{BASE}/{CACHE_LOCK} held while they are computed)"),
    (f"{BASES}/<eval_hash>/{EVAL}/...", "evaluation", "only for grids over the base model or eval data: each "
                                                       "other base, evaluated once"),
    (f"{LOGS}/<job>/", "submitit", f"job logs (submitit's folder pattern {LOGS}/{JOB_LOGS}): "
                                   "<job>_0_log.err holds the training log, <job>_0_log.out submitit's own lines"),
    (f"{RUNS}/<run-id>/{CONFIG}", "training", "resolved config of this run (no grid)"),
    (f"{RUNS}/<run-id>/{PROVENANCE}", "training", "git commit/dirty, package versions, host, data sha256, "
                                                   "mask statistics and hash (with agentic data also "
                                                   "`tool_call_tokens` / `reasoning_tokens` / "
                                                   "`empty_reasoning_tokens` {total, supervised}, "
                                                   "`reasoning_dropped_turns`, `reasoning_inlined_turns`, "
                                                   "`messages_with_data_weight`, `ignored_fields`: only the keys "
                                                   "that occur), engine, schema, parameter counts "
                                                   "(trainable/total), adapter, replay share, init_from (a "
                                                   "later stage's starting checkpoint and its weights' sha256)"),
    (f"{RUNS}/<run-id>/{INPUTS}", "launcher (job)", "content sha256 of every local file the run reads (base model, "
                                                  "tokenizer, data, replay, probe files, task folders), written "
                                                  "when it starts; `accepted`: changes kept with "
                                                  "--accept-changed-inputs (harness/inputs.py)"),
    (f"{RUNS}/<run-id>/{METRICS}", "training", "training log, one JSON object per logging step"),
    (f"{RUNS}/<run-id>/{TRACKING}/", "training, evaluation", "tracker files (train.report_to): TensorBoard events "
                                                            "(train/ step metrics, eval/ per checkpoint), wandb/ "
                                                            "(offline runs), run.json (run id and axes)"),
    ("mlruns/, trackio/", "training, evaluation", "train.report_to: mlflow (file store, one MLflow experiment per "
                                                  "experiment) and trackio (its database)"),
    (f"{RUNS}/<run-id>/{CHECKPOINTS}/step-NNNNNN/", "training", f"HF-loadable model (or PEFT adapter) + tokenizer + "
                                                                  f"{TRAINER_STATE} (+ {SHARDED_STATE}/ under "
                                                                  f"train.parallel: fsdp: the sharded trainable "
                                                                  f"weights and optimizer state); {COMPLETED} "
                                                                  f"written last"),
    (f"{RUNS}/<run-id>/{EVAL}/step-NNNNNN.json", "evaluation", "evaluation of that checkpoint, written last "
                                                                "(+ .samples.jsonl.gz, .tokens.parquet)"),
    (f"{RUNS}/<run-id>/{EVAL}/{ADHOC}/", "harness eval --tasks", "other tasks than the run's own (kept aside)"),
    (f"{RUNS}/<run-id>/{DONE}", "training", "training finished: its summary, written after the last checkpoint "
                                            "and before evaluation"),
    (f"{RUNS}/<run-id>/{FAILED}", "launcher", "the run failed: the traceback (removed when it is retried)"),
    (f"{RUNS}/<run-id>/{LOCK}", "launcher", "flock held by the process training or evaluating the run"),
    (f"{RUNS}/<run-id>/{LAUNCHER}", "launcher", "backend, job id, log paths (stderr holds the training log), "
                                              "launch token, status"),
    (f"{RUNS}/<run-id>/{PROGRESS}", "training, evaluation", "what the run is doing now (phase, step/total, "
                                                           "loss, tokens/s; evaluation: checkpoint i of n), "
                                                           "rewritten atomically; `harness run` shows it"),
    (f"{AUDIT}, {AUDIT_HTML}", "harness demo", "the masks of the first conversations (harness inspect --json "
                                               "/ --html), for the report"),
    (f"{REPORT}/", "harness report", f"{REPORT_HTML}, {REPORT_MD}, {FIGURES}/, {TABLES}/, {FINDINGS} (the "
                                       f"claims judged), the data behind them ({RUNS_CSV}, {RUNS_PARQUET}, "
                                       f"{TRAINING_CSV}, {TRAINING_PARQUET}, {RUN_STATES_CSV}); harness replicate: "
                                       f"{REPLICATION_JSON}, {REPLICATION_MD}"),
)

STATE_RULES = (
    ("running", f"a live process holds the flock on {LOCK}"),
    ("done", f"{DONE} exists and every checkpoint that must be evaluated (all, or the newest with "
             f"eval.every_checkpoint: false) has a valid {EVAL}/step-NNNNNN.json (parses, schema "
             f"{EVAL_SCHEMA}, a metrics dict)"),
    ("failed", f"{FAILED} exists"),
    ("partial", f"started but not finished: {DONE} without every evaluation, a checkpoint with {COMPLETED} to "
                f"resume from, or a training log (no checkpoint yet: it restarts from scratch)"),
    ("pending", "no training log, checkpoint or result yet (a run killed before its first logged step "
                "starts again from scratch)"),
)


def describe() -> str:
    """The markdown block of docs/results-schema.md that comes from this module (files and states)."""
    lines = ["| path under `results/<experiment>/` | written by | holds |", "|---|---|---|"]
    lines += [f"| `{p}` | {w} | {h} |" for p, w, h in FILES]
    lines += ["", "A run's state is the first rule that holds:", ""]
    lines += [f"{i}. **{s}**: {rule}" for i, (s, rule) in enumerate(STATE_RULES, 1)]
    lines += ["", "A checkpoint directory without `COMPLETED` and an eval JSON that does not parse are "
              "half-written: never loaded, never counted, redone."]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------ paths


def step_name(step: int) -> str:
    return f"step-{step:06d}"


def step_of(name: str) -> int | None:
    """The step a checkpoint directory (``step-000400``) or an eval file (``step-000400.json``) is of, else None."""
    m = _STEP.match(name[: -len(".json")] if name.endswith(".json") else name)
    return int(m.group(1)) if m else None


def valid_eval(path: str | Path, eval_hash: str | None = None) -> bool:
    """A finished eval JSON: parses, has the eval schema and a metrics dict (and the given eval hash)."""
    try:
        d = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    ok = isinstance(d, dict) and d.get("schema") == EVAL_SCHEMA and isinstance(d.get("metrics"), dict)
    return ok and (eval_hash is None or d.get("eval_hash") == eval_hash)


class ExperimentDir:
    """``<results_dir>/<experiment>/``."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    __fspath__ = lambda self: str(self.path)  # noqa: E731

    @classmethod
    def of(cls, config: Any) -> "ExperimentDir":
        """Where an experiment config's results go: ``<results_dir>/<name>``."""
        return cls(Path(config.results_dir) / config.name)

    plan = property(lambda self: self.path / PLAN)
    audit = property(lambda self: self.path / AUDIT)
    audit_html = property(lambda self: self.path / AUDIT_HTML)
    job_logs = property(lambda self: self.path / LOGS / JOB_LOGS)  # submitit's folder pattern
    launch_lock = property(lambda self: self.path / LAUNCH_LOCK)
    runs = property(lambda self: self.path / RUNS)
    logs = property(lambda self: self.path / LOGS)
    report = property(lambda self: self.path / REPORT)
    report_html = property(lambda self: self.path / REPORT / REPORT_HTML)

    def run(self, run_id: str) -> "RunDir":
        return RunDir(self.runs / run_id)

    def run_ids_on_disk(self) -> list[str]:
        return sorted(p.name for p in self.runs.iterdir() if p.is_dir()) if self.runs.is_dir() else []

    def base(self, eval_hash: str | None = None) -> Path:
        """The experiment's own base (None), or the base with that eval hash (grids over the base model)."""
        return self.path / BASE if eval_hash is None else self.path / BASES / eval_hash

    def read_plan(self) -> dict | None:
        return _read_json(self.plan)

    def is_experiment(self) -> bool:
        return self.plan.is_file() or self.runs.is_dir()


def experiment_of(path: str | Path) -> ExperimentDir | None:
    """The experiment of a run directory (``<exp>/runs/<run-id>``) or of what lies in its checkpoints/, eval/ or
    tracking/; None for a run trained elsewhere (``harness train --out DIR``). Only those levels are looked at:
    a folder named runs higher up is not an experiment's."""
    p = Path(path).resolve()
    for run in (p, *p.parents[:3]):
        if run.parent.name == RUNS and (run == p or p.relative_to(run).parts[0] in (CHECKPOINTS, EVAL, TRACKING)):
            return ExperimentDir(run.parent.parent)
    return None


def run_of_checkpoint(path: str | Path) -> "RunDir | None":
    """The run whose ``checkpoints/step-NNNNNN`` `path` is, else None (a model directory elsewhere)."""
    p = Path(path)
    return RunDir(p.parent.parent) if p.parent.name == CHECKPOINTS and step_of(p.name) is not None else None


def base_eval_json(base_dir: str | Path) -> Path:
    return Path(base_dir) / EVAL / f"{step_name(0)}.json"


def base_cache(base_dir: str | Path, kind: str, eval_hash: str) -> Path:
    """A cache of the base model beside its evaluation: ``logprobs`` (on the pretraining-like text) or ``kl_sft``
    (its continuations of the fine-tuning prompts), per eval hash."""
    return Path(base_dir) / EVAL / f"{BASE_CACHES[kind]}-{eval_hash}.npz"


EVAL_SIDE_FILES = {"samples": ".samples.jsonl.gz", "tokens": ".tokens.parquet"}


def eval_side_file(eval_json: str | Path, kind: str) -> Path:
    """A side file of an evaluation, next to its JSON: ``samples`` (lm-eval and probe samples) or ``tokens``
    (per-token losses); ``step-000400.json`` -> ``step-000400.samples.jsonl.gz``."""
    p = Path(eval_json)
    stem = p.name[: -len(".json")] if p.name.endswith(".json") else p.name
    return p.with_name(stem + EVAL_SIDE_FILES[kind])


@dataclass(frozen=True)
class RunState:
    state: str  # one of STATES
    detail: str  # why (FAILED's last line, what is missing, ...), "" when done
    last_step: int | None  # newest step logged, checkpointed or evaluated


class RunDir:
    """``<experiment>/runs/<run-id>/``: its files, checkpoints, evaluations and state."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    __fspath__ = lambda self: str(self.path)  # noqa: E731
    name = property(lambda self: self.path.name)
    config = property(lambda self: self.path / CONFIG)
    provenance = property(lambda self: self.path / PROVENANCE)
    metrics = property(lambda self: self.path / METRICS)
    tracking = property(lambda self: self.path / TRACKING)
    checkpoints = property(lambda self: self.path / CHECKPOINTS)
    eval_dir = property(lambda self: self.path / EVAL)
    done = property(lambda self: self.path / DONE)
    failed = property(lambda self: self.path / FAILED)
    lock = property(lambda self: self.path / LOCK)
    launcher = property(lambda self: self.path / LAUNCHER)
    inputs = property(lambda self: self.path / INPUTS)
    progress = property(lambda self: self.path / PROGRESS)

    @classmethod
    def at(cls, path: "str | Path | RunDir") -> "RunDir":
        """`path` as a RunDir (the entry points: a directory the user names, ``harness train --out DIR``)."""
        return path if isinstance(path, RunDir) else cls(path)

    @property
    def experiment(self) -> ExperimentDir | None:
        return experiment_of(self.path)

    def sibling(self, run_id: str) -> "RunDir":
        """Another run of the same experiment (a later stage's previous stage)."""
        return RunDir(self.path.parent / run_id)

    def step_dir(self, step: int) -> Path:
        return self.checkpoints / step_name(step)

    def tmp_step_dir(self, step: int) -> Path:
        """Where checkpoint `step` is written before it is renamed into place."""
        return self.checkpoints / f".tmp-{step_name(step)}"

    def eval_json(self, step: int, adhoc: bool = False) -> Path:
        return (self.eval_dir / ADHOC if adhoc else self.eval_dir) / f"{step_name(step)}.json"

    def completed_checkpoints(self) -> list[tuple[int, Path]]:
        """(step, path) of every checkpoint with a COMPLETED sentinel, oldest first."""
        out = []
        if self.checkpoints.is_dir():
            for p in self.checkpoints.iterdir():
                step = step_of(p.name)
                if step is not None and p.is_dir() and (p / COMPLETED).exists():
                    out.append((step, p))
        return sorted(out)

    def latest_checkpoint(self) -> tuple[int, Path] | None:
        cks = self.completed_checkpoints()
        return cks[-1] if cks else None

    def eval_files(self) -> list[tuple[int, Path]]:
        """(step, path) of every eval/step-NNNNNN.json on disk, valid or not."""
        if not self.eval_dir.is_dir():
            return []
        return sorted((s, p) for p in self.eval_dir.iterdir() if p.name.endswith(".json")
                      and (s := step_of(p.name)) is not None)

    def every_checkpoint(self) -> bool:
        """eval.every_checkpoint from this run's config.yaml (True when there is none)."""
        cfg = read_yaml(self.config) or {}
        return bool(((cfg.get("eval") or {}).get("every_checkpoint", True)))

    def missing_evals(self, every_checkpoint: bool | None = None) -> list[tuple[int, Path]]:
        """COMPLETED checkpoints that still need an evaluation (a half-written or invalid eval JSON counts)."""
        if every_checkpoint is None:
            every_checkpoint = self.every_checkpoint()
        cks = self.completed_checkpoints()
        if not every_checkpoint:
            cks = cks[-1:]
        return [(s, p) for s, p in cks if not valid_eval(self.eval_json(s))]

    def state(self, every_checkpoint: bool | None = None) -> RunState:
        """THE state of this run (rules in :data:`STATE_RULES`, in order)."""
        if not self.path.is_dir():
            return RunState("pending", "planned; no run directory yet", None)
        ckpts = self.completed_checkpoints()
        logged = [r.get("step") for r in read_jsonl(self.metrics)]
        steps = [int(s) for s in logged if isinstance(s, (int, float))] + [s for s, _ in ckpts]
        steps += [s for s, _ in self.eval_files()]
        last = max(steps) if steps else None
        where = f"last step {last}" if last is not None else "no step logged yet"
        if is_locked(self.lock):
            return RunState("running", f"in progress ({where}); a live process holds the lock", last)
        missing = self.missing_evals(every_checkpoint)
        if self.done.exists() and not missing:
            return RunState("done", "", last)
        if self.failed.exists():
            lines = self.failed.read_text(encoding="utf-8", errors="replace").strip().splitlines()
            return RunState("failed", lines[-1].strip() if lines else "FAILED (empty)", last)
        if self.done.exists():
            return RunState("partial", f"trained; {len(missing)} checkpoint(s) not evaluated yet "
                                       f"(steps {', '.join(str(s) for s, _ in missing)})", last)
        if ckpts:
            return RunState("partial", f"interrupted ({where}); resumes from step {ckpts[-1][0]}", last)
        if last is not None or self.metrics.exists():
            return RunState("partial", f"interrupted ({where}) before its first checkpoint; restarts from "
                                       "scratch", last)
        return RunState("pending", "run directory exists but no step was logged yet", None)

    def last_metrics(self) -> dict | None:
        """The newest training-log row (read from the end of the file)."""
        try:
            with open(self.metrics, "rb") as fh:
                fh.seek(0, os.SEEK_END)
                fh.seek(max(0, fh.tell() - 8192))
                lines = fh.read().decode("utf-8", "replace").strip().splitlines()
        except OSError:
            return None
        for line in reversed(lines):
            try:
                return json.loads(line)
            except ValueError:
                continue
        return None

    def epochs_by_step(self) -> dict[int, float]:
        """step -> epoch from the training log (what each checkpoint's evaluation records)."""
        out: dict[int, float] = {}
        for r in read_jsonl(self.metrics):
            try:
                out[int(r["step"])] = r.get("epoch")
            except (KeyError, TypeError, ValueError):
                continue
        return out

    def launcher_info(self) -> dict:
        d = _read_json(self.launcher)
        return d if isinstance(d, dict) else {}
