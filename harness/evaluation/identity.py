"""What identifies an evaluation, without importing torch or lm-eval: the eval hash (base model, tokenizer,
eval data, eval section, probe files) and where a run's base row lives. The launcher uses these to write
``plan.json`` and to decide whether the base is evaluated, before any worker has imported torch."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from harness import fingerprint
from harness.config import ExperimentConfig, to_dict
from harness.config.paths import replace_at
from harness.layout import ExperimentDir
from harness.versions import EVAL_VERSION


def probe_paths(cfg: ExperimentConfig) -> dict[str, str | None]:
    """Files behind each probe, from the eval section (nll defaults to data.eval); None: that probe is skipped."""
    e = cfg.eval
    return {"nll": e.nll_data or (cfg.data.eval.path if cfg.data.eval else None),
            "pretrain": e.pretrain_text, "raw": e.raw_questions}


def kl_prompt_source(cfg: ExperimentConfig) -> dict | None:
    """Where forgetting/kl_sft's prompts come from (eval.kl_prompts, else data.train with its format/split/name;
    never data.train.limit), or None when the probe is off or there is no training data."""
    e, t = cfg.eval, cfg.data.train
    if not e.kl_sft:
        return None
    if e.kl_prompts:
        return {"path": e.kl_prompts, "format": "auto", "split": "train", "name": None}
    return {"path": t.path, "format": t.format, "split": t.split, "name": t.name} if t.path else None


def _file_fingerprint(path: str | Path) -> str | None:
    """A file's or model directory's content digest (16 hex digits; None when missing): never its mtime, so
    touching or copying the base model leaves the eval hash (and the cached base results) as they were."""
    return fingerprint.short(path)


def eval_hash(cfg: ExperimentConfig) -> str:
    """Hash of everything that determines an evaluation except the weights being evaluated: base model and
    tokenizer (with the contents of local files: harness/fingerprint.py), eval-data tokenization, the eval
    section and the probe files' contents. Equal hashes: comparable rows; the base is re-evaluated when it changes."""
    d, default = to_dict(_by_contents(cfg)), to_dict(ExperimentConfig())
    # only what differs from the defaults, as for run ids: a new eval option leaves every eval hash (and so
    # every cached base result) as it was
    ev = _changed(d["eval"], default["eval"])
    for key in ("every_checkpoint", "threads"):  # which checkpoints, and how fast: not what is measured
        ev.pop(key, None)
    if "tasks" in ev:  # a task's final_only says which checkpoints run it, not what it measures
        ev["tasks"] = [{k: v for k, v in t.items() if k != "final_only"} for t in ev["tasks"]]
    rec = ev.pop("recovery", None)
    if cfg.eval.recovery.enabled:  # only then (off, it is all defaults): other evaluations' hashes stay as they were
        ev["recovery"] = {k: v for k, v in rec.items() if k != "every_checkpoint"}  # which checkpoints, as above
    data_keys = ("eval", "max_length", "boundary", "eot", "system_prompt", "literal_content")
    paths, located = probe_paths(cfg), probe_paths(_by_contents(cfg))
    # model.init_from (a later stage's starting weights) is part of the weights evaluated, not of the base
    model = {k: v for k, v in _changed(d["model"], default["model"]).items() if k != "init_from"}
    data = _changed({k: d["data"][k] for k in data_keys}, default["data"])
    if isinstance(data.get("eval"), dict):
        # fields added to a data source after hashes existed: at their default they are no part of the identity
        data["eval"] = {k: v for k, v in data["eval"].items() if not (k in _LATER_SOURCE_FIELDS and v is None)}
    payload = {"version": EVAL_VERSION, "model": model,
               "model_files": _file_fingerprint(cfg.model.name_or_path),
               "tokenizer_files": _file_fingerprint(cfg.model.tokenizer) if cfg.model.tokenizer else None,
               "data": data,
               "eval": ev, "probes": {k: [located[k], _file_fingerprint(v) if v else None] for k, v in paths.items()},
               "tasks": {str(at): _file_fingerprint_dir(p) for at, p in zip(d["eval"]["include_path"],
                                                                            cfg.eval.include_path)}}
    kl = kl_prompt_source(cfg)
    if cfg.eval.kl_sft:  # only then: the hashes of evaluations without the probe stay as they were
        fp = _file_fingerprint(kl["path"]) if kl else None
        payload["kl_prompts"] = [dict(kl, path=None) if fp else kl, fp]
    if cfg.eval.recovery.enabled:  # the k-shot examples' contents, as for the other probe files
        payload["recovery_data"] = _file_fingerprint(cfg.eval.recovery.data)
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:12]


# the paths an evaluation reads (the training data only through kl_prompt_source, handled there)
_EVAL_PATHS = ("model.name_or_path", "model.tokenizer", "model.chat_template", "data.eval.path", "eval.nll_data",
               "eval.pretrain_text", "eval.raw_questions", "eval.kl_prompts", "eval.recovery.data",
               "eval.include_path")


def _by_contents(cfg: ExperimentConfig) -> ExperimentConfig:
    """`cfg` with each path of :data:`_EVAL_PATHS` that exists replaced by its contents' digest: where a file
    lies is no part of what is measured, so a study folder moved or copied elsewhere (its paths resolve to new
    absolute ones, harness/config/paths.py) keeps its eval hashes. A path that does not exist stays as it is."""
    def digest(key: str):
        suffixes = fingerprint.TASK_FILES if key == "eval.include_path" else fingerprint.MODEL_FILES
        return lambda v: f"sha256:{fp}" if (fp := fingerprint.short(v, suffixes)) else v

    for key in _EVAL_PATHS:
        cfg = replace_at(cfg, key, digest(key))
    return cfg


_LATER_SOURCE_FIELDS = ("tools",)  # data.eval.tools (agentic data): None leaves every earlier eval hash as it was


def _changed(d: dict, default: dict) -> dict:
    return {k: v for k, v in d.items() if k not in default or default[k] != v}


def _file_fingerprint_dir(path: str) -> str | None:
    p = Path(path)
    if not p.is_dir():
        return None
    h = hashlib.sha256()
    for f in sorted(p.glob("**/*.yaml")):
        h.update(f.name.encode() + f.read_bytes())
    return h.hexdigest()[:16]


def base_dir_for(experiment_dir: str | Path, cfg: ExperimentConfig) -> Path:
    """Where the base evaluation of a run with config `cfg` lives: ``<experiment>/base`` for the experiment's
    own base (plan.json's ``base_eval_hash``), ``<experiment>/bases/<eval_hash>`` for runs whose base model
    or eval data differ (a grid over model.name_or_path or data.eval.path): each run's step-0 row, KL and
    NLL deltas are against *its* base, never another run's."""
    exp = ExperimentDir(experiment_dir)
    default = (exp.read_plan() or {}).get("base_eval_hash")
    h = eval_hash(cfg)
    return exp.base() if default in (None, h) else exp.base(h)
