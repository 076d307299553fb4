"""``harness export RUN [--step N] [--merged] --out DIR``: a run's checkpoint as a standalone model directory.

A full-weights checkpoint is written out as it is (an HF model + tokenizer). An adapter checkpoint
(model.adapter: lora | dora) is written as the PEFT adapter directory (``adapter_config.json`` +
``adapter_model.safetensors``, loadable with ``peft.AutoPeftModelForCausalLM``), or with ``--merged`` as one
HF model: the base weights from ``model.name_or_path`` with the adapter folded in, which is exactly the model
evaluation measured (harness/modeling.py merges it the same way). The output is written to a temporary
directory and renamed into place: an interrupted export leaves nothing that looks complete.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import torch

from harness import adapters
from harness.commands import help_line
from harness.config import ExperimentConfig, build
from harness.errors import ConfigError
from harness.layout import COMPLETED, SHARDED_STATE, TRAINER_STATE, RunDir, read_yaml, run_of_checkpoint
from harness.modeling import load_model, tokenizer_for


def checkpoint_of(target: str | Path, step: int | None = None) -> tuple[Path, RunDir]:
    """(the COMPLETED checkpoint `target` names, its run directory): a checkpoint directory, or a run directory
    and `step` (default: its newest COMPLETED checkpoint)."""
    target = Path(target)
    if (target / COMPLETED).exists():
        if step is not None:
            raise ConfigError("--step is for a run directory; this is a checkpoint", where=str(target),
                              fix="drop --step, or pass the run directory")
        rd = run_of_checkpoint(target)
        if rd is None:
            raise ConfigError("this checkpoint is not in a run's checkpoints/ folder: its config is unknown",
                              where=str(target), fix="export from the run directory it was trained in")
        return target, rd
    rd = RunDir(target)
    cks = dict(rd.completed_checkpoints())
    if not cks:
        raise ConfigError("no COMPLETED checkpoint here", where=str(target),
                          fix="pass a run directory (results/<experiment>/runs/<run-id>) or one of its checkpoints")
    if step is None:
        step = max(cks)
    if step not in cks:
        raise ConfigError(f"no COMPLETED checkpoint at step {step}", where=str(target),
                          fix=f"use one of --step {sorted(cks)}")
    return cks[step], rd


def export(target: str | Path, out: str | Path, *, step: int | None = None, merged: bool = False) -> Path:
    """Write the checkpoint as a model directory at `out` (which must not exist). Returns `out`."""
    ckpt, rd = checkpoint_of(target, step)
    out = Path(out)
    if out.exists():
        raise ConfigError("output directory exists", where=str(out), fix="choose a new --out (nothing is overwritten)")
    raw = read_yaml(rd.config)
    if raw is None:
        raise ConfigError("no config.yaml in the run directory", where=str(rd.path),
                          fix="export from a run directory written by harness train")
    cfg = build(ExperimentConfig, raw)
    tmp = out.parent / f".tmp-{out.name}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.parent.mkdir(parents=True, exist_ok=True)
    if adapters.is_adapter_dir(ckpt) and merged:
        model = load_model(cfg, ckpt, torch.device("cpu"), training=False)  # base + adapter, merged
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer_for(cfg).save_pretrained(tmp)
    else:  # the checkpoint's own files (full weights, or the adapter), without the resume state and sentinel
        shutil.copytree(ckpt, tmp, ignore=shutil.ignore_patterns(TRAINER_STATE, COMPLETED, SHARDED_STATE))
    (tmp / "harness_export.json").write_text(json.dumps({
        "run": str(rd.path), "checkpoint": ckpt.name, "merged": bool(merged and adapters.is_adapter_dir(ckpt)),
        "adapter": raw.get("model", {}).get("adapter")}, indent=1) + "\n")
    tmp.rename(out)
    return out


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help=help_line("export"))
    p.add_argument("target", help="run directory or checkpoint directory")
    p.add_argument("--out", required=True, help="output directory (must not exist)")
    p.add_argument("--step", type=int, help="checkpoint step of a run directory (default: the newest)")
    p.add_argument("--merged", action="store_true", help="an adapter run: merge the adapter into the base weights "
                   "and write one HF model (default: the PEFT adapter directory)")
    p.set_defaults(func=_export_cmd)


def _export_cmd(args: argparse.Namespace) -> int:
    out = export(args.target, args.out, step=args.step, merged=args.merged)
    print(f"exported -> {out}", file=sys.stderr)
    return 0
