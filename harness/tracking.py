"""Experiment trackers (``train.report_to``): a run's step metrics and its checkpoints' eval metrics, by name.

Why a registry of small writers rather than a trainer framework's callbacks: ``train()`` and ``evaluate_run()``
already hold every number; a tracker only mirrors them, so it can never change what a run computes (its config
key is not part of the run hash). Files live under the run directory (``RunDir.tracking``: ``train/`` and
``eval/``), so one ``tensorboard --logdir results/<experiment>`` shows the experiment's runs as one group, each
named by its run id, with the grid axes and config as text. A resumed run writes to the same directory; TensorBoard's
``purge_step`` drops what a killed attempt had logged past the checkpoint it resumes from, so every step appears
once.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Callable

from harness.errors import ConfigError


class TensorBoardTracker:
    """TensorBoard event files (``torch.utils.tensorboard``; needs the ``tensorboard`` package: extra ``track``)."""

    def __init__(self, logdir: Path, run_id: str, axes: dict, config: dict, purge_step: int | None, kind: str):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as exc:  # torch's writer imports the tensorboard package
            raise ConfigError(f"train.report_to has tensorboard but it cannot be imported ({exc})",
                              where="train.report_to", fix='pip install -e ".[track]" (or drop tensorboard)') from None
        # one directory per kind (train / eval), as Keras's logs/train and logs/validation: TensorBoard drops
        # events whose step goes back within one directory (its orphaned-data purge), and evaluation logs
        # checkpoint steps after training has logged later ones
        logdir = logdir / kind
        logdir.mkdir(parents=True, exist_ok=True)
        self.w = SummaryWriter(log_dir=str(logdir), purge_step=purge_step)
        if kind == "train" and not purge_step:  # the run's identity once, on its first start
            self.w.add_text("run_id", run_id, 0)
            self.w.add_text("axes", json.dumps(axes, sort_keys=True, default=str), 0)
            self.w.add_text("config", "```\n" + json.dumps(config, indent=1, default=str) + "\n```", 0)

    def log(self, metrics: dict, step: int) -> None:
        for k, v in metrics.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
                self.w.add_scalar(k, v, step)
        self.w.flush()

    def close(self) -> None:
        self.w.close()


#: tracker name -> writer class (``train.report_to`` takes any subset; the schema's TRACKERS lists the names)
REGISTRY: dict[str, Callable] = {"tensorboard": TensorBoardTracker}


class Trackers:
    """The configured trackers of one run, as one: ``log(metrics, step)`` fans out; no trackers is a no-op."""

    def __init__(self, writers: list):
        self.writers = writers

    def log(self, metrics: dict, step: int, prefix: str = "") -> None:
        flat = {f"{prefix}{k}": v for k, v in metrics.items()}
        for w in self.writers:
            w.log(flat, step)

    def close(self) -> None:
        for w in self.writers:
            w.close()

    def __enter__(self) -> "Trackers":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_trackers(names, logdir: Path, run_id: str, axes: dict, config: dict, *, kind: str = "train",
                  purge_step: int | None = None) -> Trackers:
    """Writers for `names` (``train.report_to``) into `logdir`. `purge_step`: a resumed run's step (train)."""
    writers = []
    for name in names or ():
        if name not in REGISTRY:
            raise ConfigError(f"unknown tracker {name!r}", where="train.report_to", fix=f"use any of {sorted(REGISTRY)}")
        writers.append(REGISTRY[name](Path(logdir), run_id, axes, config, purge_step, kind))
    return Trackers(writers)
