"""The ``train`` section: optimisation, layout, precision, checkpoints, trackers."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from harness.config.checks import LAYOUTS, PARALLEL, TRACKERS, _choice, _pos
from harness.errors import ConfigError


@dataclass(frozen=True)
class FreezeConfig:
    embeddings: bool = False
    """Freeze the input embedding table (and, where the embeddings are tied, the LM head that shares it)."""
    bottom_layers: int = 0
    """Freeze the first N decoder layers (Zheng et al. 2025: freezing the bottom layers reduces spurious
    forgetting). Frozen parameters get no gradient and no optimizer state: they stay bit-identical."""

    def __post_init__(self):
        _pos("train.freeze.bottom_layers", self.bottom_layers, allow_zero=True)
        if int(self.bottom_layers) != self.bottom_layers:
            raise ConfigError(f"must be a whole number, got {self.bottom_layers}", where="train.freeze.bottom_layers",
                              fix="e.g. 2")


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
    """Loss normalisation over the step (every micro-batch and rank): token (sum of weight x NLL / sum of the
    weights) | sequence (mean per example, then over examples) | nonzero (sum of weight x NLL / number of tokens
    of non-zero weight: Weighted Instruction Tuning's normalisation, Chatterjee et al. TACL 2025). With 0/1
    weights token and nonzero are the same loss."""
    loss: str = "nll"
    """Per-token training loss: nll (cross-entropy) | dft (Dynamic Fine-Tuning, Wu et al. 2025, "On the
    Generalization of SFT: A Reinforcement Learning Perspective with Reward Rectification": each token's NLL
    scaled by its stop-gradient probability, sg(p(y_t)) * -log p(y_t)). Weights and normalisation apply on top;
    the fixed-mask eval metrics stay plain NLL."""
    freeze: FreezeConfig = field(default_factory=FreezeConfig)
    """Parameters that are not trained (harness/training/freeze.py)."""
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
    """Experiment trackers for step and eval metrics, any subset of: tensorboard | wandb | mlflow | trackio (each
    an optional extra; files in the run directory, offline modes work without network). Not part of the run
    hash: tracking never changes a run (harness/tracking.py)."""
    parallel: str = "ddp"
    """How several processes (torchrun or srun ranks) share a run: ddp (every rank holds the whole model; rows
    split across ranks, gradients summed) | fsdp (FSDP2 fully_shard per decoder layer: parameters, gradients and
    optimizer state sharded; sharded checkpoints through torch.distributed.checkpoint; harness/training/fsdp.py).
    One process trains the same either way."""

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
        _choice("train.normalization", self.normalization, ("token", "sequence", "nonzero"))
        _choice("train.loss", self.loss, ("nll", "dft"))
        _choice("train.optimizer", self.optimizer, ("adamw",))
        _choice("train.precision", self.precision, ("auto", "bf16", "fp32"))
        _choice("train.layout", self.layout, LAYOUTS)
        _choice("train.parallel", self.parallel, PARALLEL)
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
