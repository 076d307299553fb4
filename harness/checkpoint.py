"""Checkpoints that are exact and never half-complete.

``checkpoints/step-NNNNNN/`` holds an HF-loadable model (safetensors, ``use_cache`` restored to true), the
tokenizer, and ``trainer_state.pt`` (optimizer, schedule, RNG, data position: the one resumable dict, loaded
with ``weights_only=True``). It is written to a temp directory, renamed into place, and only then marked with
a ``COMPLETED`` sentinel: a crash at any point leaves either no directory or one without COMPLETED, which is
never loaded and is replaced on the next save.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch

from harness.runs import atomic_write_text, completed_checkpoints, eval_json, now_iso, valid_json

STATE_FILE = "trainer_state.pt"
_FAULT_HITS: dict[str, int] = {}


def fault_point(name: str) -> None:
    """Fault injection for the reliability suite: HARNESS_FAULT=<name>:<n> kills the process (as kill -9
    would: no cleanup, no finally) the n-th time execution reaches this point. Off unless set."""
    spec = os.environ.get("HARNESS_FAULT", "")
    if not spec.startswith(name + ":"):
        return
    _FAULT_HITS[name] = _FAULT_HITS.get(name, 0) + 1
    if _FAULT_HITS[name] == int(spec.split(":", 1)[1]):
        os._exit(137)


def step_dir(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / "checkpoints" / f"step-{step:06d}"


def save_checkpoint(run_dir: Path, step: int, model, tokenizer, state: dict) -> Path:
    final = step_dir(run_dir, step)
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
    torch.save(state, tmp / STATE_FILE)
    fault_point("checkpoint_write")  # between the files and the rename: a half checkpoint on disk
    tmp.rename(final)
    fault_point("checkpoint_rename")  # renamed but no COMPLETED yet
    atomic_write_text(final / "COMPLETED", now_iso() + "\n")
    return final


def latest_checkpoint(run_dir: Path) -> tuple[int, Path] | None:
    cks = completed_checkpoints(run_dir)
    return cks[-1] if cks else None


def load_state(ckpt: Path) -> dict:
    return torch.load(Path(ckpt) / STATE_FILE, weights_only=True)


def prune_checkpoints(run_dir: Path, keep_last: int | None) -> list[Path]:
    """Delete old COMPLETED checkpoints beyond the newest `keep_last`, but never one still lacking its eval."""
    if not keep_last:
        return []
    removed = []
    for step, path in completed_checkpoints(run_dir)[:-keep_last]:
        if valid_json(eval_json(run_dir, step)):
            (path / "COMPLETED").unlink()  # first un-complete it, so a crash mid-delete is harmless
            shutil.rmtree(path)
            removed.append(path)
    return removed
