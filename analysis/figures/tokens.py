"""Which tokens the loss sees: the mask audit of one training example and the per-token loss of one held-out
conversation, base model vs each regime."""

from __future__ import annotations

import matplotlib.pyplot as plt
from matplotlib.patches import Patch, Rectangle

from analysis import stats
from analysis.figures.common import REGIME, Context, Skip
from analysis.load import load_audit, load_tokens
from analysis.style import BASE_COLOUR, SEGMENT_COLOURS, fmt_num, variant_regime
from harness.layout import ExperimentDir, base_eval_json, eval_side_file

MAX_TOKENS = 64


def fig_mask_audit(ctx: Context):
    """One training example's tokens coloured by segment under each regime (from `harness inspect --json`):
    bold and opaque = in the loss (opacity grows with the weight), faded = context only."""
    audit = load_audit(ctx.exp_dir)
    if not audit:
        where = ExperimentDir(ctx.exp_dir).audit
        raise Skip(f"no mask audit at {where} (write one with: harness inspect EXP.yaml --json {where})")
    exs = audit.get("examples") or []
    if not exs:
        raise Skip("the mask audit has no examples")
    ex = exs[0]
    toks, segs = ex.get("tokens") or [], ex.get("segments") or []
    regs = {k: v for k, v in (ex.get("regimes") or {}).items() if v}
    if not toks or not regs:
        raise Skip("the mask audit's first example has no tokens or no regimes")
    colours = {**SEGMENT_COLOURS, **(audit.get("segment_colours") or {})}
    n = min(len(toks), 160)
    if n < len(toks):
        ctx.notes["mask_audit"] = f"first {n} of {len(toks)} tokens shown"
    width = 78  # characters per line at most
    layout, x, y = [], 0, 0
    for j in range(n):
        t = toks[j].replace("\n", "⏎")
        w = max(len(t), 1)
        if x + w > width and x > 0:
            x, y = 0, y + 1
        layout.append((j, t, x, y, w))
        x += w
        if toks[j].endswith("\n"):
            x, y = 0, y + 1
    lines = y + 1
    width = max(x0 + w for _, _, x0, _, w in layout)
    names = list(regs)
    fig, axs = plt.subplots(len(names), 1, figsize=(0.085 * width + 2.6, 0.3 * lines * len(names) + 0.5 * len(names) + 0.5),
                            squeeze=False, layout="constrained")
    for i, name in enumerate(names):
        ax = axs[i, 0]
        weights = regs[name].get("weights") or [0.0] * len(toks)
        for j, t, x0, y0, w in layout:
            wt = float(weights[j]) if j < len(weights) else 0.0
            alpha = 0.18 if wt <= 0 else 0.45 + 0.55 * min(wt, 1.0)
            ax.add_patch(Rectangle((x0, -y0 - 0.9), w, 0.8, facecolor=colours.get(segs[j], "#DDDDDD"), alpha=alpha,
                                   edgecolor="black" if wt > 0 else "none", lw=0.6))
            ax.text(x0 + w / 2, -y0 - 0.5, t, ha="center", va="center", fontsize=6.5, family="monospace",
                    fontweight="bold" if wt > 0 else "normal", color="black" if wt > 0 else "#555555")
        sup = sum(1 for w in weights[:len(toks)] if w > 0)
        ax.set_xlim(0, width)
        ax.set_ylim(-lines - 0.1, 0.1)
        ax.axis("off")
        ax.set_title(f"{name}: {sup}/{len(toks)} tokens in the loss", loc="left", fontsize=8.5,
                     color=ctx.palette.get(name, "black"))
    handles = [Patch(facecolor=c, label=s) for s, c in colours.items() if s in set(segs)]
    handles.append(Patch(facecolor="white", edgecolor="black", label="in loss (outlined, bold)"))
    fig.legend(handles=handles, title="segment", loc="outside right center", frameon=False)
    fig.suptitle("Mask audit: which tokens each regime trains on")
    return fig


def _representatives(ctx: Context) -> list[tuple[str, str, int]]:
    """(label, run_id, final step) per regime: the best configuration's first done seed (by the target), or the
    regime's first done run."""
    fin = stats.final_rows(ctx.done)
    out = []
    best = None
    if ctx.summary is not None and ctx.target:
        best = stats.best_per_regime(ctx.summary, ctx.target)
    for r in dict.fromkeys(variant_regime(v) for v in ctx.order):
        rows = fin[fin[REGIME] == r]
        if best is not None and len(best):
            b = best[(best[REGIME] == r) & (best["metric"] == ctx.target)]
            if len(b):
                runs = b["runs"].iloc[0].split(",")
                rows = rows[rows["run_id"].isin(runs)]
        if rows.empty:
            continue
        rid = sorted(rows["run_id"].unique())[0]
        out.append((rows.loc[rows["run_id"] == rid, "variant"].iloc[0], rid,
                    int(rows.loc[rows["run_id"] == rid, "step"].max())))
    return out


def fig_token_loss(ctx: Context):
    """Per-token NLL of one held-out conversation (eval/step-N.tokens.parquet): base model vs each regime's
    best configuration at its final checkpoint; bars coloured by segment."""
    ed = ExperimentDir(ctx.exp_dir)
    base = load_tokens(eval_side_file(base_eval_json(ed.base()), "tokens"))
    if base is None or base.empty:
        raise Skip("no per-token losses of the base model (base/eval/step-000000.tokens.parquet)")
    panels = [("base model (step 0)", base, BASE_COLOUR)]
    used = []
    for label, rid, step in _representatives(ctx):
        t = load_tokens(eval_side_file(ed.run(rid).eval_json(step), "tokens"))
        if t is not None and len(t):
            panels.append((f"{label} (step {step})", t, ctx.palette.get(label, "black")))
            used.append(f"{label}: {rid} step {step}")
    if len(panels) < 2:
        raise Skip("no tuned run has per-token losses (eval/step-NNNNNN.tokens.parquet)")
    ex = int(base["example"].min())
    b0 = base[base["example"] == ex].sort_values("position")
    n = min(len(b0), MAX_TOKENS)
    ctx.notes["token_loss"] = ("Runs shown (best configuration per regime, first seed): " + "; ".join(used) + "."
                               + (f" First {n} of {len(b0)} tokens of example {ex}." if n < len(b0) else ""))
    fig, axs = plt.subplots(len(panels), 1, figsize=(min(0.16 * n + 2.0, 12), 1.35 * len(panels) + 1.0),
                            sharex=True, sharey=True, squeeze=False, layout="constrained")
    segs_seen: list[str] = []
    for i, (label, t, col) in enumerate(panels):
        ax = axs[i, 0]
        e = t[t["example"] == ex].sort_values("position").head(n)
        colours = [SEGMENT_COLOURS.get(s, "#DDDDDD") for s in e["segment"]]
        segs_seen += list(e["segment"])
        ax.bar(e["position"], e["nll"].fillna(0.0), color=colours, width=0.85)
        resp = e[e["segment"].isin(["assistant", "eot"])]["nll"].mean()
        ax.set_title(label, loc="left", fontsize=8, color=col)
        ax.set_title(f"mean response NLL {fmt_num(resp)}", loc="right", fontsize=7.5, color="#444444")
        ax.set_ylabel("NLL (nats)")
        ax.grid(axis="x", visible=False)
    e = b0.head(n)
    axs[-1, 0].set_xticks(e["position"])
    axs[-1, 0].set_xticklabels([s.replace("\n", "⏎") for s in e["token"]], rotation=90, fontsize=6.5,
                               family="monospace")
    axs[-1, 0].set_xlabel("token (position in the conversation)")
    handles = [Patch(facecolor=SEGMENT_COLOURS.get(s, "#DDDDDD"), label=s) for s in dict.fromkeys(segs_seen)]
    fig.legend(handles=handles, title="segment", loc="outside right center", frameon=False)
    fig.suptitle(f"Per-token loss of held-out example {ex}: base vs tuned")
    return fig
