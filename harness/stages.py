"""Sequential stages: how an experiment chains runs (SFT on task A, then task B from A's final checkpoint).

``stages:`` in an experiment file is a list of ``{name, set: {dotted.key: value}}``. Every grid point becomes a
chain of runs, one per stage. Stage i's config is the experiment's, then the grid point's values, then stage
i's ``set`` (which wins: a stage may pin an axis, e.g. a freezing axis meant for stage B is pinned to 0 in
stage A, and the grid points then share one A run, because equal configs are one run). Stage i > 0 starts
from stage i-1's run: ``model.init_from: run:<its run id>``, that run's final checkpoint. The base model
(``model.name_or_path``) stays what every stage is compared with (KL, pretraining-NLL delta) and supplies the
tokenizer, so a chain's forgetting is measured from the pretrained model, not from the previous stage.

A stage's run id starts with the stage's name (``qa-s1-...``, ``bio-frozen2-s1-...``) and its hash covers
``init_from``, i.e. the previous stage's run id, which covers that stage's config: change stage A and every
later stage is a new run. Execution order: a run never starts before its previous stage is DONE (the launcher
walks chains in order; a SLURM job runs a whole chain, see harness/launch/submit.py)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from harness.config import ExperimentConfig
from harness.config.load import LineMap, _check_leaf
from harness.errors import ConfigError
from harness.layout import DONE, ExperimentDir, RunDir

RUN_PREFIX = "run:"  # model.init_from: run:<run id> is a run of this experiment (where results_dir puts it)


@dataclass(frozen=True)
class Stage:
    name: str
    """Names the stage's runs (their id starts with it) and the `stage` axis of the analysis."""
    set: dict
    """{dotted key: value} applied after the grid point's values."""


def parse_stages(raw: Any, lines: LineMap | None = None) -> list[Stage]:
    """The experiment's ``stages:`` checked (names, keys); [] when there are none."""
    if raw is None or raw == []:
        return []
    where = lines.where("stages") if lines else "stages"
    fix = "write stages: [{name: a, set: {data.train.path: ...}}, {name: b, set: {...}}]"
    if not isinstance(raw, list) or len(raw) < 2:
        raise ConfigError("stages must be a list of two or more {name, set} mappings", where=where, fix=fix)
    out: list[Stage] = []
    for i, s in enumerate(raw):
        here = f"{where} (stage {i + 1})"
        if not isinstance(s, dict) or set(s) - {"name", "set"} or "name" not in s:
            raise ConfigError(f"stage {i + 1} must be a mapping with 'name' and 'set' only", where=here, fix=fix)
        name = s["name"]
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", name):
            raise ConfigError(f"invalid stage name {name!r}", where=here,
                              fix="a letter, then letters, digits or '_' (it starts the stage's run ids)")
        if name in [o.name for o in out]:
            raise ConfigError(f"two stages are named {name!r}", where=here, fix="give every stage its own name")
        values = s.get("set") or {}
        if not isinstance(values, dict):
            raise ConfigError(f"stage {name!r}: 'set' must be a mapping of dotted keys", where=here, fix=fix)
        for k in values:
            _check_leaf(k, f"{here}: set.{k}")
            if i > 0 and k == "model.init_from":
                raise ConfigError(f"stage {name!r} sets model.init_from, which the previous stage decides",
                                  where=f"{here}: set.{k}", fix="only the first stage may start from a checkpoint")
        out.append(Stage(name, dict(values)))
    return out


def init_run_id(init_from: str | None) -> str | None:
    """The run id behind ``run:<id>``, else None."""
    if init_from and init_from.startswith(RUN_PREFIX):
        return init_from[len(RUN_PREFIX):]
    return None


def init_checkpoint(cfg: ExperimentConfig) -> Path | None:
    """The COMPLETED checkpoint that model.init_from names (None without one): a checkpoint directory, or a
    run (``run:<id>`` of this experiment, or a run directory), whose newest checkpoint it is, once DONE.
    A clear error when it is not there, not DONE, kept no weights, or holds an adapter."""
    init = cfg.model.init_from
    if not init:
        return None
    rid = init_run_id(init)
    path = ExperimentDir.of(cfg).run(rid).path if rid else Path(init).expanduser()
    if not path.exists():
        raise ConfigError("model.init_from: no such run or checkpoint", where=f"{init} ({path})",
                          fix="run the previous stage first (harness run runs a chain in order)")
    if (path / "config.json").exists() or (path / "adapter_config.json").exists():
        ckpt = path  # a checkpoint (or model) directory itself
    else:
        rd = RunDir(path)
        if not rd.done.exists():
            raise ConfigError(f"model.init_from: run {rd.name} is not finished (no {DONE})", where=str(path),
                              fix="let the previous stage finish (harness status shows it)")
        latest = rd.latest_checkpoint()
        if latest is None:
            raise ConfigError(f"model.init_from: run {rd.name} has no COMPLETED checkpoint", where=str(path),
                              fix="rerun the previous stage")
        ckpt = latest[1]
    if (ckpt / "adapter_config.json").exists():
        raise ConfigError("model.init_from is an adapter checkpoint: a stage starts from full weights",
                          where=str(ckpt), fix="export it merged (harness export RUN --merged --out DIR) and "
                                               "start the next stage from DIR")
    if not any(ckpt.glob("*.safetensors")):
        raise ConfigError("model.init_from: the checkpoint holds no weights (pruned by train.keep?)",
                          where=str(ckpt), fix="keep the final checkpoint of a stage that others start from "
                                               "(train.keep: last or all)")
    return ckpt


def base_weights(cfg: ExperimentConfig) -> str | Path:
    """Where a run's starting weights come from: model.init_from's checkpoint, else the base model."""
    return init_checkpoint(cfg) or cfg.model.name_or_path


def parent_done(spec: Any, rd: RunDir) -> bool:
    """A run may start: it has no previous stage, or that stage (a sibling run directory) is DONE."""
    parent = init_run_id(spec.config.model.init_from)
    return parent is None or rd.sibling(parent).done.exists()


def waits_for(spec: Any, rd: RunDir) -> str | None:
    """Why the run cannot start yet ("waits for its previous stage X", or "its previous stage X failed"), or
    None when it can: the one wording of the launcher's, the debug backend's and ``harness status``'s."""
    if parent_done(spec, rd):
        return None
    parent = init_run_id(spec.config.model.init_from)
    if rd.sibling(parent).failed.exists():
        return f"its previous stage {parent} failed"
    return f"waits for its previous stage {parent}"


def chains(specs: Sequence[Any]) -> list[list[Any]]:
    """`specs` grouped into trees of runs that start from one another (a run with its later stages, in
    order); runs that chain to nothing are groups of one. Order within and across groups is kept."""
    root: dict[str, str] = {}
    groups: dict[str, list] = {}
    for s in specs:
        parent = init_run_id(s.config.model.init_from)
        r = root.get(parent, s.run_id) if parent else s.run_id
        root[s.run_id] = r
        groups.setdefault(r, []).append(s)
    return list(groups.values())
