"""Run ids: readable axes + a hash of the config's difference from the defaults + the schema version.

A new config field with a default leaves every run id as it was; a changed default without a schema bump
fails here (it would otherwise give two different trainings one id)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

import harness.grid as grid
from harness.config import ExperimentConfig, TrainConfig
from harness.config.schema import RENAMED
from harness.errors import ConfigError
from harness.grid import config_diff, config_hash, hashed_defaults, load_experiment
from harness.versions import SCHEMA_VERSION

ROOT = Path(__file__).resolve().parents[1]
SNAPSHOT = ROOT / "tests" / "data" / "config_defaults.json"


def test_defaults_unchanged_unless_the_schema_was_bumped():
    stored = json.loads(SNAPSHOT.read_text())
    now = hashed_defaults()
    if stored["schema"] != SCHEMA_VERSION:
        pytest.fail(f"SCHEMA_VERSION is {SCHEMA_VERSION} but {SNAPSHOT.name} holds the defaults of schema "
                    f"{stored['schema']}: store the new defaults (grid.hashed_defaults()) with the bump")
    changed = {k: (v, now[k]) for k, v in stored["defaults"].items() if k in now and now[k] != v}
    assert not changed, (f"defaults changed without a schema bump (stored, now): {changed}; bump "
                         "harness.versions.SCHEMA_VERSION and store the new defaults in " + SNAPSHOT.name)
    removed = sorted(set(stored["defaults"]) - set(now) - set(RENAMED))
    assert not removed, f"fields removed without a schema bump: {removed} (list them in config.schema.RENAMED)"
    new = {k: now[k] for k in sorted(set(now) - set(stored["defaults"]))}
    assert not new, (f"new fields: record their defaults in {SNAPSHOT.name} (no schema bump needed: run ids "
                     f"hash only differences from the defaults): {json.dumps(new)}")


def test_only_differences_from_the_defaults_are_hashed():
    default = ExperimentConfig()
    assert config_diff(default) == {}
    lr = dataclasses.replace(default, train=dataclasses.replace(default.train, lr=1e-5))
    assert config_diff(lr) == {"train.lr": 1e-5}
    same = dataclasses.replace(default, train=dataclasses.replace(default.train, lr=default.train.lr))
    assert config_hash(same) == config_hash(default)  # writing a default explicitly is the same run
    # an Optional section that is set counts as set, even with its own defaults only
    from harness.config import SourceConfig

    ev = dataclasses.replace(default, data=dataclasses.replace(default.data, eval=SourceConfig()))
    assert config_diff(ev) == {"data.eval": "<set>"} and config_hash(ev) != config_hash(default)
    # launcher, eval, name: not part of the training identity
    other = dataclasses.replace(default, name="x", launcher=dataclasses.replace(default.launcher, parallel=3))
    assert config_hash(other) == config_hash(default)


def test_a_new_field_with_a_default_leaves_every_run_id_unchanged(monkeypatch):
    """Build the schema once more with one extra TrainConfig field and reload every shipped experiment."""
    before = {p.name: [r.run_id for r in load_experiment(p).runs] for p in sorted((ROOT / "experiments").glob("*.yaml"))}
    NewTrain = dataclasses.make_dataclass(
        "TrainConfig", [("new_option", int, dataclasses.field(default=7))], bases=(TrainConfig,), frozen=True)
    NewExp = dataclasses.make_dataclass(
        "ExperimentConfig", [("train", NewTrain, dataclasses.field(default_factory=NewTrain))],
        bases=(ExperimentConfig,), frozen=True)
    import harness.config.load as load

    monkeypatch.setattr(grid, "ExperimentConfig", NewExp)
    monkeypatch.setattr(load, "ExperimentConfig", NewExp)
    monkeypatch.setattr(load, "LEAF_KEYS", [k for k in load._all_keys(NewExp) if k != "grid"])
    exp = load_experiment(ROOT / "experiments" / "smoke.yaml")
    assert exp.runs[0].config.train.new_option == 7  # the new schema is the one in use
    after = {p.name: [r.run_id for r in load_experiment(p).runs] for p in sorted((ROOT / "experiments").glob("*.yaml"))}
    assert after == before
    # and setting the new field to a non-default value makes a different run
    changed = load_experiment(ROOT / "experiments" / "smoke.yaml", ["train.new_option=8"])
    assert {r.run_id for r in changed.runs}.isdisjoint(before["smoke.yaml"])


def test_a_changed_default_would_alias_runs_without_the_bump(monkeypatch):
    """Why the snapshot test exists: with a changed default, the explicit old value and the new default
    hash differently, and a config that relied on the old default would silently get the new one's id."""
    default = ExperimentConfig()
    old = config_hash(dataclasses.replace(default, train=dataclasses.replace(default.train, lr=default.train.lr)))
    NewTrain = dataclasses.make_dataclass("TrainConfig", [("lr", float, dataclasses.field(default=1e-3))],
                                          bases=(TrainConfig,), frozen=True)
    NewExp = dataclasses.make_dataclass(
        "ExperimentConfig", [("train", NewTrain, dataclasses.field(default_factory=NewTrain))],
        bases=(ExperimentConfig,), frozen=True)
    monkeypatch.setattr(grid, "ExperimentConfig", NewExp)
    assert config_hash(NewExp()) == old  # a different training, the same id: hence the schema bump rule


def test_replaced_keys_name_their_replacement(tmp_path):
    p = tmp_path / "e.yaml"
    p.write_text("name: t\ndata: {train: {path: d.jsonl}}\ntrain: {packing: false}\n")
    with pytest.raises(ConfigError, match=r"(?s)e.yaml:3 \(train.packing\): 'train.packing' was replaced.*write train.layout"):
        load_experiment(p)
    q = tmp_path / "f.yaml"
    q.write_text("name: t\ndata: {train: {path: d.jsonl}}\n")
    for override in ("train.packing=false", "grid.train.packing=[true, false]"):
        with pytest.raises(ConfigError, match=r"train.layout: packed \| padded \| bucketed"):
            load_experiment(q, [override])
    assert "train.packing" in RENAMED
    assert load_experiment(q, ["train.layout=padded"]).runs[0].config.train.layout == "padded"


def test_existing_results_of_an_older_schema_are_refused(tmp_path):
    from harness.errors import HarnessError
    from harness.grid import check_schema

    p = tmp_path / "e.yaml"
    p.write_text(f"name: t\nresults_dir: {tmp_path}/results\ndata: {{train: {{path: d.jsonl}}}}\n")
    exp = load_experiment(p)
    exp.out_dir.mkdir(parents=True)
    exp.dir.plan.write_text(json.dumps({"schema": SCHEMA_VERSION - 1, "runs": []}))
    with pytest.raises(HarnessError, match=f"schema version {SCHEMA_VERSION - 1}"):
        check_schema(exp)
