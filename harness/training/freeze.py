"""``train.freeze``: which parameters of the model are not trained.

Freezing is ``requires_grad = False`` before the engine is built: the engine and the optimizer take only the
parameters that require grad, so a frozen parameter gets no gradient, no optimizer state and no weight decay, and
stays bit-identical (``tests/test_freeze.py``).
"""

from __future__ import annotations

import torch

from harness.config.train import FreezeConfig
from harness.errors import ConfigError


def decoder_layers(model: torch.nn.Module) -> torch.nn.ModuleList:
    """The model's stack of decoder layers: the ModuleList as long as ``config.num_hidden_layers``."""
    n = getattr(getattr(model, "config", None), "num_hidden_layers", None)
    for _, m in model.named_modules():
        if isinstance(m, torch.nn.ModuleList) and len(m) == n:
            return m
    raise ConfigError(f"cannot find the decoder layers of {type(model).__name__} (num_hidden_layers={n})",
                      where="train.freeze.bottom_layers", fix="set it to 0 for this model")


def freeze(model: torch.nn.Module, fc: FreezeConfig) -> int:
    """Apply `fc` to `model` in place; returns the number of parameters frozen."""
    frozen: dict[int, torch.nn.Parameter] = {}
    if fc.embeddings:
        emb = model.get_input_embeddings()
        frozen.update({id(p): p for p in emb.parameters()})
    if fc.bottom_layers:
        layers = decoder_layers(model)
        if fc.bottom_layers > len(layers):
            raise ConfigError(f"train.freeze.bottom_layers is {fc.bottom_layers} but the model has {len(layers)} "
                              "layers", where="train.freeze.bottom_layers", fix=f"use at most {len(layers)}")
        for layer in layers[:fc.bottom_layers]:
            frozen.update({id(p): p for p in layer.parameters()})
    for p in frozen.values():
        p.requires_grad_(False)
    return sum(p.numel() for p in frozen.values())
