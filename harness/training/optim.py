"""Optimizers and LR schedules, chosen by name from small registries."""

from __future__ import annotations

import math
from typing import Callable

import torch

from harness.config import TrainConfig
from harness.errors import ConfigError, did_you_mean


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Decay the matrices of linear layers only. Norm gains and biases (any 1-D parameter) and embedding
    tables are never decayed (as in minGPT/OLMo: decay pulls rarely-seen token rows to zero, which in SFT
    on a small vocabulary slice means forgetting the rest). A tied lm_head shares the embedding's table."""
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Embedding)}
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        skip = p.ndim < 2 or "norm" in name.lower() or id(p) in embeddings
        (no_decay if skip else decay).append(p)
    return [g for g in ({"params": decay, "weight_decay": weight_decay},
                        {"params": no_decay, "weight_decay": 0.0}) if g["params"]]


def _adamw(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    kwargs = dict(lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps)
    # fused is one kernel per step over all tensors: several times faster than foreach on CPU, where the
    # optimizer is most of a tiny model's step (benchmarks/NOTES.md); also the fast path on CUDA
    device = next(model.parameters()).device.type
    fused = device in _fused_devices()
    return torch.optim.AdamW(param_groups(model, cfg.weight_decay), fused=fused or None,
                             foreach=None if fused else True, **kwargs)


def _fused_devices() -> list[str]:
    try:
        from torch.optim.optimizer import _get_fused_kernels_supported_devices
    except ImportError:  # pragma: no cover - older torch: fused on CUDA only
        return ["cuda"]
    return _get_fused_kernels_supported_devices()


OPTIMIZERS: dict[str, Callable[[torch.nn.Module, TrainConfig], torch.optim.Optimizer]] = {"adamw": _adamw}


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    if cfg.optimizer not in OPTIMIZERS:
        raise ConfigError(f"unknown optimizer '{cfg.optimizer}'" + did_you_mean(cfg.optimizer, OPTIMIZERS),
                          where="train.optimizer", fix=f"use one of {sorted(OPTIMIZERS)}")
    return OPTIMIZERS[cfg.optimizer](model, cfg)


def lr_lambda(cfg: TrainConfig, total_steps: int) -> Callable[[int], float]:
    """Multiplier of the peak LR at optimizer step `s` (0-based): linear warmup, then the schedule down to
    `final_lr_fraction` at the last step (LIMA: linear 1e-5 -> 1e-6, no warmup)."""
    warmup = int(round(cfg.warmup_ratio * total_steps))
    end = cfg.final_lr_fraction

    def f(s: int) -> float:
        if warmup and s < warmup:
            return (s + 1) / warmup
        if cfg.schedule == "constant":
            return 1.0
        span = max(1, total_steps - 1 - warmup)
        x = min(1.0, max(0.0, (s - warmup) / span))
        if cfg.schedule == "linear":
            return 1.0 - (1.0 - end) * x
        return end + (1.0 - end) * 0.5 * (1.0 + math.cos(math.pi * x))  # cosine

    return f
