"""The ``eval`` section: lm-eval tasks and the probes run on every checkpoint."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from harness.config.checks import _choice, _pos
from harness.errors import ConfigError, did_you_mean


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
class RecoveryConfig:
    """The k-shot recovery probe (harness/evaluation/recovery.py; Zheng et al. 2025, spurious forgetting): a
    copy of the model fine-tuned on the first k conversations of a task, then that task measured again. A
    score that comes back after a few examples was lost alignment, not lost knowledge. Off by default (no
    data), so evaluations without it keep their eval hash."""

    data: Optional[str] = None
    """Conversations of the task (.jsonl messages, any format data.train accepts); the first k are the k-shot
    examples, tokenized like the other probes (data.max_length, eot, boundary, system_prompt). None: off."""
    k: tuple[int, ...] = (0, 4, 16, 64)
    """Numbers of examples, non-negative and strictly increasing; k = 0 is the model itself (no training)."""
    steps: int = 10
    """AdamW steps on the k examples, each on all k of them (full batch)."""
    lr: float = 1e-4
    """Learning rate (constant, no weight decay, no warmup). Calibrate it on a checkpoint that has the task: the
    probe must not lower that checkpoint's score (recovery/k*/ of the first stage's final checkpoint, a finding
    of the spurious study). Measured on the demo mini-world: 1e-3 x 10 steps took the QA-tuned model from 60% to
    17-40% at k = 4 (it measured damage, not recovery); 1e-4 x 10 steps keeps it at 61-63%."""
    tasks: tuple[str, ...] = ()
    """Names of eval.tasks entries measured again after each k (empty: all of eval.tasks)."""
    every_checkpoint: bool = False
    """Run the probe on every evaluated checkpoint (False: the base and a run's final checkpoint only, as
    eval.tasks' final_only)."""
    seed: int = 0
    """Seed of the k-shot fine-tuning (dropout is off: the fine-tuning is deterministic given the seed)."""

    @property
    def enabled(self) -> bool:
        return self.data is not None

    def __post_init__(self):
        where = "eval.recovery"
        if self.data is not None and not str(self.data).strip():
            raise ConfigError("is empty", where=f"{where}.data", fix="give a conversations file (or null: off)")
        if not self.k:
            raise ConfigError("is empty", where=f"{where}.k", fix="give at least one k, e.g. [0, 4, 16, 64]")
        for i, k in enumerate(self.k):
            _pos(f"{where}.k", k, allow_zero=True)
            if i and k <= self.k[i - 1]:
                raise ConfigError(f"must be strictly increasing, got {list(self.k)}", where=f"{where}.k",
                                  fix=f"write them in order, each once: {sorted(set(self.k))}")
        _pos(f"{where}.steps", self.steps)
        _pos(f"{where}.lr", self.lr)
        if len(set(self.tasks)) != len(self.tasks):
            raise ConfigError(f"names a task twice: {list(self.tasks)}", where=f"{where}.tasks",
                              fix="name each task once")
        defaults = RecoveryConfig.__dataclass_fields__
        unused = [n for n in ("k", "steps", "lr", "tasks", "every_checkpoint", "seed")
                  if getattr(self, n) != defaults[n].default]
        if unused and self.data is None:
            raise ConfigError("is set but eval.recovery.data is not: the probe it configures does not run",
                              where=f"{where}.{unused[0]}", fix="set eval.recovery.data (or drop the option)")


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
    """Base log-probs cached per position for forgetting/kl_base and forgetting/kl_sft: the top k plus the tail
    mass (exact when k >= vocabulary size, else a lower bound missing only the base's mass outside its top k)."""
    kl_sft: bool = False
    """Run forgetting/kl_sft: forward KL(base || tuned) on the fine-tuning prompts' continuations, mean per
    continuation token (Shenfeld et al. 2025, RL's Razor; harness/evaluation/kl_prompts.py). Off by default,
    so evaluations without it keep their eval hash; on, the hash covers the prompts' file (and its contents),
    so the base and every checkpoint are evaluated afresh under it."""
    kl_prompts: Optional[str] = None
    """Conversations whose assistant turns give forgetting/kl_sft's prompts (default: data.train, its
    format/split/name; data.train.limit is not applied, so a grid over the training-set size shares one set
    of prompts from the task's distribution)."""
    kl_prompt_limit: Optional[int] = None
    """Conversations (the first N) behind forgetting/kl_sft (default: probe_limit); every assistant turn of
    each is one prompt."""
    kl_continuations: str = "base"
    """What follows each prompt in forgetting/kl_sft: base (one continuation sampled from the base at
    temperature 1, at most max_new_tokens, once per experiment, seeded and cached: the paper's expectation over
    the base's outputs) | data (the dataset's responses, teacher-forced: no generation, but the prefixes are
    the data's, not the base's)."""
    threads: Optional[int] = None
    """torch CPU threads while evaluating; default: 1 for models under 20M parameters on CPU (their small
    ops gain nothing from more threads, and threads that share cores with other processes spin-wait: see
    benchmarks/NOTES.md), else unchanged."""
    recovery: RecoveryConfig = field(default_factory=RecoveryConfig)
    """The k-shot recovery probe (recovery/k{k}/...): off unless eval.recovery.data is set."""

    def __post_init__(self):
        _pos("eval.probe_limit", self.probe_limit)
        if self.text_limit is not None:
            _pos("eval.text_limit", self.text_limit)
        _choice("eval.format_rule", self.format_rule, ("answer_first", "contains"))
        _pos("eval.max_new_tokens", self.max_new_tokens)
        _pos("eval.kl_top_k", self.kl_top_k)
        if self.kl_prompt_limit is not None:
            _pos("eval.kl_prompt_limit", self.kl_prompt_limit)
        _choice("eval.kl_continuations", self.kl_continuations, ("base", "data"))
        unused = [k for k, is_default in (("kl_prompts", self.kl_prompts is None),
                                          ("kl_prompt_limit", self.kl_prompt_limit is None),
                                          ("kl_continuations", self.kl_continuations == "base")) if not is_default]
        if unused and not self.kl_sft:
            raise ConfigError("is set but eval.kl_sft is false: the probe it configures does not run",
                              where=f"eval.{unused[0]}", fix="set eval.kl_sft: true (or drop the option)")
        if self.threads is not None:
            _pos("eval.threads", self.threads)
        names = [t.name for t in self.tasks]
        if self.recovery.enabled and not names:
            raise ConfigError("is set but eval.tasks is empty: the probe measures eval.tasks again after each k",
                              where="eval.recovery.data", fix="add the task to eval.tasks (or unset eval.recovery)")
        for i, name in enumerate(self.recovery.tasks):
            if name not in names:
                # where names the item (tasks[i]): a bare 'tasks' would be re-rooted at eval.tasks by the loader
                raise ConfigError(f"task {name!r} is not in eval.tasks (valid names: {names})"
                                  + did_you_mean(name, names), where=f"eval.recovery.tasks[{i}]",
                                  fix=f"name eval.tasks entries: {names}" if names else "add it to eval.tasks")
