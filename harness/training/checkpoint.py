"""Checkpoints that are exact and never half-complete.

``checkpoints/step-NNNNNN/`` holds an HF-loadable model (safetensors, ``use_cache`` restored to true), the
tokenizer, and ``trainer_state.pt`` (optimizer, schedule, RNG, data position: the one resumable dict, loaded
with ``weights_only=True``). It is written to a temp directory, renamed into place, and only then marked with
a ``COMPLETED`` sentinel: a crash at any point leaves either no directory or one without COMPLETED, which is
never loaded and is replaced on the next save.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from harness.fsio import atomic_write_text, fault_point, now_iso
from harness.layout import COMPLETED, TRAINER_STATE, RunDir, valid_eval


def save_checkpoint(run_dir: Path, step: int, model, tokenizer, state: dict) -> Path:
    final = RunDir(run_dir).step_dir(step)
    tmp = final.parent / f".tmp-{final.name}"
    for stale in (tmp, final):  # leftovers of a crash (no COMPLETED): never trusted, replaced
        if stale.exists():
            shutil.rmtree(stale)
    tmp.mkdir(parents=True)
    inner = getattr(model, "_orig_mod", model)  # torch.compile wrapper
    use_cache = inner.config.use_cache
    inner.config.use_cache = True  # inference default for whoever loads the checkpoint
    try:
        inner.save_pretrained(tmp, safe_serialization=True)
    finally:
        inner.config.use_cache = use_cache
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


def prune_checkpoints(run_dir: Path, keep_last: int | None) -> list[Path]:
    """Delete old COMPLETED checkpoints beyond the newest `keep_last`, but never one still lacking its eval."""
    if not keep_last:
        return []
    removed = []
    rd = RunDir(run_dir)
    for step, path in rd.completed_checkpoints()[:-keep_last]:
        if valid_eval(rd.eval_json(step)):
            (path / COMPLETED).unlink()  # first un-complete it, so a crash mid-delete is harmless
            shutil.rmtree(path)
            removed.append(path)
    return removed
