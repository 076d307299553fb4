"""What the findings say, drawn: every claim's effect with its 95% CI against its decision boundary (a forest
plot), coloured by verdict; for the phase-diagram studies one row per condition of the grid, so the plot is
the phase diagram: where a published shape appears (CI clear of the boundary on its side), where its
opposite does, and where the data cannot tell."""

from __future__ import annotations

import textwrap

import matplotlib.pyplot as plt

from analysis.figures.common import Context, NotApplicable

VERDICT_COLOURS = {"yes": "#1b7837", "no": "#b2182b", "inconclusive": "#878787"}
SCALE = {"pct": 100.0, "pts": 100.0, "nats": 1.0, "nats/decade": 1.0}
AXIS = {"pct": "percent", "pts": "percentage points", "nats": "nats", "nats/decade": "nats per decade",
        "r2": "R^2", "ratio": "ratio"}  # a claim's bound is written in its unit: drawn as written


def fig_findings(ctx: Context):
    """Findings: each claim's effect (dot) and its raw 95% interval (bar: estimate +- t x SE, the SE from the seed and
    item-group variance, t on its degrees of freedom, as in the Findings table; before any multiplicity correction)
    against its decision boundary (dashed; a band for 'within' claims); by the raw verdict, green: the claim holds,
    red: it does not, grey: inconclusive."""
    found = [f for f in ctx.findings if f.verdict in VERDICT_COLOURS and f.estimate is not None and f.unit]
    if not found:
        raise NotApplicable("no findings with an estimate (the experiment declares no claims: claims:)")
    units = list(dict.fromkeys(f.unit for f in found))
    rows = [[f for f in found if f.unit == u] for u in units]
    fig, axes = plt.subplots(len(units), 1, figsize=(9.5, 0.9 + 0.42 * len(found) + 0.6 * len(units)), squeeze=False,
                             gridspec_kw={"height_ratios": [len(r) + 1 for r in rows]})
    for ax, unit, fs in zip(axes[:, 0], units, rows):
        k = SCALE.get(unit, 1.0)
        for i, f in enumerate(fs):
            c = VERDICT_COLOURS[f.verdict]
            ax.plot([k * f.low, k * f.high], [i, i], color=c, lw=2.2, solid_capstyle="butt")
            ax.plot([k * f.estimate], [i], "o", color=c, ms=5)
            if f.kind == "within":
                ax.fill_betweenx([i - 0.4, i + 0.4], -f.bound, f.bound, color="black", alpha=0.08, lw=0)
            else:
                ax.plot([f.bound] * 2, [i - 0.4, i + 0.4], ls="--", color="black", lw=0.9)
        ax.set_yticks(range(len(fs)), ["\n".join(textwrap.wrap(f.claim, 70)) for f in fs], fontsize=6.5)
        ax.invert_yaxis()
        ax.set_xlabel(AXIS.get(unit, unit), fontsize=8)
        ax.grid(axis="x", alpha=0.3)
    handles = [plt.Line2D([], [], color=c, lw=2.2, marker="o", label=v) for v, c in VERDICT_COLOURS.items()]
    axes[0, 0].legend(handles=handles, loc="lower right", fontsize=7, frameon=False, ncol=3,
                      bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    return fig
