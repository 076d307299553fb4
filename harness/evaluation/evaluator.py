"""The evaluator: everything measured on one model under one experiment config (lm-eval tasks, fixed-mask NLL,
forgetting probes, KL on the fine-tuning prompts, format probe), with what is the same for every checkpoint
prepared once."""

from __future__ import annotations

import contextlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch

from harness.config import ExperimentConfig, TaskConfig, to_dict
from harness.errors import ConfigError, DataError
from harness.evaluation import generate as G
from harness.evaluation import kl_prompts as K
from harness.evaluation import probes as P
from harness.evaluation import recovery as R
from harness.evaluation.groups import add_groups, item_group
from harness.evaluation.identity import eval_hash, kl_prompt_source, probe_paths
from harness.evaluation.lm_eval import finite_or_none, run_lm_eval, task_manager_for
from harness.fsio import file_lock
from harness.layout import CACHE_LOCK, ExperimentDir, base_cache
from harness.modeling import default_device, load_model, tokenizer_for


@dataclass
class EvalResult:
    metrics: dict
    lm_eval: dict
    samples: list
    token_rows: list
    probes: dict  # files and example counts behind each probe


class Evaluator:
    """Evaluates models under one experiment config. Holds what is the same for every checkpoint: the
    tokenizer, the tokenized probes, the lm-eval task manager and the base model's cached log-probs (on the
    pretraining-like text and on the fine-tuning prompts' continuations).

    `tasks`: the lm-eval tasks it runs (default: eval.tasks); `recovery`: whether it runs the k-shot recovery
    probe when eval.recovery is on (evaluate_run passes eval.recovery.every_checkpoint for a run's
    intermediate checkpoints, as it passes the tasks without final_only)."""

    def __init__(self, cfg: ExperimentConfig, base_dir: str | Path | None = None,
                 tasks: Sequence[TaskConfig] | None = None, device: torch.device | None = None,
                 recovery: bool = True):
        self.cfg = cfg
        self.tasks = list(cfg.eval.tasks if tasks is None else tasks)
        self.base_dir = Path(base_dir) if base_dir is not None else ExperimentDir.of(cfg).base()
        self.device = device or default_device()
        self.hash = eval_hash(cfg)
        self.paths = probe_paths(cfg)
        self.tok = tokenizer_for(cfg)
        if self.tok.pad_token_id is None:
            raise ConfigError("tokenizer has no pad token", where="model.tokenizer", fix="set one")
        e, d = cfg.eval, cfg.data
        self.tm = task_manager_for(cfg, self.tasks) if self.tasks else None
        self.conversations = None
        if self.paths["nll"]:
            src = d.eval if (d.eval and not e.nll_data) else None  # data.eval: its format/split/limit apply
            limits = [x for x in (e.probe_limit, src.limit if src else None) if x]
            self.conversations = P.tokenize_eval_conversations(
                self.paths["nll"], self.tok, max_length=d.max_length, limit=min(limits) if limits else None,
                fmt=src.format if src else "auto", split=src.split if src else "train",
                name=src.name if src else None, eot=d.eot, boundary=d.boundary, system_prompt=d.system_prompt,
                literal_content=d.literal_content, tools=src.tools if src else None)
        self.groups: dict[str, list] = {}  # probe task -> each item's group (analysis/items.py resamples groups)
        self.text_ids = None
        if self.paths["pretrain"]:
            rows = P.read_jsonl(self.paths["pretrain"], "text", e.text_limit or e.probe_limit)
            texts = [str(r["text"]) for r in rows]
            self.text_ids = P.text_ids(self.tok, texts, d.max_length)
            if len(self.text_ids) == len(rows):  # (texts too short to probe are skipped: then no groups)
                self.groups["probe/pretrain"] = [item_group(r) for r in rows]
            if not self.text_ids:
                raise DataError("probe corpus has no text of two tokens or more", where=self.paths["pretrain"],
                                fix="point eval.pretrain_text at real held-out text")
        self.raw = None
        if self.paths["raw"]:
            self.raw = P.read_jsonl(self.paths["raw"], "prompt", e.probe_limit)
            for i, r in enumerate(self.raw):
                if not str(r.get("answer", "")).strip():
                    raise DataError(f"raw question {i + 1} has no 'answer'", where=self.paths["raw"],
                                    fix="each row needs {prompt, answer} (answer-first scoring)")
            self.groups["probe/format"] = [item_group(r) for r in self.raw]
        self.stop = G.stop_strings(self.tok, d.eot)
        self.kl_source = kl_prompt_source(cfg)
        self.kl_examples = None
        if e.kl_sft:
            if self.kl_source is None:
                raise ConfigError("eval.kl_sft needs prompts: there is no training data", where="eval.kl_sft",
                                  fix="set data.train.path or eval.kl_prompts (or eval.kl_sft: false)")
            src = self.kl_source
            self.kl_examples = P.tokenize_eval_conversations(
                src["path"], self.tok, max_length=d.max_length, limit=e.kl_prompt_limit or e.probe_limit,
                fmt=src["format"], split=src["split"], name=src["name"], eot=d.eot, boundary=d.boundary,
                system_prompt=d.system_prompt, literal_content=d.literal_content)
        self.recovery_examples = None
        rc = e.recovery
        if rc.enabled and recovery:  # tokenized once: the first max(k) conversations, like the other probes
            self.recovery_examples = P.tokenize_eval_conversations(
                rc.data, self.tok, max_length=d.max_length, limit=max(max(rc.k), 1), eot=d.eot,
                boundary=d.boundary, system_prompt=d.system_prompt, literal_content=d.literal_content)
            R.check_examples(self.recovery_examples, rc, rc.data)  # before any checkpoint is evaluated
        self._base_lp: P.BaseLogprobs | None = None
        self._kl_cache: K.KLCache | None = None

    # ---- base log-probs (KL and pretrain-NLL delta), cached on disk once per experiment

    @property
    def base_cache_path(self) -> Path:
        return base_cache(self.base_dir, "logprobs", self.hash)

    def _on_disk(self, path: Path, cls, compute):
        """`cls.load(path)`, or `compute(base model)` saved to `path`: once per experiment, under a lock shared by
        every process that evaluates against this base (a half-written or unreadable file is computed again)."""
        with file_lock(self.base_dir / CACHE_LOCK):
            if path.exists():
                try:
                    return cls.load(path)
                except (OSError, ValueError, KeyError):
                    pass
            obj = compute()
            obj.save(path)
            return obj

    def _base_model(self, base_model):
        return base_model if base_model is not None else load_model(
            self.cfg, self.cfg.model.name_or_path, self.device, training=False)

    def base_logprobs(self, base_model=None) -> P.BaseLogprobs | None:
        if self.text_ids is None:
            return None
        if self._base_lp is None:
            self._base_lp = self._on_disk(self.base_cache_path, P.BaseLogprobs, lambda: P.base_logprobs(
                self._base_model(base_model), self.tok, self.text_ids, self.cfg.eval.kl_top_k))
        return self._base_lp

    @property
    def kl_cache_path(self) -> Path:
        return base_cache(self.base_dir, "kl_sft", self.hash)

    def kl_cache(self, base_model=None) -> K.KLCache | None:
        """The base's continuations of the fine-tuning prompts and its top-k log-probs on them: computed (the
        continuations sampled) once per experiment beside the base evaluation, then read back."""
        if self.kl_examples is None:
            return None
        if self._kl_cache is None:
            def compute() -> K.KLCache:
                cfg, model = self.cfg, self._base_model(base_model)
                vocab = self.tok.get_vocab()
                stop_ids = [vocab[s] for s in self.stop if s in vocab]
                kp = K.build_kl_prompts(self.kl_examples, cfg.eval.kl_continuations, cfg.data.max_length,
                                        base=model, max_new_tokens=cfg.eval.max_new_tokens, stop_ids=stop_ids)
                return K.base_kl_cache(model, self.tok, kp, cfg.eval.kl_top_k)

            self._kl_cache = self._on_disk(self.kl_cache_path, K.KLCache, compute)
        return self._kl_cache

    # ---- everything for one model

    def evaluate(self, model, *, is_base: bool = False) -> EvalResult:
        with _eval_threads(model, self.cfg.eval.threads):
            return self._evaluate(model, is_base)

    def _evaluate(self, model, is_base: bool) -> EvalResult:
        cfg, e = self.cfg, self.cfg.eval
        model.eval()
        seconds: dict[str, float] = {}
        t = time.perf_counter()
        metrics, results, samples = run_lm_eval(model, self.tok, cfg, self.tasks, self.tm) if self.tasks \
            else ({}, {}, [])
        seconds["lm_eval"] = time.perf_counter() - t
        task_metrics = dict(metrics)  # the tasks' own numbers, before the probes add theirs
        token_rows: list = []
        probes: dict[str, Any] = {"eval_hash": self.hash}
        if self.conversations is not None:
            t = time.perf_counter()
            m, token_rows, items = P.fixed_mask_nll(model, self.tok, self.conversations, e.token_examples)
            metrics.update(m)
            samples += items
            probes["nll"] = {"path": self.paths["nll"], "examples": len(self.conversations)}
            seconds["nll"] = time.perf_counter() - t
        if self.text_ids is not None:
            t = time.perf_counter()
            base = self.base_logprobs(base_model=model if is_base else None)
            m, items = P.pretrain_probe(model, self.tok, self.text_ids, base)
            samples += items
            if is_base:  # the base against itself: zero by definition (not a noisy ~1e-9)
                m["forgetting/pretrain_nll_delta"], m["forgetting/kl_base"] = 0.0, 0.0
            metrics.update(m)
            probes["pretrain"] = {"path": self.paths["pretrain"], "texts": len(self.text_ids),
                                  "kl_top_k": base.k if base else None}
            seconds["forgetting"] = time.perf_counter() - t
        if self.kl_examples is not None:
            t = time.perf_counter()
            cache = self.kl_cache(base_model=model if is_base else None)
            m, items = K.kl_sft_probe(model, self.tok, cache)
            if is_base:  # the base against its own cache: zero by definition
                m["forgetting/kl_sft"] = 0.0
            metrics.update(m)
            samples += items
            probes["kl_sft"] = {"path": self.kl_source["path"], "conversations": len(self.kl_examples),
                                "sequences": len(cache.prompts.seqs), "tokens": cache.tokens,
                                "continuations": e.kl_continuations, "kl_top_k": cache.k,
                                "base_nll": round(cache.base_nll, 6)}
            seconds["kl_sft"] = time.perf_counter() - t
        if self.raw is not None:
            t = time.perf_counter()
            rates, fsamples = G.format_probe(model, self.tok, self.raw, e.max_new_tokens, self.stop,
                                             rule=e.format_rule)
            metrics.update(rates)
            samples += fsamples
            probes["format"] = {"path": self.paths["raw"], "questions": len(self.raw),
                                "max_new_tokens": e.max_new_tokens, "stop": self.stop, "rule": e.format_rule}
            seconds["format"] = time.perf_counter() - t
        if self.recovery_examples is not None:
            t = time.perf_counter()
            rc = e.recovery
            # the evaluator's own tasks (so final_only holds here too), those eval.recovery.tasks names
            rtasks = [x for x in self.tasks if not rc.tasks or x.name in rc.tasks]

            def measure(mdl) -> tuple[dict, list]:
                if not rtasks:
                    return {}, []
                got = run_lm_eval(mdl, self.tok, cfg, rtasks, self.tm)
                return got[0], got[2]

            reuse = len(rtasks) == len(self.tasks)  # k = 0: the tasks measured just above, when they are all
            m, info = R.recovery_probe(model, self.recovery_examples, rc, measure, pad=self.tok.pad_token_id,
                                       where=rc.data, k0=task_metrics if reuse else None)
            metrics.update(m)
            by_k = info.get("samples", {})
            if reuse and 0 in rc.k:
                by_k[0] = [x for x in samples if x.get("task") in {t.name for t in rtasks}]
            samples += R.item_rows(by_k)  # per item: the findings' bootstrap resamples the probe's questions too
            probes["recovery"] = {"path": rc.data, "k": list(rc.k), "steps": rc.steps, "lr": rc.lr,
                                  "tasks": [x.name for x in rtasks], "examples": len(self.recovery_examples),
                                  "supervised_tokens": info["supervised_tokens"]}
            seconds["recovery"] = time.perf_counter() - t
        probes["seconds"] = {k: round(v, 3) for k, v in seconds.items()}
        add_groups(samples, self.groups)
        return EvalResult({k: finite_or_none(v) for k, v in metrics.items()}, results, samples, token_rows,
                          probes)


SMALL_MODEL_PARAMS = 20_000_000


@contextlib.contextmanager
def _eval_threads(model, threads: int | None) -> Iterator[None]:
    """eval.threads for the duration of one evaluation (see its doc for the small-model default)."""
    if threads is None:
        on_cpu = next(model.parameters()).device.type == "cpu"
        small = sum(p.numel() for p in model.parameters()) < SMALL_MODEL_PARAMS
        threads = 1 if on_cpu and small else None
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


_EVALUATORS: dict[tuple, Evaluator] = {}


def evaluator_for(cfg: ExperimentConfig, base_dir: str | Path | None = None,
                  tasks: Sequence[TaskConfig] | None = None, recovery: bool = True) -> Evaluator:
    """One Evaluator per (eval hash, base dir, tasks, recovery) in this process (checkpoints of a run share it)."""
    key = (eval_hash(cfg), str(Path(base_dir).resolve()) if base_dir else None,
           json.dumps(to_dict(list(tasks)) if tasks is not None else None), recovery)
    if key not in _EVALUATORS:
        if len(_EVALUATORS) > 4:
            _EVALUATORS.clear()
        _EVALUATORS[key] = Evaluator(cfg, base_dir, tasks, recovery=recovery)
    return _EVALUATORS[key]

