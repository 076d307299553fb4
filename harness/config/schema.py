"""The experiment schema: nested frozen dataclasses, a docstring per field (``harness config --explain`` prints
them), values checked in ``__post_init__``. Loading YAML into these is harness/config/load.py; grids and run ids
are harness/grid.py.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any, Optional

from harness.config.checks import ADAPTER_METHODS, ATTN_IMPLEMENTATIONS, LAYOUTS, TRACKERS, _choice, _pos
from harness.config.evaluation import EvalConfig, TaskConfig
from harness.config.launcher import LauncherConfig
from harness.config.train import TrainConfig
from harness.errors import ConfigError

__all__ = ["ADAPTER_METHODS", "ATTN_IMPLEMENTATIONS", "LAYOUTS", "RENAMED", "TRACKERS", "AdapterConfig", "DataConfig",
           "EvalConfig", "ExperimentConfig", "LauncherConfig", "ModelConfig", "RegimeConfig", "SourceConfig",
           "TaskConfig", "TrainConfig", "to_dict"]
# keys that existed once and were replaced: loading a file that still has one says what to write instead
RENAMED = {"train.packing": "train.layout: packed | padded | bucketed (packing: false is layout: padded)",
           "train.keep_last": "train.keep: all | last | best (keep_last: 1 is keep: last)"}

@dataclass(frozen=True)
class AdapterConfig:
    method: str = "none"
    """none (train every weight) | lora | dora (PEFT's LoRA and weight-decomposed LoRA; base weights frozen).
    With none the other fields do not apply: a grid over them collapses to one run (harness/grid.py)."""
    r: int = 8
    """Adapter rank."""
    alpha: float = 16.0
    """LoRA scaling numerator: the update is (alpha / r) * B @ A."""
    dropout: float = 0.0
    """Dropout on the adapter's input."""
    target_modules: tuple[str, ...] = ("all-linear",)
    """Module names (suffixes) that get adapters; all-linear: every linear layer but the LM head (QLoRA's
    choice), e.g. [q_proj, v_proj] for the original LoRA."""

    def __post_init__(self):
        _choice("model.adapter.method", self.method, ADAPTER_METHODS)
        _pos("model.adapter.r", self.r)
        _pos("model.adapter.alpha", self.alpha)
        if not (0.0 <= self.dropout < 1.0):
            raise ConfigError(f"must be in [0, 1), got {self.dropout}", where="model.adapter.dropout", fix="e.g. 0.05")
        if not self.target_modules or not all(isinstance(t, str) and t for t in self.target_modules):
            raise ConfigError(f"must be a non-empty list of module names, got {self.target_modules!r}",
                              where="model.adapter.target_modules", fix="e.g. [all-linear] or [q_proj, v_proj]")

    @property
    def enabled(self) -> bool:
        return self.method != "none"


@dataclass(frozen=True)
class ModelConfig:
    name_or_path: str = "results/world/test-seed0/model"
    """Local directory or hub name of the base model (HF format)."""
    tokenizer: Optional[str] = None
    """Tokenizer directory or hub name; default: the model's."""
    dtype: str = "float32"
    """Weights dtype when loading: float32 | bfloat16 | float16 | float64 (exactness tests) | auto."""
    attn_implementation: str = "sdpa"
    """Attention kernel: sdpa | eager | flex_attention (CPU too) | flash_attention_2 | varlen_attention (torch's
    varlen_attn). The last two are CUDA-only; varlen_attention trains only (evaluation loads sdpa). All isolate
    packed examples; flash_attention_2 only in one-row micro-batches, which the loop lays (harness/attention.py)."""
    trust_remote_code: bool = False
    """Allow custom model code from the hub. Off unless you trust the repository."""
    chat_template: Optional[str] = None
    """Chat template override: 'chatml', 'plain', a .jinja path or Jinja text; default: the tokenizer's."""
    revision: Optional[str] = None
    """Hub revision (commit) to pin; ignored for local paths."""
    adapter: AdapterConfig = field(default_factory=AdapterConfig)
    """Parameter-efficient fine-tuning (PEFT): which adapter, if any, is trained instead of the full weights."""
    init_from: Optional[str] = None
    """Start training from this checkpoint's weights instead of name_or_path's: a checkpoint directory, a run
    directory (its final checkpoint, once DONE) or run:<run id> of this experiment, which ``stages:`` sets for
    every stage after the first (harness/stages.py). name_or_path stays the base that KL and the forgetting
    probes compare with, and supplies the tokenizer."""

    def __post_init__(self):
        _choice("model.dtype", self.dtype, ("float32", "bfloat16", "float16", "float64", "auto"))
        _choice("model.attn_implementation", self.attn_implementation, ATTN_IMPLEMENTATIONS)


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
    tools: Optional[str] = None
    """JSON file with a tools list (function schemas) handed to the chat template for every row that has no
    'tools' of its own (harness/data/agentic.py)."""

    def __post_init__(self):
        _choice("data.*.format", self.format, ("auto", "messages", "alpaca", "prompt_completion"))
        if self.limit is not None:
            _pos("data.*.limit", self.limit)


@dataclass(frozen=True)
class ReplayConfig:
    path: str = ""
    """Pretraining-style text (.jsonl with 'text') mixed into every optimizer step (harness/training/replay.py),
    e.g. held-in documents of the base's pretraining corpus, while the forgetting probe reads held-out ones."""
    fraction: float = 0.01
    """Share of each step's tokens that is replay text (full loss on it), e.g. 0.01 for 1%."""

    def __post_init__(self):
        # an empty path is refused where the text is read (harness/training/replay.py): a section's defaults must
        # construct (the run hash compares a set section with them)
        if not (0.0 < self.fraction < 1.0):
            raise ConfigError(f"must be in (0, 1), got {self.fraction}", where="data.replay.fraction", fix="e.g. 0.01")


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
    replay: Optional[ReplayConfig] = None
    """Pretraining-style text mixed into every step at a token fraction (default: none)."""
    literal_content: bool = True
    """Message contents are literal text: a content that spells a special token of the tokenizer (say
    '<|im_end|>' or '<end_of_turn>') is tokenized as text, never as that control token (the template's own
    markers stay control tokens). false: the tokenizer's default, for data whose contents mean them."""

    def __post_init__(self):
        _pos("data.max_length", self.max_length)
        _choice("data.truncation", self.truncation, ("right", "left", "drop"))
        _choice("data.boundary", self.boundary, ("split", "merge"))


@dataclass(frozen=True)
class RegimeConfig:
    name: str = "prompt_masked"
    """Loss-masking regime: prompt_masked | full | prompt_only | prompt_weight | weighted (or a registered one)."""
    turns: str = "all"
    """Which assistant turns are supervised: all | last (prompt_masked, prompt_weight, weighted)."""
    prompt_weight: float = 0.0
    """Loss weight lambda on non-response tokens (prompt_weight regime): 0 = prompt_masked, 1 = full; also
    lambda_p of the weighted regime."""
    response_weight: float = 1.0
    """Loss weight lambda_r on response tokens (weighted regime: Weighted Instruction Tuning, Chatterjee et al.
    TACL 2025, with lambda_p = prompt_weight; in [0, 1], the paper's grid). Pair with train.normalization:
    nonzero for the paper's loss (divided by the number of tokens of non-zero weight)."""
    eot: bool = True
    """Supervise the assistant's end-of-turn token (prompt_masked, prompt_weight, weighted)."""
    template: bool = False
    """Also supervise template/control tokens (prompt_only)."""
    reasoning: str = "train"
    """train | mask the reasoning an assistant turn generates (reasoning_content or inline <think>...</think>,
    tags included). mask moves it to the context: weighted as the regime weights template text (0 under
    prompt_masked, lambda under prompt_weight, 1 under full). Every regime."""
    tool_calls: str = "train"
    """train | mask the tool calls assistant turns make, as the template renders them (wrapper text included);
    mask as for reasoning. Tool results are prompt (the tool segment) either way. Every regime."""
    empty_reasoning: str = "mask"
    """mask | train an empty <think></think> block an assistant turn generates (Qwen3-style templates render one
    in turns without reasoning); mask as for reasoning. Every regime."""
    multiturn: str = "render"
    """render: each conversation is one example, rendered once as the template renders it (Qwen3-style
    templates drop the reasoning of turns before the last user query, so those turns train without it) |
    per_turn: one example per assistant turn (the history up to it, as the template renders it, then that turn
    with its own reasoning), each supervising its last turn only (turns: last), so every trained turn is what
    inference would generate after that history (harness doctor's parity check)."""

    def __post_init__(self):
        # the name and which options a regime takes are checked against the registry (harness.masking) when
        # the grid is expanded (harness.grid); the schema knows no regime
        _choice("regime.turns", self.turns, ("all", "last"))
        for key, vals in (("reasoning", ("train", "mask")), ("tool_calls", ("train", "mask")),
                          ("empty_reasoning", ("train", "mask")), ("multiturn", ("render", "per_turn"))):
            _choice(f"regime.{key}", getattr(self, key), vals)
        for key in ("prompt_weight", "response_weight"):
            w = getattr(self, key)
            if not (0.0 <= w <= 1.0):  # NaN fails this too
                raise ConfigError(f"must be in [0, 1], got {w}", where=f"regime.{key}",
                                  fix="use a weight between 0 and 1")


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
    stages: Any = None
    """Sequential stages: [{name, set: {dotted.key: value}}, ...]; every grid point becomes a chain of runs,
    each stage starting from the previous stage's final checkpoint (harness/stages.py)."""
    claims: Any = None
    """What the study claims, declared before its runs: [{id, metric, compare|value|trend|optimum|range|contrast|fit,
    test, unit, family, ...}] (harness/claims.py; `harness config --explain` prints the vocabulary). Judged by
    `harness report` with calibrated intervals; never part of a run's identity."""

    def __post_init__(self):
        if not re.fullmatch(r"[A-Za-z0-9_.\-]+", self.name):
            raise ConfigError(f"invalid experiment name {self.name!r}", where="name",
                              fix="use letters, digits, '_', '-' and '.' only (it becomes a directory)")

    def to_dict(self) -> dict:
        return to_dict(self)


def to_dict(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj
