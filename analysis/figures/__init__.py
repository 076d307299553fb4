"""The report's figures. Each ``fig_*`` takes a :class:`Context` and returns a matplotlib Figure, or raises
:class:`Skip` with the reason (missing metrics or files) - the report lists skipped figures and why.

Modules by the question a figure answers: ``training`` (losses vs step), ``sweeps`` (target and forgetting vs
learning rate and epochs, learning vs forgetting), ``probes`` (prompt-weight fit, format probe), ``tokens``
(mask audit, per-token loss); ``common`` holds the Context and shared helpers, ``render`` the figure list
(report order) and :func:`render_all`.

Common choices: only ``done`` runs are plotted; one colour per regime everywhere (``analysis.style``);
error bands/bars are 95% bootstrap CIs over seeds (seaborn, fixed bootstrap seed) when a configuration has
several seeds; learning rates on a log axis; legends outside the axes.
"""

from analysis.figures.common import Context, Skip, ci_frame
from analysis.figures.render import FIGURES, FigureResult, render_all

__all__ = ["FIGURES", "Context", "FigureResult", "Skip", "ci_frame", "render_all"]
