"""Findings: the claims an experiment file declares (harness/claims.py), judged (analysis/claims.py), marked
preregistered or post hoc from plan.json's registration, and corrected for multiplicity: Holm within the
preregistered primary family, Benjamini-Hochberg over the rest (secondary and post hoc claims; a post hoc claim
never counts as primary). Any experiment gets findings this way, shipped or not: no Python per study.

Per-item values come from the logged samples (analysis/items.py); a metric without them (results written before
items were logged) falls back to the run means, one 'item' per run, so only the seed variance is estimated, and
the observed text says 1 item.
"""

from __future__ import annotations

from html import escape
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from analysis import intervals as IV
from analysis.claims import Finding, conjunction, expand, judge
from analysis.evidence import Evidence
from analysis.items import load_items
from harness.claims import Claim, parse_claims, status

ALPHA = 0.05


def claims_for(experiment, plan: dict | None) -> list[Claim]:
    """The claims of a loaded experiment, or those plan.json recorded at the last launch (a bare results dir)."""
    if experiment is not None and hasattr(experiment, "claims"):
        return list(experiment.claims)
    declared = ((plan or {}).get("claims") or {}).get("declared")
    return parse_claims(declared) if declared else []


def claim_metrics(claims: Sequence[Claim]) -> list[str]:
    """Every metric the claims read: their own, the selection's (by), a fit's, and any a side names."""
    out: list[str] = []
    for c in claims:
        out += [c.metric, *([c.by] if c.by else [])]
        if c.effect == "fit":
            out += [c.spec["x"], *([c.spec["minus"]] if c.spec.get("minus") else [])]
        for side in c.sides():
            for m in side if isinstance(side, list) else [side]:
                if isinstance(m, dict) and m.get("metric"):
                    out.append(m["metric"])
    return list(dict.fromkeys(out))


def evidence(df: pd.DataFrame, exp_dir: str | Path | None, metrics) -> Evidence:
    """Per-item evidence of `metrics`; a metric without logged items falls back to the run means (one 'item'
    per run: then only seeds are resampled)."""
    items = load_items(exp_dir, metrics) if exp_dir is not None else pd.DataFrame()
    have = set(items["metric"]) if len(items) else set()
    fallback = df[df["metric"].isin([m for m in metrics if m not in have]) & (df["metric"] != "state")]
    if len(fallback):
        fb = fallback.assign(doc_id="run mean", num=fallback["value"].astype(float), den=1.0, group=None)
        fb.loc[fb["step"] == 0, ["run_id", "state"]] = ["base", "done"]
        fb = fb.drop_duplicates(["run_id", "step", "metric"])
        items = pd.concat([items, fb.drop(columns=["value"])], ignore_index=True)
    return Evidence(items, df)


def judge_all(claims: Sequence[Claim], ev: Evidence, registry: dict | None) -> list[Finding]:
    """Every declared claim judged (per / each expanded, all as a conjunction), then corrected."""
    out: list[Finding] = []
    for claim in claims:
        st = status(claim, registry)
        for part in expand(ev, claim):
            f = conjunction([judge(ev, p) for p in part], claim) if isinstance(part, list) else judge(ev, part)
            f.status = st
            for p in f.parts:
                p.status = st
            out.append(f)
    correct(out)
    return out


def correct(found: list[Finding]) -> None:
    """Holm over the preregistered primary claims, Benjamini-Hochberg over the others; a claim whose raw
    verdict is decided keeps it after correction only if its adjusted p stays below ALPHA."""
    primary = [f for f in found if f.family == "primary" and f.status == "preregistered"]
    rest = [f for f in found if f not in primary]
    for fam, method, adjust in ((primary, "holm", IV.holm), (rest, "bh", IV.benjamini_hochberg)):
        judged = [f for f in fam if f.p is not None and f.verdict != "n/a"]
        ps = [f.p if f.seeds != 1 else 1.0 for f in judged]  # one seed: the seed variance is unknown, never decided
        for f, q in zip(judged, adjust(ps) if ps else []):
            f.p_adjusted, f.correction = float(q), method
            f.adjusted = f.verdict if f.verdict in ("yes", "no") and q < ALPHA else \
                "inconclusive" if f.verdict != "n/a" else "n/a"
        for f in fam:
            if f.p is None:
                f.adjusted, f.correction = f.verdict, method


def config_interval(ev: Evidence, metric: str, run_ids: Sequence[str]) -> tuple[float, float] | None:
    """(low, high) of one configuration's mean over its seeds (final checkpoints) with the claims' calibrated
    interval; None with one seed (its seed variance is unknown) or without per-item results."""
    d = ev.runs(metric)
    d = d[d["run_id"].isin(list(run_ids))]
    if d.empty or d["run_id"].nunique() != len(set(run_ids)) or len(set(run_ids)) < 2:
        return None
    d = d[d["step"] == d.groupby("run_id")["step"].transform("max")]
    cell = ev.cell(metric, d, {})
    if cell is None:
        return None
    point = cell.values(np.ones((1, ev.groups(metric)[1])))[:, 0]
    boot = cell.values(ev.counts(metric))
    iv = IV.interval(point, boot, len(point), ev.groups(metric)[1], cell.num.shape[1])
    return (iv.low, iv.high) if iv is not None else None


def with_item_cis(summ: pd.DataFrame, ev: Evidence) -> pd.DataFrame:
    """The summary table's CIs: the calibrated interval over seeds and item groups (config_interval); a
    configuration with one seed gets none."""
    summ = summ.copy()
    for i, r in summ.iterrows():
        runs = str(r["runs"]).split(",") if r.get("runs") else []
        got = config_interval(ev, r["metric"], runs) if runs else None
        summ.loc[i, ["ci_low", "ci_high"]] = got if got else (np.nan, np.nan)
    return summ


FINDINGS_NOTE = ("Each claim is declared in the experiment file (`claims:`). Its effect is computed per seed (runs "
                 "paired by seed, the base shared) and its 95% interval is estimate +- t x SE, SE^2 = the seed "
                 "variance / seeds + the variance over a bootstrap of the evaluation items by group (person, "
                 "subject), t on the seeds' degrees of freedom (S - 1): with 2 seeds the interval is wide, as "
                 "it must be. A best/worst choice (an LR, a checkpoint) is made on half the item groups and judged "
                 "on the other half, both ways. yes / no: the interval lies on one side of the boundary; "
                 "inconclusive: it spans it (with the seeds and items 80% power would need). Adjusted: Holm "
                 "within the preregistered primary claims, Benjamini-Hochberg over the others. Post hoc: declared "
                 "or edited after results existed (plan.json's registration); shown apart, never primary "
                 "(analysis/claims.py, analysis/intervals.py).")

_MARK = {"yes": "yes", "no": "**no**", "inconclusive": "*inconclusive*", "n/a": "n/a", "": ""}


def to_markdown(found: list[Finding]) -> list[str]:
    if not found:
        return []
    L: list[str] = []
    for title, rows in (("Preregistered", [f for f in found if f.status == "preregistered"]),
                        ("Post hoc (declared or edited after results existed: exploratory)",
                         [f for f in found if f.status != "preregistered"])):
        if not rows:
            continue
        L += [f"**{title}**", "", "| claim | family | observed (effect [95% CI]) | verdict | adjusted | source |",
              "|---|---|---|---|---|---|"]
        for f in rows:
            adj = f"{_MARK[f.adjusted]} ({f.correction} p={f.p_adjusted:.3g})" if f.p_adjusted is not None \
                else _MARK[f.adjusted]
            decide = f" ({f.decide})" if f.decide else ""
            L.append(f"| `{f.id}`: {f.claim} | {f.family} | {f.observed} | {_MARK[f.verdict]}{decide} | {adj} | "
                     f"{f.source} |")
        L.append("")
    return L


def findings_html(found: list[Finding]) -> str:
    """The report's Findings section in HTML: preregistered claims, then post hoc ones, each a scrolling table."""
    e = escape
    mark = {"yes": "yes", "no": "<strong>no</strong>", "inconclusive": "<em>inconclusive</em>", "n/a": "n/a", "": ""}
    H = [f"<h2>Findings: does the claimed shape appear?</h2><p>{e(FINDINGS_NOTE)}</p>"]
    for title, pre in (("Preregistered", True), ("Post hoc (exploratory)", False)):
        rows = [f for f in found if (f.status == "preregistered") == pre]
        if not rows:
            continue
        H.append(f"<h3>{title}</h3><div class='scroll'><table><tr><th>claim</th><th>family</th>"
                 "<th>observed (effect [95% CI])</th><th>verdict</th><th>adjusted</th><th>source</th></tr>" + "".join(
                     f"<tr><td><code>{e(f.id)}</code>: {e(f.claim)}</td><td>{e(f.family)}</td><td>{e(f.observed)}</td>"
                     f"<td>{mark[f.verdict]}" + (f"<br><small>{e(f.decide)}</small>" if f.decide else "")
                     + f"</td><td>{mark[f.adjusted]}" + (f"<br><small>{e(f.correction)} p={f.p_adjusted:.3g}</small>"
                                                        if f.p_adjusted is not None else "")
                     + f"</td><td>{e(f.source)}</td></tr>" for f in rows) + "</table></div>")
    return "".join(H)
