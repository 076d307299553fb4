"""``train.report_to: [tensorboard]``: TensorBoard event files under ``RunDir.tracking`` (``train/``, ``eval/``)."""

from __future__ import annotations

import json

from harness.errors import ConfigError
from harness.tracking.base import Context


class TensorBoardTracker:
    """TensorBoard event files (``torch.utils.tensorboard``; needs the ``tensorboard`` package: extra ``track``).
    A resumed run writes to the same directory; ``purge_step`` drops what a killed attempt had logged past the
    checkpoint it resumes from, so every step appears once."""

    def __init__(self, ctx: Context):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as exc:  # torch's writer imports the tensorboard package
            raise ConfigError(f"train.report_to has tensorboard but it cannot be imported ({exc})",
                              where="train.report_to", fix='pip install -e ".[track]" (or drop tensorboard)') from None
        # one directory per kind (train / eval), as Keras's logs/train and logs/validation: TensorBoard drops
        # events whose step goes back within one directory (its orphaned-data purge), and evaluation logs
        # checkpoint steps after training has logged later ones
        logdir = ctx.logdir / ctx.kind
        logdir.mkdir(parents=True, exist_ok=True)
        self.w = SummaryWriter(log_dir=str(logdir), purge_step=ctx.purge_step)
        if ctx.kind == "train" and (ctx.purge_step or 1) == 1:  # the run's identity once, on its first start
            self.w.add_text("run_id", ctx.run_id, 0)
            self.w.add_text("axes", json.dumps(ctx.axes, sort_keys=True, default=str), 0)
            self.w.add_text("config", "```\n" + json.dumps(ctx.config, indent=1, default=str) + "\n```", 0)

    def log(self, metrics: dict[str, float], step: int) -> None:
        for k, v in metrics.items():
            self.w.add_scalar(k, v, step)
        self.w.flush()

    def close(self) -> None:
        self.w.close()
