"""Experiment config: typed loading, clear errors with file:line and suggestions, grids and stable run ids."""

from pathlib import Path

import pytest
import yaml

from harness.config import LEAF_KEYS, ExperimentConfig, explain, field_docs, to_dict
from harness.errors import ConfigError
from harness.grid import config_hash, load_experiment

BASE = """\
name: t
data:
  train: {path: d.jsonl}
train:
  lr: 1e-4
  epochs: 1
grid:
  regime.name: [prompt_masked, full]
  train.lr: [1e-4, 2e-5]
  train.seed: [1, 2]
"""


def write(tmp_path, text, name="e.yaml"):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_grid_expansion_and_readable_stable_ids(tmp_path):
    exp = load_experiment(write(tmp_path, BASE))
    ids = [r.run_id for r in exp.runs]
    assert len(ids) == 8 == len(set(ids))
    assert ids[0].startswith("masked-lr1e-4-s1-") and ids[-1].startswith("full-lr2e-5-s2-")
    assert isinstance(exp.runs[0].config.train.lr, float)  # YAML gives '1e-4' as a string: coerced
    again = load_experiment(write(tmp_path, BASE, "copy.yaml"))
    assert [r.run_id for r in again.runs] == ids  # same config -> same run
    # a field outside the training config (launcher, eval, name) does not change the run
    other = load_experiment(write(tmp_path, BASE.replace("name: t", "name: other") +
                                  "launcher: {backend: debug}\n", "o.yaml"))
    assert [r.run_id for r in other.runs] == ids
    changed = load_experiment(write(tmp_path, BASE), ["train.epochs=2"])
    assert not set(r.run_id for r in changed.runs) & set(ids)


def test_overrides_type_checked_and_existing_only(tmp_path):
    p = write(tmp_path, BASE)
    assert load_experiment(p, ["train.max_grad_norm=null"]).config.train.max_grad_norm is None
    assert load_experiment(p, ["grid.train.lr=[3e-4]"]).runs[0].config.train.lr == 3e-4
    with pytest.raises(ConfigError, match=r"'train.lrr' is not a config key \(did you mean 'train.lr'\?\)"):
        load_experiment(p, ["train.lrr=1"])
    with pytest.raises(ConfigError, match="expected bool"):
        load_experiment(p, ["train.compile=maybe"])
    with pytest.raises(ConfigError, match="has no '='"):
        load_experiment(p, ["train.lr"])


BAD = [
    ("unknown key", "trian:\n  lr: 1\n", r"e\.yaml:1 \(trian\): unknown key 'trian' \(did you mean 'train'\?\)"),
    ("unknown nested key", "train:\n  lr: 1e-4\n  epohcs: 2\n",
     r"e\.yaml:3 \(train\.epohcs\): unknown key 'train\.epohcs' \(did you mean 'epochs'\?\)"),
    ("wrong type", "train:\n  epochs: many\n", r"e\.yaml:2 \(train\.epochs\): expected float"),
    ("negative lr", "train:\n  lr: -1e-4\n", r"e\.yaml:2 \(train\.lr\): must be > 0"),
    ("nan lr", "train:\n  lr: .nan\n", r"train\.lr\): must be > 0, got nan"),
    ("zero epochs", "train:\n  epochs: 0\n", r"train\.epochs\): must be > 0"),
    ("unknown regime", "regime:\n  name: promt_only\n", r"unknown regime 'promt_only' \(did you mean 'prompt_only'\?\)"),
    ("grid key missing", "grid:\n  train.learning_rate: [1]\n", r"'train.learning_rate' is not a config key"),
    ("grid axis not list", "grid:\n  train.lr: 1e-4\n", r"grid axis 'train.lr' must be a non-empty list"),
    ("grid value bad", "grid:\n  train.lr: [1e-4, -1]\n", r"must be > 0, got -1.0 \[grid point train.lr=-1\]"),
    ("duplicate key", "train:\n  lr: 1e-4\n  lr: 2e-4\n", r"e\.yaml:3: duplicate key 'train\.lr'"),
    ("bad yaml", "train:\n  lr: [1e-4\n", r"invalid YAML"),
    ("bad name", "name: a b\n", r"invalid experiment name"),
    ("not a mapping", "- 1\n- 2\n", r"must be a mapping of sections"),
    ("budget without tokens", "train:\n  budget: supervised_tokens\n", r"train.supervised_tokens is not set"),
    ("bad choice", "train:\n  schedule: cosin\n", r"'cosin' is not one of .* \(did you mean 'cosine'\?\)"),
    ("empty file", "", r"e\.yaml: the experiment file is empty"),
    ("comments only", "# a study, one day\n\n", r"the experiment file is empty"),
    ("empty mapping", "{}\n", r"the experiment file is empty"),
    ("root not a folder", "root: nowhere\n", r"root 'nowhere' is not a folder: /.*/nowhere"),
]


@pytest.mark.parametrize("name,text,pattern", BAD, ids=[b[0] for b in BAD])
def test_bad_configs(tmp_path, name, text, pattern):
    with pytest.raises(ConfigError, match=pattern) as info:
        load_experiment(write(tmp_path, text))
    assert "fix:" in str(info.value)


def test_every_field_has_a_docstring():
    import dataclasses

    from harness import config

    for cls in (config.ModelConfig, config.SourceConfig, config.DataConfig, config.RegimeConfig,
                config.TrainConfig, config.TaskConfig, config.EvalConfig, config.LauncherConfig,
                config.ExperimentConfig):
        docs = field_docs(cls)
        missing = [f.name for f in dataclasses.fields(cls) if not docs.get(f.name)]
        assert not missing, f"{cls.__name__} fields without a docstring: {missing}"
    rows = explain()
    assert {r[0] for r in rows} >= set(LEAF_KEYS)


def test_frozen_and_round_trip(tmp_path):
    exp = load_experiment(write(tmp_path, BASE))
    cfg = exp.runs[0].config
    with pytest.raises(dataclasses_frozen_error()):
        cfg.train.lr = 1.0  # type: ignore[misc]
    text = yaml.safe_dump(to_dict(cfg))
    again = load_experiment(write(tmp_path, text, "rt.yaml"))
    assert config_hash(again.config) == config_hash(cfg)


def dataclasses_frozen_error():
    import dataclasses

    return dataclasses.FrozenInstanceError


@pytest.mark.parametrize("path", sorted(Path(__file__).resolve().parents[1].glob("experiments/*.yaml")),
                         ids=lambda p: p.name)
def test_shipped_experiments_load(path):
    exp = load_experiment(path)
    assert exp.runs and isinstance(exp.config, ExperimentConfig)
    assert len({r.run_id for r in exp.runs}) == len(exp.runs)


def test_run_id_independent_of_yaml_spelling(tmp_path):
    a = load_experiment(write(tmp_path, BASE))
    b = load_experiment(write(tmp_path, BASE.replace("[1e-4, 2e-5]", "[0.0001, 2.0e-5]"), "b.yaml"))
    assert [r.run_id for r in a.runs] == [r.run_id for r in b.runs]
    assert a.runs[0].axes == {"regime.name": "prompt_masked", "train.lr": 1e-4, "train.seed": 1}


def test_run_id_labels_paths_by_their_telling_part():
    from harness.grid import axis_label

    assert axis_label("model.name_or_path", "results/world/demo-seed0-noaug/model") == "demo-seed0-noaug"
    assert axis_label("model.name_or_path", "Qwen/Qwen2.5-0.5B") == "Qwen2.5-0.5B"
    assert axis_label("data.train.path", "results/world/demo-seed0/data/sft_train_longprompt.jsonl") == "longprompt"


def test_shipped_reproduction_grids_have_distinct_readable_ids():
    root = Path(__file__).resolve().parents[1] / "experiments"
    for name in ("prompt_weight", "instruction_modelling", "knowledge_extraction"):
        exp = load_experiment(root / f"{name}.yaml")
        prefixes = [r.run_id.rsplit("-", 1)[0] for r in exp.runs]
        assert len(set(prefixes)) == len(prefixes), name  # readable without the hash
        assert all("eval" not in p for p in prefixes)
