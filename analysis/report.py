"""`harness report`: data files, figures, tables, report.md and a self-contained report.html for one
experiment's results directory.

Output layout (default ``results/<experiment>/report/``)::

    runs.parquet, runs.csv          load_runs(): one row per (run, step, metric), base rows and state rows included
    training.parquet, training.csv  load_training(): metrics.jsonl, same tidy shape
    run_states.csv                  run_table(): one row per run with its state and why
    figures/<name>.{pdf,png}        see analysis.figures.FIGURES
    tables/<name>.{md,tex,csv}      summary, best_per_regime, paired
    report.md, report.html
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import pandas as pd

from analysis import stats, tables
from analysis.figures import Context, FigureResult, render_all
from analysis.findings import (FINDINGS_NOTE, claim_metrics, claims_for, evidence, findings_html, judge_all,
                               with_item_cis)
from analysis.findings import to_markdown as findings_markdown
from analysis.load import (
    default_target_metric,
    discover_runs,
    experiment_dirs,
    load_plan,
    load_runs,
    load_training,
    run_table,
)
from analysis.provenance import config_text, load_provenance, provenance_rows
from harness import layout as lay
from harness.errors import HarnessError
from harness.layout import REPORT_HTML, STATES, ExperimentDir

log = logging.getLogger("analysis")

KEY_METRICS = ("nll/response", "nll/prompt", "forgetting/pretrain_nll_delta", "forgetting/kl_base",
               "forgetting/kl_sft", "format/answered")
PAIRED_METRICS = ("nll/response", "forgetting/pretrain_nll_delta")


@dataclass
class Report:
    out_dir: Path
    html: Path
    markdown: Path
    figures: list[FigureResult]
    tables: dict[str, list[Path]]
    data: list[Path]
    target: str | None
    states: dict[str, int]
    not_done: pd.DataFrame
    notes: list[str] = field(default_factory=list)
    findings: list = field(default_factory=list)  # analysis.findings.Finding of a shipped study

    @property
    def figure_files(self) -> list[Path]:
        return [p for f in self.figures for p in f.files]

    @property
    def skipped(self) -> dict[str, str]:
        return {f.name: f.skipped for f in self.figures if f.skipped}


def _safe_parquet(df: pd.DataFrame, path: Path) -> Path | None:
    try:
        df.to_parquet(path, index=False)
        return path
    except Exception as exc:  # noqa: BLE001 - pyarrow missing or an odd dtype: the CSV still has everything
        log.warning("could not write %s: %s", path, exc)
        return None


def build_report(results_dir: str | Path, out_dir: str | Path | None = None, *,
                 formats: Sequence[str] = ("pdf", "png"), target: str | None = None, retention: str | None = None,
                 experiment: Any = None, experiment_file: str | None = None,
                 only: list[str] | None = None) -> Report:
    """Build the report of one experiment directory (``results/<experiment>``). ``experiment`` (a loaded
    Experiment, or an ExperimentConfig) supplies the config shown in the report, values of runs without a
    config.yaml and, for an Experiment, the planned runs when plan.json is missing."""
    dirs = experiment_dirs(results_dir)
    if not dirs:
        raise HarnessError("no results here (expected plan.json or runs/)", where=str(results_dir),
                           fix="run the experiment first (harness run EXP.yaml), or point at results/<experiment>")
    if len(dirs) > 1:
        raise HarnessError(f"{len(dirs)} experiments under this directory: {', '.join(d.name for d in dirs)}",
                           where=str(results_dir), fix="point at one of them: results/<experiment>")
    exp_dir = dirs[0]
    config = experiment.config if hasattr(experiment, "runs") and hasattr(experiment, "config") else experiment
    out = Path(out_dir) if out_dir else ExperimentDir(exp_dir).report
    out.mkdir(parents=True, exist_ok=True)
    formats = tuple(f.strip().lower().lstrip(".") for f in formats if f.strip())
    bad = [f for f in formats if f not in ("pdf", "png", "svg")]
    if bad:
        raise HarnessError(f"unknown figure format(s) {bad}", where="--format", fix="use pdf, png and/or svg")

    df = load_runs(exp_dir, experiment)
    training = load_training(exp_dir, experiment)
    runs = run_table(exp_dir, experiment)
    _, axes = discover_runs(exp_dir, experiment)
    data = [p for p in (_safe_parquet(df, out / lay.RUNS_PARQUET), _safe_parquet(training, out / lay.TRAINING_PARQUET))
            if p]
    df.to_csv(out / lay.RUNS_CSV, index=False)
    training.to_csv(out / lay.TRAINING_CSV, index=False)
    runs.to_csv(out / lay.RUN_STATES_CSV, index=False)
    data += [out / lay.RUNS_CSV, out / lay.TRAINING_CSV, out / lay.RUN_STATES_CSV]

    done = df[(df["state"] == "done") & (df["metric"] != "state")]
    metrics_seen = list(dict.fromkeys(done.loc[done["step"] > 0, "metric"]))
    notes = []
    if target and target not in metrics_seen:
        notes.append(f"target metric {target!r} was not found in any done run's evaluation "
                     f"(available: {', '.join(metrics_seen) or 'none'})")
    target = target or default_target_metric(metrics_seen)
    if retention is None and "world_facts/acc" in metrics_seen and target != "world_facts/acc":
        retention = "world_facts/acc"
    metrics = [m for m in dict.fromkeys([target, retention, *KEY_METRICS]) if m and m in metrics_seen]

    plan = load_plan(exp_dir) or {}
    name = plan.get("experiment") or exp_dir.name
    claims = claims_for(experiment, plan)
    ev = evidence(df, exp_dir, list(dict.fromkeys([*metrics, *claim_metrics(claims)])))  # per-item results
    summ = with_item_cis(stats.summary(df, metrics, axes), ev)
    base = stats.base_summary(df, metrics)
    tdir = out / lay.TABLES
    best = stats.best_per_regime(summ, target) if target else summ.iloc[0:0]
    pair_metrics = [m for m in dict.fromkeys([target, *PAIRED_METRICS]) if m and m in metrics_seen]
    pairs = stats.paired(df, pair_metrics, axes)
    frames = {"summary": tables.summary_table(summ, metrics, base),
              "best_per_regime": tables.best_table(best, metrics, target or "", axes),
              "paired": tables.paired_table(pairs)}
    captions = {"summary": "Final-checkpoint metrics per configuration: mean over seeds [95% bootstrap CI over "
                           "seeds and evaluation items where per-item results exist, else over seeds].",
                "best_per_regime": f"Best configuration per regime by mean {target}.",
                "paired": "Paired differences between regimes (same learning rate, epochs, seed and other axes): "
                          "mean A - B [95% bootstrap CI]."}
    raws = {"summary": summ, "best_per_regime": best, "paired": pairs}
    tab = {k: tables.write_table(frames[k], raws[k], tdir, k, captions[k]) for k in frames}

    findings = judge_all(claims, ev, plan.get("claims"))
    ctx = Context(df=df, training=training, axes=axes, exp_dir=exp_dir, target=target, retention=retention,
                  summary=summ, findings=findings)
    figs = render_all(ctx, out, formats, only)
    for f in figs:
        if f.skipped:
            log.warning("figure %s skipped: %s", f.name, f.skipped)

    states = {s: int((runs["state"] == s).sum()) for s in STATES} if len(runs) \
        else {}
    not_done = runs[runs["state"] != "done"] if len(runs) else runs
    prov = load_provenance(exp_dir, list(runs["run_id"]) if len(runs) else None)
    cfg_text = config_text(config, exp_dir, runs)
    rep = Report(out, out / REPORT_HTML, out / lay.REPORT_MD, figs, tab, data, target, states, not_done, notes)
    rep.findings = findings
    if rep.findings:
        (out / lay.FINDINGS).write_text(json.dumps(
            {"experiment": name, "claims_hash": (plan.get("claims") or {}).get("hash"),
             "findings": [f.to_dict() for f in rep.findings]}, indent=1) + "\n")
        data.append(out / lay.FINDINGS)
    args = (rep, exp_dir, plan, axes, retention, frames, prov, cfg_text, ctx.notes, config, experiment_file)
    rep.markdown.write_text(_markdown(*args), encoding="utf-8")
    rep.html.write_text(_html(*args), encoding="utf-8")
    return rep


# ------------------------------------------------------------------------------------------------ content


def _methods(target, retention, axes) -> list[str]:
    return [
        f"Target metric: `{target}`." if target else "No target metric (no lm-eval metric found).",
        f"Fact retention: `{retention}` (drop = base − tuned)." if retention else "No fact-retention metric.",
        "Only runs whose state is done enter figures and tables; every other run is listed above.",
        "Tables use each run's final evaluated checkpoint: the mean over seeds, with a 95% percentile bootstrap CI "
        "that resamples seeds and evaluation items together where per-item results exist (so one seed still has "
        f"a CI, over the items), else seeds only ({stats.N_BOOT} resamples, RNG seed {stats.BOOT_SEED}; one seed: "
        "no CI, shown as –). Figure bands and whiskers are the percentile bootstrap over seeds (1000 resamples, "
        "seed 0).",
        "Paired comparisons pair runs of two regimes that share every other grid axis ("
        + ", ".join(a for a in axes if a not in ("regime.name", "regime.prompt_weight")) + ").",
        f"With few seeds or pairs (n < {tables.MIN_PAIRS}) a percentile bootstrap CI is too narrow (it can only "
        "take a handful of values): read such CIs as descriptive; the paired table puts their verdict in "
        "parentheses.",
        "Prompt-loss-weight fits: metric = a(w − b)² + c with w = weight^0.30103 (Huerta-Enochian & Ko), "
        "least squares over every seed's final checkpoint.",
    ]


def _state_line(rep: Report) -> str:
    s = rep.states
    total = sum(s.values())
    return (f"{total} planned/found runs: **{s.get('done', 0)} done**, {s.get('failed', 0)} failed, "
            f"{s.get('running', 0)} running, {s.get('partial', 0)} partial (started or trained, not finished), "
            f"{s.get('pending', 0)} pending.")


def _not_done_frame(rep: Report, axes) -> pd.DataFrame:
    if rep.not_done.empty:
        return rep.not_done
    cols = ["run_id", "state", "detail", "last_step"] + [a for a in axes if a in rep.not_done.columns]
    out = rep.not_done[cols].copy()
    for c in cols:
        out[c] = [tables.cell_text(c, v) for v in out[c]]
    return out


def _markdown(rep: Report, exp_dir, plan, axes, retention, frames, prov, cfg_text, notes, experiment,
              experiment_file) -> str:
    name = plan.get("experiment") or exp_dir.name
    desc = getattr(experiment, "description", "") if experiment is not None else ""
    L = [f"# Report: {name}", ""]
    if desc:
        L += [desc, ""]
    L += [f"Generated {_dt.datetime.now(_dt.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')} from `{exp_dir}`"
          + (f" (experiment file `{experiment_file}`)" if experiment_file else "") + ".", ""]
    L += ["## Runs", "", _state_line(rep), ""]
    nd = _not_done_frame(rep, axes)
    if len(nd):
        L += ["**Runs that are not done (excluded from figures and tables):**", "", tables.to_markdown(nd), ""]
    for n in rep.notes:
        L += [f"> note: {n}", ""]
    if rep.findings:
        L += ["## Findings: does the claimed shape appear?", "", FINDINGS_NOTE, ""] \
            + findings_markdown(rep.findings) + [""]
    L += ["## Methods", ""] + [f"- {m}" for m in _methods(rep.target, retention, axes)] + [""]
    L += ["## Figures", ""]
    for f in rep.figures:
        if f.skipped:
            continue
        png = next((p for p in f.files if p.suffix == ".png"), None)
        pdf = next((p for p in f.files if p.suffix == ".pdf"), None)
        L += [f"### {f.name}", ""]
        if png:
            L += [f"![{f.name}]({png.relative_to(rep.out_dir).as_posix()})", ""]
        L += [f.caption + (f" *{notes[f.name]}*" if f.name in notes else ""), ""]
        if pdf:
            L += [f"PDF: `{pdf.relative_to(rep.out_dir).as_posix()}`", ""]
    sk = rep.skipped
    if sk:
        L += ["### Skipped figures", ""] + [f"- **{k}**: {v}" for k, v in sk.items()] + [""]
    L += ["## Tables", ""]
    for key, title in _TABLE_TITLES(rep):
        L += [f"### {title}", "", tables.to_markdown(frames[key]),
              f"LaTeX: `{(rep.out_dir / lay.TABLES / (key + '.tex')).relative_to(rep.out_dir).as_posix()}`", ""]
    L += ["## Provenance", ""] + [f"- **{k}**: {v}" for k, v in provenance_rows(prov, exp_dir, _runs_of(rep))] + [""]
    L += ["## Configuration", "", "```yaml", cfg_text.rstrip(), "```", ""]
    if plan:
        L += [f"Grid axes: {', '.join(f'`{a}`' for a in axes)}; {len(plan.get('runs', []))} planned runs "
              f"(plan created {plan.get('created')}).", ""]
    L += ["## Data files", ""] + [f"- `{p.relative_to(rep.out_dir).as_posix()}`" for p in rep.data] + [""]
    return "\n".join(L)


def _runs_of(rep: Report) -> pd.DataFrame:
    p = rep.out_dir / lay.RUN_STATES_CSV
    try:
        return pd.read_csv(p)
    except (OSError, ValueError, pd.errors.EmptyDataError):
        return pd.DataFrame(columns=["run_id"])


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:1150px;margin:2em auto;
     padding:0 1em;color:#222;line-height:1.45}
h1{border-bottom:2px solid #333;padding-bottom:.2em}h2{margin-top:2em;border-bottom:1px solid #ccc}
table{border-collapse:collapse;margin:.8em 0;font-size:.86em}th,td{border:1px solid #ccc;padding:.25em .55em}
th{background:#f3f3f3}td{font-variant-numeric:tabular-nums}
figure{margin:1.5em 0}figure img{max-width:100%;border:1px solid #eee}figcaption{font-size:.9em;color:#444}
.state-failed{color:#b00020;font-weight:600}.state-running{color:#0072B2;font-weight:600}.state-partial{color:#a05a00;font-weight:600}
.state-pending{color:#555;font-weight:600}.warn{background:#fff4e5;border-left:4px solid #E69F00;padding:.5em 1em}
pre{background:#f7f7f7;padding:1em;overflow:auto;font-size:.82em}.scroll{overflow-x:auto}code{background:#f3f3f3;padding:0 .2em}
"""


def _html_table(df: pd.DataFrame) -> str:
    if df is None or df.empty:
        return "<p><em>(no data)</em></p>"
    return _scroll(df.to_html(index=False, escape=True, border=0, na_rep="–"))


def _scroll(table: str) -> str:
    """A table wider than the page scrolls sideways inside it instead of running off it."""
    return f"<div class='scroll'>{table}</div>"


def _html(rep: Report, exp_dir, plan, axes, retention, frames, prov, cfg_text, notes, experiment,
          experiment_file) -> str:
    e = html.escape
    name = plan.get("experiment") or exp_dir.name
    desc = getattr(experiment, "description", "") if experiment is not None else ""
    H = [f"<!doctype html><html><head><meta charset='utf-8'><title>Report: {e(name)}</title>",
         f"<style>{_CSS}</style></head><body>", f"<h1>Report: {e(name)}</h1>"]
    if desc:
        H.append(f"<p>{e(desc)}</p>")
    H.append(f"<p>Generated {_dt.datetime.now(_dt.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')} from "
             f"<code>{e(str(exp_dir))}</code>"
             + (f" (experiment file <code>{e(experiment_file)}</code>)" if experiment_file else "") + ".</p>")
    H.append("<h2>Runs</h2>")
    H.append("<p>" + e(_state_line(rep)).replace("**", "") + "</p>")
    nd = _not_done_frame(rep, axes)
    if len(nd):
        H.append("<div class='warn'><strong>Runs that are not done (excluded from figures and tables):</strong>")
        rows = ["<table><tr>" + "".join(f"<th>{e(c)}</th>" for c in nd.columns) + "</tr>"]
        for _, r in nd.iterrows():
            rows.append("<tr>" + "".join(
                f"<td class='state-{e(str(v))}'>{e(str(v))}</td>" if c == "state" else f"<td>{e(str(v))}</td>"
                for c, v in r.items()) + "</tr>")
        H.append(_scroll("".join(rows) + "</table>") + "</div>")
    for n in rep.notes:
        H.append(f"<p class='warn'>note: {e(n)}</p>")
    if rep.findings:
        H.append(findings_html(rep.findings))
    H.append("<h2>Methods</h2><ul>" + "".join(f"<li>{e(m).replace('`', '')}</li>"
                                               for m in _methods(rep.target, retention, axes)) + "</ul>")
    H.append("<h2>Figures</h2>")
    for f in rep.figures:
        if f.skipped or not f.png:
            continue
        b64 = base64.b64encode(f.png).decode("ascii")
        extra = f" <em>{e(notes[f.name])}</em>" if f.name in notes else ""
        files = ", ".join(p.relative_to(rep.out_dir).as_posix() for p in f.files)
        H.append(f"<figure id='{e(f.name)}'><h3>{e(f.name)}</h3><img alt='{e(f.name)}' "
                 f"src='data:image/png;base64,{b64}'><figcaption>{e(f.caption)}{extra}<br><small>{e(files)}"
                 "</small></figcaption></figure>")
    if rep.skipped:
        H.append("<h3>Skipped figures</h3><ul>" + "".join(f"<li><strong>{e(k)}</strong>: {e(v)}</li>"
                                                         for k, v in rep.skipped.items()) + "</ul>")
    H.append("<h2>Tables</h2>")
    for key, title in _TABLE_TITLES(rep):
        H.append(f"<h3>{e(title)}</h3>" + _html_table(frames[key]))
    H.append("<h2>Provenance</h2>" + _scroll("<table>" + "".join(
        f"<tr><th>{e(k)}</th><td>{e(v)}</td></tr>" for k, v in provenance_rows(prov, exp_dir, _runs_of(rep)))
        + "</table>"))
    H.append(f"<h2>Configuration</h2><pre>{e(cfg_text)}</pre>")
    if plan:
        H.append(f"<p>Grid axes: {e(', '.join(axes))}; {len(plan.get('runs', []))} planned runs (plan created "
                 f"{e(str(plan.get('created')))}).</p>")
    H.append("<h2>Data files</h2><ul>" + "".join(f"<li><code>{e(p.relative_to(rep.out_dir).as_posix())}</code></li>"
                                                 for p in rep.data) + "</ul>")
    H.append("</body></html>")
    return "\n".join(H)


def _TABLE_TITLES(rep: Report) -> list[tuple[str, str]]:
    return [("summary", "Final checkpoint, mean over seeds [95% CI]"),
            ("best_per_regime", f"Best configuration per regime (by {rep.target})"),
            ("paired", "Paired differences between regimes (A − B, paired on the other axes)")]
