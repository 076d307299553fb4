"""The SFT loop: one run of the grid is ``train(run_spec, run_dir)``.

Plain torch, no trainer framework. Examples are tokenized once, masked by the run's regime, packed into rows
with per-example position ids (attention isolated: no attention mask, ``use_cache=False``; or, with
``train.layout: bucketed``, one example per right-padded row in length-sorted causal micro-batches, see
harness/packing.py), and optimized with a loss normalised over the *whole* optimizer step (all micro-batches,
all ranks). Everything needed to resume bit-exactly lives in one ``state`` dict saved with each checkpoint.

Speed (CPU and GPU): the LM head is applied only where it is needed. The decoder body runs on every token,
but logits are computed for the supervised positions (with gradient) and, on logging steps, for the other
prompt/response positions of the fixed-mask metrics (without gradient). With a short response and a
vocabulary that is large next to the hidden size, the head is most of the FLOPs, so this is the main win
(a model whose logits are not a plain ``lm_head(hidden)``, e.g. with soft-capping, is detected at start and
falls back to full logits).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import sys
import time
from pathlib import Path
from typing import Callable, NamedTuple

import torch
import torch.nn.functional as F

from harness.checkpoint import latest_checkpoint, load_state, prune_checkpoints, save_checkpoint
from harness.config import ExperimentConfig, RunSpec, TrainConfig, save_yaml
from harness.data import ConversationTokenizer, apply_all, load_conversations, load_tokenizer, tokenize_all
from harness.data.prepare import MaskedData
from harness.data.templates import resolve_template
from harness.distributed import Dist
from harness.errors import ConfigError, HarnessError, SupervisionError
from harness.loss import loss_denominator, token_weights
from harness.optim import lr_lambda, make_optimizer
from harness.packing import Batch, bucket_rows, collate, epoch_order, pack_rows, row_width, segment_masks, short_rows
from harness.provenance import file_sha256, provenance
from harness.runs import atomic_write_json, atomic_write_text, now_iso

log = logging.getLogger("harness.train")
try:  # transformers' per-shard progress bars drown the training log
    from transformers.utils import logging as _hf_logging

    _hf_logging.disable_progress_bar()
except ImportError:  # pragma: no cover
    pass

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16,
          "float64": torch.float64, "auto": "auto"}
# the per-step metrics vector, summed over micro-batches and ranks (float64, one all-reduce)
M_LOSS, M_RESP, M_NRESP, M_PROMPT, M_NPROMPT, M_TOKENS, M_SUP = range(7)


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


def _is_local(path: str | Path) -> bool:
    p = Path(path)
    return str(path).startswith((".", "/", "~")) or len(p.parts) > 2 or p.exists()


def check_model(cfg: ExperimentConfig) -> None:
    """Fail before any data work: the model path exists and its positions cover data.max_length."""
    from transformers import AutoConfig

    path = cfg.model.name_or_path
    if _is_local(path) and not (Path(path).expanduser() / "config.json").exists():
        raise ConfigError("model path not found" if not Path(path).exists() else "no config.json in model path",
                          where=str(path), fix="check model.name_or_path (build the mini-world with "
                          "`harness world build`)")
    try:
        mcfg = AutoConfig.from_pretrained(path, trust_remote_code=cfg.model.trust_remote_code,
                                          revision=cfg.model.revision)
    except OSError as exc:
        raise ConfigError(f"cannot load the model config: {exc}", where=str(path),
                          fix="check the path or hub name; offline runs need a local copy") from None
    max_pos = getattr(mcfg, "max_position_embeddings", None)
    if max_pos and cfg.data.max_length > max_pos:
        raise ConfigError(f"data.max_length {cfg.data.max_length} exceeds the model's {max_pos} positions",
                          where="data.max_length", fix=f"set data.max_length <= {max_pos}")


def load_model(cfg: ExperimentConfig, path: str | Path, device: torch.device):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=DTYPES[cfg.model.dtype],
                                                 attn_implementation=cfg.model.attn_implementation,
                                                 trust_remote_code=cfg.model.trust_remote_code,
                                                 revision=cfg.model.revision, use_safetensors=True)
    model.config.use_cache = False  # a KV cache is useless in training and breaks packed attention isolation
    return model.to(device)


def set_dropout(model: torch.nn.Module, p: float) -> None:
    """Override every dropout probability (config fields for code that reads them, modules for the rest)."""
    for key in list(vars(model.config)):
        if "dropout" in key and isinstance(getattr(model.config, key), float):
            setattr(model.config, key, p)
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = p
        elif hasattr(m, "attention_dropout") and isinstance(m.attention_dropout, float):
            m.attention_dropout = p


class PlannedStep(NamedTuple):
    epoch: int  # 0-based epoch the step belongs to
    rows: list  # packed rows (harness.packing.Row) of the whole step, all ranks
    epochs_done: float  # epochs completed after this step, e.g. 1.5 halfway through the second


def plan_steps(data: MaskedData, cfg: ExperimentConfig) -> list[PlannedStep]:
    """Every optimizer step of the run: a pure function of the data, seed and budget, so a resumed run needs
    only its step number to continue with exactly the rows it would have seen."""
    tc, L = cfg.train, cfg.data.max_length
    lengths = [len(t) for t in data.examples]
    sup = [m.n_supervised for m in data.masks]
    rows_per_step = max(1, tc.batch_tokens // L)
    plan: list[PlannedStep] = []
    seen, epoch = 0, 0
    while True:
        rows = pack_rows(lengths, L, epoch_order(len(lengths), tc.seed, epoch), tc.packing)
        steps = [rows[i:i + rows_per_step] for i in range(0, len(rows), rows_per_step)]
        n = len(steps)
        if tc.budget == "epochs":
            remaining = tc.epochs - epoch
            take = n if remaining >= 1 else max(1, math.ceil(remaining * n))
            plan += [PlannedStep(epoch, s, round(epoch + (k + 1) / n, 6)) for k, s in enumerate(steps[:take])]
            if remaining <= 1:
                break
        else:  # stop at the first step that reaches the budget: every regime sees the same supervised tokens
            for k, s in enumerate(steps):
                plan.append(PlannedStep(epoch, s, round(epoch + (k + 1) / n, 6)))
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


def split_lm_head(model: torch.nn.Module, sample_ids: torch.Tensor | None = None):
    """(body, head) when the model's logits are exactly ``head(body(...).last_hidden_state)``, else None.

    Checked numerically on `sample_ids` (eval mode, no grad): a model that scales or soft-caps its logits
    fails the check and trains with full logits instead of silently training the wrong function."""
    head = model.get_output_embeddings()
    body = getattr(model, getattr(model, "base_model_prefix", ""), None)
    if not isinstance(head, torch.nn.Linear) or not isinstance(body, torch.nn.Module) or body is model:
        return None
    if sample_ids is not None:
        was = model.training
        model.eval()
        try:
            with torch.no_grad():
                full = model(input_ids=sample_ids, use_cache=False).logits
                mine = head(body(input_ids=sample_ids, use_cache=False).last_hidden_state)
        finally:
            model.train(was)
        if full.shape != mine.shape or not torch.allclose(full.float(), mine.float(), rtol=1e-4, atol=1e-4):
            log.info("logits are not lm_head(hidden) for %s: full logits", type(model).__name__)
            return None
    return body, head


def _autocast(precision: str, device: torch.device):
    if precision == "bf16" or (precision == "auto" and device.type == "cuda"):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


class Engine:
    """One optimizer step, exactly as ``train()`` runs it (benchmarks drive it directly).

    ``step(batches)`` takes this rank's micro-batches of the step, computes the step-wide loss denominator
    (all micro-batches, all ranks), accumulates gradients, reduces them across ranks, clips, and steps the
    optimizer and schedule. Returns the step's metrics vector (M_* indices), summed over ranks."""

    def __init__(self, model: torch.nn.Module, tc: TrainConfig, total_steps: int, dist: Dist | None = None,
                 precision: str = "auto", sample_ids: torch.Tensor | None = None):
        self.model, self.tc = model, tc
        self.dist = dist or Dist()
        self.device = next(model.parameters()).device
        self.amp = lambda: _autocast(precision, self.device)
        if tc.dropout is not None:
            set_dropout(model, tc.dropout)
        if tc.gradient_checkpointing:
            # non-reentrant: works with inputs that need no grad and keeps dropout's RNG replay exact
            kw = {"use_reentrant": False}
            if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.x name
                model.activation_checkpointing_enable(activation_checkpointing_kwargs=kw)
            else:
                model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kw)
        split = split_lm_head(model, sample_ids)
        self.head = split[1] if split else None
        core = split[0] if split else model
        self.fwd = torch.compile(core) if tc.compile else core
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.opt = make_optimizer(model, tc)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lr_lambda(tc, total_steps))
        model.train()

    def step(self, batches: list[Batch], *, metrics: bool = True, step: int = 0) -> tuple[torch.Tensor, float]:
        """Returns (metrics vector summed over ranks, grad norm before clipping). Raises TrainingError on a
        non-finite loss or gradient, before the optimizer touches the weights."""
        norm, dev, dist = self.tc.normalization, self.device, self.dist
        # the step's denominator over every micro-batch and rank: accumulation == one big batch
        denom = sum((loss_denominator(b.labels, b.weights, norm, b.seq_ids) for b in batches),
                    torch.zeros((), device=dev)).double()
        denom = dist.all_reduce(denom)
        if float(denom) <= 0:
            raise SupervisionError(f"optimizer step {step} has zero supervised tokens", where="train",
                                   fix="check the regime and data (harness inspect)")
        m = torch.zeros(7, dtype=torch.float64, device=dev)
        for b in batches:
            m += self._micro(b, denom, norm, metrics)
        if dist.world > 1:
            dist.all_reduce_grads(self.params)
            m = dist.all_reduce(m)
        max_norm = self.tc.max_grad_norm or float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, max_norm) if self.params else torch.zeros(())
        finite = torch.isfinite(torch.stack([m[M_LOSS], grad_norm.to(m)]))
        if not bool(finite.all()):  # same verdict on every rank: loss and grads were all-reduced
            what = "loss" if not bool(finite[0]) else "gradient norm"
            value = float(m[M_LOSS] if what == "loss" else grad_norm)
            self.opt.zero_grad(set_to_none=True)
            raise TrainingError(f"non-finite {what} ({value}) at optimizer step {step}", where="train",
                                fix="lower train.lr, set train.max_grad_norm, or check the data; the last "
                                "COMPLETED checkpoint is kept and a rerun resumes from it")
        self.opt.step()
        self.sched.step()
        self.opt.zero_grad(set_to_none=True)
        return m, float(grad_norm)

    def _micro(self, b: Batch, denom: torch.Tensor, norm: str, metrics: bool) -> torch.Tensor:
        m = torch.zeros(7, dtype=torch.float64, device=denom.device)
        kw = dict(input_ids=b.input_ids, position_ids=b.position_ids, attention_mask=b.attention_mask,
                  use_cache=False)
        eff = token_weights(b.labels, b.weights, norm, b.seq_ids)  # [B, T-1] weight of each next-token target
        sup = eff > 0
        with self.amp():
            out = self.fwd(**kw)
        if self.head is not None:
            hidden = out.last_hidden_state[:, :-1]  # position t predicts token t+1
            with self.amp():
                logits = self.head(hidden[sup])
            nll_sup = _nll(logits, b.labels[:, 1:][sup])
        else:
            hidden = None
            nll_all = _nll(out.logits[:, :-1].flatten(0, 1), b.input_ids[:, 1:].flatten()).view(sup.shape)
            nll_sup = nll_all[sup]
        loss = (eff[sup].to(nll_sup.dtype) * nll_sup).sum() / denom.to(nll_sup.dtype)
        loss.backward()
        m[M_LOSS] = loss.detach().double()
        m[M_TOKENS] = b.n_tokens
        m[M_SUP] = sup.sum()
        if metrics:  # fixed-mask NLL (same masks for every regime), from this very forward pass
            with torch.no_grad():
                resp, prompt = segment_masks(b)
                nll = torch.zeros(sup.shape, dtype=torch.float64, device=sup.device)
                nll[sup] = nll_sup.detach().double()
                rest = (resp | prompt) & ~sup
                if hidden is None:
                    nll[rest] = nll_all.detach()[rest].double()
                elif bool(rest.any()):
                    with self.amp():
                        logits = self.head(hidden.detach()[rest])
                    nll[rest] = _nll(logits, b.input_ids[:, 1:][rest]).double()
                m[M_RESP], m[M_NRESP] = (nll * resp).sum(), resp.sum()
                m[M_PROMPT], m[M_NPROMPT] = (nll * prompt).sum(), prompt.sum()
        return m


def _nll(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    if logits.dtype in (torch.float16, torch.bfloat16):  # half-precision logits: the loss is taken in fp32
        logits = logits.float()
    return F.cross_entropy(logits, targets, reduction="none")


def _progress(total: int, start: int):
    if sys.stderr.isatty():
        from tqdm.auto import tqdm

        return tqdm(total=total, initial=start, unit="step", dynamic_ncols=True)
    return None


# ------------------------------------------------------------------------------------------ the loop


def train(spec: RunSpec, run_dir: str | Path, *, should_stop: Callable[[], bool] | None = None) -> dict:
    """Train one run into `run_dir`, resuming from its newest COMPLETED checkpoint.

    Returns a summary (also written to ``DONE``); with status "interrupted" when `should_stop()` became true
    on any rank (a checkpoint was saved at that step). A run already DONE returns its summary at once."""
    started = time.perf_counter()
    cfg, tc = spec.config, spec.config.train
    run_dir = Path(run_dir)
    if (run_dir / "DONE").exists():
        return json.loads((run_dir / "DONE").read_text() or "{}")
    should_stop = should_stop or (lambda: False)
    check_model(cfg)
    dist = Dist.from_env()
    device = dist.device
    if tc.threads and device.type == "cpu":
        torch.set_num_threads(tc.threads)
    torch.manual_seed(tc.seed + dist.rank)  # dropout (its own stream per rank); the weights are loaded

    tok, data = prepare_data(cfg)
    stats = data.stats()
    plan = plan_steps(data, cfg)
    total = len(plan)
    save_at = {i + 1 for i in range(total)
               if i == total - 1 or (tc.save_every_epoch and plan[i + 1].epoch != plan[i].epoch)}
    if tc.save_every_steps:
        save_at |= set(range(tc.save_every_steps, total + 1, tc.save_every_steps))
    pad = tok.pad_token_id
    if pad is None:  # load_tokenizer already falls back to eos; a tokenizer with neither still trains
        pad = 0
        log.warning("tokenizer has no pad or eos token: padding with id 0 (never attended to, never in the loss)")

    resume = latest_checkpoint(run_dir)
    model = load_model(cfg, resume[1] if resume else cfg.model.name_or_path, device)
    first = data.examples[plan[0].rows[0].examples[0]]
    sample = torch.as_tensor(first.input_ids[:32], device=device)[None]
    eng = Engine(model, tc, total, dist, tc.precision, sample_ids=sample)

    # the one resumable dict: everything that makes a resumed run bit-identical to an uninterrupted one
    state = {"step": 0, "supervised_tokens": 0, "tokens": 0, "train_seconds": 0.0, "total_steps": total,
             "mask_hash": stats["mask_hash"]}
    if resume:
        saved = load_state(resume[1])
        prog = saved["progress"]
        if (prog.get("total_steps"), prog.get("mask_hash")) != (total, stats["mask_hash"]) and "mask_hash" in prog:
            raise ConfigError(f"checkpoint {resume[1].name} was trained on other data or another plan "
                              f"({prog.get('total_steps')} steps, mask {prog.get('mask_hash')}; now {total}, "
                              f"{stats['mask_hash']})", where=str(run_dir),
                              fix="use a fresh run directory (the run id changes with the config)")
        eng.opt.load_state_dict(saved["optimizer"])
        eng.sched.load_state_dict(saved["scheduler"])
        rngs = saved["rng"]  # one per rank; a different world size continues from rank 0's
        rng = rngs[dist.rank] if len(rngs) == dist.world else rngs[0]
        torch.set_rng_state(rng["cpu"])
        if device.type == "cuda" and "cuda" in rng:
            torch.cuda.set_rng_state(rng["cuda"])
        state.update(prog)
    if dist.rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_yaml(cfg, run_dir / "config.yaml")
        atomic_write_json(run_dir / "provenance.json", provenance(
            run_id=spec.run_id, config_hash=spec.config_hash,
            data={"train": cfg.data.train.path, "sha256": file_sha256(cfg.data.train.path)}, mask=stats,
            tokenizer={"pad_token": tok.pad_token, "pad_token_id": pad, "eos_token": tok.eos_token},
            engine={"lm_head": "supervised positions" if eng.head is not None else "full logits",
                    "optimizer": type(eng.opt).__name__, "device": str(device)},
            steps=total, world_size=dist.world, started=now_iso(), resumed_from=state["step"] if resume else None))
        _truncate_metrics(run_dir / "metrics.jsonl", state["step"])
        if data.drops.total:
            log.warning("%s: dropped %s", spec.run_id, data.drops.describe())

    L = cfg.data.max_length
    rows_per_micro = max(1, (tc.micro_batch_tokens or tc.batch_tokens) // L)
    lengths = [len(t) for t in data.examples]
    bar = _progress(total, state["step"]) if dist.rank == 0 else None
    try:
        for step in range(state["step"], total):
            t0 = time.perf_counter()
            rows = plan[step].rows
            mine = rows[dist.rank::dist.world]  # data parallel: rank r takes every world-th row of the step
            batches = layout_step(mine, data, tc, L, pad, lengths, rows_per_micro)
            batches = [b.to(device) for b in batches]
            logging_step = (step + 1) % tc.log_every == 0 or step == total - 1
            lr = eng.sched.get_last_lr()[0]
            m, grad_norm = eng.step(batches, metrics=logging_step, step=step + 1)
            dt = time.perf_counter() - t0
            state["step"] = step + 1
            state["tokens"] += int(m[M_TOKENS])
            state["supervised_tokens"] += int(m[M_SUP])
            state["train_seconds"] += dt
            if dist.rank == 0 and logging_step:
                row = {"step": state["step"], "epoch": plan[step].epochs_done, "lr": lr, "loss": float(m[M_LOSS]),
                       "loss_response": float(m[M_RESP] / m[M_NRESP]) if m[M_NRESP] else None,
                       "loss_prompt": float(m[M_PROMPT] / m[M_NPROMPT]) if m[M_NPROMPT] else None,
                       "supervised_tokens": state["supervised_tokens"], "tokens": state["tokens"],
                       "tokens_per_s": round(float(m[M_TOKENS]) / dt, 1), "grad_norm": grad_norm,
                       "time": now_iso()}
                with open(run_dir / "metrics.jsonl", "a") as fh:
                    fh.write(json.dumps(row) + "\n")
                _report(bar, row, total)
            stop = dist.any(bool(should_stop()))
            if state["step"] in save_at or stop:
                rng = dist.gather_object({"cpu": torch.get_rng_state(),
                                          **({"cuda": torch.cuda.get_rng_state()} if device.type == "cuda" else {})})
                if dist.rank == 0:
                    save_checkpoint(run_dir, state["step"], model, tok, {
                        "optimizer": eng.opt.state_dict(), "scheduler": eng.sched.state_dict(), "rng": rng,
                        "progress": dict(state)})
                    prune_checkpoints(run_dir, tc.keep_last)
                dist.barrier()
            if stop:
                return {"status": "interrupted", "run_id": spec.run_id, "step": state["step"], "total_steps": total}
    finally:
        if bar is not None:
            bar.close()
    summary = {"status": "done", "run_id": spec.run_id, "steps": total, "supervised_tokens":
               state["supervised_tokens"], "tokens": state["tokens"],
               "train_seconds": round(state["train_seconds"], 3),
               "wall_seconds": round(time.perf_counter() - started, 3),  # this call: data, model, steps, saves
               "finished": now_iso()}
    if dist.rank == 0:
        atomic_write_text(run_dir / "DONE", json.dumps(summary) + "\n")  # written last
    dist.barrier()
    dist.close()
    return summary


def layout_step(mine: list, data: MaskedData, tc: TrainConfig, max_length: int, pad: int,
                lengths: list[int] | None = None, rows_per_micro: int | None = None) -> list[Batch]:
    """This rank's rows of one step -> its micro-batches (CPU tensors), per ``train.layout``.

    A pure function of the step's rows: resumed runs see the same batches. Both layouts hold the same examples
    and tokens (harness.packing explains the two)."""
    if lengths is None:
        lengths = [len(t) for t in data.examples]
    budget = tc.micro_batch_tokens or tc.batch_tokens
    if tc.layout == "bucketed":
        return [collate(g, data.examples, data.masks, pad, width=row_width(g, cap=max_length), causal=True)
                for g in bucket_rows(mine, lengths, budget, cap=max_length)]
    per_micro = rows_per_micro or max(1, budget // max_length)
    if tc.packing and mine and not tc.compile:  # the same examples in rows only as long as they need
        mine = short_rows(mine, lengths)        # (cheaper attention)
        longest = max(r.length for r in mine)
        per_micro = max(1, tc.micro_batch_tokens // longest) if tc.micro_batch_tokens else len(mine)
    # compiled: every packed micro-batch max_length wide, so the graph sees one shape (a new width recompiles)
    width = max_length if (tc.compile and tc.packing) else None
    return [collate(mine[i:i + per_micro], data.examples, data.masks, pad, tc.packing, width=width)
            for i in range(0, len(mine), per_micro)]


def _truncate_metrics(path: Path, step: int) -> None:
    """On resume, drop log rows written after the checkpoint we resume from (they will be redone)."""
    if not path.exists():
        return
    keep = [ln for ln in path.read_text().splitlines() if ln.strip() and json.loads(ln).get("step", 0) <= step]
    atomic_write_text(path, "".join(ln + "\n" for ln in keep))


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
    """`harness train EXP.yaml [-o k=v ...] [--run PREFIX] [--out DIR]`: train one run of the grid in-process."""
    p = subparsers.add_parser("train", help="train one run of an experiment's grid in this process (resumes)")
    p.add_argument("experiment", help="experiment YAML")
    p.add_argument("-o", "--override", action="append", help="dotted override, e.g. train.lr=1e-5")
    p.add_argument("--run", metavar="PREFIX", help="run id (or unique prefix) to train; default: the first run")
    p.add_argument("--out", metavar="DIR", help="run directory (default: <results_dir>/<name>/runs/<run_id>)")
    p.set_defaults(func=_train_cmd)
    return p


def select_run(runs, prefix: str | None):
    """The first run, or the one whose id starts with `prefix` (ambiguous or unknown: a clear error)."""
    if not prefix:
        return runs[0]
    hits = [r for r in runs if r.run_id.startswith(prefix)]
    if len(hits) == 1:
        return hits[0]
    ids = ", ".join(r.run_id for r in (hits or runs)[:8])
    raise ConfigError(f"{'several' if hits else 'no'} runs match --run {prefix!r}", where="--run",
                      fix=f"give a longer prefix; runs: {ids}")


def _train_cmd(args: argparse.Namespace) -> int:
    from harness.config import load_experiment
    from harness.runs import run_dir

    exp = load_experiment(args.experiment, args.override)
    spec = select_run(exp.runs, args.run)
    rdir = Path(args.out) if args.out else run_dir(exp, spec)
    print(f"training {spec.run_id} -> {rdir}", file=sys.stderr)
    summary = train(spec, rdir)
    print(json.dumps(summary))
    return 0
