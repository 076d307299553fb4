"""The ``eval`` section: lm-eval tasks and the probes run on every checkpoint."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from harness.config.checks import _choice, _pos
from harness.errors import ConfigError


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
