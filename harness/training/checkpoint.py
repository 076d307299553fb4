"""Checkpoints that are exact and never half-complete.

``checkpoints/step-NNNNNN/`` holds an HF-loadable model (safetensors, ``use_cache`` restored to true) or, for
an adapter run, a PEFT-loadable adapter (``adapter_config.json`` + ``adapter_model.safetensors``), the
tokenizer, and ``trainer_state.pt`` (optimizer, schedule, RNG, data position: the one resumable dict, loaded
with ``weights_only=True``). Under ``train.parallel: fsdp`` the optimizer state is in ``dcp/`` instead: every
rank's torch.distributed.checkpoint shards, with the trainable weights (harness/training/fsdp.py), written
into the same temp directory before the rename. It is written to a temp directory, renamed into place, and
only then marked with a ``COMPLETED`` sentinel: a crash at any point leaves either no directory or one
without COMPLETED, which is never loaded and is replaced on the next save.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from harness import adapters
from harness.fsio import atomic_write_text, fault_point, now_iso
from harness.layout import COMPLETED, SHARDED_STATE, TRAINER_STATE, RunDir, valid_eval


def save_checkpoint(rd: RunDir, step: int, model, tokenizer, state: dict) -> Path:
    begin_checkpoint(rd, step)
    return finish_checkpoint(rd, step, model, tokenizer, state)


def begin_checkpoint(rd: RunDir, step: int) -> Path:
    """The empty temp directory of step `step`'s checkpoint (under FSDP every rank writes its shards into it
    before rank 0's :func:`finish_checkpoint`)."""
    final, tmp = rd.step_dir(step), rd.tmp_step_dir(step)
    for stale in (tmp, final):  # leftovers of a crash (no COMPLETED): never trusted, replaced
        if stale.exists():
            shutil.rmtree(stale)
    tmp.mkdir(parents=True)
    return tmp


def finish_checkpoint(rd: RunDir, step: int, model, tokenizer, state: dict) -> Path:
    final, tmp = rd.step_dir(step), rd.tmp_step_dir(step)
    adapters.save(model, tmp)  # full weights, or the adapter only (adapter_config.json + safetensors)
    tokenizer.save_pretrained(tmp)
    torch.save(state, tmp / TRAINER_STATE)
    fault_point("checkpoint_write")  # between the files and the rename: a half checkpoint on disk
    tmp.rename(final)
    fault_point("checkpoint_rename")  # renamed but no COMPLETED yet
    atomic_write_text(final / COMPLETED, now_iso() + "\n")
    fault_point("checkpoint_done")  # a COMPLETED checkpoint to resume from
    return final


def load_state(ckpt: Path) -> dict:
    return torch.load(Path(ckpt) / TRAINER_STATE, weights_only=True)


def prune_checkpoints(rd: RunDir, keep: str = "all", *, metric: str = "nll/response", mode: str = "min",
                      every_checkpoint: bool = True, finished: bool = False) -> list[Path]:
    """Apply ``train.keep`` after a checkpoint was saved or evaluated. Returns the checkpoints deleted.

    Optimizer state (the bulk of a checkpoint: two fp32 moments per parameter) stays only in the newest
    COMPLETED checkpoint, where a resume needs it, and in none once the run is `finished` (call it after DONE
    is written: before, a crash would leave a run to resume without its state). Weights: `keep` all | last
    (the newest) | best (the newest and the best evaluated one by `metric`). A checkpoint that still needs its
    evaluation is never deleted; a deleted one is first un-COMPLETED, so a crash mid-delete leaves nothing that
    looks complete. `none`: every evaluated checkpoint goes, except the newest of an unfinished run."""
    cks = rd.completed_checkpoints()
    for step, path in cks[:-1] if not finished else cks:
        (path / TRAINER_STATE).unlink(missing_ok=True)
        shutil.rmtree(path / SHARDED_STATE, ignore_errors=True)  # fsdp: the sharded weights + optimizer state
    if keep == "all" or not cks:
        return []
    pending = {s for s, _ in rd.missing_evals(every_checkpoint)}
    keep_steps = pending | ({cks[-1][0]} if keep != "none" or not finished else set())
    if keep == "best":
        scored = []
        for step, _ in cks:
            value = (_read_metrics(rd.eval_json(step)) or {}).get(metric)
            if isinstance(value, (int, float)):
                scored.append((value if mode == "min" else -value, -step, step))
        if not scored:  # nothing to rank by yet (or a metric name the evaluation does not write): delete nothing
            return []
        keep_steps.add(min(scored)[2])
    removed = []
    for step, path in cks:
        if step not in keep_steps:
            (path / COMPLETED).unlink()
            shutil.rmtree(path)
            removed.append(path)
    return removed


def _read_metrics(path: Path) -> dict | None:
    if not valid_eval(path):
        return None
    return json.loads(Path(path).read_text(encoding="utf-8"))["metrics"]
