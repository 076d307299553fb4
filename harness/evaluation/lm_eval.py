"""lm-eval on the in-memory model: which tasks exist, a task manager over only the families a config uses, and
one ``simple_evaluate`` call per set of identical task options.

lm-eval tasks are resolved without indexing lm-eval's ~15k bundled YAMLs on every call (seconds on a CPU; see
benchmarks/NOTES.md): the names are indexed once per lm-eval version into ``~/.cache/harness``
(``HARNESS_CACHE``), and a task manager is built over only the task families the config uses plus
``eval.include_path``.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from harness.config import ExperimentConfig, TaskConfig
from harness.errors import ConfigError, DataError, EvaluationError
from harness.fsio import atomic_write_text
from harness.evaluation.lm_eval_patches import compiled_templates, env_info_once, quiet

log = logging.getLogger("harness.evaluate")
BOOTSTRAP_ITERS = 100  # lm-eval stderr: closed form for mean metrics; bootstrap (this many) for the rest
_TM_CACHE: dict[tuple, Any] = {}
_INDEX_CACHE: dict[str, dict] = {}


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
                flat[f"{task}/{name}"] = finite_or_none(float(v))
            se = vals.get(f"{metric}_stderr,{filt}")
            if isinstance(se, (int, float, np.number)) and not isinstance(se, bool):
                flat[f"{task}/{name}_stderr"] = finite_or_none(float(se))
    return flat


def finite_or_none(x):
    return x if isinstance(x, (int, float)) and math.isfinite(x) else None


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
            with quiet(), env_info_once(), compiled_templates():
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

