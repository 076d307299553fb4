"""Evaluating runs: the base once per experiment (the step-0 row of every run), each COMPLETED checkpoint,
every checkpoint of a run still lacking a valid result."""

from __future__ import annotations

import json
import time
from pathlib import Path

from harness import progress
from harness.config import ExperimentConfig
from harness.errors import EvaluationError
from harness.evaluation.evaluator import Evaluator, evaluator_for
from harness.evaluation.identity import base_dir_for, eval_hash
from harness.evaluation.results import payload, write_eval
from harness.fsio import file_lock
from harness.layout import (COMPLETED, EVAL_LOCK, ExperimentDir, RunDir, base_eval_json, experiment_of,
                            run_of_checkpoint, step_of, valid_eval)
from harness.modeling import load_model
from harness.tracking import open_trackers


def evaluate_base(cfg: ExperimentConfig, experiment_dir: str | Path, *, force: bool = False) -> dict:
    """Evaluate the base model once per experiment (per distinct base, see :func:`base_dir_for`) into
    ``<experiment_dir>/base/eval/step-000000.json`` (the step-0 row of every run). Cached by the eval hash
    (model files + eval config): a second call returns the stored result; concurrent calls wait for the first."""
    base_dir = base_dir_for(experiment_dir, cfg)
    out = base_eval_json(base_dir)
    h = eval_hash(cfg)
    with file_lock(base_dir / EVAL_LOCK):  # held throughout: a concurrent caller waits, then reuses
        if not force and valid_eval(out, h):
            return json.loads(out.read_text())
        t0 = time.perf_counter()
        ev = evaluator_for(cfg, base_dir)
        model = load_model(cfg, cfg.model.name_or_path, ev.device, training=False)
        res = ev.evaluate(model, is_base=True)
        written = payload(res, run_id="base", step=0, epoch=0.0, checkpoint=str(cfg.model.name_or_path),
                          seconds=time.perf_counter() - t0, hash_=ev.hash)
        write_eval(out, written, res.samples, res.token_rows)
    return written


def _default_base_dir(cfg: ExperimentConfig, out_json: Path) -> Path:
    """The base of the experiment `out_json` lies in (a run's eval file), else of the config's experiment."""
    return base_dir_for(experiment_of(out_json) or ExperimentDir.of(cfg), cfg)


def evaluate_checkpoint(checkpoint_dir: str | Path, config: ExperimentConfig, out_json: str | Path, *,
                        base_dir: str | Path | None = None, run_id: str | None = None, step: int | None = None,
                        epoch: float | None = None, evaluator: Evaluator | None = None) -> dict:
    """Evaluate one COMPLETED checkpoint into `out_json` (+ .samples.jsonl.gz, .tokens.parquet), atomically.
    `base_dir` (default: the experiment's ``base/``) holds the base's cached log-probs for the KL and
    pretrain-NLL delta (computed there once if missing). Returns the payload written."""
    ckpt = Path(checkpoint_dir)
    if not ckpt.is_dir():
        raise EvaluationError("checkpoint directory not found", where=str(ckpt.absolute()), fix="check the path")
    if not (ckpt / COMPLETED).exists():
        raise EvaluationError("checkpoint has no COMPLETED sentinel: it is incomplete (a crash while saving) or "
                              "still being written, and is never evaluated", where=str(ckpt),
                              fix="evaluate a completed checkpoint; resuming training rewrites this one")
    out_json = Path(out_json)
    if step is None:
        step = step_of(ckpt.name)
    t0 = time.perf_counter()
    base_dir = Path(base_dir) if base_dir is not None else _default_base_dir(config, out_json)
    ev = evaluator or evaluator_for(config, base_dir)
    model = load_model(config, ckpt, ev.device, training=False)
    res = ev.evaluate(model)
    run = run_of_checkpoint(ckpt)  # in a run: recorded relative to it (checkpoints/step-NNNNNN)
    rel = str(ckpt.relative_to(run.path)) if run is not None else str(ckpt)
    written = payload(res, run_id=run_id, step=step, epoch=epoch, checkpoint=rel,
                      seconds=time.perf_counter() - t0, hash_=ev.hash)
    write_eval(out_json, written, res.samples, res.token_rows)
    return written


def pending_checkpoints(rd: RunDir, cfg: ExperimentConfig) -> list[tuple[int, Path]]:
    """COMPLETED checkpoints without a valid eval JSON (all, or the last with eval.every_checkpoint off): the
    same rule as the run's state (harness.layout)."""
    return rd.missing_evals(cfg.eval.every_checkpoint)


def evaluate_run(run_dir: RunDir | str | Path, config: ExperimentConfig, *, force: bool = False) -> list[dict]:
    """Evaluate every COMPLETED checkpoint of a run lacking a valid eval JSON (a half-written or invalid one
    is redone; `force` redoes all). The experiment's base row (``<experiment>/base/eval/step-000000.json``)
    is evaluated first if missing (once: concurrent runs wait for it); the base's log-probs are cached there."""
    rd = RunDir.at(run_dir)
    exp_dir = rd.experiment
    base_dir = base_dir_for(exp_dir or ExperimentDir.of(config), config)
    todo = pending_checkpoints(rd, config) if not force else rd.completed_checkpoints()
    if not todo:
        return []
    if exp_dir is not None:
        evaluate_base(config, exp_dir)
    ev = evaluator_for(config, base_dir)
    # tasks marked final_only, and the recovery probe unless eval.recovery.every_checkpoint, run on the final
    # checkpoint only: the newest one once training is DONE
    every = [t for t in config.eval.tasks if not t.final_only]
    rc = config.eval.recovery
    mid_recovery = rc.every_checkpoint or not rc.enabled
    ev_mid = ev if len(every) == len(config.eval.tasks) and mid_recovery \
        else evaluator_for(config, base_dir, every, recovery=mid_recovery)
    cks = rd.completed_checkpoints()
    final = cks[-1][0] if cks and rd.done.exists() else None
    epochs = rd.epochs_by_step()
    out = []
    with open_trackers(config.train.report_to, rd, rd.name, {}, {}, kind="eval") as track:
        for i, (step, ckpt) in enumerate(todo, 1):
            progress.write(rd, phase="evaluating", checkpoint=i, of=len(todo), step=step)  # for `harness run`
            out.append(evaluate_checkpoint(ckpt, config, rd.eval_json(step), base_dir=base_dir, run_id=rd.name,
                                           step=step, epoch=epochs.get(step),
                                           evaluator=ev if step == final else ev_mid))
            track.log(out[-1]["metrics"], step, prefix="eval/")  # beside the run's step metrics
    return out

