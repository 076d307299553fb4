"""How a grid becomes runs: expansion, run ids, the config hash and the plan.

Grid expansion gives one :class:`RunSpec` per point; its run id is a readable prefix of the grid axes plus a
short hash of the config's *difference from the defaults* and :data:`~harness.versions.SCHEMA_VERSION`
(``masked-lr2e-5-ep3-s1-3fa2c91b``). The same config always gives the same id, so a rerun resumes or skips
instead of duplicating; a new config field with a default leaves every id as it was.
"""

from __future__ import annotations

import copy
import dataclasses
import fnmatch
import hashlib
import itertools
import json
import re
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import yaml

from harness.claims import Claim, parse_claims
from harness.config import ExperimentConfig, to_dict
from harness.config.load import (
    LineMap,
    _build_checked,
    _check_leaf,
    _get_dotted,
    _section_type,
    _set_dotted,
    apply_overrides,
)
from harness.config.paths import resolve_paths, root_of
from harness.errors import ConfigError, HarnessError
from harness.layout import ExperimentDir
from harness.masking import REGIME_OPTIONS, check_regime
from harness.stages import RUN_PREFIX, Stage, parse_stages
from harness.versions import SCHEMA_VERSION


@dataclass(frozen=True)
class RunSpec:
    """One point of the grid: its id, the axes that define it, and the fully resolved config."""

    run_id: str
    axes: dict
    config: ExperimentConfig
    hashed: str | None = None  # the config hash of the run id: of the paths as written (config has them absolute)

    @property
    def config_hash(self) -> str:
        return self.hashed or config_hash(self.config)


_ABBREV_VALUES = {"prompt_masked": "masked", "prompt_only": "promptonly", "prompt_weight": "plw", "full": "full"}
_ABBREV_KEYS = {"regime.name": "", "train.lr": "lr", "train.epochs": "ep", "train.seed": "s",
                "regime.prompt_weight": "plw", "regime.turns": "turns", "data.train.path": "",
                "data.train.limit": "n", "data.max_length": "len", "train.batch_tokens": "bt",
                "model.name_or_path": "", "model.adapter.method": "", "model.adapter.r": "r",
                "model.adapter.alpha": "alpha", "data.replay.fraction": "replay", "regime.response_weight": "rw",
                "train.freeze.bottom_layers": "frozen"}
# axes left out of the readable prefix (they still enter the hash): eval data follows the training data
_UNLABELLED_AXES = {"data.eval.path", "data.eval.limit", "data.replay.path"}
_GENERIC_STEMS = {"model", "tokenizer", "data", "checkpoint", "final", "base"}


def _path_label(v: str) -> str:
    """A path's most telling part: its stem, or its parent's name when the stem is generic
    (results/world/demo-seed0-noaug/model -> demo-seed0-noaug; Qwen/Qwen2.5-0.5B -> Qwen2.5-0.5B)."""
    parts = [p for p in v.rstrip("/").split("/") if p]
    if len(parts) > 1 and Path(parts[-1]).stem in _GENERIC_STEMS:
        return parts[-2]
    if "." in parts[-1] and not parts[-1].endswith((".jsonl", ".json", ".parquet")):
        return parts[-1]  # a hub name such as Qwen2.5-0.5B, not a file suffix
    return re.sub(r"^(sft_train_|sft_|eval_)", "", Path(parts[-1]).stem)


def _fmt_value(v: Any) -> str:
    if isinstance(v, bool):
        return "T" if v else "F"
    if isinstance(v, float):
        s = f"{v:.6g}"
        if "e" not in s and v != 0 and abs(v) < 1e-2:  # learning rates read best as 2e-5, not 2e-05/0.00002
            mant, exp = f"{v:.6e}".split("e")
            s = f"{mant.rstrip('0').rstrip('.')}e{exp}"
        return re.sub(r"e([+-])0*(\d)", lambda m: "e" + ("-" if m.group(1) == "-" else "") + m.group(2), s)
    if isinstance(v, str):
        v = _ABBREV_VALUES.get(v, _path_label(v) if "/" in v else v)
    return re.sub(r"[^A-Za-z0-9.+\-]", "", str(v))[:24]


def axis_label(key: str, value: Any) -> str:
    prefix = _ABBREV_KEYS.get(key, key.split(".")[-1])
    return f"{prefix}{_fmt_value(value)}"


HASHED_SECTIONS = ("model", "data", "regime", "train")  # what determines training (not launcher, eval, name)
# fields of those sections that decide what is kept on disk, not what is trained
NOT_HASHED = frozenset({"train.keep", "train.keep_metric", "train.keep_mode", "train.report_to"})


def _diff(value: Any, default: Any, prefix: str, out: dict) -> None:
    """Dotted leaves of `value` that differ from `default` (a section set where the default is None is
    compared with its own type's defaults, and marked as set)."""
    if dataclasses.is_dataclass(value):
        if default is None:
            out[prefix] = "<set>"
            default = type(value)()
        for f in dataclasses.fields(value):
            _diff(getattr(value, f.name), getattr(default, f.name), f"{prefix}.{f.name}", out)
    elif to_dict(value) != to_dict(default) and prefix not in NOT_HASHED:
        out[prefix] = to_dict(value)


def config_diff(cfg: ExperimentConfig) -> dict:
    """The training-relevant part of `cfg` that differs from the defaults: {dotted key: value}."""
    out: dict = {}
    default = ExperimentConfig()
    for section in HASHED_SECTIONS:
        _diff(getattr(cfg, section), getattr(default, section), section, out)
    return out


def hashed_defaults() -> dict:
    """{dotted key: default} of every field the run id depends on, Optional sections' fields included
    (``tests/data/config_defaults.json`` keeps a copy: a changed default needs a schema bump)."""
    out: dict = {}

    def walk(obj: Any, prefix: str) -> None:
        for f in dataclasses.fields(obj):
            v, key = getattr(obj, f.name), f"{prefix}.{f.name}"
            sub = _section_type(typing.get_type_hints(type(obj))[f.name])
            if sub is not None:
                walk(v if v is not None else sub(), key)
            elif key not in NOT_HASHED:
                out[key] = to_dict(v)

    default = ExperimentConfig()
    for section in HASHED_SECTIONS:
        walk(getattr(default, section), section)
    return out


def config_hash(cfg: ExperimentConfig) -> str:
    """Short hash of the schema version and the config's difference from the defaults (dora's signature): a
    new field with a default leaves every hash as it was; equal training configs give equal hashes."""
    payload = {"schema": SCHEMA_VERSION, "diff": config_diff(cfg)}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:8]


def _grid_points(grid: Any, where: LineMap | None) -> list[dict]:
    if grid is None or grid == {}:
        return [{}]
    grids = grid if isinstance(grid, list) else [grid]
    points: list[dict] = []
    for g in grids:
        if not isinstance(g, dict):
            raise ConfigError("grid must be a mapping {key: [values]} or a list of such mappings",
                              where=where.where("grid") if where else "grid", fix="see experiments/smoke.yaml")
        keys = list(g)
        for k in keys:
            _check_leaf(k, where.where(f"grid.{k}") if where else f"grid.{k}")
            if not isinstance(g[k], list) or not g[k]:
                raise ConfigError(f"grid axis '{k}' must be a non-empty list", where=where.where(f"grid.{k}")
                                  if where else f"grid.{k}", fix=f"write {k}: [value1, value2]")
        for combo in itertools.product(*(g[k] for k in keys)):
            pt = dict(zip(keys, combo))
            if pt not in points:
                points.append(pt)
    return points


@dataclass(frozen=True)
class Experiment:
    """A loaded experiment: the base config (grid included), its source path and the expanded runs."""

    config: ExperimentConfig
    path: str
    runs: tuple[RunSpec, ...]
    claims: tuple[Claim, ...] = ()
    """What the study claims (``claims:``, harness/claims.py): judged by the report, registered by `harness run`."""

    @property
    def dir(self) -> ExperimentDir:
        return ExperimentDir.of(self.config)

    @property
    def out_dir(self) -> Path:
        return self.dir.path

    def run_dir(self, run: RunSpec):
        return self.dir.run(run.run_id)



def inapplicable(cfg: ExperimentConfig) -> tuple[ExperimentConfig, tuple[str, ...]]:
    """(`cfg` with the fields that do not apply under its other values reset to their defaults, the dotted keys
    of those fields). Without an adapter (model.adapter.method: none) its rank, alpha, dropout and targets mean
    nothing; a regime option its regime does not take (regime.prompt_weight under prompt_masked, regime.turns
    under full) changes no weight. A grid over either collapses to one run, whose id and hash are those of a
    config that never set them (a config without such values keeps the id it had)."""
    unused: list[str] = []
    ac = cfg.model.adapter
    if not ac.enabled:
        if ac != type(ac)():
            cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, adapter=type(ac)()))
        unused += [f"model.adapter.{f.name}" for f in dataclasses.fields(ac) if f.name != "method"]
    rc, takes = cfg.regime, REGIME_OPTIONS.get(cfg.regime.name, ())
    # only the options of the regime functions; the agentic options (reasoning, tool_calls, ...) apply to every one
    options = {o for opts in REGIME_OPTIONS.values() for o in opts}
    off = [f.name for f in dataclasses.fields(rc) if f.name in options and f.name not in takes]
    reset = {k: getattr(type(rc)(), k) for k in off}
    if any(getattr(rc, k) != v for k, v in reset.items()):
        cfg = dataclasses.replace(cfg, regime=dataclasses.replace(rc, **reset))
    unused += [f"regime.{k}" for k in off]
    return cfg, tuple(unused)


def expand(cfg_raw: dict, lines: LineMap | None = None, root: Path | None = None) -> list[RunSpec]:
    """Expand the grid of a raw (dict) experiment into run specs with stable, unique ids (with ``stages:``,
    one chain of runs per grid point, each stage's run after its previous stage's: harness/stages.py). With
    `root`, each run's relative paths resolve against it (harness/config/paths.py); ids hash them as written."""
    points = _grid_points(cfg_raw.get("grid"), lines)
    stages = parse_stages(cfg_raw.get("stages"), lines) or [None]
    runs, seen = [], {}
    for pt in points:
        parent = None
        for i, stage in enumerate(stages):
            spec = _point(cfg_raw, pt, stage, parent, lines, root)
            if stage is not None and i < len(stages) - 1 and spec.config.train.keep == "none":
                raise ConfigError(f"stage {stage.name!r} keeps no weights (train.keep: none), but stage "
                                  f"{stages[i + 1].name!r} starts from its final checkpoint",
                                  where=lines.where("train.keep") if lines else "train.keep",
                                  fix=f"keep the final checkpoint of {stage.name!r}: set train.keep: last in its "
                                      "stage's set")
            parent = spec.run_id
            if spec.run_id not in seen:  # two grid points resolving to the same config are the same run
                seen[spec.run_id] = True
                runs.append(spec)
    return runs


def _point(cfg_raw: dict, pt: dict, stage: Stage | None, parent: str | None, lines: LineMap | None,
           root: Path | None) -> RunSpec:
    raw = copy.deepcopy(cfg_raw)
    raw["grid"], raw["stages"], raw["claims"] = None, None, None
    for k, v in pt.items():
        _set_dotted(raw, k, v)
    label = ", ".join(f"{k}={v}" for k, v in pt.items())
    if stage is not None:
        for k, v in stage.set.items():
            _set_dotted(raw, k, v)
        if parent is not None:
            _set_dotted(raw, "model.init_from", f"{RUN_PREFIX}{parent}")
        label = f"stage {stage.name}" + (f", {label}" if label else "")
    cfg = _build_checked(raw, lines, f"grid point {label}" if label else "")
    _check_regime(cfg, lines, label)
    cfg, unused = inapplicable(cfg)
    resolved = to_dict(cfg)
    # typed values: '1e-4' (YAML str) and 0.0001 agree; axes that do not apply here are no axes of this run
    pt = {k: _get_dotted(resolved, k) for k in pt if k not in unused}
    prefix = "-".join(axis_label(k, v) for k, v in pt.items() if k not in _UNLABELLED_AXES)
    if stage is not None:
        prefix, pt = "-".join(p for p in (stage.name, prefix) if p), {"stage": stage.name, **pt}
    h = config_hash(cfg)
    return RunSpec(f"{prefix or 'run'}-{h}", dict(pt), cfg if root is None else resolve_paths(cfg, root), h)


def load_experiment(path: str | Path, overrides: list[str] | None = None,
                    edit: Callable[[dict], dict] | None = None) -> Experiment:
    """Load an experiment YAML (safe_load), apply `-o` overrides (then `edit`, a function of the raw mapping: e.g.
    harness replicate's new seeds), validate, and expand its grid."""
    path = Path(path)
    if not path.exists():
        raise ConfigError("experiment file not found", where=str(path.absolute()),
                          fix="check the path (see experiments/)")
    text = path.read_text(encoding="utf-8")
    lines = LineMap(text, str(path))
    raw = yaml.safe_load(text)
    if raw is None or raw == {}:  # all defaults is no experiment: a truncated or wrong file, not a study
        raise ConfigError("the experiment file is empty", where=str(path.absolute()),
                          fix="write at least name:, model: and data: (see experiments/smoke.yaml)")
    if not isinstance(raw, dict):
        raise ConfigError("the experiment file must be a mapping of sections", where=str(path.absolute()),
                          fix="start with 'name: ...' and sections such as model:, data:, train:")
    raw = apply_overrides(raw, overrides)
    if edit is not None:
        raw = edit(raw)
    base = _build_checked(raw, lines)
    _check_regime(base, lines, "")
    root = root_of(path, base.root)
    if not root.is_dir():
        raise ConfigError(f"root {base.root!r} is not a folder: {root}", where=lines.where("root"),
                          fix="root is relative to the experiment file's folder (.. for the shipped experiments)")
    runs = expand(raw, lines, root)
    return Experiment(resolve_paths(base, root), str(path), tuple(runs), tuple(parse_claims(raw.get("claims"), lines)))


def _check_regime(cfg: ExperimentConfig, lines: LineMap | None, label: str) -> None:
    try:
        check_regime(cfg.regime.name)
    except ConfigError as exc:
        where = lines.where(exc.where) if lines is not None else exc.where
        raise ConfigError(exc.message + (f" [grid point {label}]" if label else ""), where=where,
                          fix=exc.fix) from None


# ------------------------------------------------------------------------------------------ choosing runs


def match_runs(runs: tuple[RunSpec, ...] | list[RunSpec], pattern: str | None, where: str = "--only") -> list[RunSpec]:
    """Runs whose id matches `pattern`: a glob when it has * ? or [, else a substring (a prefix is one)."""
    if not pattern:
        return list(runs)
    pat = pattern if any(c in pattern for c in "*?[") else f"*{pattern}*"
    hits = [r for r in runs if fnmatch.fnmatch(r.run_id, pat)]
    if not hits:
        ids = ", ".join(r.run_id for r in list(runs)[:8])
        raise ConfigError(f"{where} {pattern!r} matches no run", where=where,
                          fix=f"harness status EXP.yaml lists the run ids; runs: {ids}")
    return hits


def select_run(runs: tuple[RunSpec, ...] | list[RunSpec], pattern: str | None) -> RunSpec:
    """The first run, or the one run `pattern` matches (an exact id wins; several matches: a clear error)."""
    if not pattern:
        return runs[0]
    exact = [r for r in runs if r.run_id == pattern]
    hits = exact or match_runs(runs, pattern, "--run")
    if len(hits) == 1:
        return hits[0]
    raise ConfigError(f"several runs match --run {pattern!r}", where="--run",
                      fix=f"give a longer pattern; matches: {', '.join(r.run_id for r in hits[:8])}")


# ------------------------------------------------------------------------------------------ the plan


def check_schema(exp: Experiment) -> None:
    """Refuse to mix results of another schema into this experiment's directory (``harness doctor`` says so too)."""
    plan = exp.dir.plan
    if not plan.exists():
        return
    schema = (exp.dir.read_plan() or {}).get("schema")
    if schema != SCHEMA_VERSION:
        raise HarnessError(f"{plan} was written by results schema version {schema}; this harness writes "
                           f"version {SCHEMA_VERSION}", where=str(exp.out_dir),
                           fix="move the old results away (they are kept as they are) or rename the experiment")
