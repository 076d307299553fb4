"""Optimizers and LR schedules, chosen by name from small registries."""

from __future__ import annotations

import math
from typing import Callable

import torch

from harness.config import TrainConfig
from harness.errors import ConfigError, did_you_mean


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Decay matrices only: norms, biases (any 1-D parameter) are never decayed."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or "norm" in name.lower() else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _adamw(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    kwargs = dict(lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps)
    # foreach is the fast path on CPU and GPU; fused is CUDA-only for fp32 params here
    on_cuda = next(model.parameters()).is_cuda
    return torch.optim.AdamW(param_groups(model, cfg.weight_decay), fused=on_cuda or None,
                             foreach=None if on_cuda else True, **kwargs)


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
