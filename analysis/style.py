"""Paper style: Agg backend, seaborn whitegrid/paper, fixed colour-blind-safe regime colours (Okabe-Ito),
readable metric labels with units."""

from __future__ import annotations

import colorsys
import contextlib
import re
from typing import Iterable, Iterator

import matplotlib

matplotlib.use("Agg")  # never open a window; safe on clusters without a display

import matplotlib.colors as mcolors  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import seaborn as sns  # noqa: E402

#: one colour per regime, the same in every figure (Okabe-Ito, colour-blind safe)
REGIME_COLOURS = {
    "prompt_masked": "#009E73",  # bluish green
    "full": "#0072B2",  # blue
    "prompt_only": "#CC79A7",  # reddish purple
    "prompt_weight": "#E69F00",  # orange
}
#: further regimes (registered ones) take these in sorted-name order
EXTRA_COLOURS = ("#56B4E9", "#D55E00", "#F0E442", "#000000")
BASE_COLOUR = "#7F7F7F"
FONTTYPE = 42  # TrueType in PDFs (editable text; venues reject Type 3)
REGIME_ORDER = tuple(REGIME_COLOURS)
SEGMENT_COLOURS = {"template": "#999999", "system": "#CC79A7", "user": "#0072B2", "assistant": "#009E73",
                   "eot": "#E69F00", "tool": "#56B4E9", "replay": "#F0E442"}  # harness.inspect's
FORMAT_LABELS = {"format/answered": "answered", "format/continued_question": "continued question",
                 "format/other": "other"}

#: adapter variants (model.adapter: "<regime> + LoRA r=8") take their method's colour, shaded by rank
ADAPTER_COLOURS = {"LoRA": "#D55E00", "DoRA": "#56B4E9"}
ADAPTER_ORDER = ("", *ADAPTER_COLOURS)

# a variant: the regime, its prompt-loss weight when the grid varies it, the adapter when the grid varies that
_VARIANT = re.compile(r"^(?P<regime>[^ ]+)(?: \(w=(?P<w>[^)]+)\))?(?: \+ (?P<method>\w+)(?: r=(?P<r>\d+))?)?$")

_LABELS = {
    "nll/response": "response NLL (nats/token)",
    "nll/prompt": "prompt NLL (nats/token)",
    "nll/template": "template NLL (nats/token)",
    "forgetting/pretrain_nll": "pretraining-text NLL (nats/token)",
    "forgetting/pretrain_nll_delta": "Δ pretraining NLL vs base (nats/token)",
    "forgetting/kl_base": "KL(base ‖ tuned) (nats/token)",
    "forgetting/kl_sft": "KL(base ‖ tuned) on SFT prompts (nats/token)",
    "format/answered": "answered rate",
    "format/continued_question": "continued-question rate",
    "format/other": "other-output rate",
    "format/unfinished": "unfinished rate",
    "train.lr": "learning rate",
    "train.epochs": "epochs",
    "epoch": "epoch",
    "step": "optimizer step",
    "regime.prompt_weight": "prompt-loss weight",
    "loss_response": "train response NLL (nats/token)",
    "loss_prompt": "train prompt NLL (nats/token)",
}


def metric_label(metric: str, delta: bool = False) -> str:
    if metric.startswith("retention_drop:"):
        return f"fact-retention drop ({metric.split(':', 1)[1]}, base − tuned)"
    if metric.startswith("delta:"):
        return f"Δ {metric.split(':', 1)[1]} vs base"
    lab = _LABELS.get(metric)
    if lab is None:
        task, _, name = metric.partition("/")
        lab = f"{task} {name.replace('_', ' ')}" if name else metric.replace("_", " ")
    return f"Δ {lab} vs base" if delta else lab


def regime_colours(regimes: Iterable[str]) -> dict[str, str]:
    """Fixed colour per regime; unknown regimes take EXTRA_COLOURS by sorted name (stable across figures)."""
    out = dict(REGIME_COLOURS)
    extra = sorted(r for r in set(regimes) if r not in out)
    for i, r in enumerate(extra):
        out[r] = EXTRA_COLOURS[i % len(EXTRA_COLOURS)]
    return out


def _shade(colour: str, k: int, n: int) -> str:
    """k-th of n shades of a colour (light to dark), keeping its hue."""
    h, l, s = colorsys.rgb_to_hls(*mcolors.to_rgb(colour))
    if n <= 1:
        return colour
    ls = [0.30 + 0.40 * (n - 1 - i) / (n - 1) for i in range(n)]
    return mcolors.to_hex(colorsys.hls_to_rgb(h, ls[k], s))


def variant_regime(variant: str) -> str:
    m = _VARIANT.match(variant)
    return m.group("regime") if m else variant


def variant_family(variant: str) -> str:
    """What one Pareto front joins: the regime, and the adapter method without its rank (full fine-tuning and
    LoRA of one regime are two families; LoRA's ranks are one)."""
    m = _VARIANT.match(variant)
    if not m:
        return variant
    return m.group("regime") + (f" + {m.group('method')}" if m.group("method") else "")


def variant_order(variants: Iterable[str]) -> list[str]:
    """Regimes in the fixed order, then full fine-tuning before adapters, weight variants by weight, ranks by rank."""
    vs = list(dict.fromkeys(variants))

    def key(v: str):
        r = variant_regime(v)
        m = _VARIANT.match(v)
        ri = REGIME_ORDER.index(r) if r in REGIME_ORDER else len(REGIME_ORDER)
        method = (m.group("method") or "") if m else ""
        mi = ADAPTER_ORDER.index(method) if method in ADAPTER_ORDER else len(ADAPTER_ORDER)
        w = float(m.group("w")) if m and m.group("w") else -1.0
        return (ri, r, mi, method, w, int(m.group("r")) if m and m.group("r") else -1)

    return sorted(vs, key=key)


def variant_colours(variants: Iterable[str]) -> dict[str, str]:
    """Each variant gets its regime's colour (an adapter variant its method's); the weight variants of one
    regime, and the ranks of one adapter, get shades of it."""
    vs = variant_order(variants)
    base = regime_colours(variant_regime(v) for v in vs)
    out = {}
    fams = list(dict.fromkeys(variant_family(v) for v in vs))
    for fam in fams:
        group = [v for v in vs if variant_family(v) == fam]
        m = _VARIANT.match(group[0])
        method = m.group("method") if m else None
        colour = ADAPTER_COLOURS.get(method, EXTRA_COLOURS[1]) if method else base[variant_regime(group[0])]
        peers = [f for f in fams if method and f.endswith(f" + {method}")]  # one method under several regimes
        if len(peers) > 1:
            colour = _shade(colour, peers.index(fam), len(peers) + 1)
        shaded = [v for v in group if (mv := _VARIANT.match(v)) and (mv.group("w") or mv.group("r"))]
        for v in group:
            out[v] = _shade(colour, shaded.index(v), len(shaded)) if v in shaded else colour
        out.setdefault(fam, colour)  # the family's front
    out["base"] = BASE_COLOUR
    return out


@contextlib.contextmanager
def paper_style() -> Iterator[None]:
    rc = {"pdf.fonttype": FONTTYPE, "ps.fonttype": FONTTYPE, "savefig.dpi": 200, "figure.dpi": 100,
          "axes.titlesize": 10, "axes.labelsize": 9, "legend.fontsize": 8, "legend.title_fontsize": 8,
          "xtick.labelsize": 8, "ytick.labelsize": 8, "font.family": "DejaVu Sans"}
    with plt.rc_context(), sns.axes_style("whitegrid"), sns.plotting_context("paper", rc=rc):
        plt.rcParams.update(rc)
        yield


def fmt_num(v: float) -> str:
    if v != v:  # NaN
        return "–"
    if v != 0 and (abs(v) < 1e-3 or abs(v) >= 1e4):
        return f"{v:.2g}"
    return f"{v:.3g}"
