"""Which figures the report has, in what order, and drawing them to files: :data:`FIGURES`,
:class:`FigureResult`, :func:`render_all`."""

from __future__ import annotations

import io
import logging
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
               only: list[str] | None = None) -> list[FigureResult]:
    """Draw every figure into ``out_dir/figures/`` (each format), skipping those whose inputs are missing."""
    fig_dir = Path(out_dir) / FIGURES_DIR
    fig_dir.mkdir(parents=True, exist_ok=True)
    results = []
    for name, fn in FIGURES:
        if only and name not in only:
            continue
        caption = " ".join((fn.__doc__ or "").split())
        res = FigureResult(name, caption)
        with paper_style():
            try:
                fig = fn(ctx)
            except NotApplicable:
                continue
            except Skip as exc:
                res.skipped = str(exc)
                log.info("figure %s skipped: %s", name, exc)
                results.append(res)
                continue
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
        results.append(res)
    return results
