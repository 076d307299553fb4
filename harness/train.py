"""The SFT loop: one run of the grid is ``train(run_spec, run_dir)``.

Plain torch, no trainer framework. Examples are tokenized once, masked by the run's regime, packed into rows
with per-example position ids (attention isolated: no attention mask, ``use_cache=False``), and optimized with
a loss normalised over the *whole* optimizer step (all micro-batches, all ranks). Everything needed to resume
bit-exactly lives in one ``state`` dict saved with each checkpoint.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import sys
import time
from pathlib import Path
from typing import Callable

import torch

from harness.checkpoint import latest_checkpoint, load_state, prune_checkpoints, save_checkpoint
from harness.config import ExperimentConfig, RunSpec, save_yaml, to_dict
from harness.data import ConversationTokenizer, apply_all, load_conversations, load_tokenizer, tokenize_all
from harness.data.prepare import MaskedData
from harness.data.templates import resolve_template
from harness.distributed import Dist
from harness.errors import ConfigError, HarnessError, SupervisionError
from harness.loss import loss_denominator, loss_from_nll, per_token_nll
from harness.optim import lr_lambda, make_optimizer
from harness.packing import collate, epoch_order, pack_rows, segment_masks
from harness.provenance import file_sha256, provenance
from harness.runs import atomic_write_json, atomic_write_text, now_iso

log = logging.getLogger("harness.train")
try:  # transformers' per-shard progress bars drown the training log
    from transformers.utils import logging as _hf_logging

    _hf_logging.disable_progress_bar()
except ImportError:  # pragma: no cover
    pass


class TrainingError(HarnessError):
    """Training cannot continue (non-finite loss, ...). The last COMPLETED checkpoint is kept."""


# ------------------------------------------------------------------------------------------ building blocks


def prepare_data(cfg: ExperimentConfig, tokenizer=None) -> tuple[object, MaskedData]:
    """Tokenizer + the run's training examples under its regime (drops counted; all dropped is an error)."""
    mc, dc = cfg.model, cfg.data
    tok = tokenizer or load_tokenizer(mc.tokenizer or mc.name_or_path, trust_remote_code=mc.trust_remote_code,
                                      chat_template=resolve_template(mc.chat_template))
    convs = load_conversations(dc.train.path, fmt=dc.train.format, split=dc.train.split, name=dc.train.name,
                               limit=dc.train.limit, system_prompt=dc.system_prompt,
                               require_assistant=cfg.regime.name != "prompt_only")
    ct = ConversationTokenizer(tok, eot=dc.eot, boundary=dc.boundary, max_length=dc.max_length,
                               truncation=dc.truncation)
    examples, drops = tokenize_all(convs, ct)
    data = apply_all(examples, cfg.regime.name, cfg.regime.options(), drops)
    if not data.examples:
        raise SupervisionError(f"every one of the {len(convs)} examples was dropped ({data.drops.describe()})",
                               where=dc.train.path, fix="check data.max_length / data.truncation and the regime "
                               "(harness inspect shows the masks)")
    return tok, data


def load_model(cfg: ExperimentConfig, path: str | Path, device: torch.device):
    from transformers import AutoModelForCausalLM

    p = Path(path)
    if (str(path).startswith((".", "/")) or len(p.parts) > 2) and not p.exists():
        raise ConfigError("model path not found", where=str(path),
                          fix="check model.name_or_path (build the mini-world with `harness world build`)")
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16,
             "float64": torch.float64, "auto": "auto"}[cfg.model.dtype]
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, attn_implementation=cfg.model.attn_implementation,
                                                 trust_remote_code=cfg.model.trust_remote_code,
                                                 revision=cfg.model.revision, use_safetensors=True)
    model.config.use_cache = False  # a KV cache is useless in training and breaks packed attention isolation
    return model.to(device)


def set_dropout(model: torch.nn.Module, p: float) -> None:
    for key in list(vars(model.config)):
        if "dropout" in key and isinstance(getattr(model.config, key), float):
            setattr(model.config, key, p)
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = p
        elif hasattr(m, "attention_dropout") and isinstance(m.attention_dropout, float):
            m.attention_dropout = p


def plan_steps(data: MaskedData, cfg: ExperimentConfig) -> list[tuple[int, list]]:
    """(epoch, rows) for every optimizer step: a pure function of the data, seed and budget."""
    tc, L = cfg.train, cfg.data.max_length
    lengths = [len(t) for t in data.examples]
    sup = [m.n_supervised for m in data.masks]
    rows_per_step = max(1, tc.batch_tokens // L)
    plan: list[tuple[int, list]] = []
    seen, epoch = 0, 0
    while True:
        rows = pack_rows(lengths, L, epoch_order(len(lengths), tc.seed, epoch), tc.packing)
        steps = [rows[i:i + rows_per_step] for i in range(0, len(rows), rows_per_step)]
        if tc.budget == "epochs":
            remaining = tc.epochs - epoch
            take = len(steps) if remaining >= 1 else max(1, math.ceil(remaining * len(steps)))
            plan += [(epoch, s) for s in steps[:take]]
            if remaining <= 1:
                break
        else:
            for s in steps:
                plan.append((epoch, s))
                seen += sum(sup[i] for r in s for i in r.examples)
                if seen >= tc.supervised_tokens:
                    break
            if seen >= tc.supervised_tokens:
                break
            if epoch > 10_000:
                raise ConfigError("supervised-token budget needs more than 10,000 epochs",
                                  where="train.supervised_tokens", fix="lower the budget")
        epoch += 1
    if tc.max_steps:
        plan = plan[: tc.max_steps]
    return plan


def _autocast(cfg: ExperimentConfig, device: torch.device):
    use = cfg.train.precision == "bf16" or (cfg.train.precision == "auto" and device.type == "cuda")
    if use:
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _progress(total: int, start: int):
    if sys.stderr.isatty():
        from tqdm.auto import tqdm

        return tqdm(total=total, initial=start, unit="step", dynamic_ncols=True)
    return None


# ------------------------------------------------------------------------------------------ the loop


def train(spec: RunSpec, run_dir: str | Path, *, should_stop: Callable[[], bool] | None = None) -> dict:
    """Train one run into `run_dir`, resuming from its newest COMPLETED checkpoint. Returns a summary; with
    status "interrupted" when `should_stop()` became true (a checkpoint was saved at that step)."""
    cfg, tc = spec.config, spec.config.train
    run_dir = Path(run_dir)
    if (run_dir / "DONE").exists():
        return json.loads((run_dir / "DONE").read_text() or "{}")
    should_stop = should_stop or (lambda: False)
    dist = Dist.from_env()
    device = dist.device
    if tc.threads and device.type == "cpu":
        torch.set_num_threads(tc.threads)
    torch.manual_seed(tc.seed)

    tok, data = prepare_data(cfg)
    plan = plan_steps(data, cfg)
    total = len(plan)
    last_of_epoch = {i for i in range(total) if i == total - 1 or (tc.save_every_epoch and plan[i + 1][0] != plan[i][0])}
    epoch_at = epoch_fractions(plan)
    resume = latest_checkpoint(run_dir)
    model = load_model(cfg, resume[1] if resume else cfg.model.name_or_path, device)
    max_pos = getattr(model.config, "max_position_embeddings", None)
    if max_pos and cfg.data.max_length > max_pos:
        raise ConfigError(f"data.max_length {cfg.data.max_length} exceeds the model's {max_pos} positions",
                          where="data.max_length", fix=f"set data.max_length <= {max_pos}")
    if tok.pad_token_id is None:
        raise ConfigError("tokenizer has no pad token", where="model.tokenizer", fix="set one")
    if tc.dropout is not None:
        set_dropout(model, tc.dropout)
    if tc.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    fwd = torch.compile(model) if tc.compile else model
    opt = make_optimizer(model, tc)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(tc, total))

    # the one resumable dict: everything that makes a resumed run bit-identical to an uninterrupted one
    state = {"step": 0, "supervised_tokens": 0, "tokens": 0, "train_seconds": 0.0}
    if resume:
        saved = load_state(resume[1])
        opt.load_state_dict(saved["optimizer"])
        sched.load_state_dict(saved["scheduler"])
        torch.set_rng_state(saved["rng_cpu"])
        if device.type == "cuda" and "rng_cuda" in saved:
            torch.cuda.set_rng_state(saved["rng_cuda"])
        state = saved["progress"]
    if dist.rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_yaml(cfg, run_dir / "config.yaml")
        stats = data.stats()
        atomic_write_json(run_dir / "provenance.json", provenance(
            run_id=spec.run_id, config_hash=spec.config_hash, data={"train": cfg.data.train.path,
            "sha256": file_sha256(cfg.data.train.path)}, mask=stats, steps=total, world_size=dist.world,
            started=now_iso(), resumed_from=state["step"] if resume else None))
        _truncate_metrics(run_dir / "metrics.jsonl", state["step"])
    if data.drops.total and dist.rank == 0:
        log.warning("%s: dropped %s", spec.run_id, data.drops.describe())

    L, norm = cfg.data.max_length, tc.normalization
    rows_per_micro = max(1, (tc.micro_batch_tokens or tc.batch_tokens) // L)
    pad = tok.pad_token_id
    params = [p for p in model.parameters() if p.requires_grad]
    bar = _progress(total, state["step"]) if dist.rank == 0 else None
    model.train()
    for step in range(state["step"], total):
        t0 = time.perf_counter()
        epoch, rows = plan[step]
        mine = rows[dist.rank::dist.world]  # data parallel: rank r takes every world-th row of the step
        batches = [collate(mine[i:i + rows_per_micro], data.examples, data.masks, pad, tc.packing).to(device)
                   for i in range(0, len(mine), rows_per_micro)]
        # the step's denominator over every micro-batch and rank: accumulation == one big batch
        denom = sum((loss_denominator(b.labels, b.weights, norm, b.seq_ids) for b in batches),
                    torch.zeros((), device=device))
        denom = dist.all_reduce(denom.double())
        if float(denom) <= 0:
            raise SupervisionError(f"optimizer step {step} has zero supervised tokens", where=spec.run_id,
                                   fix="check the regime and data (harness inspect)")
        # loss, response nll sum/count, prompt nll sum/count, real tokens, supervised tokens (summed over ranks)
        m = torch.zeros(7, dtype=torch.float64, device=device)
        for b in batches:
            with _autocast(cfg, device):
                logits = fwd(input_ids=b.input_ids, position_ids=b.position_ids, attention_mask=b.attention_mask,
                             use_cache=False).logits
            nll = per_token_nll(logits, b.input_ids)  # every position once; the regime picks its weights
            loss = loss_from_nll(nll, b.labels, b.weights, norm, denominator=denom, seq_ids=b.seq_ids)
            if not torch.isfinite(loss):
                raise TrainingError(f"non-finite loss ({loss.item()}) at optimizer step {step + 1} (epoch {epoch})",
                                    where=spec.run_id, fix="lower train.lr or check the data; the last COMPLETED "
                                    "checkpoint is kept")
            loss.backward()
            with torch.no_grad():
                resp, prompt = segment_masks(b)
                nd = nll.detach().double()
                m += torch.stack([loss.detach().double(), (nd * resp).sum(), resp.sum().double(),
                                  (nd * prompt).sum(), prompt.sum().double(),
                                  torch.tensor(float(b.n_tokens), dtype=torch.float64, device=device),
                                  (b.weights[:, 1:] > 0).sum().double()])
        if dist.world > 1:
            dist.all_reduce_grads(params)
            m = dist.all_reduce(m)
        grad_norm = torch.nn.utils.clip_grad_norm_(params, tc.max_grad_norm or float("inf"))
        lr = sched.get_last_lr()[0]
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        dt = time.perf_counter() - t0
        state["step"] = step + 1
        state["tokens"] += int(m[5])
        state["supervised_tokens"] += int(m[6])
        state["train_seconds"] += dt
        if dist.rank == 0 and (state["step"] % tc.log_every == 0 or step == total - 1):
            row = {"step": state["step"], "epoch": epoch_at[step], "lr": lr, "loss": float(m[0]),
                   "loss_response": float(m[1] / m[2]) if m[2] else None,
                   "loss_prompt": float(m[3] / m[4]) if m[4] else None,
                   "supervised_tokens": state["supervised_tokens"], "tokens": state["tokens"],
                   "tokens_per_s": round(float(m[5]) / dt, 1), "grad_norm": float(grad_norm), "time": now_iso()}
            with open(run_dir / "metrics.jsonl", "a") as fh:
                fh.write(json.dumps(row) + "\n")
            _report(bar, row, total)
        stop = should_stop()
        if step in last_of_epoch or stop or (tc.save_every_steps and state["step"] % tc.save_every_steps == 0):
            if dist.rank == 0:
                save_checkpoint(run_dir, state["step"], model, tok, {
                    "optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "rng_cpu": torch.get_rng_state(),
                    **({"rng_cuda": torch.cuda.get_rng_state()} if device.type == "cuda" else {}),
                    "progress": dict(state)})
                prune_checkpoints(run_dir, tc.keep_last)
            dist.barrier()
        if stop:
            if bar is not None:
                bar.close()
            return {"status": "interrupted", "step": state["step"], "total_steps": total}
    if bar is not None:
        bar.close()
    summary = {"status": "done", "run_id": spec.run_id, "steps": total, "supervised_tokens":
               state["supervised_tokens"], "tokens": state["tokens"],
               "train_seconds": round(state["train_seconds"], 3), "finished": now_iso()}
    if dist.rank == 0:
        atomic_write_text(run_dir / "DONE", json.dumps(summary) + "\n")  # written last
    dist.close()
    return summary


def epoch_fractions(plan: list) -> list[float]:
    """Epochs completed after each step, e.g. 1.5 halfway through the second epoch."""
    per_epoch: dict[int, int] = {}
    for e, _ in plan:
        per_epoch[e] = per_epoch.get(e, 0) + 1
    out, seen = [], {}
    for e, _ in plan:
        seen[e] = seen.get(e, 0) + 1
        out.append(round(e + seen[e] / per_epoch[e], 6))
    return out


def _truncate_metrics(path: Path, step: int) -> None:
    """On resume, drop log rows written after the checkpoint we resume from (they will be redone)."""
    if not path.exists():
        return
    keep = [ln for ln in path.read_text().splitlines() if ln.strip() and json.loads(ln).get("step", 0) <= step]
    atomic_write_text(path, "".join(ln + "\n" for ln in keep))


def _report(bar, row: dict, total: int) -> None:
    if bar is not None:
        bar.update(1)
        bar.set_postfix(loss=f"{row['loss']:.4f}", tok_s=f"{row['tokens_per_s']:.0f}")
    elif row["step"] == total or row["step"] % max(1, total // 10) == 0:
        print(f"step {row['step']}/{total} epoch {row['epoch']:.2f} loss {row['loss']:.4f} "
              f"resp {row['loss_response'] if row['loss_response'] is None else round(row['loss_response'], 4)} "
              f"lr {row['lr']:.2e} {row['tokens_per_s']:.0f} tok/s", flush=True)
