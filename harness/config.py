"""Experiment configuration: nested frozen dataclasses loaded from YAML, checked on construction.

An experiment file has the sections below plus ``grid`` (lists over any dotted key). Every field has a
docstring (shown by ``harness config --explain``); unknown keys, wrong types and bad values fail at load time
with the file, line and the closest valid key. ``-o train.lr=1e-5`` overrides existing keys only.

Grid expansion gives one :class:`RunSpec` per point; its run id is a readable prefix of the grid axes plus a
short hash of the resolved config and :data:`SCHEMA_VERSION` (``masked-lr2e-5-ep3-s1-3fa2c91b``). The same
config always gives the same id, so a rerun resumes or skips instead of duplicating.
"""

from __future__ import annotations

import ast
import copy
import dataclasses
import hashlib
import inspect
import itertools
import json
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import yaml

from harness.errors import ConfigError, did_you_mean

SCHEMA_VERSION = 1


def _pos(where: str, value: float, allow_zero: bool = False) -> None:
    bad = value != value or math.isinf(value) or value < 0 or (value == 0 and not allow_zero)
    if bad:
        raise ConfigError(f"must be {'>= 0' if allow_zero else '> 0'}, got {value}", where=where,
                          fix="use a positive finite number")


def _choice(where: str, value: Any, choices: tuple) -> None:
    if value not in choices:
        raise ConfigError(f"{value!r} is not one of {list(choices)}" + did_you_mean(str(value), map(str, choices)),
                          where=where, fix=f"use one of {list(choices)}")


@dataclass(frozen=True)
class ModelConfig:
    name_or_path: str = "results/world/test-seed0/model"
    """Local directory or hub name of the base model (HF format)."""
    tokenizer: Optional[str] = None
    """Tokenizer directory or hub name; default: the model's."""
    dtype: str = "float32"
    """Weights dtype when loading: float32 | bfloat16 | float16 | float64 (exactness tests) | auto."""
    attn_implementation: str = "sdpa"
    """Attention kernel: sdpa | eager | flash_attention_2 (packing isolation is tested for sdpa and eager)."""
    trust_remote_code: bool = False
    """Allow custom model code from the hub. Off unless you trust the repository."""
    chat_template: Optional[str] = None
    """Chat template override: 'chatml', 'plain', a .jinja path or Jinja text; default: the tokenizer's."""
    revision: Optional[str] = None
    """Hub revision (commit) to pin; ignored for local paths."""

    def __post_init__(self):
        _choice("model.dtype", self.dtype, ("float32", "bfloat16", "float16", "float64", "auto"))
        _choice("model.attn_implementation", self.attn_implementation, ("sdpa", "eager", "flash_attention_2"))


@dataclass(frozen=True)
class SourceConfig:
    path: str = ""
    """Local .jsonl/.json/.parquet file, or a hub dataset name such as 'GAIR/lima'."""
    format: str = "auto"
    """messages | alpaca | prompt_completion | auto (detected from the first row)."""
    split: str = "train"
    """Split of a hub dataset (or the key of a JSON file's top-level dict)."""
    name: Optional[str] = None
    """Hub dataset configuration name."""
    limit: Optional[int] = None
    """Use only the first N examples."""

    def __post_init__(self):
        _choice("data.*.format", self.format, ("auto", "messages", "alpaca", "prompt_completion"))
        if self.limit is not None:
            _pos("data.*.limit", self.limit)


@dataclass(frozen=True)
class DataConfig:
    train: SourceConfig = field(default_factory=SourceConfig)
    """Training conversations."""
    eval: Optional[SourceConfig] = None
    """Held-out conversations for fixed-mask NLL (same format rules as train)."""
    max_length: int = 2048
    """Maximum tokens per example (and packed row length)."""
    truncation: str = "right"
    """Over-long examples: right (cut the end) | left (cut the start) | drop. Examples left with no
    supervised token are dropped and counted, never trained on."""
    boundary: str = "split"
    """Tokens straddling a segment boundary: split (tokenize pieces separately, as at inference) | merge."""
    eot: Optional[str] = None
    """End-of-turn marker after assistant content; default: eos and special tokens named *end*/*eot*."""
    system_prompt: Optional[str] = None
    """System message added to conversations that have none."""

    def __post_init__(self):
        _pos("data.max_length", self.max_length)
        _choice("data.truncation", self.truncation, ("right", "left", "drop"))
        _choice("data.boundary", self.boundary, ("split", "merge"))


@dataclass(frozen=True)
class RegimeConfig:
    name: str = "prompt_masked"
    """Loss-masking regime: prompt_masked | full | prompt_only | prompt_weight (or a registered one)."""
    turns: str = "all"
    """Which assistant turns are supervised: all | last (prompt_masked, prompt_weight)."""
    prompt_weight: float = 0.0
    """Loss weight lambda on non-response tokens (prompt_weight regime): 0 = prompt_masked, 1 = full."""
    eot: bool = True
    """Supervise the assistant's end-of-turn token (prompt_masked, prompt_weight)."""
    template: bool = False
    """Also supervise template/control tokens (prompt_only)."""

    def __post_init__(self):
        from harness.masking import check_regime

        check_regime(self.name)
        _choice("regime.turns", self.turns, ("all", "last"))
        if not (0.0 <= self.prompt_weight <= 1.0):
            raise ConfigError(f"must be in [0, 1], got {self.prompt_weight}", where="regime.prompt_weight",
                              fix="use a weight between 0 and 1")

    def options(self) -> dict:
        """Keyword options passed to the regime function (only those it takes)."""
        from harness.masking import REGIME_OPTIONS

        allowed = REGIME_OPTIONS[self.name]
        opts = {"turns": self.turns, "weight": self.prompt_weight, "eot": self.eot, "template": self.template}
        return {k: v for k, v in opts.items() if k in allowed}


@dataclass(frozen=True)
class TrainConfig:
    seed: int = 0
    """Seed for initialisation-dependent ops, data order and dropout."""
    lr: float = 2e-4
    """Peak learning rate."""
    epochs: float = 2
    """Passes over the training data (budget: epochs)."""
    budget: str = "epochs"
    """epochs | supervised_tokens: the latter stops every regime after the same number of supervised tokens."""
    supervised_tokens: Optional[int] = None
    """Supervised-token budget when budget = supervised_tokens."""
    batch_tokens: int = 4096
    """Tokens (rows x max_length) per optimizer step."""
    micro_batch_tokens: Optional[int] = None
    """Tokens per forward pass; batch_tokens / micro_batch_tokens micro-batches are accumulated."""
    max_steps: Optional[int] = None
    """Hard cap on optimizer steps (debugging)."""
    optimizer: str = "adamw"
    """Optimizer name from the registry (adamw)."""
    betas: tuple[float, float] = (0.9, 0.95)
    """AdamW betas."""
    eps: float = 1e-8
    """AdamW epsilon."""
    weight_decay: float = 0.0
    """Decoupled weight decay (never applied to norms and biases)."""
    schedule: str = "linear"
    """LR schedule: constant | linear | cosine (after warmup)."""
    warmup_ratio: float = 0.03
    """Fraction of steps with linear warmup."""
    final_lr_fraction: float = 0.1
    """LR at the end as a fraction of the peak (LIMA: 1e-5 -> 1e-6 is 0.1)."""
    max_grad_norm: Optional[float] = 1.0
    """Gradient clipping norm (None: off)."""
    packing: bool = True
    """Pack examples into rows with per-example position_ids (attention isolated); False: pad."""
    layout: str = "packed"
    """How each optimizer step's examples are laid into micro-batches (same examples, tokens and loss either
    way): packed (rows of several examples, block-diagonal attention mask from the position ids) | bucketed
    (sorted by length, one example per right-padded row, micro-batches of similar length, plain causal
    attention with no mask: less attention work; see harness/packing.py)."""
    normalization: str = "token"
    """Loss normalisation over the step: token | sequence."""
    dropout: Optional[float] = None
    """Override the model's dropout probabilities (LIMA uses residual dropout)."""
    precision: str = "auto"
    """auto (bf16 autocast on CUDA, fp32 on CPU) | bf16 (autocast everywhere) | fp32."""
    gradient_checkpointing: bool = False
    """Trade compute for memory."""
    compile: bool = False
    """torch.compile the model body. Packed rows are then always max_length wide (one shape, one compilation;
    without it every step's width would recompile); costs tens of seconds of compilation, pays off on long runs."""
    save_every_epoch: bool = True
    """Checkpoint at the end of every epoch."""
    save_every_steps: Optional[int] = None
    """Also checkpoint every N optimizer steps."""
    keep_last: Optional[int] = None
    """Keep only the newest K checkpoints (never one that still needs evaluation)."""
    log_every: int = 1
    """Log metrics every N optimizer steps."""
    threads: Optional[int] = None
    """torch CPU threads per run (default: all cores / parallel runs)."""

    def __post_init__(self):
        _pos("train.lr", self.lr)
        _pos("train.epochs", self.epochs)
        _pos("train.batch_tokens", self.batch_tokens)
        _pos("train.eps", self.eps)
        _pos("train.weight_decay", self.weight_decay, allow_zero=True)
        _pos("train.warmup_ratio", self.warmup_ratio, allow_zero=True)
        _pos("train.final_lr_fraction", self.final_lr_fraction, allow_zero=True)
        _pos("train.log_every", self.log_every)
        _choice("train.budget", self.budget, ("epochs", "supervised_tokens"))
        _choice("train.schedule", self.schedule, ("constant", "linear", "cosine"))
        _choice("train.normalization", self.normalization, ("token", "sequence"))
        _choice("train.optimizer", self.optimizer, ("adamw",))
        _choice("train.precision", self.precision, ("auto", "bf16", "fp32"))
        _choice("train.layout", self.layout, ("packed", "bucketed"))
        if self.compile and self.layout == "bucketed":
            raise ConfigError("train.compile with train.layout: bucketed would recompile for every micro-batch width",
                              where="train.compile", fix="use layout: packed with compile (fixed-width rows)")
        if self.budget == "supervised_tokens" and not self.supervised_tokens:
            raise ConfigError("budget is supervised_tokens but train.supervised_tokens is not set",
                              where="train.supervised_tokens", fix="set the number of supervised tokens per run")
        for key in ("micro_batch_tokens", "max_steps", "save_every_steps", "keep_last", "threads",
                    "supervised_tokens", "max_grad_norm"):
            val = getattr(self, key)
            if val is not None:
                _pos(f"train.{key}", val)
        if self.dropout is not None and not (0.0 <= self.dropout < 1.0):
            raise ConfigError(f"must be in [0, 1), got {self.dropout}", where="train.dropout", fix="e.g. 0.1")
        if self.warmup_ratio >= 1 or self.final_lr_fraction > 1:
            raise ConfigError("warmup_ratio must be < 1 and final_lr_fraction <= 1", where="train.warmup_ratio",
                              fix="e.g. warmup_ratio: 0.03, final_lr_fraction: 0.1")


@dataclass(frozen=True)
class TaskConfig:
    name: str = ""
    """lm-eval task (or group) name, e.g. hellaswag, or a task from eval.include_path."""
    num_fewshot: Optional[int] = None
    """Few-shot examples (None: the task's default)."""
    limit: Optional[int] = None
    """Evaluate only the first N documents."""
    apply_chat_template: bool = False
    """Wrap prompts in the chat template (instruction-tuned evaluation)."""
    batch_size: int = 16
    """lm-eval batch size."""


@dataclass(frozen=True)
class EvalConfig:
    tasks: tuple[TaskConfig, ...] = ()
    """lm-eval tasks run on every checkpoint (and the base model once)."""
    include_path: tuple[str, ...] = ()
    """Directories with local lm-eval task YAMLs."""
    every_checkpoint: bool = True
    """Evaluate every checkpoint (False: only the last)."""
    nll_data: Optional[str] = None
    """Held-out conversations for fixed-mask NLL (default: data.eval)."""
    pretrain_text: Optional[str] = None
    """Held-out pretraining-like text (.jsonl with 'text') for the forgetting probe."""
    raw_questions: Optional[str] = None
    """Raw questions (.jsonl with 'prompt') for the format probe."""
    probe_limit: int = 200
    """Examples per probe."""
    token_examples: int = 8
    """Conversations whose per-token losses are saved (tokens.parquet)."""
    max_new_tokens: int = 32
    """Bound on generated tokens in probes."""
    kl_top_k: int = 64
    """Base log-probs cached per position for forgetting/kl_base: the top k plus the tail mass (exact when
    k >= vocabulary size, else a lower bound missing only the base's mass outside its top k)."""
    threads: Optional[int] = None
    """torch CPU threads while evaluating; default: 1 for models under 20M parameters on CPU (their small
    ops gain nothing from more, and threads sharing cores with other processes spin-wait: a demo checkpoint
    took 17 s on 1 thread, 255 s on 2, on a loaded 2-core machine), else unchanged."""

    def __post_init__(self):
        _pos("eval.probe_limit", self.probe_limit)
        _pos("eval.max_new_tokens", self.max_new_tokens)
        _pos("eval.kl_top_k", self.kl_top_k)
        if self.threads is not None:
            _pos("eval.threads", self.threads)


@dataclass(frozen=True)
class LauncherConfig:
    backend: str = "local"
    """local (submitit local processes) | slurm | debug (in-process)."""
    parallel: Optional[int] = None
    """Runs at once (local: default from cores and threads per run; slurm: array parallelism)."""
    timeout_min: int = 240
    """Per-job time limit in minutes (submitit's own local default is 2)."""
    partition: Optional[str] = None
    """SLURM partition."""
    account: Optional[str] = None
    """SLURM account."""
    qos: Optional[str] = None
    """SLURM QOS."""
    constraint: Optional[str] = None
    """SLURM constraint (e.g. a100)."""
    gpus_per_run: int = 0
    """GPUs per run (>1 starts torch.distributed)."""
    cpus_per_run: int = 2
    """CPUs per run."""
    mem_gb: int = 8
    """Memory per run in GB."""
    extra_sbatch: tuple[str, ...] = ()
    """Extra '#SBATCH' lines, e.g. '--exclude=node1'."""
    max_requeues: int = 3
    """Requeues after preemption/timeout before giving up."""

    def __post_init__(self):
        _choice("launcher.backend", self.backend, ("local", "slurm", "debug"))
        _pos("launcher.timeout_min", self.timeout_min)
        _pos("launcher.cpus_per_run", self.cpus_per_run)
        _pos("launcher.gpus_per_run", self.gpus_per_run, allow_zero=True)


@dataclass(frozen=True)
class ExperimentConfig:
    name: str = "experiment"
    """Experiment name: results go to <results_dir>/<name>/."""
    description: str = ""
    """Free text shown in reports."""
    results_dir: str = "results"
    """Root of all outputs."""
    model: ModelConfig = field(default_factory=ModelConfig)
    """Base model and tokenizer."""
    data: DataConfig = field(default_factory=DataConfig)
    """Training/eval data and tokenization."""
    regime: RegimeConfig = field(default_factory=RegimeConfig)
    """Loss-masking regime."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """Optimisation."""
    eval: EvalConfig = field(default_factory=EvalConfig)
    """Benchmarks and probes."""
    launcher: LauncherConfig = field(default_factory=LauncherConfig)
    """Where and how runs execute."""
    grid: Any = None
    """Grid: {dotted.key: [values]} (cartesian product) or a list of such maps (their union)."""

    def __post_init__(self):
        if not re.fullmatch(r"[A-Za-z0-9_.\-]+", self.name):
            raise ConfigError(f"invalid experiment name {self.name!r}", where="name",
                              fix="use letters, digits, '_', '-' and '.' only (it becomes a directory)")

    def to_dict(self) -> dict:
        return to_dict(self)


# ------------------------------------------------------------------------------------------ generic machinery


def to_dict(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def field_docs(cls: type) -> dict[str, str]:
    """Attribute docstrings of a dataclass (the string literal right after each field)."""
    try:
        tree = ast.parse(inspect.getsource(cls))
    except (OSError, TypeError):
        return {}
    body = tree.body[0].body
    docs = {}
    for a, b in zip(body, body[1:]):
        if isinstance(a, ast.AnnAssign) and isinstance(a.target, ast.Name) and isinstance(b, ast.Expr) \
                and isinstance(b.value, ast.Constant) and isinstance(b.value.value, str):
            docs[a.target.id] = inspect.cleandoc(b.value.value)
    return docs


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) is not None:
        return str(tp).replace("typing.", "").replace("NoneType", "None")
    return getattr(tp, "__name__", None) or str(tp)


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check `value` against the annotation `tp` (YAML gives '1e-5' as a string: accept it for floats)."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, key)
            except ConfigError as exc:
                errors.append(exc)
        raise errors[0]
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"expected a mapping for section '{key}', got {type(value).__name__}", where=key,
                              fix=f"write {key}: as a mapping of its fields")
        return build(tp, value, key)
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            if value is None:
                return ()
            raise ConfigError(f"expected a list, got {type(value).__name__} {value!r}", where=key,
                              fix=f"write {key}: [..]")
        if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value))
        if origin is tuple and args:
            if len(value) != len(args):
                raise ConfigError(f"expected {len(args)} values, got {len(value)}", where=key,
                                  fix=f"write {key}: [{', '.join(_type_name(a) for a in args)}]")
            return tuple(_coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        return [_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value)] if args else list(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
    elif tp is str:
        if isinstance(value, str):
            return value
    elif isinstance(value, tp):
        return value
    raise ConfigError(f"expected {_type_name(tp)}, got {type(value).__name__} {value!r}", where=key,
                      fix=f"give {key} a value of type {_type_name(tp)}")


def build(cls: type, data: dict, prefix: str = "") -> Any:
    """Construct dataclass `cls` from a dict, rejecting unknown keys (with a suggestion) and wrong types."""
    names = [f.name for f in dataclasses.fields(cls)]
    hints = _hints(cls)
    kwargs = {}
    for key, value in data.items():
        dotted = f"{prefix}.{key}" if prefix else str(key)
        if key not in names:
            raise ConfigError(f"unknown key '{dotted}'" + did_you_mean(str(key), names), where=dotted,
                              fix=f"valid keys here: {', '.join(names)}")
        kwargs[key] = _coerce(value, hints[key], dotted)
    try:
        return cls(**kwargs)
    except ConfigError as exc:
        # __post_init__ names its own field; re-root it at where this section sits in the file
        last = (exc.where or "").split(".")[-1]
        if prefix and last in names:
            exc.where = f"{prefix}.{last}"
        raise


def _section_type(tp: Any) -> type | None:
    """The dataclass behind a field that is a (possibly Optional) section; None for leaves and lists."""
    if dataclasses.is_dataclass(tp):
        return tp
    if typing.get_origin(tp) in (Union, types.UnionType):
        inner = [a for a in typing.get_args(tp) if dataclasses.is_dataclass(a)]
        return inner[0] if inner else None
    return None


def _all_keys(cls: type, prefix: str = "") -> list[str]:
    keys = []
    hints = _hints(cls)
    for f in dataclasses.fields(cls):
        dotted = f"{prefix}.{f.name}" if prefix else f.name
        sub = _section_type(hints[f.name])
        if sub is not None:
            keys += _all_keys(sub, dotted)
        else:
            keys.append(dotted)
    return keys


LEAF_KEYS = [k for k in _all_keys(ExperimentConfig) if k != "grid"]


def _set_dotted(d: dict, key: str, value: Any) -> None:
    parts = key.split(".")
    cur = d
    for p in parts[:-1]:
        nxt = cur.get(p)
        if not isinstance(nxt, dict):
            nxt = {} if nxt is None else nxt
            cur[p] = nxt
        cur = nxt
    cur[parts[-1]] = value


def _get_dotted(d: dict, key: str) -> Any:
    cur: Any = d
    for p in key.split("."):
        if not isinstance(cur, dict) or p not in cur:
            return None
        cur = cur[p]
    return cur


def _check_leaf(key: str, where: str) -> None:
    if key not in LEAF_KEYS:
        raise ConfigError(f"'{key}' is not a config key" + did_you_mean(key, LEAF_KEYS), where=where,
                          fix="grid axes and overrides must name an existing dotted key (harness config --explain)")


# ------------------------------------------------------------------------------------------ YAML with lines


class _LineMap:
    """dotted key -> line number of an experiment file, and duplicate-key detection (yaml.safe_load keeps
    the last of two equal keys silently)."""

    def __init__(self, text: str, path: str):
        self.path = path
        self.lines: dict[str, int] = {}
        try:
            node = yaml.compose(text, Loader=yaml.SafeLoader)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f"{path}:{mark.line + 1}" if mark else path
            raise ConfigError(f"invalid YAML: {getattr(exc, 'problem', exc)}", where=where,
                              fix="fix the YAML syntax (indentation, colons, quotes)") from None
        if node is not None:
            self._walk(node, "")

    def _walk(self, node: Any, prefix: str) -> None:
        if isinstance(node, yaml.MappingNode):
            seen: set[str] = set()
            for k, v in node.value:
                key = str(k.value)
                dotted = f"{prefix}.{key}" if prefix else key
                if key in seen:
                    raise ConfigError(f"duplicate key '{dotted}'", where=f"{self.path}:{k.start_mark.line + 1}",
                                      fix="remove one of the two entries (YAML would silently keep the last)")
                seen.add(key)
                self.lines[dotted] = k.start_mark.line + 1
                self._walk(v, dotted)
        elif isinstance(node, yaml.SequenceNode):
            for i, v in enumerate(node.value):
                self._walk(v, f"{prefix}[{i}]")

    def where(self, key: str | None) -> str:
        if not key:
            return self.path
        k = key
        while k:
            if k in self.lines:
                return f"{self.path}:{self.lines[k]} ({key})"
            k = k.rsplit(".", 1)[0] if "." in k else ""
        return f"{self.path} ({key})"


def parse_override(text: str) -> tuple[str, Any]:
    """'train.lr=1e-5' -> ('train.lr', 1e-5). Values are parsed as YAML (lists, numbers, null)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} has no '='", where="-o", fix="write -o section.key=value")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def apply_overrides(raw: dict, overrides: list[str] | None) -> dict:
    raw = copy.deepcopy(raw)
    for text in overrides or []:
        key, value = parse_override(text)
        if key.startswith("grid."):
            axis = key[len("grid."):]
            _check_leaf(axis, f"-o {text}")
            grid = raw.get("grid") or {}
            if not isinstance(grid, dict):
                raise ConfigError("cannot override an axis of a list-of-grids", where=f"-o {text}",
                                  fix="edit the experiment file")
            grid[axis] = value if isinstance(value, list) else [value]
            raw["grid"] = grid
            continue
        _check_leaf(key, f"-o {text}")
        _set_dotted(raw, key, value)
    return raw


# ------------------------------------------------------------------------------------------ runs and grids


@dataclass(frozen=True)
class RunSpec:
    """One point of the grid: its id, the axes that define it, and the fully resolved config."""

    run_id: str
    axes: dict
    config: ExperimentConfig

    @property
    def config_hash(self) -> str:
        return config_hash(self.config)


_ABBREV_VALUES = {"prompt_masked": "masked", "prompt_only": "promptonly", "prompt_weight": "plw", "full": "full"}
_ABBREV_KEYS = {"regime.name": "", "train.lr": "lr", "train.epochs": "ep", "train.seed": "s",
                "regime.prompt_weight": "plw", "regime.turns": "turns", "data.train.path": "",
                "data.train.limit": "n", "data.max_length": "len", "train.batch_tokens": "bt",
                "model.name_or_path": ""}
# axes left out of the readable prefix (they still enter the hash): eval data follows the training data
_UNLABELLED_AXES = {"data.eval.path", "data.eval.limit"}
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


def config_hash(cfg: ExperimentConfig) -> str:
    """Hash of what determines a run's training (not the launcher, eval, name or description)."""
    d = to_dict(cfg)
    payload = {"schema": SCHEMA_VERSION, **{k: d[k] for k in ("model", "data", "regime", "train")}}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:8]


def _grid_points(grid: Any, where: _LineMap | None) -> list[dict]:
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

    @property
    def out_dir(self) -> Path:
        return Path(self.config.results_dir) / self.config.name


def _build_checked(raw: dict, lines: _LineMap | None, context: str = "") -> ExperimentConfig:
    try:
        return build(ExperimentConfig, raw)
    except ConfigError as exc:
        if lines is not None:
            exc.where = lines.where(exc.where)
        if context:
            exc.message = f"{exc.message} [{context}]"
        raise ConfigError(exc.message, where=exc.where, fix=exc.fix) from None


def expand(cfg_raw: dict, lines: _LineMap | None = None) -> list[RunSpec]:
    """Expand the grid of a raw (dict) experiment into run specs with stable, unique ids."""
    points = _grid_points(cfg_raw.get("grid"), lines)
    runs, seen = [], {}
    for pt in points:
        raw = copy.deepcopy(cfg_raw)
        raw["grid"] = None
        for k, v in pt.items():
            _set_dotted(raw, k, v)
        label = ", ".join(f"{k}={v}" for k, v in pt.items())
        cfg = _build_checked(raw, lines, f"grid point {label}" if label else "")
        resolved = to_dict(cfg)
        pt = {k: _get_dotted(resolved, k) for k in pt}  # typed values: '1e-4' (YAML str) and 0.0001 agree
        prefix = "-".join(axis_label(k, v) for k, v in pt.items() if k not in _UNLABELLED_AXES) or "run"
        run_id = f"{prefix}-{config_hash(cfg)}"
        if run_id in seen:
            continue  # two grid points resolving to the same config are the same run
        seen[run_id] = True
        runs.append(RunSpec(run_id, dict(pt), cfg))
    return runs


def load_experiment(path: str | Path, overrides: list[str] | None = None) -> Experiment:
    """Load an experiment YAML (safe_load), apply `-o` overrides, validate, and expand its grid."""
    path = Path(path)
    if not path.exists():
        raise ConfigError("experiment file not found", where=str(path), fix="check the path (see experiments/)")
    text = path.read_text(encoding="utf-8")
    lines = _LineMap(text, str(path))
    raw = yaml.safe_load(text) or {}
    if not isinstance(raw, dict):
        raise ConfigError("the experiment file must be a mapping of sections", where=str(path),
                          fix="start with 'name: ...' and sections such as model:, data:, train:")
    raw = apply_overrides(raw, overrides)
    base = _build_checked(raw, lines)
    runs = expand(raw, lines)
    return Experiment(base, str(path), tuple(runs))


def explain(cls: type = ExperimentConfig, prefix: str = "") -> list[tuple[str, str, str, str]]:
    """(dotted key, type, default, doc) for every field: the reference behind `harness config --explain`."""
    rows = []
    docs = field_docs(cls)
    hints = _hints(cls)
    for f in dataclasses.fields(cls):
        dotted = f"{prefix}.{f.name}" if prefix else f.name
        tp = hints[f.name]
        sub = _section_type(tp)
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
        rows.append((dotted, _type_name(tp), "" if sub else repr(to_dict(default)), docs.get(f.name, "")))
        if sub is not None:
            rows += explain(sub, dotted)
    return rows


def save_yaml(cfg: ExperimentConfig, path: Path) -> None:
    path.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False), encoding="utf-8")
