"""What every config section's ``__post_init__`` checks with, and the named choices it checks against."""

from __future__ import annotations

import math
from typing import Any

from harness.errors import ConfigError, did_you_mean

LAYOUTS = ("packed", "padded", "bucketed")

#: the experiment trackers train.report_to accepts (harness/tracking.py's registry)
TRACKERS = ("tensorboard", "wandb", "mlflow", "trackio")

#: model.adapter.method (harness/adapters.py)
ADAPTER_METHODS = ("none", "lora", "dora")

#: train.parallel: how a multi-process run splits the work (harness/training/distributed.py, fsdp.py)
PARALLEL = ("ddp", "fsdp")

#: the attention kernels the config accepts (tests/test_train.py checks packed isolation for each)
ATTN_IMPLEMENTATIONS = ("sdpa", "eager", "flash_attention_2", "flex_attention", "varlen_attention")


def _pos(where: str, value: float, allow_zero: bool = False) -> None:
    bad = value != value or math.isinf(value) or value < 0 or (value == 0 and not allow_zero)
    if bad:
        raise ConfigError(f"must be {'>= 0' if allow_zero else '> 0'}, got {value}", where=where,
                          fix="use a positive finite number")


def _choice(where: str, value: Any, choices: tuple) -> None:
    if value not in choices:
        raise ConfigError(f"{value!r} is not one of {list(choices)}" + did_you_mean(str(value), map(str, choices)),
                          where=where, fix=f"use one of {list(choices)}")
