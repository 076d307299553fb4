"""The experiment schema: nested frozen dataclasses, a docstring per field (``harness config --explain`` prints
them), values checked in ``__post_init__``. Loading YAML into these is harness/config/load.py; grids and run ids
are harness/grid.py.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from typing import Any, Optional

from harness.errors import ConfigError, did_you_mean

LAYOUTS = ("packed", "padded", "bucketed")
# keys that existed once and were replaced: loading a file that still has one says what to write instead
RENAMED = {"train.packing": "train.layout: packed | padded | bucketed (packing: false is layout: padded)",
           "train.keep_last": "train.keep: all | last | best (keep_last: 1 is keep: last)"}

def _pos(where: str, value: float, allow_zero: bool = False) -> None:
    bad = value != value or math.isinf(value) or value < 0 or (value == 0 and not allow_zero)
    if bad:
        raise ConfigError(f"must be {'>= 0' if allow_zero else '> 0'}, got {value}", where=where,
                          fix="use a positive finite number")


def _choice(where: str, value: Any, choices: tuple) -> None:
    if value not in choices:
        raise ConfigError(f"{value!r} is not one of {list(choices)}" + did_you_mean(str(value), map(str, choices)),
                          where=where, fix=f"use one of {list(choices)}")


#: the experiment trackers train.report_to accepts (harness/tracking.py's registry)
TRACKERS = ("tensorboard",)

#: the attention kernels the config accepts (tests/test_train.py checks packed isolation for each)
ATTN_IMPLEMENTATIONS = ("sdpa", "eager", "flash_attention_2", "flex_attention", "varlen_attention")


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
        # the name and which options a regime takes are checked against the registry (harness.masking) when
        # the grid is expanded (harness.grid); the schema knows no regime
        _choice("regime.turns", self.turns, ("all", "last"))
        if not (0.0 <= self.prompt_weight <= 1.0):
            raise ConfigError(f"must be in [0, 1], got {self.prompt_weight}", where="regime.prompt_weight",
                              fix="use a weight between 0 and 1")


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
    layout: str = "packed"
    """How each optimizer step's examples are laid into micro-batches (same examples, tokens and loss in every
    layout): packed (rows of several examples with per-example position ids; attention isolated by the
    block-diagonal mask HF derives from them) | padded (one example per right-padded row, in data order) |
    bucketed (sorted by length, one example per right-padded row, micro-batches of similar length, plain causal
    attention with no mask: less attention work). See harness/training/packing.py."""
    normalization: str = "token"
    """Loss normalisation over the step: token | sequence."""
    dropout: Optional[float] = None
    """Override the model's dropout probabilities (LIMA uses residual dropout)."""
    precision: str = "auto"
    """auto (bf16 autocast on CUDA, fp32 on CPU) | bf16 (autocast everywhere) | fp32."""
    gradient_checkpointing: bool = False
    """Trade compute for memory."""
    sparse_embedding_grad: Optional[bool] = None
    """Tied input/output embeddings: take the input side's gradient as sparse rows (the batch's tokens only),
    added into the LM head's dense gradient, instead of a dense [vocab, hidden] tensor zero-filled and added
    every step. None: on when the embeddings are tied, the vocabulary has >= 32768 tokens and the body is not
    compiled (at 2k tokens the dense path costs nothing; see benchmarks/NOTES.md for Gemma's step)."""
    compile: bool = False
    """torch.compile the model body. Packed rows are then always max_length wide (one shape, one compilation;
    without it every step's width would recompile); compilation is paid once at the start, so it pays off on long runs."""
    save_every_epoch: bool = True
    """Checkpoint at the end of every epoch."""
    save_every_steps: Optional[int] = None
    """Also checkpoint every N optimizer steps."""
    keep: str = "all"
    """Which checkpoints keep their weights once evaluated: all | last (the newest) | best (the newest and the
    best by keep_metric) | none (results only: a finished run keeps no weights, so it cannot be re-evaluated
    under a new eval config; for grids of real models, where every checkpoint is GBs). A checkpoint that still
    needs its evaluation is never deleted, nor the newest of an unfinished run; optimizer state is kept only where
    a resume needs it (the newest checkpoint of an unfinished run), whatever this says."""
    keep_metric: str = "nll/response"
    """The eval metric that `keep: best` ranks checkpoints by (a key of eval/step-N.json's metrics)."""
    keep_mode: str = "min"
    """min | max: whether a lower or a higher keep_metric is better."""
    log_every: int = 1
    """Log metrics every N optimizer steps."""
    threads: Optional[int] = None
    """torch CPU threads per run (default: all cores / parallel runs)."""
    report_to: tuple[str, ...] = ()
    """Experiment trackers for step and eval metrics, any of: tensorboard (files in the run directory; extra
    `track`). Not part of the run hash: tracking never changes a run (harness/tracking.py)."""

    def __post_init__(self):
        _pos("train.lr", self.lr)
        for name in self.report_to:
            _choice("train.report_to", name, TRACKERS)
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
        _choice("train.layout", self.layout, LAYOUTS)
        if self.compile and self.layout == "bucketed":
            raise ConfigError("train.compile with train.layout: bucketed would recompile for every micro-batch width",
                              where="train.compile", fix="use layout: packed with compile (fixed-width rows)")
        if self.budget == "supervised_tokens" and not self.supervised_tokens:
            raise ConfigError("budget is supervised_tokens but train.supervised_tokens is not set",
                              where="train.supervised_tokens", fix="set the number of supervised tokens per run")
        _choice("train.keep", self.keep, ("all", "last", "best", "none"))
        _choice("train.keep_mode", self.keep_mode, ("min", "max"))
        for key in ("micro_batch_tokens", "max_steps", "save_every_steps", "threads",
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
    final_only: bool = False
    """Run this task on the base and a run's final checkpoint only (a whole held-out set is worth its time
    where the findings are judged, not at every intermediate checkpoint)."""


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
    text_limit: Optional[int] = None
    """Texts in the forgetting probe (default: probe_limit). On a large vocabulary every text token costs a
    full-vocabulary forward, while a raw question costs a few generated tokens: the two limits differ."""
    format_rule: str = "answer_first"
    """When the format probe counts a continuation as an answer: answer_first (its first line starts with the
    reference answer: strict, for the mini-world's one-word answers) | contains (the normalised answer appears
    in the first line: for real models, which answer in sentences)."""
    token_examples: int = 8
    """Conversations whose per-token losses are saved (tokens.parquet)."""
    max_new_tokens: int = 32
    """Bound on generated tokens in probes."""
    kl_top_k: int = 64
    """Base log-probs cached per position for forgetting/kl_base: the top k plus the tail mass (exact when
    k >= vocabulary size, else a lower bound missing only the base's mass outside its top k)."""
    threads: Optional[int] = None
    """torch CPU threads while evaluating; default: 1 for models under 20M parameters on CPU (their small
    ops gain nothing from more threads, and threads that share cores with other processes spin-wait: see
    benchmarks/NOTES.md), else unchanged."""

    def __post_init__(self):
        _pos("eval.probe_limit", self.probe_limit)
        if self.text_limit is not None:
            _pos("eval.text_limit", self.text_limit)
        _choice("eval.format_rule", self.format_rule, ("answer_first", "contains"))
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



def to_dict(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj
