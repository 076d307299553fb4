"""A run's ``progress.json``: what it is doing now, written by training and evaluation, read by ``harness run``.

One small JSON object, replaced atomically (never half-written), so the launcher's waiting loop can show step,
loss, tokens/s and ETA of every running run, and which checkpoint is being evaluated, without reading logs. It
is a view, not a record: the run's state comes from harness/layout.py (a file left by a killed run says what it
was doing; the layout says it is no longer running). Training rewrites it at most once per `every` seconds (and
at its first and last step), so a fast loop is not slowed down by it.
"""

from __future__ import annotations

import time
from typing import Any

from harness.fsio import atomic_write_json, now_iso, read_json
from harness.layout import RunDir


class TrainingProgress:
    """Training's writer: ``step(...)`` after each optimizer step."""

    def __init__(self, rd: RunDir, total: int, start: int, tokens: int = 0, every: float = 1.0,
                 clock=time.monotonic):
        self.rd, self.total, self.start, self.every, self.clock = rd, total, start, every, clock
        self.t0 = self.t_last = clock()
        self.tokens_last = tokens
        self.loss: float | None = None

    def step(self, step: int, tokens: int, loss: float | None = None) -> bool:
        """Record optimizer step `step` done (`tokens`: the run's cumulative tokens, `loss`: the step's loss
        when it was logged). Returns whether the file was written."""
        if loss is not None:
            self.loss = loss
        now = self.clock()
        if step not in (self.start + 1, self.total) and now - self.t_last < self.every:
            return False
        per_step = (now - self.t0) / max(1, step - self.start)
        tok_s = (tokens - self.tokens_last) / (now - self.t_last) if now > self.t_last else None
        write(self.rd, phase="training", step=step, total=self.total, loss=self.loss,
              tokens_per_s=None if tok_s is None else round(tok_s, 1),
              eta_s=round(per_step * (self.total - step), 1), resumed_from=self.start or None)
        self.t_last, self.tokens_last = now, tokens
        return True


def write(rd: RunDir, **fields: Any) -> None:
    """Replace the run's progress file (phase "training": step, total, loss, tokens_per_s, eta_s; phase
    "evaluating": checkpoint, of, step)."""
    atomic_write_json(rd.progress, {**fields, "time": now_iso()})


def read(rd: RunDir) -> dict:
    """The run's progress ({} when there is none or it does not parse)."""
    d = read_json(rd.progress)
    return d if isinstance(d, dict) else {}
