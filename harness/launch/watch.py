"""What ``harness run`` shows while it waits for its runs: read from the files the runs write, rendered live.

:func:`read_view` builds a :class:`GridView` from the results directory alone (each run's state from
harness/layout.py, what it is doing from its ``progress.json``: harness/progress.py, the base's evaluation from its
lock and result), so what is shown is what is on disk. :func:`reporter` picks the rendering: in a terminal, a
table redrawn in place (runs done / failed / running; each running run's step, loss, tokens/s and ETA, or the
checkpoint it is evaluating); in a pipe or a file, one line per event (a run starts, passes each tenth of its
steps, evaluates a checkpoint, ends; the base is evaluated), so a log of a grid reads top to bottom.
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from dataclasses import dataclass
from typing import Callable, Sequence

from harness import progress
from harness.evaluation.identity import base_dir_for
from harness.fsio import is_locked
from harness.grid import Experiment, RunSpec
from harness.layout import EVAL_LOCK, FAILED, STATES, base_eval_json, valid_eval


@dataclass(frozen=True)
class RunView:
    run_id: str
    state: str  # harness.layout.STATES
    phase: str | None = None  # while running: "training" or "evaluating"
    step: int | None = None  # training: optimizer steps done; evaluating: the checkpoint's step
    total: int | None = None  # training: the run's steps
    loss: float | None = None
    tokens_per_s: float | None = None
    eta_s: float | None = None
    checkpoint: int | None = None  # evaluating: the i-th checkpoint of `of`
    of: int | None = None
    detail: str = ""  # the layout's why (FAILED's last line, ...)

    def doing(self) -> str:
        """What a running run is doing, in one phrase ("" when it is not running or said nothing yet)."""
        if self.state != "running":
            return ""
        if self.phase == "evaluating" and self.checkpoint:
            return f"evaluating checkpoint {self.checkpoint}/{self.of} (step {self.step})"
        if self.phase == "training" and self.total:
            parts = [f"step {self.step}/{self.total} ({100 * (self.step or 0) // self.total}%)"]
            if self.loss is not None:
                parts.append(f"loss {self.loss:.4f}")
            if self.tokens_per_s is not None:
                parts.append(f"{self.tokens_per_s:,.0f} tok/s")
            if self.eta_s is not None:
                parts.append(f"ETA {clock(self.eta_s)}")
            return " ".join(parts)
        return "starting"


@dataclass(frozen=True)
class GridView:
    experiment: str
    runs: tuple[RunView, ...]
    base: str | None = None  # "evaluating", "done", "failed", or None (not started / not needed)
    elapsed_s: float = 0.0

    def counts(self) -> dict[str, int]:
        c = Counter(r.state for r in self.runs)
        return {s: c[s] for s in STATES if c[s]}

    def header(self) -> str:
        parts = [f"{n} {s}" for s, n in self.counts().items()]
        base = f" · base {self.base}" if self.base else ""
        return f"{self.experiment}: {' · '.join(parts)} of {len(self.runs)} runs{base} · {clock(self.elapsed_s)}"


def clock(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


def read_view(exp: Experiment, specs: Sequence[RunSpec], started: float, base: bool = True) -> GridView:
    """The grid as its files say it is now (`base`: report the base model's evaluation too)."""
    runs = []
    for spec in specs:
        rd = exp.run_dir(spec)
        rs = rd.state(spec.config.eval.every_checkpoint)
        p = progress.read(rd) if rs.state == "running" else {}
        keys = ("phase", "step", "total", "loss", "tokens_per_s", "eta_s", "checkpoint", "of")
        runs.append(RunView(spec.run_id, rs.state, detail=rs.detail, **{k: p.get(k) for k in keys}))
    return GridView(exp.config.name, tuple(runs), _base_state(exp) if base else None, time.monotonic() - started)


def _base_state(exp: Experiment) -> str | None:
    bdir = base_dir_for(exp.dir, exp.config)
    if valid_eval(base_eval_json(bdir)):
        return "done"
    if is_locked(bdir / EVAL_LOCK):
        return "evaluating"
    return "failed" if (bdir / FAILED).exists() else None


# ------------------------------------------------------------------------------------------ pipe: one line per event


def _mark(r: RunView) -> tuple:
    """What must change for a run to be worth a line: its state, phase, tenth of its steps, checkpoint evaluated."""
    tenth = 10 * (r.step or 0) // r.total if r.phase == "training" and r.total else None
    return r.state, r.phase if r.state == "running" else None, tenth, r.checkpoint if r.phase == "evaluating" else None


def events(before: GridView | None, now: GridView) -> list[str]:
    """The lines a pipe gets for the change from `before` to `now`: the base's evaluation, each running run's start,
    tenths of its steps and checkpoints evaluated, and the counts when a run changes state."""
    lines = []
    if now.base != (before.base if before else None) and now.base:
        lines.append(f"  base: {now.base}")
    old = {r.run_id: r for r in before.runs} if before else {}
    for r in now.runs:
        prev = old.get(r.run_id)
        if prev is not None and _mark(prev) == _mark(r):
            continue
        if r.state == "running":  # how a run ends is the launcher's own line (with where to look when it failed)
            lines.append(f"  {r.run_id}: {r.doing()}")
    if before is not None and now.counts() != before.counts():
        lines.append(f"[{now.header()}]")
    return lines


# ------------------------------------------------------------------------------------------ terminal: a live table


def table(view: GridView):
    """The header line (counts, base, elapsed; never wrapped to the table's width) above one row per run."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    t = Table()
    for col in ("run id", "state", "progress"):
        t.add_column(col, overflow="fold")
    colours = {"done": "green", "failed": "red", "running": "cyan", "partial": "yellow", "pending": "white"}
    for r in view.runs:
        what = r.doing() or (r.detail if r.state in ("failed", "partial") else "")
        t.add_row(r.run_id, f"[{colours[r.state]}]{r.state}[/]", what)
    return Group(Text(view.header()), t)


class _Lines:
    def __init__(self, out: Callable[[str], None]):
        self.out, self.last = out, None

    def update(self, view: GridView) -> None:
        for line in events(self.last, view):
            self.out(line)
        self.last = view

    def close(self) -> None:
        pass


class _Live:
    def __init__(self, stream):
        from rich.console import Console
        from rich.live import Live

        self.live = Live(console=Console(file=stream), auto_refresh=False, transient=False, redirect_stdout=True)
        self.live.start()

    def update(self, view: GridView) -> None:
        self.live.update(table(view), refresh=True)

    def close(self) -> None:
        self.live.stop()


def reporter(out: Callable[[str], None] = print, stream=None):
    """A live table when `stream` (default stdout) is a terminal, else one line per event through `out`."""
    stream = stream or sys.stdout
    return _Live(stream) if stream.isatty() else _Lines(out)
