"""Experiment configuration: the schema (``schema.py``: nested frozen dataclasses, a docstring per field, checked
on construction) and loading YAML into it (``load.py``). Grids and run ids: harness/grid.py."""

from harness.config.load import (
    LEAF_KEYS,
    apply_overrides,
    build,
    explain,
    field_docs,
    parse_override,
    save_yaml,
)
from harness.config.schema import (
    LAYOUTS,
    DataConfig,
    EvalConfig,
    ExperimentConfig,
    LauncherConfig,
    ModelConfig,
    RegimeConfig,
    SourceConfig,
    TaskConfig,
    TrainConfig,
    to_dict,
)

__all__ = ["LAYOUTS", "LEAF_KEYS", "DataConfig", "EvalConfig", "ExperimentConfig", "LauncherConfig", "ModelConfig",
           "RegimeConfig", "SourceConfig", "TaskConfig", "TrainConfig", "apply_overrides", "build", "explain",
           "field_docs", "parse_override", "save_yaml", "to_dict"]
