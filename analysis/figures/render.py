"""Which figures the report has, in what order, and drawing them to files: :data:`FIGURES`,
:class:`FigureResult`, :func:`render_all`."""

from __future__ import annotations

import io
import logging
import multiprocessing as mp
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import matplotlib.pyplot as plt

from analysis.figures.common import Context, NotApplicable, Skip
from analysis.figures.findings import fig_findings
from analysis.figures.probes import fig_forgetting_vs_kl, fig_format_probe, fig_prompt_weight_fit, fig_weight_heatmap
from analysis.figures.stages import fig_recovery_curves
from analysis.figures.sweeps import (
    fig_forgetting_vs_epochs,
    fig_forgetting_vs_lr,
    fig_learning_vs_forgetting,
    fig_target_vs_lr,
)
from analysis.figures.tokens import fig_mask_audit, fig_token_loss
from analysis.figures.training import fig_nll_vs_step, fig_training_curves
from analysis.style import paper_style
from harness.layout import FIGURES as FIGURES_DIR

log = logging.getLogger("analysis")

PNG_DPI = 150


#: (file stem, function) in report order
FIGURES: list[tuple[str, Callable[[Context], object]]] = [
    ("findings", fig_findings),
    ("nll_vs_step", fig_nll_vs_step),
    ("training_curves", fig_training_curves),
    ("target_vs_lr", fig_target_vs_lr),
    ("forgetting_vs_lr", fig_forgetting_vs_lr),
    ("forgetting_vs_epochs", fig_forgetting_vs_epochs),
    ("learning_vs_forgetting", fig_learning_vs_forgetting),
    ("prompt_weight_fit", fig_prompt_weight_fit),
    ("weight_heatmap", fig_weight_heatmap),
    ("forgetting_vs_kl", fig_forgetting_vs_kl),
    ("recovery_curves", fig_recovery_curves),
    ("format_probe", fig_format_probe),
    ("mask_audit", fig_mask_audit),
    ("token_loss", fig_token_loss),
]


@dataclass
class FigureResult:
    name: str
    caption: str
    files: list[Path] = field(default_factory=list)
    png: bytes | None = None  # for the self-contained HTML
    skipped: str | None = None  # the reason, when not drawn


def render_all(ctx: Context, out_dir: Path, formats: tuple[str, ...] = ("pdf", "png"),
               only: list[str] | None = None, workers: int | None = None) -> list[FigureResult]:
    """Draw every figure into ``out_dir/figures/`` (each format), skipping those whose inputs are missing.

    Figures are independent, and drawing them (PDF font subsetting above all) is most of a report's time, spent
    on one core: with ``workers`` > 1 (default: up to 2, as the cores allow) they are drawn by forked processes
    that share ``ctx`` as it is (nothing pickled but the results), in the same order in the report. Where fork
    is not available, one after the other."""
    fig_dir = Path(out_dir) / FIGURES_DIR
    fig_dir.mkdir(parents=True, exist_ok=True)
    todo = [(i, name, fn) for i, (name, fn) in enumerate(FIGURES) if not only or name in only]
    n = min(len(todo), workers or min(2, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1))
    if n > 1 and "fork" in mp.get_all_start_methods():
        global _JOB
        _JOB = (ctx, fig_dir, formats)
        try:
            with mp.get_context("fork").Pool(n) as pool:
                drawn = pool.map(_draw_index, [i for i, _, _ in todo], chunksize=1)
        finally:
            _JOB = None
    else:
        drawn = [_draw(ctx, fig_dir, formats, name, fn) for _, name, fn in todo]
    return [r for r in drawn if r is not None]


_JOB: tuple | None = None  # (ctx, fig_dir, formats) for the forked workers of render_all


def _draw_index(i: int) -> FigureResult | None:
    ctx, fig_dir, formats = _JOB
    name, fn = FIGURES[i]
    return _draw(ctx, fig_dir, formats, name, fn)


def _draw(ctx: Context, fig_dir: Path, formats: tuple[str, ...], name: str, fn) -> FigureResult | None:
    """One figure into its files; None when it does not apply to this study, skipped (with why) when its inputs
    are missing."""
    caption = " ".join((fn.__doc__ or "").split())
    res = FigureResult(name, caption)
    with paper_style():
        try:
            fig = fn(ctx)
        except NotApplicable:
            return None
        except Skip as exc:
            res.skipped = str(exc)
            log.info("figure %s skipped: %s", name, exc)
            return res
        try:
            for k, fmt in enumerate(formats):
                path = fig_dir / f"{name}.{fmt}"
                fig.savefig(path, dpi=PNG_DPI)
                res.files.append(path)
                if k == 0 and fig.get_layout_engine() is not None:
                    fig.set_layout_engine("none")  # keep the positions just computed: lay out once, not per file
            if "png" in formats:
                res.png = (fig_dir / f"{name}.png").read_bytes()
            else:
                buf = io.BytesIO()
                fig.savefig(buf, format="png", dpi=110)
                res.png = buf.getvalue()
        finally:
            plt.close(fig)
    return res
