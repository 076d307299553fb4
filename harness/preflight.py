"""What would make every run of a grid fail at start, found in well under a second without torch: doctor's fast
part, which ``harness run`` runs before it starts any worker (and ``harness doctor`` first of all).

Each problem names the config key, the absolute path it tried (relative paths resolve against the experiment
file's folder and its ``root:``, harness/config/paths.py) and the fix. Checked for every run of the grid, since
a grid may vary the model, the data or max_length: local model and tokenizer directories exist and hold a
config / tokenizer files and a chat template (or model.chat_template is set); data.max_length fits the model's
positions; every data, replay, probe, k-shot, task-folder, template and init_from path exists. Hub names are
left to the hub client (``harness doctor`` tries to load them), except offline, where one not in the local cache
(often a misspelled local folder) fails.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from harness.config import ExperimentConfig
from harness.config.paths import PATH_KEYS, TEMPLATE_SUFFIXES, root_of
from harness.errors import HarnessError
from harness.fsio import is_local_path
from harness.stages import RUN_PREFIX

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "spiece.model")
_POSITION_KEYS = ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length")
# what each key's path must be (a model directory is checked for its files below)
_KIND = {"eval.include_path": "folder", "model.name_or_path": "model", "model.tokenizer": "tokenizer"}


def _get(cfg: ExperimentConfig, key: str):
    obj = cfg
    for part in key.split("."):
        obj = getattr(obj, part, None) if obj is not None else None
    return obj


def _used_paths(cfg: ExperimentConfig) -> list[tuple[str, str]]:
    """(config key, path) of every local path this config reads (results_dir is written, not read)."""
    out = []
    for key, kind in PATH_KEYS:
        value = _get(cfg, key)
        if key == "results_dir" or not value or (key == "eval.recovery.data" and not cfg.eval.recovery.enabled):
            continue
        for v in value if isinstance(value, tuple) else (value,):
            if kind == "template" and not (v.endswith(TEMPLATE_SUFFIXES) and "{" not in v):
                continue
            if kind == "init" and v.startswith(RUN_PREFIX):
                continue
            if is_local_path(v):
                out.append((key, v))
    return out


def max_positions(model_dir: Path) -> int | None:
    """The model's position limit from its config.json (a multimodal config's text_config too), or None."""
    try:
        d = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    for section in (d, d.get("text_config") or {}):
        for k in _POSITION_KEYS:
            if isinstance(section.get(k), int):
                return section[k]
    return None


def _has_template(tok_dir: Path) -> bool:
    if (tok_dir / "chat_template.jinja").exists() or (tok_dir / "chat_template.json").exists():
        return True
    try:
        return bool(json.loads((tok_dir / "tokenizer_config.json").read_text(encoding="utf-8")).get("chat_template"))
    except (OSError, ValueError):
        return False


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def _hub_cached(name: str, kind: str) -> bool:
    """Whether a hub repository is in the local Hugging Face cache (where an offline load looks)."""
    home = Path(os.environ.get("HF_HOME") or Path.home() / ".cache" / "huggingface")
    hub = os.environ.get("HF_HUB_CACHE") or home / "hub"
    if (Path(hub) / f"{kind}s--{name.replace('/', '--')}").is_dir():
        return True
    if kind == "dataset":  # the datasets library's own cache
        ds = Path(os.environ.get("HF_DATASETS_CACHE") or home / "datasets")
        return any(ds.glob(name.replace("/", "___") + "*"))
    return False


def _hub_names(cfg: ExperimentConfig, root: Path | None) -> list[str]:
    """Offline (HF_HUB_OFFLINE=1, as `make` sets it), a name that is no local path and not in the hub cache
    fails every run: a misspelled local folder ('model-typo') reads as a hub name."""
    if not _offline():
        return []
    problems = []
    for key, kind in (("model.name_or_path", "model"), ("model.tokenizer", "model"), ("data.train.path", "dataset"),
                      ("data.eval.path", "dataset")):
        value = _get(cfg, key)
        if value and not is_local_path(value) and not _hub_cached(value, kind):
            where = f" ({(root or Path.cwd()) / value} not found)"
            problems.append(f"{key}: {value!r} is no local path{where} and, offline (HF_HUB_OFFLINE=1), no cached "
                            f"hub {kind}: check the spelling, or download it first")
    return problems


def check_config(cfg: ExperimentConfig, root: Path | None = None) -> list[str]:
    """Problems of one run's config that would fail it at start (each once, with the absolute path); `root`:
    where its relative paths resolved (named when a hub-like name is neither local nor cached)."""
    problems = _hub_names(cfg, root)
    for key, value in _used_paths(cfg):
        p = Path(value).expanduser().absolute()
        want = _KIND.get(key, "file")
        if not p.exists():
            problems.append(f"{key}: {p} not found")
        elif want == "folder" and not p.is_dir():
            problems.append(f"{key}: {p} is not a folder")
        elif want == "model" and p.is_dir() and not (p / "config.json").exists():
            problems.append(f"{key}: no config.json in {p} (a Hugging Face model directory holds config.json "
                            "and its weights)")
    model = Path(cfg.model.name_or_path).expanduser().absolute()
    tok = Path(cfg.model.tokenizer).expanduser().absolute() if cfg.model.tokenizer else model
    if model.is_dir() and (n := max_positions(model)) and cfg.data.max_length > n:
        problems.append(f"data.max_length {cfg.data.max_length} exceeds the {n} positions of the model "
                        f"{model}: set data.max_length <= {n}")
    if tok.is_dir():
        if not any((tok / f).exists() for f in _TOKENIZER_FILES):
            problems.append(f"model.tokenizer: no tokenizer files in {tok} (expected one of "
                            f"{', '.join(_TOKENIZER_FILES)})")
        elif cfg.model.chat_template is None and not _has_template(tok):
            problems.append(f"model.chat_template: the tokenizer in {tok} has no chat template: set "
                            "model.chat_template (chatml, plain or a .jinja file)")
    return problems


def refuse(exp, problems: list[str]) -> None:
    """``harness run``: raise with every problem, before any worker starts."""
    if problems:
        note = path_note(exp, problems)
        raise HarnessError(f"harness run refuses to start {exp.config.name}: these would fail its runs at start:\n  "
                           + "\n  ".join(problems) + (f"\n{note}" if note else ""),
                           where=str(Path(exp.path).absolute()),
                           fix="fix the experiment file (harness doctor EXP.yaml also loads the data and tokenizer)")


def check_experiment(exp, runs=None) -> list[str]:
    """The problems of every run (or of `runs`, those ``--only`` picked), each said once with the runs it
    concerns."""
    seen: dict[str, list[str]] = {}
    root = root_of(exp.path, exp.config.root)
    runs = exp.runs if runs is None else runs
    for run in runs:
        for problem in check_config(run.config, root):
            seen.setdefault(problem, []).append(run.run_id)
    n = len(runs)
    return [p + ("" if len(ids) == n else f" [runs: {', '.join(ids[:4])}{', ...' if len(ids) > 4 else ''}]")
            for p, ids in seen.items()]


def path_note(exp, problems: list[str]) -> str:
    """Where relative paths resolved, when a path was not found (else "")."""
    if not any("not found" in p for p in problems):
        return ""
    return (f"relative paths in {Path(exp.path).absolute()} resolve against {root_of(exp.path, exp.config.root)} "
            f"(its folder joined with root: {exp.config.root!r})")
