"""Tables: mean [95% bootstrap CI] over seeds per configuration, best configuration per regime, paired
regime comparisons. Each is written as Markdown, LaTeX (booktabs, no jinja2 needed) and CSV (the raw numbers
behind the formatted cells)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import pandas as pd

from analysis import stats
from analysis.style import variant_order

#: below this many pairs a percentile bootstrap CI is too narrow to call a difference (flagged in the table)
MIN_PAIRS = 5
AXIS_NAMES = {"train.lr": "LR", "train.epochs": "epochs", "train.seed": "seed", "regime.name": "regime",
              "regime.prompt_weight": "prompt weight", "variant": "regime"}


def fmt(v, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    if isinstance(v, float):
        if v != 0 and abs(v) < 1e-2:
            return f"{v:.0e}".replace("e-0", "e-")
        return f"{v:.{digits}f}"
    return str(v)


def fmt_ci(mean: float, lo: float, hi: float, n: int | None = None) -> str:
    if mean != mean:
        return "–"
    if lo != lo:
        return f"{mean:.3f}" + (f" (n={n})" if n == 1 else "")
    return f"{mean:.3f} [{lo:.3f}, {hi:.3f}]"


def _axis_value(col: str, v) -> str:
    if v is None or v is pd.NA or (isinstance(v, float) and v != v):
        return "–"
    if col == "train.lr" and isinstance(v, (int, float)):
        return f"{v:.0e}".replace("e-0", "e-")
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


def cell_text(col: str, v) -> str:
    """Display text of one cell of a run listing (axes formatted, missing as '–')."""
    return _axis_value(col, v)


def summary_table(summ: pd.DataFrame, metrics: Sequence[str], base: dict | None = None) -> pd.DataFrame:
    """Wide, formatted: one row per configuration, one column per metric with 'mean [lo, hi]', and n seeds.
    The base model (step 0) is the first row."""
    if summ.empty:
        return pd.DataFrame()
    keys = [c for c in summ.columns if c not in ("metric", "mean", "ci_low", "ci_high", "n", "runs",
                                                 stats.REGIME_KEY)]
    vary = [k for k in keys if k == "variant" or summ[k].nunique(dropna=True) > 1]
    rows = []
    order = {v: i for i, v in enumerate(variant_order(summ["variant"].unique()))}
    for key, g in summ.groupby(keys, dropna=False, sort=False):
        key = key if isinstance(key, tuple) else (key,)
        kd = dict(zip(keys, key))
        row = {AXIS_NAMES.get(k, k): _axis_value(k, kd[k]) for k in vary}
        row["n seeds"] = int(g["n"].max())
        for m in metrics:
            r = g[g["metric"] == m]
            row[m] = fmt_ci(*r[["mean", "ci_low", "ci_high"]].iloc[0], int(r["n"].iloc[0])) if len(r) else "–"
        row["_sort"] = (order.get(kd["variant"], 99), *[(kd[k] if kd[k] == kd[k] else 0) for k in vary[1:]])
        rows.append(row)
    out = pd.DataFrame(rows).sort_values("_sort", kind="stable").drop(columns="_sort").reset_index(drop=True)
    if base:
        brow = {c: "" for c in out.columns}
        brow[out.columns[0]] = "base model"
        brow["n seeds"] = ""
        for m in metrics:
            brow[m] = fmt(base.get(m, math.nan))
        out = pd.concat([pd.DataFrame([brow]), out], ignore_index=True)
    return out


def best_table(best: pd.DataFrame, metrics: Sequence[str], target: str, axes: Sequence[str]) -> pd.DataFrame:
    """One row per regime: its best configuration (by the mean target) and that configuration's metrics."""
    if best.empty:
        return pd.DataFrame()
    cfg_cols = [a for a in stats.config_axes(best, axes) if a not in (stats.REGIME_KEY,)]
    rows = []
    for variant, g in best.groupby("variant", sort=False):
        row = {"regime": g[stats.REGIME_KEY].iloc[0], "configuration": variant}
        for c in cfg_cols:
            row[AXIS_NAMES.get(c, c)] = _axis_value(c, g[c].iloc[0])
        row["n seeds"] = int(g["n"].max())
        for m in metrics:
            r = g[g["metric"] == m]
            row[m] = fmt_ci(*r[["mean", "ci_low", "ci_high"]].iloc[0], int(r["n"].iloc[0])) if len(r) else "–"
        rows.append(row)
    out = pd.DataFrame(rows)
    order = {v: i for i, v in enumerate(variant_order(out["regime"]))}
    return out.sort_values("regime", key=lambda s: s.map(order), kind="stable").reset_index(drop=True)


def paired_table(pairs: pd.DataFrame) -> pd.DataFrame:
    if pairs.empty:
        return pd.DataFrame()
    return pd.DataFrame({
        "metric": pairs["metric"], "A": pairs["A"], "B": pairs["B"], "pairs": pairs["n_pairs"].astype(int),
        "mean A − B [95% CI]": [fmt_ci(m, lo, hi) if n > 1 else f"{m:.3f} (1 pair)"
                                 for m, lo, hi, n in zip(pairs["mean_diff"], pairs["ci_low"], pairs["ci_high"],
                                                         pairs["n_pairs"])],
        "CI excludes 0": ["–" if lo != lo else (f"({'yes' if (lo > 0 or hi < 0) else 'no'}; n<{MIN_PAIRS})"
                                                 if n < MIN_PAIRS else ("yes" if (lo > 0 or hi < 0) else "no"))
                          for lo, hi, n in zip(pairs["ci_low"], pairs["ci_high"], pairs["n_pairs"])],
    })


# ------------------------------------------------------------------------------------------------ writers


def to_markdown(df: pd.DataFrame) -> str:
    if df is None or df.empty:
        return "_(no data)_\n"
    cols = [str(c) for c in df.columns]
    esc = lambda s: str(s).replace("|", "\\|").replace("\n", " ")  # noqa: E731
    lines = ["| " + " | ".join(esc(c) for c in cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for _, r in df.iterrows():
        lines.append("| " + " | ".join(esc(v) for v in r.tolist()) + " |")
    return "\n".join(lines) + "\n"


_LATEX_ESC = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
              "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "−": "$-$",
              "–": "--", "²": "$^2$"}


def latex_escape(s) -> str:
    return "".join(_LATEX_ESC.get(ch, ch) for ch in str(s))


def to_latex(df: pd.DataFrame, caption: str = "", label: str = "") -> str:
    """A booktabs table; CI brackets in a smaller font."""
    if df is None or df.empty:
        return "% (no data)\n"
    cols = [str(c) for c in df.columns]

    def cell(v) -> str:
        s = latex_escape(v)
        if " [" in s and s.endswith("]"):
            mean, ci = s.split(" [", 1)
            return f"{mean} {{\\scriptsize[{ci}}}"
        return s

    align = "".join("l" if not _numeric_col(df[c]) else "r" for c in df.columns)
    out = ["\\begin{table}[t]", "\\centering", "\\small", f"\\begin{{tabular}}{{{align}}}", "\\toprule",
           " & ".join(latex_escape(c) for c in cols) + " \\\\", "\\midrule"]
    for _, r in df.iterrows():
        out.append(" & ".join(cell(v) for v in r.tolist()) + " \\\\")
    out += ["\\bottomrule", "\\end{tabular}"]
    if caption:
        out.append(f"\\caption{{{latex_escape(caption)}}}")
    if label:
        out.append(f"\\label{{{label}}}")
    out.append("\\end{table}")
    return "\n".join(out) + "\n"


def _numeric_col(s: pd.Series) -> bool:
    return all(str(v)[:1].isdigit() or str(v)[:1] in "-–." for v in s.astype(str) if str(v))


def write_table(df: pd.DataFrame, raw: pd.DataFrame | None, out_dir: Path, name: str, caption: str) -> list[Path]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{name}.md", out_dir / f"{name}.tex"]
    paths[0].write_text(to_markdown(df), encoding="utf-8")
    paths[1].write_text(to_latex(df, caption, f"tab:{name}"), encoding="utf-8")
    if raw is not None:
        p = out_dir / f"{name}.csv"
        raw.to_csv(p, index=False)
        paths.append(p)
    return paths
