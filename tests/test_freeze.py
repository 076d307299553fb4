"""train.freeze on the 2-layer model: frozen parameters stay bit-identical through training; the rest train."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from harness.config.train import FreezeConfig
from harness.errors import ConfigError
from harness.grid import load_experiment
from harness.training.loop import train

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny models: one thread each (conftest)


@pytest.mark.parametrize("overrides, frozen", [
    (["train.freeze.embeddings=true"], ("model.embed_tokens.",)),
    (["train.freeze.bottom_layers=1"], ("model.layers.0.",)),
    (["train.freeze.embeddings=true", "train.freeze.bottom_layers=2", "train.weight_decay=0.1"],
     ("model.embed_tokens.", "model.layers.0.", "model.layers.1.")),
])
def test_frozen_parameters_are_bit_identical_after_training(tiny, tmp_path, overrides, frozen):
    root, exp = tiny
    spec = load_experiment(exp, ["train.max_steps=3", *overrides]).runs[0]
    summary = train(spec, tmp_path / "run")
    before = load_file(str(root / "model/model.safetensors"))
    after = load_file(str(tmp_path / "run/checkpoints/step-000003/model.safetensors"))
    assert before.keys() == after.keys()
    for k in before:
        same = torch.equal(before[k], after[k])
        assert same == k.startswith(frozen), f"{k}: {'unchanged' if same else 'changed'}"
    n_frozen = sum(v.numel() for k, v in before.items() if k.startswith(frozen))
    assert summary["params"]["trainable"] == summary["params"]["total"] - n_frozen


def test_freeze_config_is_checked(tiny, tmp_path):
    root, exp = tiny
    with pytest.raises(ConfigError, match="bottom_layers"):
        FreezeConfig(bottom_layers=-1)
    with pytest.raises(ConfigError, match="at most 2"):
        train(load_experiment(exp, ["train.freeze.bottom_layers=3"]).runs[0], tmp_path / "r")
