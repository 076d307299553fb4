"""The ``eval`` section: lm-eval tasks and the probes run on every checkpoint."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from harness.config.checks import _choice, _pos


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
