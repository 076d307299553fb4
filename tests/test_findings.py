"""Claims as data: the ``claims:`` vocabulary (harness/claims.py) is checked at load time with file:line errors, every
shipped study declares its claims, harness run registers them before any run trains, and harness report judges
the claims of any experiment (no Python per study), showing one edited after the results as post hoc."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from harness.claims import parse_claims, registration, status
from harness.errors import ConfigError
from harness.grid import load_experiment

ROOT = Path(__file__).resolve().parents[1]
OK = {"id": "a_beats_b", "metric": "task/acc", "compare": {"a": {"regime.name": "full"}, "b": "base"},
      "test": {"above": 0}, "unit": "pts"}


def _load(tmp_path, claims) -> Path:
    p = tmp_path / "e.yaml"
    p.write_text(yaml.safe_dump({"name": "e", "claims": claims}, sort_keys=False))
    return p


@pytest.mark.parametrize("bad, says", [
    ({**OK, "unit": "points"}, "unit 'points' must be one of"),
    ({**OK, "metirc": "x/y"}, "unknown claim key 'metirc' (did you mean 'metric'?)"),
    ({**OK, "value": "base"}, "exactly one effect"),
    ({**OK, "compare": {"a": {"regime.nme": "full"}, "b": "base"}}, "'regime.nme' is not a config key"),
    ({**OK, "test": {"within": -1}}, "bound must be a number > 0"),
    ({**OK, "family": "main"}, "family 'main' must be primary or secondary"),
    ({**OK, "checkpoint": "last"}, "checkpoint 'last' not understood"),
    ({**OK, "pick": "max"}, "pick 'max' must be one of"),
    ({**OK, "id": "A B"}, "must be lower-case letters"),
])
def test_a_bad_claim_is_refused_with_file_line_and_fix(tmp_path, bad, says):
    p = _load(tmp_path, [OK, bad] if bad["id"] != OK["id"] else [bad])
    with pytest.raises(ConfigError) as e:
        load_experiment(p)
    assert says in e.value.message
    assert str(p) in e.value.where and ":" in e.value.where.replace(str(p), "", 1)  # file:line
    assert e.value.fix


def test_two_claims_with_one_id_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="two claims have the id"):
        load_experiment(_load(tmp_path, [OK, OK]))


def test_claims_are_no_part_of_a_run_s_identity(tmp_path):
    a = load_experiment(_load(tmp_path, [OK]))
    b = load_experiment(_load(tmp_path, [OK, {**OK, "id": "other"}]))
    assert [r.run_id for r in a.runs] == [r.run_id for r in b.runs] and len(b.claims) == 2


SHIPPED_WITH_CLAIMS = ("mini_lima",)


@pytest.mark.parametrize("name", SHIPPED_WITH_CLAIMS)
def test_shipped_studies_declare_claims_with_a_primary_family(name):
    exp = load_experiment(ROOT / "experiments" / f"{name}.yaml")
    assert exp.claims and any(c.family == "primary" for c in exp.claims)
    assert all(c.unit and c.test in ("above", "below", "within") for c in exp.claims)


def test_registration_is_append_only_and_an_edit_is_post_hoc():
    c = parse_claims([OK])
    before = registration(c, None, False, "t0")
    assert status(c[0], before) == "preregistered"
    again = registration(c, before, True, "t1")  # a later launch, results on disk: nothing is rewritten
    assert again["registered"] == before["registered"] and status(c[0], again) == "preregistered"
    edited = parse_claims([{**OK, "test": {"above": 5}}])  # the boundary moved after the results
    later = registration(edited, again, True, "t2")
    assert status(edited[0], later) == "post hoc" and status(c[0], later) == "preregistered"
    assert status(c[0], None) == "post hoc"  # never registered by harness run


def test_findings_figure_draws_every_verdict(tmp_path):
    from analysis.claims import Finding
    from analysis.figures.common import Context
    from analysis.figures.findings import fig_findings

    found = [Finding("a", "a claim", "", "yes", estimate=0.1, low=0.05, high=0.15, unit="pts", kind="above", bound=0),
             Finding("b", "b claim", "", "no", estimate=-0.1, low=-0.2, high=-0.05, unit="pts", kind="above",
                     bound=0),
             Finding("c", "c claim", "", "inconclusive", estimate=0.01, low=-0.1, high=0.1, unit="pts",
                     kind="within", bound=5),
             Finding("d", "d claim", "", "yes", estimate=0.3, low=0.2, high=0.4, unit="nats/decade", kind="above",
                     bound=0)]
    ctx = Context(df=pd.DataFrame(columns=["state", "metric", "step"]), training=pd.DataFrame(), axes=[],
                  exp_dir=tmp_path, target=None, findings=found)
    fig = fig_findings(ctx)
    fig.savefig(tmp_path / "f.png")
    assert (tmp_path / "f.png").stat().st_size > 5000
    assert len(fig.axes[0].get_yticklabels()) == 3


CLAIMS = [
    {"id": "masked_below_full", "family": "primary", "metric": "nll/response",
     "compare": {"a": {"regime.name": "prompt_masked"}, "b": {"regime.name": "full"}}, "test": {"below": 0.5},
     "unit": "nats"},
    {"id": "training_lowers_nll", "family": "primary", "metric": "nll/response",
     "compare": {"a": {"regime.name": "prompt_masked"}, "b": "base"}, "test": {"below": 0}, "unit": "nats"},
    {"id": "base_nll", "metric": "nll/response", "value": "base", "test": {"above": 1}, "unit": "nats"},
]


def test_an_experiment_written_from_scratch_gets_findings_and_an_edit_is_post_hoc(tiny, tmp_path):
    """The real pipeline on the tiny model: three claims in a new experiment file, harness run registers them
    before training, harness report judges them (no Python written); a claim edited afterwards is post hoc."""
    from harness.cli import main

    root, path = tiny
    raw = yaml.safe_load(path.read_text())
    raw.update(name="scratch", results_dir=str(tmp_path / "results"), claims=CLAIMS)
    raw["train"].update(epochs=1)
    raw["grid"] = {"regime.name": ["prompt_masked", "full"], "train.seed": [1, 2]}
    p = tmp_path / "scratch.yaml"
    p.write_text(yaml.safe_dump(raw, sort_keys=False))
    assert main(["run", str(p)]) == 0
    plan = json.loads((tmp_path / "results" / "scratch" / "plan.json").read_text())
    assert {e["id"] for e in plan["claims"]["registered"].values()} == {c["id"] for c in CLAIMS}
    assert not any(e["results_existed"] for e in plan["claims"]["registered"].values())
    assert main(["report", str(p), "--format", "png"]) == 0
    rep = tmp_path / "results" / "scratch" / "report"
    found = {f["id"]: f for f in json.loads((rep / "findings.json").read_text())["findings"]}
    assert set(found) == {c["id"] for c in CLAIMS}
    assert all(f["status"] == "preregistered" and f["verdict"] in ("yes", "no", "inconclusive") for f in found.values())
    assert found["training_lowers_nll"]["seeds"] == 2 and found["base_nll"]["seeds"] == 0
    assert found["masked_below_full"]["correction"] == "holm" and found["base_nll"]["correction"] == "bh"
    md = (rep / "report.md").read_text()
    assert "## Findings" in md and "**Preregistered**" in md and "`base_nll`" in md
    # the boundary of one claim moved after seeing the results: judged, shown apart, never primary
    raw["claims"][0]["test"] = {"below": 0.1}
    p.write_text(yaml.safe_dump(raw, sort_keys=False))
    assert main(["run", str(p)]) == 0  # all runs done: nothing trains, the edit is registered as post hoc
    assert main(["report", str(p), "--format", "png"]) == 0
    found = {f["id"]: f for f in json.loads((rep / "findings.json").read_text())["findings"]}
    assert found["masked_below_full"]["status"] == "post hoc" and found["masked_below_full"]["correction"] == "bh"
    assert found["base_nll"]["status"] == "preregistered"
    md = (rep / "report.md").read_text()
    assert md.index("**Post hoc") < md.index("`masked_below_full`")
    assert np.isfinite(found["training_lowers_nll"]["estimate"])


def test_replicate_renames_reseeds_every_subgrid_and_compares_verdicts(tmp_path):
    from analysis.replicate import compare, with_seeds

    raw = yaml.safe_load((ROOT / "experiments" / "replay.yaml").read_text())
    rep = with_seeds(raw, [4, 5, 6])
    assert rep["name"] == "replay_rep_s4-5-6" and all(g["train.seed"] == [4, 5, 6] for g in rep["grid"])
    assert raw["grid"][0]["train.seed"] == yaml.safe_load((ROOT / "experiments" / "replay.yaml").read_text())[
        "grid"][0]["train.seed"] != [4, 5, 6]  # the original is left alone
    ref = {c: {"verdict": v, "claim": c, "family": "primary"} for c, v in
           (("a", "yes"), ("b", "no"), ("c", "yes"), ("d", "inconclusive"))} | {
        "e": {"verdict": "yes", "claim": "e", "family": "secondary", "seeds": 0}}
    new = {"a": {"verdict": "yes"}, "b": {"verdict": "yes"}, "c": {"verdict": "inconclusive"}, "e": {"verdict": "yes"}}
    got = {r["id"]: r["outcome"] for r in compare(ref, new)}
    assert got == {"a": "confirmed", "b": "not confirmed", "c": "inconclusive", "d": "inconclusive",
                   "e": "base only (the same model and items: nothing to replicate)"}


def test_replicate_refuses_seeds_the_study_used():
    from harness.cli import main

    assert main(["replicate", str(ROOT / "experiments" / "mini_lima.yaml"), "--seeds", "3,4", "--dry-run"]) == 2
