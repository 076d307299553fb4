"""analysis/: load_runs/load_training against what was written, tables against the frame, every figure
written, failed/incomplete/pending runs visible in the report, `harness report` end to end (synthetic results
from tests/fixtures_results.py, matplotlib Agg)."""

from __future__ import annotations

import argparse
import math
import re

import numpy as np
import pandas as pd
import pytest

from analysis import stats
from analysis.figures import FIGURES
from analysis.load import default_target_metric, load_runs, load_training, run_table
from analysis.report import build_report
from analysis.style import REGIME_COLOURS, variant_colours
from harness.errors import HarnessError
from tests.fixtures_results import BASE_METRICS, make_results

TARGET = "world_qa/exact_match"


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    return make_results(tmp_path_factory.mktemp("results"))


@pytest.fixture(scope="module")
def frame(synth):
    return load_runs(synth.exp_dir)


@pytest.fixture(scope="module")
def report(synth, tmp_path_factory):
    """The whole report through `harness report EXP.yaml`, PDF and PNG."""
    import contextlib
    import io

    from harness.cli import main

    yaml_path = synth.experiment_yaml(tmp_path_factory.mktemp("exp") / "synth.yaml")
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        assert main(["report", str(yaml_path), "--format", "pdf,png"]) == 0
    report_dir = synth.exp_dir / "report"
    assert out.getvalue().strip() == str(report_dir / "report.html")  # stdout: the path
    assert "10 drawn, 0 skipped" in err.getvalue()
    return report_dir


def _same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b, rel=1e-12, abs=1e-12)


# ------------------------------------------------------------------------------------------------ loading


def test_load_runs_values_equal_what_was_written(synth, frame):
    ev = frame[(frame["metric"] != "state") & (frame["step"] > 0)]
    assert len(ev) == len(synth.values)
    got = {(r.run_id, int(r.step), r.metric): r.value for r in ev.itertuples()}
    for key, v in synth.values.items():
        assert _same(got[key], v), key
    for r in ev.drop_duplicates(["run_id", "step"]).itertuples():
        assert r.epoch == synth.epochs[(r.run_id, int(r.step))]
    # base/delta columns
    for r in ev.sample(50, random_state=0).itertuples():
        assert _same(r.base_value, BASE_METRICS[r.metric])
        assert _same(r.delta, r.value - BASE_METRICS[r.metric])


def test_every_run_has_base_rows_and_its_axes(synth, frame):
    runs = [r["run_id"] for r in synth.plan["runs"]]
    assert set(frame["run_id"]) == set(runs)
    base = frame[frame["step"] == 0]
    for rid in runs:  # pending, failed and incomplete runs included
        b = base[base["run_id"] == rid]
        assert dict(zip(b["metric"], b["value"])) == BASE_METRICS
        assert (b["epoch"] == 0).all()
    for rid, axes in synth.axes.items():
        rows = frame[frame["run_id"] == rid]
        for k, v in axes.items():
            assert (rows[k] == v).all(), (rid, k)
    # a list-of-grids axis takes the experiment's value where a sub-grid does not set it
    masked = frame[frame["regime.name"] == "prompt_masked"]
    assert (masked["regime.prompt_weight"] == 0.0).all()
    for col in ("experiment", "run_id", "state", "step", "epoch", "metric", "value", "regime.name", "train.lr",
                "train.seed", "train.epochs", "regime.prompt_weight"):
        assert col in frame.columns


def test_states_failed_incomplete_missing_never_dropped(synth, frame):
    st = frame[frame["metric"] == "state"]
    assert len(st) == len(synth.plan["runs"])  # one state row per run
    assert dict(zip(st["run_id"], st["state"].astype(str))) == synth.states
    det = dict(zip(st["run_id"], st["detail"]))
    assert "RuntimeError" in det[synth.failed]
    assert "interrupted" in det[synth.incomplete] and "resumes from step" in det[synth.incomplete]
    assert "no run directory" in det[synth.missing]
    # the failed and incomplete runs keep their one evaluation, the missing one only base rows
    for rid in (synth.failed, synth.incomplete):
        assert set(frame.loc[(frame["run_id"] == rid) & (frame["metric"] != "state"), "step"]) == {0, 2}
    assert set(frame.loc[(frame["run_id"] == synth.missing) & (frame["metric"] != "state"), "step"]) == {0}
    rt = run_table(synth.exp_dir)
    assert dict(zip(rt["run_id"], rt["state"])) == synth.states


def test_load_training(synth):
    tr = load_training(synth.exp_dir)
    assert (tr["source"] == "train").all()
    got = {(r.run_id, int(r.step), r.metric): r.value for r in tr.itertuples()}
    assert got == pytest.approx(synth.training)
    assert "time" not in set(tr["metric"])


def test_results_root_with_several_experiments(tmp_path):
    make_results(tmp_path, name="a", seed=1, audit=False, tokens=False)
    make_results(tmp_path, name="b", seed=2, audit=False, tokens=False)
    df = load_runs(tmp_path)
    assert set(df["experiment"]) == {"a", "b"}
    assert df.groupby("experiment")["run_id"].nunique().tolist() == [24, 24]
    with pytest.raises(HarnessError, match="2 experiments"):
        build_report(tmp_path)


def test_default_target_metric():
    assert default_target_metric(["nll/response", "x/acc", TARGET]) == TARGET
    assert default_target_metric(["nll/response", "x/acc_stderr", "x/acc", "y/f1"]) == "x/acc"
    assert default_target_metric(["nll/response", "format/answered"]) is None


# ------------------------------------------------------------------------------------------------ stats


def test_bootstrap_ci_is_seeded_and_brackets_the_mean():
    x = [0.1, 0.4, 0.35, 0.2]
    a, b = stats.bootstrap_ci(x), stats.bootstrap_ci(x)
    assert a == b
    mean, lo, hi, n = a
    assert n == 4 and mean == pytest.approx(np.mean(x)) and lo <= mean <= hi
    m1, lo1, hi1, n1 = stats.bootstrap_ci([0.3])
    assert (m1, n1) == (0.3, 1) and math.isnan(lo1) and math.isnan(hi1)


def test_quadratic_fit_recovers_the_optimum():
    a, b, c = -2.0, 0.6, 0.9
    weights = np.array([0.0, 0.01, 0.05, 0.1, 0.5, 1.0])
    w = weights ** stats.PLW_EXPONENT
    fit = stats.quadratic_fit(weights, a * (w - b) ** 2 + c)
    assert (fit["a"], fit["b"], fit["c"]) == pytest.approx((a, b, c))
    assert fit["interior"] and fit["weight_opt"] == pytest.approx(b ** (1 / stats.PLW_EXPONENT))
    assert stats.quadratic_fit([0.1, 0.5], [1, 2]) is None


def test_pareto_front():
    x = [0.1, 0.2, 0.15, 0.3, 0.05]
    y = [0.5, 0.7, 0.4, 0.6, 0.2]
    assert stats.pareto_front(x, y).tolist() == [4, 0, 1]


def test_regime_colours_fixed():
    assert REGIME_COLOURS == {"prompt_masked": "#009E73", "full": "#0072B2", "prompt_only": "#CC79A7",
                              "prompt_weight": "#E69F00"}
    pal = variant_colours(["full", "prompt_weight (w=0.1)", "prompt_weight (w=0.5)", "prompt_masked"])
    assert pal["full"] == "#0072B2" and pal["prompt_masked"] == "#009E73"
    assert pal["prompt_weight (w=0.1)"] != pal["prompt_weight (w=0.5)"]


# ------------------------------------------------------------------------------------------------ report


# figures that do not belong to the synthetic grid: findings only for the shipped studies (tests/test_findings.py
# draws it), the WIT heatmap only for a grid over both regime weights and the KL scatter only with eval.kl_sft
# (tests/test_figures_alignment.py draws both)
NOT_THIS_GRID = ("findings", "weight_heatmap", "forgetting_vs_kl", "recovery_curves")


def test_every_figure_written_non_empty(report):
    for name, _ in FIGURES:
        if name in NOT_THIS_GRID:
            assert not (report / "figures" / f"{name}.png").exists()
            continue
        for ext in ("pdf", "png"):
            p = report / "figures" / f"{name}.{ext}"
            assert p.is_file() and p.stat().st_size > 1000, p
    md = (report / "report.md").read_text()
    assert "Skipped figures" not in md


def test_data_files(report, frame):
    back = pd.read_parquet(report / "runs.parquet")
    assert len(back) == len(frame) and list(back.columns) == list(frame.columns)
    assert len(pd.read_csv(report / "runs.csv")) == len(frame)
    assert (report / "training.parquet").is_file() and (report / "run_states.csv").is_file()


def _recomputed_final_means(frame, metric):
    done = frame[(frame["state"] == "done") & (frame["metric"] == metric) & (frame["step"] > 0)]
    fin = done[done["step"] == done.groupby("run_id")["step"].transform("max")]
    return fin.groupby(["regime.name", "regime.prompt_weight", "train.lr"])["value"].agg(["mean", "count"])


def test_table_numbers_equal_the_frame(report, frame):
    summ = pd.read_csv(report / "tables" / "summary.csv")
    md = (report / "tables" / "summary.md").read_text()
    tex = (report / "tables" / "summary.tex").read_text()
    assert "\\toprule" in tex and "\\bottomrule" in tex
    for metric in (TARGET, "nll/response", "forgetting/pretrain_nll_delta"):
        want = _recomputed_final_means(frame, metric)
        got = summ[summ["metric"] == metric]
        assert len(got) == len(want)
        for _, r in got.iterrows():
            w = want.loc[(r["regime.name"], r["regime.prompt_weight"], r["train.lr"])]
            assert r["mean"] == pytest.approx(w["mean"]) and r["n"] == w["count"]
            assert r["ci_low"] <= r["mean"] <= r["ci_high"]
            assert f"{r['mean']:.3f} [{r['ci_low']:.3f}, {r['ci_high']:.3f}]" in md
    # the incomplete seed is not averaged in: full @ 1e-4 has 2 seeds
    t = summ[(summ["metric"] == TARGET) & (summ["variant"] == "full") & (summ["train.lr"] == 1e-4)]
    assert t["n"].item() == 2


def test_best_configuration_per_regime(report, frame):
    best = pd.read_csv(report / "tables" / "best_per_regime.csv")
    want = _recomputed_final_means(frame, TARGET).reset_index()
    for regime, g in want.groupby("regime.name"):
        top = g.loc[g["mean"].idxmax()]
        b = best[(best["regime.name"] == regime) & (best["metric"] == TARGET)]
        assert b["mean"].item() == pytest.approx(top["mean"])
        assert b["train.lr"].item() == top["train.lr"]


def test_paired_comparison(report, frame):
    pairs = pd.read_csv(report / "tables" / "paired.csv")
    done = frame[(frame["state"] == "done") & (frame["metric"] == TARGET) & (frame["step"] == 4)]
    a = done[done["regime.name"] == "prompt_masked"].set_index(["train.lr", "train.seed"])["value"]
    b = done[done["regime.name"] == "full"].set_index(["train.lr", "train.seed"])["value"]
    d = (a - b).dropna()
    row = pairs[(pairs["metric"] == TARGET) & (pairs["A"] == "prompt_masked") & (pairs["B"] == "full")]
    assert row["n_pairs"].item() == len(d) == 4  # 6 masked x 4 done full (seed 3 missing at both LRs)
    assert row["mean_diff"].item() == pytest.approx(d.mean())
    assert row["ci_low"].item() <= row["mean_diff"].item() <= row["ci_high"].item()


def test_report_lists_runs_that_are_not_done(report, synth):
    html = (report / "report.html").read_text()
    md = (report / "report.md").read_text()
    for rid, state in ((synth.failed, "failed"), (synth.incomplete, "partial"), (synth.missing, "pending")):
        assert re.search(rf"{re.escape(rid)} \| {state} \|", md), rid
        assert rid in html
        assert f"class='state-{state}'" in html
    assert "RuntimeError: CUDA error" in md and "RuntimeError: CUDA error" in html
    assert "1 failed, 0 running, 1 partial (started or trained, not finished), 1 pending" in md


def test_report_html_is_self_contained(report):
    html = (report / "report.html").read_text()
    assert html.count("data:image/png;base64,") == len(FIGURES) - len(NOT_THIS_GRID)
    assert not re.search(r"<link|<script|src=['\"]http|url\(", html)
    assert "0123456789abcdef" in html  # provenance: git commit
    assert "prompt_weight" in html and "world_qa/exact_match" in html


def test_skipped_figures_are_reported(tmp_path):
    syn = make_results(tmp_path, audit=False, tokens=False)
    rep = build_report(syn.exp_dir, tmp_path / "out", formats=("png",), only=["mask_audit", "token_loss"])
    assert set(rep.skipped) == {"mask_audit", "token_loss"}
    assert "audit.json" in rep.skipped["mask_audit"]
    md = rep.markdown.read_text()
    assert "Skipped figures" in md and "**mask_audit**" in md and "**token_loss**" in md
    assert not list((tmp_path / "out" / "figures").iterdir())


def test_missing_target_metric_is_noted(synth, tmp_path):
    rep = build_report(synth.exp_dir, tmp_path / "out", formats=("png",), target="nope/acc", only=["target_vs_lr"])
    assert rep.skipped == {"target_vs_lr": "no evaluated checkpoint has nope/acc"}
    assert "nope/acc" in rep.markdown.read_text()


def test_cli_errors_without_results(tmp_path, synth):
    from analysis.cli import add_parser

    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers())
    y = synth.experiment_yaml(tmp_path / "x.yaml")
    y.write_text(y.read_text().replace("name: synth", "name: nothing_here"))
    args = parser.parse_args(["report", str(y)])
    with pytest.raises(HarnessError, match="no results"):
        args.func(args)


def test_without_plan_axes_are_inferred(tmp_path):
    syn = make_results(tmp_path, audit=False, tokens=False)
    (syn.exp_dir / "plan.json").unlink()
    df = load_runs(syn.exp_dir)
    assert set(df["run_id"]) == set(syn.states) - {syn.missing}  # no plan: only directories are known
    from analysis.load import discover_runs

    _, axes = discover_runs(syn.exp_dir)
    assert set(axes) == {"regime.name", "train.lr", "train.seed", "regime.prompt_weight"}


def test_runs_with_another_base_are_compared_with_their_own(tmp_path):
    """A grid over the base model (knowledge_extraction): each run's step-0 row and deltas come from the base
    evaluation with its eval hash (bases/<hash>/), never the experiment's default base."""
    import json

    exp = tmp_path / "ke"

    def write(path, obj):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(obj))

    write(exp / "plan.json", {"schema": 1, "experiment": "ke", "axes": ["model.name_or_path"], "base_eval_hash": "aaa",
                              "runs": [{"run_id": "aug-1", "axes": {"model.name_or_path": "w/aug/model"}, "eval_hash": "aaa"},
                                       {"run_id": "plain-1", "axes": {"model.name_or_path": "w/plain/model"},
                                        "eval_hash": "bbb"}]})
    write(exp / "base" / "eval" / "step-000000.json", {"eval_hash": "aaa", "step": 0, "metrics": {"qa": 0.1}})
    write(exp / "bases" / "bbb" / "eval" / "step-000000.json", {"eval_hash": "bbb", "step": 0, "metrics": {"qa": 0.3}})
    for rid, h, v in (("aug-1", "aaa", 0.9), ("plain-1", "bbb", 0.4)):
        write(exp / "runs" / rid / "eval" / "step-000010.json", {"eval_hash": h, "step": 10, "epoch": 1.0,
                                                                "metrics": {"qa": v}})
        (exp / "runs" / rid / "DONE").write_text("done\n")
    df = load_runs(exp)
    qa = df[df["metric"] == "qa"].set_index(["run_id", "step"])
    assert qa.loc[("aug-1", 0), "value"] == 0.1 and qa.loc[("plain-1", 0), "value"] == 0.3
    assert qa.loc[("aug-1", 10), "delta"] == pytest.approx(0.8) and qa.loc[("plain-1", 10), "delta"] == pytest.approx(0.1)


def test_report_tables_scroll_and_the_methods_say_what_the_tables_show(report):
    """Wide tables scroll inside the page (not off it); the Methods text describes the CIs the tables show
    (seeds and items together where per-item results exist: one seed still has a CI); no markdown left raw."""
    html = (report / "report.html").read_text()
    md = (report / "report.md").read_text()
    assert html.count("<table") > 3 and html.count("<table") == html.count("<div class='scroll'><table")
    assert ".scroll{overflow-x:auto}" in html
    assert "*done*" not in html and "*done*" not in md and "one seed gives no CI" not in md
    for text in (html, md):
        assert "resamples seeds and evaluation items together where per-item results exist (so one seed still " \
               "has a CI, over the items)" in text.replace("\n", " ")


def test_figures_drawn_by_forked_workers_equal_the_serial_ones(synth, tmp_path, monkeypatch):
    """render_all(workers=2) draws each figure in a forked process: the same figures, in the report's order,
    the same PNG bytes and the same skips as one after the other."""
    import analysis.report as report_mod
    from analysis.figures import render as R

    contexts = []
    real = report_mod.render_all
    monkeypatch.setattr(report_mod, "render_all", lambda ctx, *a, **k: contexts.append(ctx) or real(ctx, *a, **k))
    build_report(synth.exp_dir, tmp_path / "first", formats=("png",))  # the report's own figure context
    serial = R.render_all(contexts[0], tmp_path / "serial", ("png",), workers=1)
    forked = R.render_all(contexts[0], tmp_path / "forked", ("png",), workers=2)
    assert [(r.name, r.skipped) for r in forked] == [(r.name, r.skipped) for r in serial] and len(serial) > 3
    assert [r.png for r in forked] == [r.png for r in serial]
