"""The report's figures (being split by question; see common.py)."""

from analysis.figures.common import FIGURES, Context, FigureResult, Skip, ci_frame, render_all

__all__ = ["FIGURES", "Context", "FigureResult", "Skip", "ci_frame", "render_all"]
