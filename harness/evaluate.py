"""Evaluate checkpoints: lm-eval benchmarks (in-memory HFLM), fixed-mask NLL, forgetting and format probes.

Every checkpoint of every run, and the base model once per experiment (``base/eval/step-000000.json``, the
step-0 row of every run), is evaluated the same way: the tokenizer, probe data, masks and tasks come from the
experiment config, never from the regime or the checkpoint. Results follow docs/results-schema.md; the JSON
is written last and atomically (samples and per-token parquet first), so a half-written file is never
mistaken for a result (it is redone).

API: :func:`evaluate_checkpoint`, :func:`evaluate_run`, :func:`evaluate_base`, :func:`check_tasks`,
:class:`Evaluator` (shares the tokenizer, tokenized probes, task manager and the base's cached log-probs
across the checkpoints of a run). CLI: ``harness eval RUN_DIR|CHECKPOINT|EXP.yaml`` (:func:`add_parser`).

lm-eval tasks are resolved without indexing lm-eval's ~15k bundled YAMLs on every call (15 s on 2 cores):
the names are indexed once per lm-eval version into ``~/.cache/harness`` (``HARNESS_CACHE``), and a task
manager is built over only the task families the config uses plus ``eval.include_path``.
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import fcntl
import gzip
import hashlib
import json
import logging
import math
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from harness import probes as P
from harness.config import ExperimentConfig, TaskConfig, build, load_experiment, to_dict
from harness.errors import ConfigError, DataError, HarnessError
from harness.evalid import (  # noqa: F401  (re-exported: the evaluation API)
    EVAL_VERSION,
    base_dir_for,
    eval_hash,
    probe_paths,
)
from harness.runs import atomic_write_text, completed_checkpoints, eval_json

log = logging.getLogger("harness.evaluate")
try:  # transformers' per-shard "Loading weights" bars, once per checkpoint, drown the eval log
    from transformers.utils import logging as _hf_logging

    _hf_logging.disable_progress_bar()
except ImportError:  # pragma: no cover
    pass
SCHEMA = 1
BOOTSTRAP_ITERS = 100  # lm-eval stderr: closed form for mean metrics; bootstrap (this many) for the rest
_TM_CACHE: dict[tuple, Any] = {}
_INDEX_CACHE: dict[str, dict] = {}


class EvaluationError(HarnessError):
    """Evaluation cannot run (incomplete checkpoint, unavailable benchmark data, ...)."""


# ------------------------------------------------------------------------------------------ lm-eval tasks


def _cache_dir() -> Path:
    root = os.environ.get("HARNESS_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "harness")
    return Path(root)


def _lm_eval_tasks_dir() -> Path:
    """lm_eval/tasks without importing lm_eval (whose import pulls in torch, transformers and datasets)."""
    import importlib.util

    spec = importlib.util.find_spec("lm_eval")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("lm-eval is not installed", where="eval.tasks", fix="pip install 'lm-eval>=0.4.5'")
    return Path(list(spec.submodule_search_locations)[0]) / "tasks"


def _lm_eval_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("lm_eval")
    except PackageNotFoundError:  # pragma: no cover
        return "unknown"


def _index_entries(index: dict, root: Path | None) -> dict:
    """{name: {kind, family, children}} from a TaskManager's index (family = top directory under root)."""
    out = {}
    for name, e in index.items():
        kind = e.kind.name.lower()
        fam = None
        if e.yaml_path is not None and root is not None:
            try:
                rel = Path(e.yaml_path).resolve().relative_to(root)
                fam = rel.parts[0] if len(rel.parts) > 1 else None
            except ValueError:
                fam = None
        children: list[str] = []
        if kind == "group" and isinstance(e.cfg, dict):
            subs = e.cfg.get("task") or []
            for s in subs if isinstance(subs, list) else [subs]:
                if isinstance(s, str):
                    children.append(s)
                elif isinstance(s, dict) and isinstance(s.get("task"), str):
                    children.append(s["task"])
        elif kind == "tag":
            children = sorted(e.tags)
        out[name] = {"kind": kind, "family": fam, "children": children}
    return out


def default_task_index() -> dict:
    """Every task, group and tag bundled with the installed lm-eval: {name: {kind, family, children}}.
    Built by lm-eval's own TaskManager once per lm-eval version and cached on disk."""
    root = _lm_eval_tasks_dir().resolve()
    version = _lm_eval_version()
    key = hashlib.sha256(f"{version}|{root}".encode()).hexdigest()[:12]
    if key in _INDEX_CACHE:
        return _INDEX_CACHE[key]
    path = _cache_dir() / f"lm_eval_tasks-{version}-{key}.json"
    try:
        data = json.loads(path.read_text())
        if data.get("root") == str(root):
            _INDEX_CACHE[key] = data["tasks"]
            return data["tasks"]
    except (OSError, ValueError, KeyError):
        pass
    from lm_eval.tasks import TaskManager

    t0 = time.perf_counter()
    tm = TaskManager(include_defaults=True)
    entries = _index_entries(tm.task_index, root)
    _TM_CACHE[((), True)] = tm
    log.info("indexed %d lm-eval tasks in %.1f s (cached in %s)", len(entries), time.perf_counter() - t0, path)
    try:
        atomic_write_text(path, json.dumps({"root": str(root), "version": version, "tasks": entries}))
    except OSError:  # a read-only home: index again next time
        pass
    _INDEX_CACHE[key] = entries
    return entries


def _local_index(include_path: Sequence[str]) -> tuple[dict, Any]:
    """(index, TaskManager) over the existing include_path directories only (fast: no bundled tasks)."""
    dirs = tuple(str(Path(p).resolve()) for p in include_path if Path(p).is_dir())
    if not dirs:
        return {}, None
    tm = _task_manager(dirs, defaults=False)
    return tm.task_index, tm


def _task_manager(paths: tuple[str, ...], defaults: bool):
    from lm_eval.tasks import TaskManager

    key = (paths, defaults)
    if key not in _TM_CACHE:
        _TM_CACHE[key] = TaskManager(include_path=list(paths) or None, include_defaults=defaults)
    return _TM_CACHE[key]


def _data_files(cfg: dict | None) -> list[str]:
    """Local data files a task YAML points at (dataset_kwargs.data_files: str, list or {split: str|list})."""
    if not isinstance(cfg, dict):
        return []
    files = (cfg.get("dataset_kwargs") or {}).get("data_files")
    if files is None:
        return []
    vals = list(files.values()) if isinstance(files, dict) else [files]
    out: list[str] = []
    for v in vals:
        out += [x for x in (v if isinstance(v, list) else [v]) if isinstance(x, str)]
    return [f for f in out if "://" not in f and not any(c in f for c in "*?[")]


@dataclass
class TaskCheck:
    """Result of resolving a config's task names: problems (errors), and names that could not be checked
    because an include_path directory does not exist yet (e.g. the mini-world is not built)."""

    problems: list[str] = field(default_factory=list)
    unverified: list[str] = field(default_factory=list)


def resolve_task_names(cfg: ExperimentConfig, tasks: Sequence[TaskConfig] | None = None) -> TaskCheck:
    """Check every task name against lm-eval's bundled tasks and eval.include_path (offline, no download),
    and the data files of local tasks."""
    tasks = list(cfg.eval.tasks if tasks is None else tasks)
    out = TaskCheck()
    missing_dirs = [p for p in cfg.eval.include_path if not Path(p).is_dir()]
    for i, p in enumerate(cfg.eval.include_path):
        if p in missing_dirs:
            out.unverified.append(f"eval.include_path[{i}]: directory not found: {p} (build the mini-world "
                                  "with `harness world build`, or fix the path)")
    if not tasks:
        return out
    local, _ = _local_index(cfg.eval.include_path)
    defaults = default_task_index() if any(t.name not in local for t in tasks) else {}
    for i, t in enumerate(tasks):
        where = f"eval.tasks[{i}] ({t.name})"
        if t.name in local:
            for f in _data_files(local[t.name].cfg):
                if not Path(f).exists():
                    out.problems.append(f"{where}: data file of lm-eval task '{t.name}' not found: {f} "
                                        f"(task YAML {local[t.name].yaml_path})")
        elif t.name in defaults:
            continue
        elif missing_dirs:
            out.unverified.append(f"{where}: not a bundled lm-eval task; may come from the missing "
                                  f"include_path {missing_dirs}")
        else:
            close = difflib.get_close_matches(t.name, list(defaults) + list(local), n=5, cutoff=0.6)
            out.problems.append(f"{where}: unknown lm-eval task '{t.name}'"
                                + (f"; close matches: {', '.join(close)}" if close else ""))
    return out


def check_tasks(cfg: ExperimentConfig) -> list[str]:
    """Problems with the config's lm-eval tasks, empty when every name resolves and every local data file
    exists. A missing include_path directory is a problem here (use :func:`resolve_task_names` to tell
    the two apart). For tests and `harness doctor`."""
    chk = resolve_task_names(cfg)
    return chk.problems + chk.unverified


def _families(names: Sequence[str], index: dict) -> set[str] | None:
    """Directories under lm_eval/tasks holding these tasks (groups and tags followed); None: unknown."""
    fams: set[str] = set()
    seen: set[str] = set()
    stack = list(names)
    while stack:
        n = stack.pop()
        if n in seen:
            continue
        seen.add(n)
        e = index.get(n)
        if e is None:
            return None
        if e["family"]:
            fams.add(e["family"])
        elif e["kind"] != "tag":
            return None
        stack += e["children"]
    return fams


def task_manager_for(cfg: ExperimentConfig, tasks: Sequence[TaskConfig]):
    """A TaskManager that knows `tasks`: raises ConfigError/DataError on an unknown name or missing file."""
    chk = resolve_task_names(cfg, tasks)
    if chk.problems or chk.unverified:
        msgs = chk.problems + chk.unverified
        err = DataError if all("data file" in m for m in msgs) else ConfigError
        raise err("; ".join(msgs), where="eval.tasks",
                  fix="use a task name from `lm_eval ls tasks` or a YAML in eval.include_path")
    local, _ = _local_index(cfg.eval.include_path)
    std = [t.name for t in tasks if t.name not in local]
    include = [str(Path(p).resolve()) for p in cfg.eval.include_path]
    if not std:
        return _task_manager(tuple(include), defaults=False)
    fams = _families(std, default_task_index())
    if fams is None:
        return _task_manager(tuple(include), defaults=True)
    root = _lm_eval_tasks_dir().resolve()
    # bundled families first, the user's include_path last (later paths override earlier ones)
    return _task_manager(tuple(str(root / f) for f in sorted(fams)) + tuple(include), defaults=False)


def _option_groups(tasks: Sequence[TaskConfig]) -> dict[tuple, list[str]]:
    groups: dict[tuple, list[str]] = {}
    for t in tasks:
        groups.setdefault((t.num_fewshot, t.limit, t.apply_chat_template, t.batch_size), []).append(t.name)
    return groups


def flatten_lm_eval(results: dict) -> dict:
    """{'task/metric': value} from lm-eval's results dict. The filter suffix is dropped when it is 'none'
    or the metric's only filter in that task; otherwise it is kept as 'metric_filter'. Standard errors
    become 'task/metric_stderr'; non-numeric values ('N/A') are left out."""
    flat: dict[str, float | None] = {}
    for task, vals in (results.get("results") or {}).items():
        keys = [k for k in vals if "," in k and not k.split(",")[0].endswith("_stderr")]
        bases = [k.split(",")[0] for k in keys]
        for k in keys:
            metric, filt = k.split(",", 1)
            name = metric if (filt == "none" or bases.count(metric) == 1) else f"{metric}_{filt}"
            v = vals[k]
            if isinstance(v, (int, float, np.number)) and not isinstance(v, bool):
                flat[f"{task}/{name}"] = P.finite_or_none(float(v))
            se = vals.get(f"{metric}_stderr,{filt}")
            if isinstance(se, (int, float, np.number)) and not isinstance(se, bool):
                flat[f"{task}/{name}_stderr"] = P.finite_or_none(float(se))
    return flat


def jsonable(obj: Any) -> Any:
    """A JSON-safe copy: numpy scalars/arrays to Python, NaN/inf to None, dtypes/callables/others to str."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, bool) or obj is None or isinstance(obj, str):
        return obj
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(float(obj)) else None
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist())
    if callable(obj):
        return getattr(obj, "__qualname__", None) or getattr(obj, "__name__", None) or repr(obj)
    return str(obj)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """lm-eval and datasets log every request batch and draw progress bars: keep a job's log readable
    (loggers at ERROR; when stderr is not a terminal, progress bars, which write to it, are dropped)."""
    import io
    import sys

    loggers = [logging.getLogger(n) for n in ("lm_eval", "lm-eval", "datasets", "transformers", "accelerate")]
    levels = [lg.level for lg in loggers]
    try:
        import datasets

        datasets.disable_progress_bars()
    except ImportError:  # pragma: no cover
        pass
    try:
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        tty = hasattr(sys.stderr, "isatty") and sys.stderr.isatty()
        with contextlib.redirect_stderr(sys.stderr if tty else io.StringIO()):
            yield
    finally:
        for lg, lv in zip(loggers, levels):
            lg.setLevel(lv)


_ENV_INFO: dict[str, Any] = {}


@contextlib.contextmanager
def _env_info_once() -> Iterator[None]:
    """lm-eval's simple_evaluate ends by describing the environment (torch.utils.collect_env: `pip list`,
    lscpu, conda and driver probes in subprocesses), 0.4-0.9 s per call on this 2-core machine, a fifth of a
    demo checkpoint's evaluation. It cannot change within a process: describe it once, copy it into every
    result (the same keys as lm-eval writes)."""
    import lm_eval.evaluator as ev

    original = ev.add_env_info

    def cached(storage: dict) -> None:
        if not _ENV_INFO:
            original(_ENV_INFO)
        storage.update(_ENV_INFO)

    ev.add_env_info = cached
    try:
        yield
    finally:
        ev.add_env_info = original


def run_lm_eval(model, tok, cfg: ExperimentConfig, tasks: Sequence[TaskConfig] | None = None,
                task_manager=None) -> tuple[dict, dict, list]:
    """Run lm-eval tasks on an in-memory model (no reload from disk), one simple_evaluate call per set of
    identical options. Returns (flat metrics, merged JSON-safe results dict, samples)."""
    import lm_eval
    from lm_eval.models.huggingface import HFLM

    tasks = list(cfg.eval.tasks if tasks is None else tasks)
    if not tasks:
        return {}, {}, []
    tm = task_manager or task_manager_for(cfg, tasks)
    merged: dict[str, Any] = {"results": {}, "groups": {}, "group_subtasks": {}, "configs": {}, "versions": {},
                              "n-shot": {}, "higher_is_better": {}, "n-samples": {}, "calls": []}
    samples: list[dict] = []
    max_len = int(getattr(model.config, "max_position_embeddings", 0) or 2048)
    was_training = model.training
    model.eval()
    try:
        for (shots, limit, chat, bs), names in _option_groups(tasks).items():
            with _quiet(), _env_info_once():
                lm = HFLM(pretrained=model, tokenizer=tok, batch_size=bs, max_length=max_len)
                try:
                    res = lm_eval.simple_evaluate(model=lm, tasks=names, num_fewshot=shots, limit=limit,
                                                  apply_chat_template=chat, task_manager=tm, log_samples=True,
                                                  bootstrap_iters=BOOTSTRAP_ITERS)
                except (ConnectionError, OSError) as exc:  # datasets/hub: not cached and offline, or no file
                    msg = str(exc).splitlines()[0] if str(exc) else ""
                    raise EvaluationError(f"lm-eval could not load the data of {names}: {type(exc).__name__}: "
                                          f"{msg}", where="eval.tasks",
                                          fix="offline (HF_DATASETS_OFFLINE=1) a benchmark needs its dataset in "
                                          "the local HF cache: download it once on a connected machine (or "
                                          "drop the task)") from exc
            for k in merged:
                if k != "calls" and isinstance(res.get(k), dict):
                    merged[k].update(res[k])
            merged["calls"].append({"tasks": names, "num_fewshot": shots, "limit": limit,
                                    "apply_chat_template": chat, "batch_size": bs,
                                    **{k: res.get(k) for k in res if k not in merged and k != "samples"}})
            for task, rows in (res.get("samples") or {}).items():
                samples += [{"task": task, **r} for r in rows]
    finally:
        model.train(was_training)
    merged = jsonable(merged)
    return flatten_lm_eval(merged), merged, samples


# ------------------------------------------------------------------------------------------ config -> probes


def _device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16,
           "float64": torch.float64, "auto": "auto"}


def load_eval_model(path: str | Path, cfg: ExperimentConfig, device: torch.device | None = None):
    """A checkpoint (or the base) for inference: the config's dtype and attention kernel, KV cache on."""
    from transformers import AutoModelForCausalLM

    p = Path(path)
    if (str(path).startswith((".", "/")) or len(p.parts) > 2) and not p.exists():
        raise ConfigError("model path not found", where=str(path),
                          fix="check model.name_or_path (build the mini-world with `harness world build`)")
    dtype = _DTYPES[cfg.model.dtype]
    device = device or _device()
    if device.type == "cpu" and dtype in (torch.bfloat16, torch.float16):
        dtype = torch.float32  # half precision on CPU is slow and inexact; the weights are upcast losslessly
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, attn_implementation=cfg.model.attn_implementation,
                                                 trust_remote_code=cfg.model.trust_remote_code,
                                                 revision=cfg.model.revision if not p.exists() else None)
    model.config.use_cache = True
    return model.to(device).eval()


def load_eval_tokenizer(cfg: ExperimentConfig):
    """The experiment's tokenizer (model.tokenizer or the base's, with model.chat_template): the same for
    the base and every checkpoint, so every probe is tokenized identically."""
    from harness.data import load_tokenizer
    from harness.data.templates import resolve_template

    mc = cfg.model
    return load_tokenizer(mc.tokenizer or mc.name_or_path, trust_remote_code=mc.trust_remote_code,
                          chat_template=resolve_template(mc.chat_template))


# ------------------------------------------------------------------------------------------ one model


@dataclass
class EvalResult:
    metrics: dict
    lm_eval: dict
    samples: list
    token_rows: list
    probes: dict  # files and example counts behind each probe


class Evaluator:
    """Evaluates models under one experiment config. Holds what is the same for every checkpoint: the
    tokenizer, the tokenized probes, the lm-eval task manager and the base model's cached log-probs."""

    def __init__(self, cfg: ExperimentConfig, base_dir: str | Path | None = None,
                 tasks: Sequence[TaskConfig] | None = None, device: torch.device | None = None):
        self.cfg = cfg
        self.tasks = list(cfg.eval.tasks if tasks is None else tasks)
        self.base_dir = Path(base_dir) if base_dir is not None else Path(cfg.results_dir) / cfg.name / "base"
        self.device = device or _device()
        self.hash = eval_hash(cfg)
        self.paths = probe_paths(cfg)
        self.tok = load_eval_tokenizer(cfg)
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
                name=src.name if src else None, eot=d.eot, boundary=d.boundary, system_prompt=d.system_prompt)
        self.text_ids = None
        if self.paths["pretrain"]:
            texts = [str(r["text"]) for r in P.read_jsonl(self.paths["pretrain"], "text", e.probe_limit)]
            self.text_ids = P.text_ids(self.tok, texts, d.max_length)
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
        self.stop = P.stop_strings(self.tok, d.eot)
        self._base_lp: P.BaseLogprobs | None = None

    # ---- base log-probs (KL and pretrain-NLL delta), cached on disk once per experiment

    @property
    def base_cache_path(self) -> Path:
        return self.base_dir / "eval" / f"base_logprobs-{self.hash}.npz"

    def base_logprobs(self, base_model=None) -> P.BaseLogprobs | None:
        if self.text_ids is None:
            return None
        if self._base_lp is None:
            path = self.base_cache_path
            with _file_lock(self.base_dir / ".logprobs.lock"):
                if path.exists():
                    try:
                        self._base_lp = P.BaseLogprobs.load(path)
                    except (OSError, ValueError, KeyError):
                        self._base_lp = None
                if self._base_lp is None:
                    model = base_model if base_model is not None else load_eval_model(
                        self.cfg.model.name_or_path, self.cfg, self.device)
                    self._base_lp = P.base_logprobs(model, self.tok, self.text_ids, self.cfg.eval.kl_top_k)
                    self._base_lp.save(path)
        return self._base_lp

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
        token_rows: list = []
        probes: dict[str, Any] = {"eval_hash": self.hash}
        if self.conversations is not None:
            t = time.perf_counter()
            m, token_rows = P.fixed_mask_nll(model, self.tok, self.conversations, e.token_examples)
            metrics.update(m)
            probes["nll"] = {"path": self.paths["nll"], "examples": len(self.conversations)}
            seconds["nll"] = time.perf_counter() - t
        if self.text_ids is not None:
            t = time.perf_counter()
            base = self.base_logprobs(base_model=model if is_base else None)
            m = P.pretrain_probe(model, self.tok, self.text_ids, base)
            if is_base:  # the base against itself: zero by definition (not a noisy ~1e-9)
                m["forgetting/pretrain_nll_delta"], m["forgetting/kl_base"] = 0.0, 0.0
            metrics.update(m)
            probes["pretrain"] = {"path": self.paths["pretrain"], "texts": len(self.text_ids),
                                  "kl_top_k": base.k if base else None}
            seconds["forgetting"] = time.perf_counter() - t
        if self.raw is not None:
            t = time.perf_counter()
            rates, fsamples = P.format_probe(model, self.tok, self.raw, e.max_new_tokens, self.stop)
            metrics.update(rates)
            samples += fsamples
            probes["format"] = {"path": self.paths["raw"], "questions": len(self.raw),
                                "max_new_tokens": e.max_new_tokens, "stop": self.stop}
            seconds["format"] = time.perf_counter() - t
        probes["seconds"] = {k: round(v, 3) for k, v in seconds.items()}
        return EvalResult({k: P.finite_or_none(v) for k, v in metrics.items()}, results, samples, token_rows,
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
                  tasks: Sequence[TaskConfig] | None = None) -> Evaluator:
    """One Evaluator per (eval hash, base dir, tasks) in this process (checkpoints of a run share it)."""
    key = (eval_hash(cfg), str(Path(base_dir).resolve()) if base_dir else None,
           json.dumps(to_dict(list(tasks)) if tasks is not None else None))
    if key not in _EVALUATORS:
        if len(_EVALUATORS) > 4:
            _EVALUATORS.clear()
        _EVALUATORS[key] = Evaluator(cfg, base_dir, tasks)
    return _EVALUATORS[key]


# ------------------------------------------------------------------------------------------ writing results


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """Blocking exclusive flock (released by the kernel if we die): concurrent evaluations of the same
    base wait for the first one and then reuse its result."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _atomic_bytes(path: Path, write) -> None:
    tmp = path.parent / f".{path.name}.{os.getpid()}.tmp"
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_eval(out_json: Path, payload: dict, samples: list, token_rows: list) -> None:
    """samples.jsonl.gz and tokens.parquet first, the JSON last (its presence means the rest is there)."""
    out_json = Path(out_json)
    out_json.parent.mkdir(parents=True, exist_ok=True)
    stem = out_json.name[: -len(".json")] if out_json.name.endswith(".json") else out_json.name

    def _samples(tmp: Path) -> None:
        with gzip.open(tmp, "wt", encoding="utf-8") as fh:
            for s in samples:
                fh.write(json.dumps(jsonable(s), ensure_ascii=False) + "\n")

    def _tokens(tmp: Path) -> None:
        import pandas as pd

        df = pd.DataFrame(token_rows, columns=["example", "position", "token", "token_id", "segment", "turn", "nll"])
        df = df.astype({"example": "int64", "position": "int64", "token_id": "int64", "turn": "int64",
                        "nll": "float64", "token": "string", "segment": "string"})
        df.to_parquet(tmp, index=False)

    _atomic_bytes(out_json.parent / f"{stem}.samples.jsonl.gz", _samples)
    if token_rows:
        _atomic_bytes(out_json.parent / f"{stem}.tokens.parquet", _tokens)
    from harness.checkpoint import fault_point

    fault_point("eval_write")  # reliability suite: killed with the side files written, the JSON not yet
    atomic_write_text(out_json, json.dumps(jsonable(payload), indent=1, allow_nan=False) + "\n")


def valid_eval(path: str | Path, eval_hash_: str | None = None) -> bool:
    """A finished eval JSON: parses, has the schema and a metrics dict (and the given eval hash)."""
    try:
        d = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    ok = isinstance(d, dict) and d.get("schema") == SCHEMA and isinstance(d.get("metrics"), dict)
    return ok and (eval_hash_ is None or d.get("eval_hash") == eval_hash_)


def _payload(res: EvalResult, *, run_id, step, epoch, checkpoint, seconds, hash_) -> dict:
    return {"schema": SCHEMA, "run_id": run_id, "step": step, "epoch": epoch, "checkpoint": checkpoint,
            "seconds": round(seconds, 2), "eval_hash": hash_, "metrics": res.metrics, "probes": res.probes,
            "lm_eval": res.lm_eval}


# ------------------------------------------------------------------------------------------ API


def evaluate_base(cfg: ExperimentConfig, experiment_dir: str | Path, *, force: bool = False) -> dict:
    """Evaluate the base model once per experiment (per distinct base, see :func:`base_dir_for`) into
    ``<experiment_dir>/base/eval/step-000000.json`` (the step-0 row of every run). Cached by the eval hash
    (model files + eval config): a second call returns the stored result; concurrent calls wait for the first."""
    base_dir = base_dir_for(experiment_dir, cfg)
    out = base_dir / "eval" / "step-000000.json"
    h = eval_hash(cfg)
    with _file_lock(base_dir / ".eval.lock"):  # held throughout: a concurrent caller waits, then reuses
        if not force and valid_eval(out, h):
            return json.loads(out.read_text())
        t0 = time.perf_counter()
        ev = evaluator_for(cfg, base_dir)
        model = load_eval_model(cfg.model.name_or_path, cfg, ev.device)
        res = ev.evaluate(model, is_base=True)
        payload = _payload(res, run_id="base", step=0, epoch=0.0, checkpoint=str(cfg.model.name_or_path),
                           seconds=time.perf_counter() - t0, hash_=ev.hash)
        write_eval(out, payload, res.samples, res.token_rows)
    return payload


def _default_base_dir(cfg: ExperimentConfig, out_json: Path) -> Path:
    """<experiment>/base for <experiment>/runs/<run>/eval/step-N.json, else results_dir/name/base."""
    p = Path(out_json).resolve()
    if len(p.parents) >= 4 and p.parent.name == "eval" and p.parents[2].name == "runs":
        return base_dir_for(p.parents[3], cfg)
    return base_dir_for(Path(cfg.results_dir) / cfg.name, cfg)


def evaluate_checkpoint(checkpoint_dir: str | Path, config: ExperimentConfig, out_json: str | Path, *,
                        base_dir: str | Path | None = None, run_id: str | None = None, step: int | None = None,
                        epoch: float | None = None, evaluator: Evaluator | None = None) -> dict:
    """Evaluate one COMPLETED checkpoint into `out_json` (+ .samples.jsonl.gz, .tokens.parquet), atomically.
    `base_dir` (default: the experiment's ``base/``) holds the base's cached log-probs for the KL and
    pretrain-NLL delta (computed there once if missing). Returns the payload written."""
    ckpt = Path(checkpoint_dir)
    if not ckpt.is_dir():
        raise EvaluationError("checkpoint directory not found", where=str(ckpt), fix="check the path")
    if not (ckpt / "COMPLETED").exists():
        raise EvaluationError("checkpoint has no COMPLETED sentinel: it is incomplete (a crash while saving) or "
                              "still being written, and is never evaluated", where=str(ckpt),
                              fix="evaluate a completed checkpoint; resuming training rewrites this one")
    out_json = Path(out_json)
    if step is None:
        m = re.search(r"step-(\d+)$", ckpt.name)
        step = int(m.group(1)) if m else None
    t0 = time.perf_counter()
    base_dir = Path(base_dir) if base_dir is not None else _default_base_dir(config, out_json)
    ev = evaluator or evaluator_for(config, base_dir)
    model = load_eval_model(ckpt, config, ev.device)
    res = ev.evaluate(model)
    try:
        rel = str(ckpt.resolve().relative_to(out_json.resolve().parent.parent))
    except ValueError:
        rel = str(ckpt)
    payload = _payload(res, run_id=run_id, step=step, epoch=epoch, checkpoint=rel,
                       seconds=time.perf_counter() - t0, hash_=ev.hash)
    write_eval(out_json, payload, res.samples, res.token_rows)
    return payload


def _epochs_by_step(run_dir: Path) -> dict[int, float]:
    out: dict[int, float] = {}
    p = run_dir / "metrics.jsonl"
    if p.exists():
        for line in p.read_text().splitlines():
            try:
                r = json.loads(line)
                out[int(r["step"])] = r.get("epoch")
            except (ValueError, KeyError, TypeError):
                continue
    return out


def pending_checkpoints(run_dir: str | Path, cfg: ExperimentConfig) -> list[tuple[int, Path]]:
    """COMPLETED checkpoints without a valid eval JSON (all, or the last with eval.every_checkpoint off)."""
    cks = completed_checkpoints(Path(run_dir))
    if not cfg.eval.every_checkpoint:
        cks = cks[-1:]
    return [(s, p) for s, p in cks if not valid_eval(eval_json(run_dir, s))]


def evaluate_run(run_dir: str | Path, config: ExperimentConfig, *, force: bool = False) -> list[dict]:
    """Evaluate every COMPLETED checkpoint of a run lacking a valid eval JSON (a half-written or invalid one
    is redone; `force` redoes all). The experiment's base row (``<experiment>/base/eval/step-000000.json``)
    is evaluated first if missing (once: concurrent runs wait for it); the base's log-probs are cached there."""
    run_dir = Path(run_dir)
    in_exp = run_dir.resolve().parent.name == "runs"
    exp_dir = run_dir.resolve().parent.parent if in_exp else Path(config.results_dir) / config.name
    base_dir = base_dir_for(exp_dir, config)
    todo = pending_checkpoints(run_dir, config) if not force else completed_checkpoints(run_dir)
    if not todo:
        return []
    if in_exp:
        evaluate_base(config, exp_dir)
    ev = evaluator_for(config, base_dir)
    epochs = _epochs_by_step(run_dir)
    out = []
    for step, ckpt in todo:
        out.append(evaluate_checkpoint(ckpt, config, eval_json(run_dir, step), base_dir=base_dir,
                                       run_id=run_dir.name, step=step, epoch=epochs.get(step), evaluator=ev))
    return out


# ------------------------------------------------------------------------------------------ CLI


def _config_for(target: Path, config: str | None, overrides: list[str] | None) -> ExperimentConfig:
    if config:
        exp = load_experiment(config, overrides)
        return exp.runs[0].config if len(exp.runs) == 1 else exp.config
    for cand in (target / "config.yaml", target.parent.parent / "config.yaml"):
        if cand.is_file():
            import yaml

            raw = yaml.safe_load(cand.read_text()) or {}
            from harness.config import apply_overrides

            return build(ExperimentConfig, apply_overrides(raw, overrides))
    raise ConfigError("no config.yaml in this run directory (or above this checkpoint)", where=str(target),
                      fix="pass --config EXP.yaml")


def _with_tasks(cfg: ExperimentConfig, names: list[str]) -> ExperimentConfig:
    """The config with eval.tasks replaced by `names` (keeping a task's options when the config has it)."""
    d = to_dict(cfg)
    known = {t["name"]: t for t in d["eval"]["tasks"]}
    d["eval"]["tasks"] = [known.get(n, {"name": n}) for n in names]
    d["grid"] = None
    return build(ExperimentConfig, d)


def _print_metrics(metrics: dict, title: str) -> None:
    print(title)
    for k in sorted(metrics):
        if k.endswith("_stderr"):
            continue
        v = metrics[k]
        print(f"  {k:42s} {'-' if v is None else f'{v:.4f}'}")


def _eval_cmd(args: argparse.Namespace) -> int:
    target = Path(args.target)
    if target.suffix in (".yaml", ".yml") and target.is_file():  # the experiment's base model
        exp = load_experiment(target, args.override)
        cfg = _with_tasks(exp.config, args.tasks.split(",")) if args.tasks else exp.config
        r = evaluate_base(cfg, exp.out_dir, force=args.force)
        _print_metrics(r["metrics"], f"base of {exp.config.name}: {exp.out_dir / 'base/eval/step-000000.json'}")
        return 0
    if not target.exists():
        raise ConfigError("no such run, checkpoint or experiment file", where=str(target),
                          fix="give results/<experiment>/runs/<run-id>, a checkpoints/step-NNNNNN directory, or "
                          "an experiment YAML (evaluates its base model)")
    cfg = _config_for(target, args.config, args.override)
    adhoc = bool(args.tasks)
    if args.tasks:
        cfg = _with_tasks(cfg, [t for t in args.tasks.split(",") if t])
    is_ckpt = (target / "config.json").exists() or re.search(r"step-\d+$", target.name) is not None
    if not is_ckpt:  # a run directory
        if adhoc:  # other tasks than the run's: written aside, so the run's rows stay comparable
            out = []
            for step, ckpt in completed_checkpoints(target):
                out.append(evaluate_checkpoint(ckpt, cfg, target / "eval" / "adhoc" / f"step-{step:06d}.json",
                                               base_dir=base_dir_for(target.resolve().parent.parent, cfg),
                                               run_id=target.name, step=step))
        else:
            out = evaluate_run(target, cfg, force=args.force)
        print(f"evaluated {len(out)} checkpoint(s) of {target}")
        for r in out:
            _print_metrics(r["metrics"], f"step {r['step']}:")
        return 0
    run_dir = target.parent.parent
    m = re.search(r"step-(\d+)$", target.name)
    step = int(m.group(1)) if m else None
    if args.out:
        out_json = Path(args.out)
    elif step is not None and target.parent.name == "checkpoints":
        out_json = (run_dir / "eval" / ("adhoc" if adhoc else "") / f"step-{step:06d}.json")
    else:
        out_json = target / "eval.json"
    if not args.force and not adhoc and not args.out and valid_eval(out_json, eval_hash(cfg)):
        print(f"{out_json} is up to date (use --force to redo it)")
        return 0
    in_run = step is not None and target.parent.name == "checkpoints"
    r = evaluate_checkpoint(target, cfg, out_json, run_id=run_dir.name if in_run else None, step=step,
                            epoch=_epochs_by_step(run_dir).get(step) if in_run else None)
    _print_metrics(r["metrics"], f"wrote {out_json} ({r['seconds']:.1f} s)")
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    """`harness eval RUN_DIR|CHECKPOINT|EXP.yaml [--tasks t1,t2] [--config EXP.yaml]`."""
    p = sub.add_parser("eval", help="evaluate a run's checkpoints, one checkpoint, or an experiment's base model",
                       description="Evaluate COMPLETED checkpoints (lm-eval tasks + fixed-mask NLL, forgetting "
                       "and format probes) into eval/step-NNNNNN.json. A run directory: every checkpoint still "
                       "lacking a valid result. An experiment YAML: its base model (base/eval/step-000000.json).")
    p.add_argument("target", help="run directory, checkpoint directory, or experiment YAML (base model)")
    p.add_argument("--tasks", help="comma-separated lm-eval tasks instead of the config's (results go to "
                   "eval/adhoc/ so the run's own rows stay comparable)")
    p.add_argument("--config", help="experiment YAML (default: the run's config.yaml)")
    p.add_argument("-o", "--override", action="append", help="dotted override, e.g. eval.probe_limit=50")
    p.add_argument("--out", help="output JSON for a single checkpoint (default: the run's eval/step-NNNNNN.json)")
    p.add_argument("--force", action="store_true", help="re-evaluate even when a valid result exists")
    p.set_defaults(func=_eval_cmd)
