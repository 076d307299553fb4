"""Evaluate checkpoints: lm-eval benchmarks (in-memory HFLM), fixed-mask NLL, forgetting and format probes.

Every checkpoint of every run, and the base model once per experiment (``base/eval/step-000000.json``, the
step-0 row of every run), is evaluated the same way. Results follow docs/results-schema.md; each JSON is
written atomically, so a half-written file is never mistaken for a result (it is redone).
"""

from __future__ import annotations

import argparse
import difflib
import gzip
import hashlib
import json
import time
from pathlib import Path
from typing import Any

import torch

from harness.config import ExperimentConfig, TaskConfig, build, load_experiment, to_dict
from harness.errors import ConfigError, DataError, HarnessError
from harness.runs import atomic_write_json, completed_checkpoints, eval_json, missing_evals, valid_json

_TM_CACHE: dict[tuple, Any] = {}


# ------------------------------------------------------------------------------------------ lm-eval


def task_manager(include_path: tuple[str, ...] = (), need_defaults: bool = True):
    """lm-eval's TaskManager; indexing the ~10k bundled tasks takes seconds, so skip them when every task is
    local, and cache per process."""
    from lm_eval.tasks import TaskManager

    paths = tuple(str(Path(p).resolve()) for p in include_path)
    key = (paths, need_defaults)
    if key not in _TM_CACHE:
        for p in paths:
            if not Path(p).is_dir():
                raise ConfigError("lm-eval include_path directory not found", where=p,
                                  fix="build the mini-world (`harness world build`) or fix eval.include_path")
        _TM_CACHE[key] = TaskManager(include_path=list(paths) or None, include_defaults=need_defaults)
    return _TM_CACHE[key]


def _local_task_names(include_path: tuple[str, ...]) -> set[str]:
    import yaml

    names = set()
    for p in include_path:
        for f in Path(p).glob("**/*.yaml"):
            try:
                doc = yaml.safe_load(f.read_text())
            except yaml.YAMLError:
                continue
            if isinstance(doc, dict):
                for k in ("task", "group"):
                    if isinstance(doc.get(k), str):
                        names.add(doc[k])
    return names


def resolve_tasks(cfg: ExperimentConfig):
    """TaskManager for the config's tasks; unknown names raise with close matches."""
    names = [t.name for t in cfg.eval.tasks]
    local = _local_task_names(tuple(p for p in cfg.eval.include_path if Path(p).is_dir()))
    tm = task_manager(cfg.eval.include_path, need_defaults=not set(names) <= local)
    known = set(tm.all_tasks)
    for n in names:
        if n not in known:
            close = difflib.get_close_matches(n, sorted(known), n=3, cutoff=0.6)
            raise ConfigError(f"unknown lm-eval task '{n}'" + (f" (close: {', '.join(close)})" if close else ""),
                              where="eval.tasks", fix="use a task name from `lm_eval --tasks list` or a YAML in "
                              "eval.include_path")
    return tm


def check_tasks(cfg: ExperimentConfig) -> list[str]:
    """Problems with the config's tasks (empty list when all resolve); for tests and `harness doctor`."""
    try:
        resolve_tasks(cfg)
    except HarnessError as exc:
        return [str(exc)]
    return []


def _task_data_files(tm, name: str) -> list[str]:
    try:
        conf = tm._get_config(name)  # noqa: SLF001 - lm-eval exposes no public accessor
    except Exception:  # noqa: BLE001
        return []
    files = (conf.get("dataset_kwargs") or {}).get("data_files") or {}
    vals = files.values() if isinstance(files, dict) else [files]
    return [v for v in vals if isinstance(v, str)]


def _flatten(results: dict) -> dict:
    """{'task/metric': value} from lm-eval's results dict (filter suffix kept only when ambiguous)."""
    flat = {}
    for task, vals in results.get("results", {}).items():
        metrics = [k for k in vals if "," in k and not k.split(",")[0].endswith("_stderr")]
        bases = [k.split(",")[0] for k in metrics]
        for k in metrics:
            metric, filt = k.split(",", 1)
            v = vals[k]
            if not isinstance(v, (int, float)):
                continue
            name = metric if (filt == "none" or bases.count(metric) == 1) else f"{metric}_{filt}"
            flat[f"{task}/{name}"] = float(v)
            se = vals.get(f"{metric}_stderr,{filt}")
            if isinstance(se, (int, float)):
                flat[f"{task}/{name}_stderr"] = float(se)
    return flat


def run_lm_eval(model, tok, cfg: ExperimentConfig, tasks: tuple[TaskConfig, ...] | None = None) -> tuple[dict, dict, list]:
    """Run the configured tasks on an in-memory model. Returns (flat metrics, results dict, samples)."""
    import lm_eval
    from lm_eval.models.huggingface import HFLM

    tasks = cfg.eval.tasks if tasks is None else tasks
    if not tasks:
        return {}, {}, []
    tm = resolve_tasks(cfg)
    for t in tasks:
        for f in _task_data_files(tm, t.name):
            if not Path(f).exists():
                raise DataError(f"data file of lm-eval task '{t.name}' is missing", where=f,
                                fix="rebuild the world (`harness world build`) or fix the task YAML")
    groups: dict[tuple, list[str]] = {}
    for t in tasks:
        groups.setdefault((t.num_fewshot, t.limit, t.apply_chat_template, t.batch_size), []).append(t.name)
    flat, merged, samples = {}, {"results": {}, "versions": {}, "n-shot": {}, "configs": {}}, []
    for (shots, limit, chat, bs), names in groups.items():
        lm = HFLM(pretrained=model, tokenizer=tok, batch_size=bs, max_length=_max_len(model))
        res = lm_eval.simple_evaluate(model=lm, tasks=names, num_fewshot=shots, limit=limit,
                                      apply_chat_template=chat, task_manager=tm, log_samples=True,
                                      bootstrap_iters=0, verbosity="ERROR")
        flat.update(_flatten(res))
        for k in merged:
            merged[k].update(res.get(k, {}) or {})
        for task, rows in (res.get("samples") or {}).items():
            for r in rows:
                samples.append({"task": task, **r})
    return flat, json.loads(json.dumps(merged, default=str)), samples


def _max_len(model) -> int:
    return int(getattr(model.config, "max_position_embeddings", 2048) or 2048)


# ------------------------------------------------------------------------------------------ one model


def _probe_paths(cfg: ExperimentConfig) -> dict:
    e = cfg.eval
    nll = e.nll_data or (cfg.data.eval.path if cfg.data.eval else None)
    return {"nll": nll, "pretrain": e.pretrain_text, "raw": e.raw_questions}


def evaluate_model(model, tok, cfg: ExperimentConfig, *, base_model=None, base_metrics: dict | None = None,
                   tasks: tuple[TaskConfig, ...] | None = None) -> tuple[dict, dict, list, list]:
    """All metrics of one model: (flat metrics, lm-eval results, samples, per-token rows)."""
    from harness import probes as P
    from harness.world import measure as M

    model.eval()
    metrics, results, samples = run_lm_eval(model, tok, cfg, tasks)
    paths, e = _probe_paths(cfg), cfg.eval
    token_rows: list = []
    if paths["nll"]:
        examples = P.tokenize_eval_conversations(paths["nll"], tok, cfg.data.max_length, e.probe_limit)
        m, token_rows = P.fixed_mask_nll(model, tok, examples, e.token_examples)
        metrics.update(m)
    if paths["pretrain"]:
        texts = [r["text"] for r in P.read_jsonl(paths["pretrain"], "text", e.probe_limit)]
        ids = P.text_ids(tok, texts, cfg.data.max_length)
        metrics["forgetting/pretrain_nll"] = P.text_nll(model, tok, ids)
        if base_metrics and base_metrics.get("forgetting/pretrain_nll") is not None:
            metrics["forgetting/pretrain_nll_delta"] = (metrics["forgetting/pretrain_nll"]
                                                        - base_metrics["forgetting/pretrain_nll"])
        if base_model is not None:
            metrics["forgetting/kl_base"] = P.kl_to_base(base_model, model, tok, ids)
        elif base_metrics is not None:
            metrics["forgetting/kl_base"] = 0.0
    if paths["raw"]:
        raw = P.read_jsonl(paths["raw"], "prompt", e.probe_limit)
        rates = M.raw_format_rates(model, tok, raw, e.max_new_tokens)
        metrics.update({f"format/{k}": v for k, v in rates.items()})
    return metrics, results, samples, token_rows


def _load(path: str | Path, cfg: ExperimentConfig, device: torch.device):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path, trust_remote_code=cfg.model.trust_remote_code)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32 if device.type == "cpu" else "auto",
                                                 trust_remote_code=cfg.model.trust_remote_code, use_safetensors=True)
    return model.to(device).eval(), tok


def _write(out_json: Path, payload: dict, samples: list, token_rows: list) -> None:
    out_json.parent.mkdir(parents=True, exist_ok=True)
    stem = out_json.name[: -len(".json")]
    if samples:
        tmp = out_json.parent / f".{stem}.samples.tmp"
        with gzip.open(tmp, "wt", encoding="utf-8") as fh:
            for s in samples:
                fh.write(json.dumps(s, default=str) + "\n")
        tmp.rename(out_json.parent / f"{stem}.samples.jsonl.gz")
    if token_rows:
        import pandas as pd

        tmp = out_json.parent / f".{stem}.tokens.tmp"
        pd.DataFrame(token_rows).to_parquet(tmp, index=False)
        tmp.rename(out_json.parent / f"{stem}.tokens.parquet")
    atomic_write_json(out_json, payload)  # last: its presence means the rest is there


def eval_cache_key(cfg: ExperimentConfig) -> str:
    payload = {"model": to_dict(cfg.model), "eval": to_dict(cfg.eval), "max_length": cfg.data.max_length,
               "nll": _probe_paths(cfg)}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:12]


def _device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def evaluate_base(cfg: ExperimentConfig, exp_dir: str | Path) -> dict:
    """The base model, once per experiment (cached by model + eval config)."""
    out = Path(exp_dir) / "base" / "eval" / "step-000000.json"
    key = eval_cache_key(cfg)
    if valid_json(out) and json.loads(out.read_text()).get("cache_key") == key:
        return json.loads(out.read_text())
    t0 = time.perf_counter()
    model, tok = _load(cfg.model.name_or_path, cfg, _device())
    metrics, results, samples, rows = evaluate_model(model, tok, cfg, base_metrics={})
    if "forgetting/pretrain_nll" in metrics:
        metrics["forgetting/pretrain_nll_delta"] = 0.0
    payload = {"schema": 1, "run_id": "base", "step": 0, "epoch": 0.0, "checkpoint": cfg.model.name_or_path,
               "cache_key": key, "seconds": round(time.perf_counter() - t0, 2), "metrics": metrics,
               "lm_eval": results}
    _write(out, payload, samples, rows)
    return payload


_BASE_CACHE: dict[str, Any] = {}


def evaluate_checkpoint(checkpoint_dir: str | Path, cfg: ExperimentConfig, out_json: str | Path, *,
                        base_dir: str | Path | None = None, run_id: str | None = None, step: int | None = None,
                        epoch: float | None = None) -> dict:
    ckpt = Path(checkpoint_dir)
    if not (ckpt / "COMPLETED").exists():
        raise HarnessError("checkpoint has no COMPLETED sentinel (incomplete or being written)", where=str(ckpt),
                           fix="evaluate a completed checkpoint; resume training to finish this one")
    t0 = time.perf_counter()
    device = _device()
    model, tok = _load(ckpt, cfg, device)
    base_metrics = None
    base_model = None
    if base_dir is not None:
        bj = Path(base_dir) / "eval" / "step-000000.json"
        if valid_json(bj):
            base_metrics = json.loads(bj.read_text()).get("metrics", {})
    if cfg.eval.pretrain_text:
        key = str(cfg.model.name_or_path)
        if key not in _BASE_CACHE:  # the base stays in memory across a run's checkpoints
            _BASE_CACHE.clear()
            _BASE_CACHE[key] = _load(cfg.model.name_or_path, cfg, device)[0]
        base_model = _BASE_CACHE[key]
    metrics, results, samples, rows = evaluate_model(model, tok, cfg, base_model=base_model,
                                                     base_metrics=base_metrics)
    payload = {"schema": 1, "run_id": run_id, "step": step, "epoch": epoch, "checkpoint": str(ckpt),
               "seconds": round(time.perf_counter() - t0, 2), "metrics": metrics, "lm_eval": results}
    _write(Path(out_json), payload, samples, rows)
    return payload


def _epochs_by_step(run_dir: Path) -> dict[int, float]:
    out = {}
    p = run_dir / "metrics.jsonl"
    if p.exists():
        for line in p.read_text().splitlines():
            try:
                r = json.loads(line)
                out[int(r["step"])] = r.get("epoch")
            except (ValueError, KeyError):
                continue
    return out


def evaluate_run(run_dir: str | Path, cfg: ExperimentConfig) -> list[dict]:
    """Evaluate every COMPLETED checkpoint of a run that lacks a valid eval JSON (base first if missing)."""
    run_dir = Path(run_dir)
    base_dir = run_dir.parent.parent / "base"
    if cfg.eval.pretrain_text or cfg.eval.tasks:
        evaluate_base(cfg, run_dir.parent.parent)
    epochs = _epochs_by_step(run_dir)
    out = []
    for step, ckpt in missing_evals(run_dir, cfg.eval.every_checkpoint):
        out.append(evaluate_checkpoint(ckpt, cfg, eval_json(run_dir, step), base_dir=base_dir,
                                       run_id=run_dir.name, step=step, epoch=epochs.get(step)))
    return out


# ------------------------------------------------------------------------------------------ CLI


def _eval_cmd(args: argparse.Namespace) -> int:
    target = Path(args.target)
    if args.config:
        cfg = load_experiment(args.config, args.override).runs[0].config
    else:
        cfg_path = target / "config.yaml" if (target / "config.yaml").exists() else target.parent.parent / "config.yaml"
        if not cfg_path.exists():
            raise ConfigError("no config.yaml next to this run/checkpoint", where=str(target),
                              fix="pass --config EXP.yaml")
        import yaml

        cfg = build(ExperimentConfig, yaml.safe_load(cfg_path.read_text()))
    if args.tasks:
        cfg = _with_tasks(cfg, args.tasks.split(","))
    if (target / "checkpoints").is_dir():
        res = evaluate_run(target, cfg)
        print(f"evaluated {len(res)} checkpoint(s) of {target}")
        for r in res:
            print(json.dumps({"step": r["step"], **r["metrics"]}))
        return 0
    m = target.name.rsplit("-", 1)
    step = int(m[-1]) if m[-1].isdigit() else None
    out = eval_json(target.parent.parent, step) if step is not None else target / "eval.json"
    r = evaluate_checkpoint(target, cfg, out, base_dir=target.parent.parent.parent.parent / "base", step=step)
    print(json.dumps(r["metrics"], indent=1))
    print(f"wrote {out}")
    return 0


def _with_tasks(cfg: ExperimentConfig, names: list[str]) -> ExperimentConfig:
    d = to_dict(cfg)
    d["eval"]["tasks"] = [{"name": n} for n in names]
    d["grid"] = None
    return build(ExperimentConfig, d)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="evaluate a run's checkpoints (or one checkpoint)")
    p.add_argument("target", help="run directory or checkpoint directory")
    p.add_argument("--tasks", help="comma-separated lm-eval tasks (default: the config's)")
    p.add_argument("--config", help="experiment YAML (default: the run's config.yaml)")
    p.add_argument("-o", "--override", action="append")
    p.set_defaults(func=_eval_cmd)
