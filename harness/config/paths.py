"""Where a path written in an experiment file points: relative paths resolve against the file's folder.

An experiment file names its model, data, probe files and results folder. A relative path in it means a path
relative to *the file* (joined with its ``root:``, default ``.``), never to the directory `harness` happens to
be started from: ``cd / && harness run /home/me/study/study.yaml`` reads the same files as
``cd /home/me/study && harness run study.yaml``. The loaded config carries the absolute paths, so every error
names the absolute path it tried, and a run's ``config.yaml`` reads the same files from anywhere.

Run ids hash the paths *as written* (relative to the file's root), not the absolute ones, so a study folder
moved or copied elsewhere keeps its run ids (harness/grid.py); the files' contents are the inputs record's
business (harness/inputs.py).

A model, tokenizer or data value may also be a hub name (``Qwen/Qwen2.5-0.5B``, ``GAIR/lima``): it is kept as
written unless it looks like a path (starts with ``.`` ``/`` ``~``, has more than two parts or a data-file
suffix) or exists under the root.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

# (dotted key, kind): "local" is always a path; "either" may be a hub name; "template" is a path only when it
# ends in a template file suffix; "init" is a path unless it is run:<id> (a run of this experiment, harness/stages.py)
PATH_KEYS = (
    ("results_dir", "local"), ("model.name_or_path", "either"), ("model.tokenizer", "either"),
    ("model.chat_template", "template"), ("model.init_from", "init"), ("data.train.path", "either"),
    ("data.eval.path", "either"), ("data.replay.path", "local"), ("eval.include_path", "local"),
    ("eval.nll_data", "local"), ("eval.pretrain_text", "local"), ("eval.raw_questions", "local"),
    ("eval.kl_prompts", "local"), ("eval.recovery.data", "local"),
)
_DATA_SUFFIXES = (".jsonl", ".json", ".parquet", ".jinja", ".txt")
TEMPLATE_SUFFIXES = (".jinja", ".j2", ".txt")  # model.chat_template names a file (else: a builtin or Jinja text)


def root_of(experiment_file: str | Path, root: str) -> Path:
    """The folder relative paths of `experiment_file` resolve against: its folder joined with `root`."""
    return Path(os.path.normpath(Path(experiment_file).expanduser().absolute().parent / Path(root).expanduser()))


def _is_path(value: str, kind: str, root: Path) -> bool:
    if kind == "template":
        return value.endswith(TEMPLATE_SUFFIXES) and "{" not in value
    if kind == "init":
        return not value.startswith("run:")
    if kind == "local" or value.startswith((".", "/", "~")) or value.endswith(_DATA_SUFFIXES):
        return True
    return len(Path(value).parts) > 2 or (root / value).exists()


def resolve_value(value: str, kind: str, root: Path) -> str:
    """`value` as an absolute path if it is a relative path (see the module docstring), else unchanged."""
    if not value or not _is_path(value, kind, root):
        return value
    p = Path(value).expanduser()
    return value if p.is_absolute() and str(p) == value else os.path.normpath(root / p)


def _replace(obj: Any, parts: list[str], fn) -> Any:
    """`obj` with the field at `parts` replaced by fn(value) (None sections and values left alone)."""
    if obj is None:
        return None
    value = getattr(obj, parts[0])
    if len(parts) > 1:
        new = _replace(value, parts[1:], fn)
    elif value is None:
        return obj
    else:
        new = tuple(fn(v) for v in value) if isinstance(value, tuple) else fn(value)
    return obj if new == value else dataclasses.replace(obj, **{parts[0]: new})


def replace_at(cfg, key: str, fn):
    """`cfg` with the value (each value of a tuple) at dotted `key` replaced by fn(value); unset ones kept."""
    return _replace(cfg, key.split("."), fn)


def resolve_paths(cfg, root: Path):
    """`cfg` with every relative path of :data:`PATH_KEYS` made absolute against `root`."""
    for key, kind in PATH_KEYS:
        cfg = replace_at(cfg, key, lambda v, kind=kind: resolve_value(v, kind, root))
    return cfg
