"""The SFT loop: one run of the grid is ``train(run_spec, run_dir)``.

Plain torch, no trainer framework. Examples are tokenized once, masked by the run's regime, laid into
micro-batches by ``train.layout`` (packed rows with per-example position ids, attention isolated: no attention
mask, ``use_cache=False``; see harness/training/packing.py), and optimized with a loss normalised over the
*whole* optimizer step (all micro-batches, all ranks; harness/training/engine.py). Everything needed to resume
bit-exactly lives in one ``state`` dict saved with each checkpoint.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from harness import adapters
from harness.attention import needs_one_row
from harness.commands import help_line
from harness.config import ExperimentConfig, save_yaml, to_dict
from harness.data import ConversationTokenizer, load_conversations, per_turn, tokenize_all
from harness.errors import ConfigError, SupervisionError
from harness.fsio import atomic_write_json, atomic_write_text, fault_point, now_iso
from harness.grid import RunSpec, load_experiment, select_run
from harness.layout import RunDir
from harness.masking import MaskedData, apply_all, regime_options
from harness.modeling import check_model, load_model, tokenizer_for
from harness.stages import base_weights, init_checkpoint
from harness.progress import TrainingProgress
from harness.provenance import file_sha256, provenance
from harness.training.checkpoint import load_state, prune_checkpoints, save_checkpoint
from harness.training.distributed import Dist
from harness.training.engine import Engine
from harness.training.freeze import freeze
from harness.training.fsdp import save_checkpoint as fsdp_checkpoint
from harness.training.packing import Batch, PlannedStep, layout_step, plan_steps
from harness.training.replay import ReplayStats, add_replay
from harness.tracking import open_trackers

log = logging.getLogger("harness.train")


def prepare_data(cfg: ExperimentConfig, tokenizer=None) -> tuple[object, MaskedData]:
    """Tokenizer + the run's training examples under its regime (drops counted; all dropped is an error)."""
    dc = cfg.data
    tok = tokenizer or tokenizer_for(cfg)
    convs = load_conversations(dc.train.path, fmt=dc.train.format, split=dc.train.split, name=dc.train.name,
                               limit=dc.train.limit, system_prompt=dc.system_prompt, tools=dc.train.tools,
                               require_assistant=cfg.regime.name != "prompt_only")
    if cfg.regime.multiturn == "per_turn":
        convs = per_turn(convs)
    ct = ConversationTokenizer(tok, eot=dc.eot, boundary=dc.boundary, max_length=dc.max_length,
                               truncation=dc.truncation, literal_content=dc.literal_content)
    examples, drops = tokenize_all(convs, ct)
    data = apply_all(examples, cfg.regime.name, regime_options(cfg.regime), drops)
    if not data.examples:
        raise SupervisionError(f"every one of the {len(convs)} examples was dropped ({data.drops.describe()})",
                               where=dc.train.path, fix="check data.max_length / data.truncation and the regime "
                               "(harness inspect shows the masks)")
    return tok, data


@dataclass
class Setup:
    """Everything ``train()`` builds before its first step; the benchmarks step exactly this."""

    cfg: ExperimentConfig
    dist: Dist
    tok: object
    data: MaskedData
    plan: list[PlannedStep]
    pad: int
    model: torch.nn.Module
    engine: Engine
    resume: tuple[int, Path] | None  # the COMPLETED checkpoint the weights came from
    mask_stats: dict | None = None  # the SFT data's mask statistics (MaskedData.stats(), before replay)
    replay: ReplayStats | None = None  # what data.replay added to the steps

    def batches(self, step: int) -> list[Batch]:
        """This rank's micro-batches of optimizer step `step` (0-based), on the device."""
        cfg, tc = self.cfg, self.cfg.train
        mine = self.plan[step].rows[self.dist.rank::self.dist.world]  # rank r: every world-th row of the step
        L = cfg.data.max_length
        per_micro = max(1, (tc.micro_batch_tokens or tc.batch_tokens) // L)
        one_row = needs_one_row(cfg.model.attn_implementation)  # see packing.layout_step
        batches = layout_step(mine, self.data, tc, L, self.pad, self._lengths, per_micro, one_row)
        return [b.to(self.dist.device) for b in batches]

    def __post_init__(self):
        self._lengths = [len(t) for t in self.data.examples]


def setup(cfg: ExperimentConfig, rd: RunDir | None = None, dist: Dist | None = None) -> Setup:
    """Data, plan, model (from `rd`'s newest COMPLETED checkpoint if it has one, frozen as train.freeze says) and
    engine."""
    tc = cfg.train
    check_model(cfg)
    dist = dist or Dist()
    if tc.threads and dist.device.type == "cpu":
        torch.set_num_threads(tc.threads)
    torch.manual_seed(tc.seed + dist.rank)  # dropout (its own stream per rank); the weights are loaded
    tok, data = prepare_data(cfg)
    plan = plan_steps(data, cfg)
    mask_stats = data.stats()
    data, plan, replay = add_replay(data, plan, cfg, tok)  # no-op without data.replay
    pad = tok.pad_token_id
    if pad is None:  # tokenizer loading already falls back to eos; a tokenizer with neither still trains
        pad = 0
        log.warning("tokenizer has no pad or eos token: padding with id 0 (never attended to, never in the loss)")
    resume = rd.latest_checkpoint() if rd is not None else None
    # a later stage (model.init_from) starts from the previous stage's final checkpoint, not the base
    model = load_model(cfg, resume[1] if resume else base_weights(cfg), dist.device, training=True)
    freeze(adapters.unwrap(model), tc.freeze)  # before the engine: it optimizes what requires grad
    first = data.examples[plan[0].rows[0].examples[0]]
    sample = torch.as_tensor(first.input_ids[:32], device=dist.device)[None]
    engine = Engine(model, tc, len(plan), dist, sample_ids=sample)
    return Setup(cfg, dist, tok, data, plan, pad, model, engine, resume, mask_stats, replay)


def train(spec: RunSpec, run_dir: RunDir | str | Path, *, should_stop: Callable[[], bool] = lambda: False) -> dict:
    """Train one run into `run_dir` (the launcher's RunDir, or a directory: ``harness train --out``), resuming
    from its newest COMPLETED checkpoint.

    Returns a summary (also written to ``DONE``); with status "interrupted" when `should_stop()` became true
    on any rank (a checkpoint was saved at that step). A run already DONE returns its summary at once."""
    started = time.perf_counter()
    cfg, tc = spec.config, spec.config.train
    rd = RunDir.at(run_dir)
    if rd.done.exists():
        return json.loads(rd.done.read_text() or "{}")
    s = setup(cfg, rd, Dist.from_env())
    dist, eng, plan, total = s.dist, s.engine, s.plan, len(s.plan)
    stats = s.mask_stats or s.data.stats()
    save_at = {i + 1 for i in range(total)
               if i == total - 1 or (tc.save_every_epoch and plan[i + 1].epoch != plan[i].epoch)}
    if tc.save_every_steps:
        save_at |= set(range(tc.save_every_steps, total + 1, tc.save_every_steps))

    # the one resumable dict: everything that makes a resumed run bit-identical to an uninterrupted one
    state = {"step": 0, "supervised_tokens": 0, "tokens": 0, "train_seconds": 0.0, "total_steps": total,
             "mask_hash": stats["mask_hash"]}
    if s.resume:
        saved = load_state(s.resume[1])
        prog = saved["progress"]
        if (prog.get("total_steps"), prog.get("mask_hash")) != (total, stats["mask_hash"]):
            raise ConfigError(f"checkpoint {s.resume[1].name} was trained on other data or another plan "
                              f"({prog.get('total_steps')} steps, mask {prog.get('mask_hash')}; now {total}, "
                              f"{stats['mask_hash']})", where=str(rd.path),
                              fix="use a fresh run directory (the run id changes with the config)")
        if not eng.load_resumable(saved, s.resume[1]) and prog.get("step") != total:
            raise ConfigError(f"checkpoint {s.resume[1].name} has no optimizer state to resume from",
                              where=str(s.resume[1]), fix="delete it (the previous checkpoint is resumed instead)")
        rngs = saved["rng"]  # one per rank; a different world size continues from rank 0's
        rng = rngs[dist.rank] if len(rngs) == dist.world else rngs[0]
        torch.set_rng_state(rng["cpu"])
        if dist.device.type == "cuda" and "cuda" in rng:
            torch.cuda.set_rng_state(rng["cuda"])
        state.update(prog)
        if dist.rank == 0:  # in the run's log (the worker's stderr), where a reader looks for why it is at N
            print(f"{now_iso()} {spec.run_id}: resumed from step {state['step']} of {total} "
                  f"({s.resume[1]})", file=sys.stderr, flush=True)
    if dist.rank == 0:
        rd.path.mkdir(parents=True, exist_ok=True)
        save_yaml(cfg, rd.config)
        atomic_write_json(rd.provenance, provenance(
            run_id=spec.run_id, config_hash=spec.config_hash,
            data={"train": cfg.data.train.path, "sha256": file_sha256(cfg.data.train.path)}, mask=stats,
            tokenizer={"pad_token": s.tok.pad_token, "pad_token_id": s.pad, "eos_token": s.tok.eos_token},
            engine={"lm_head": "supervised positions" if eng.head is not None else "full logits",
                    "optimizer": type(eng.opt).__name__, "device": str(dist.device)},
            params=adapters.param_counts(s.model), adapter=to_dict(cfg.model.adapter) if cfg.model.adapter.enabled
            else None, replay=None if s.replay is None else {"path": cfg.data.replay.path, "sha256": file_sha256(
                cfg.data.replay.path), **s.replay.as_dict()}, init_from=_init_record(cfg),
            steps=total, world_size=dist.world, started=now_iso(),
            resumed_from=state["step"] if s.resume else None))
        _truncate_metrics(rd.metrics, state["step"])
        if s.data.drops.total:
            log.warning("%s: dropped %s", spec.run_id, s.data.drops.describe())

    bar = _progress(total, state["step"]) if dist.rank == 0 else None
    watch = TrainingProgress(rd, total, state["step"], state["tokens"]) if dist.rank == 0 else None
    track = open_trackers(tc.report_to if dist.rank == 0 else (), rd, spec.run_id, spec.axes,
                          to_dict(cfg), purge_step=state["step"] + 1)  # also drops a killed first attempt's
    try:
        for step in range(state["step"], total):
            t0 = time.perf_counter()
            batches = s.batches(step)
            logging_step = (step + 1) % tc.log_every == 0 or step == total - 1
            lr = eng.sched.get_last_lr()[0]
            m, grad_norm = eng.step(batches, metrics=logging_step, step=step + 1)
            dt = time.perf_counter() - t0
            state["step"] = step + 1
            state["tokens"] += m.tokens
            state["supervised_tokens"] += m.supervised
            state["train_seconds"] += dt
            if dist.rank == 0 and logging_step:
                row = {"step": state["step"], "epoch": plan[step].epochs_done, "lr": lr, "loss": m.loss,
                       "loss_response": m.loss_response, "loss_prompt": m.loss_prompt,
                       "supervised_tokens": state["supervised_tokens"], "tokens": state["tokens"],
                       "tokens_per_s": round(m.tokens / dt, 1), "grad_norm": grad_norm, "time": now_iso()}
                with open(rd.metrics, "a") as fh:
                    fh.write(json.dumps(row) + "\n")
                _report(bar, row, total)
                track.log(row, state["step"], prefix="train/")
            if watch is not None:  # progress.json, for `harness run` (throttled: at most once a second)
                watch.step(state["step"], state["tokens"], m.loss if logging_step else None)
            fault_point("train_step")  # reliability suite: killed (or held) after a logged step
            stop = dist.any(bool(should_stop()))
            if state["step"] in save_at or stop:
                rng = dist.gather_object({"cpu": torch.get_rng_state(), **(
                    {"cuda": torch.cuda.get_rng_state()} if dist.device.type == "cuda" else {})})
                # the last step's checkpoint is resumed only to write DONE: no optimizer state (2x the
                # weights, written and then deleted at once)
                resumable = state["step"] < total
                ck = {**(eng.resumable_state() if resumable else {}), "rng": rng, "progress": dict(state)}
                if eng.sharded is not None:  # every rank: gathered weights + DCP shards (harness/training/fsdp.py)
                    fsdp_checkpoint(rd, state["step"], eng, s.tok, ck, resumable=resumable)
                if dist.rank == 0:
                    if eng.sharded is None:
                        save_checkpoint(rd, state["step"], s.model, s.tok, ck)
                    prune_checkpoints(rd, tc.keep, metric=tc.keep_metric, mode=tc.keep_mode,
                                      every_checkpoint=cfg.eval.every_checkpoint)
                dist.barrier()
            if stop:
                return {"status": "interrupted", "run_id": spec.run_id, "step": state["step"], "total_steps": total}
    finally:
        track.close()
        if dist.world == 1:
            dist.close()  # a one-process group of its own (fsdp) never outlives train(); else a no-op
        if bar is not None:
            bar.close()
    summary = {"status": "done", "run_id": spec.run_id, "steps": total, "supervised_tokens":
               state["supervised_tokens"], "tokens": state["tokens"],
               "train_seconds": round(state["train_seconds"], 3), "params": adapters.param_counts(s.model),
               "wall_seconds": round(time.perf_counter() - started, 3),  # this call: data, model, steps, saves
               "finished": now_iso()}
    if dist.rank == 0:
        atomic_write_text(rd.done, json.dumps(summary) + "\n")  # after the last checkpoint, before evaluation
        prune_checkpoints(rd, tc.keep, metric=tc.keep_metric, mode=tc.keep_mode,  # no resume: no
                          every_checkpoint=cfg.eval.every_checkpoint, finished=True)   # optimizer state
    dist.barrier()
    dist.close()
    return summary


def _init_record(cfg) -> dict | None:
    """Where a later stage's starting weights came from: model.init_from, its checkpoint and the weights' hash."""
    ckpt = init_checkpoint(cfg)
    if ckpt is None:
        return None
    return {"init_from": cfg.model.init_from, "checkpoint": str(ckpt),
            "sha256": {f.name: file_sha256(f) for f in sorted(ckpt.glob("*.safetensors"))}}


def _truncate_metrics(path: Path, step: int) -> None:
    """On resume, drop log rows written after the checkpoint we resume from (they will be redone), and a torn
    last line (a process killed mid-write: docs/results-schema.md); a bad line before the last is an error."""
    if not path.exists():
        return
    lines = [ln for ln in path.read_text(encoding="utf-8", errors="replace").splitlines() if ln.strip()]
    keep = []
    for i, ln in enumerate(lines, 1):
        try:
            row = json.loads(ln)
            if not isinstance(row, dict):
                raise ValueError("not an object")
        except ValueError:
            if i == len(lines):
                log.warning("%s: dropped a torn last line (a process killed while writing it): %.80s", path, ln)
                continue
            raise ConfigError(f"line {i} of the training log is not JSON", where=f"{path}:{i}",
                              fix="delete the run directory to train it again from scratch")
        if row.get("step", 0) <= step:
            keep.append(ln)
    atomic_write_text(path, "".join(ln + "\n" for ln in keep))


def _progress(total: int, start: int):
    if sys.stderr.isatty():
        from tqdm.auto import tqdm

        return tqdm(total=total, initial=start, unit="step", dynamic_ncols=True)
    return None


def _report(bar, row: dict, total: int) -> None:
    if bar is not None:
        bar.update(row["step"] - bar.n)
        bar.set_postfix(loss=f"{row['loss']:.4f}", tok_s=f"{row['tokens_per_s']:.0f}")
    elif row["step"] == total or row["step"] % max(1, total // 10) == 0:
        resp = "-" if row["loss_response"] is None else f"{row['loss_response']:.4f}"
        print(f"step {row['step']}/{total} epoch {row['epoch']:.2f} loss {row['loss']:.4f} resp {resp} "
              f"lr {row['lr']:.2e} {row['tokens_per_s']:.0f} tok/s", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------ CLI


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """`harness train EXP.yaml [-o k=v ...] [--run PATTERN] [--out DIR]`: train one run of the grid in-process."""
    p = subparsers.add_parser("train", help=help_line("train"))
    p.add_argument("experiment", help="experiment YAML")
    p.add_argument("-o", "--override", action="append", help="dotted override, e.g. train.lr=1e-5")
    p.add_argument("--run", metavar="PATTERN", help="run id, or a substring/glob matching one run; default: the first")
    p.add_argument("--out", metavar="DIR", help="run directory (default: <results_dir>/<name>/runs/<run_id>)")
    p.set_defaults(func=_train_cmd)
    return p


def _train_cmd(args: argparse.Namespace) -> int:
    exp = load_experiment(args.experiment, args.override)
    spec = select_run(exp.runs, args.run)
    rd = RunDir(args.out) if args.out else exp.run_dir(spec)
    print(f"training {spec.run_id} -> {rd.path}", file=sys.stderr)
    summary = train(spec, rd)
    print(json.dumps(summary))
    return 0
