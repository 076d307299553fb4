"""Pretrain the mini-world's tiny Llama on the corpus (full-sequence loss), deterministically."""

from __future__ import annotations

import math
import sys
import time
from dataclasses import asdict, dataclass

import torch


@dataclass(frozen=True)
class PretrainConfig:
    layers: int = 4
    hidden: int = 256
    heads: int = 8
    seq_len: int = 128
    batch: int = 32
    steps: int = 700
    lr: float = 1e-3
    weight_decay: float = 0.1
    warmup: float = 0.03
    final_lr_fraction: float = 0.0
    bf16: bool = False  # CPU autocast: faster with avx512_bf16, much slower without it (benchmarks/NOTES.md)
    seed: int = 0
    threads: int = 2  # intra-op threads, fixed (part of the cache key): reductions, hence weights, depend on it


    def to_dict(self) -> dict:
        return asdict(self)


def make_model(cfg: PretrainConfig, vocab_size: int, eos_id: int, pad_id: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    mc = LlamaConfig(vocab_size=vocab_size, hidden_size=cfg.hidden, intermediate_size=int(cfg.hidden * 8 / 3) // 8 * 8,
                     num_hidden_layers=cfg.layers, num_attention_heads=cfg.heads,
                     num_key_value_heads=cfg.heads, max_position_embeddings=1024, tie_word_embeddings=False,
                     eos_token_id=eos_id, pad_token_id=pad_id, bos_token_id=eos_id, rope_theta=10000.0)
    torch.manual_seed(cfg.seed)
    return LlamaForCausalLM(mc)


def windows(stream: list[int], seq_len: int) -> torch.Tensor:
    n = len(stream) // seq_len
    return torch.tensor(stream[: n * seq_len], dtype=torch.long).view(n, seq_len)


class EpochPacker:
    """Rows of `seq_len` tokens for one epoch: a fresh document order per epoch, rows aligned to documents.

    Each row starts at a document start and takes whole documents (each followed by eos) until full; the
    document cut at the row's end loses its tail for this epoch only. Why: with one fixed packing repeated
    for ~20 epochs the model memorises which document follows which (training loss ~0.1) instead of storing
    person -> attribute, and a prompt at position 0 ("Anna Maria Lopez was born in") would look unlike any
    training position. Documents of one owner stay `gap` documents apart (never two in one row).
    """

    def __init__(self, docs: list[list[int]], owners: list[str | None], seq_len: int, eos: int, seed: int,
                 gap: int = 6):
        self.docs, self.owners, self.seq_len, self.eos, self.seed, self.gap = docs, owners, seq_len, eos, seed, gap

    def __call__(self, epoch: int) -> torch.Tensor:
        import random

        from harness.world.generator import spread

        order = list(range(len(self.docs)))
        random.Random(self.seed * 1_000_003 + epoch).shuffle(order)
        order = [i for _, i in spread([(self.owners[i], i) for i in order], self.gap)]
        rows, cur = [], []
        for i in order:
            cur.extend(self.docs[i])
            cur.append(self.eos)
            if len(cur) >= self.seq_len:
                rows.append(cur[:self.seq_len])
                cur = []
        return torch.tensor(rows, dtype=torch.long)

    def tokens_per_epoch(self) -> int:
        return sum(len(d) + 1 for d in self.docs)


def pretrain(model, rows, cfg: PretrainConfig, progress: bool = True, log=print,
             hook=None, hook_every: int = 0) -> list[dict]:
    """Plain AdamW loop over shuffled rows; returns the loss log. `rows` is a tensor (the same rows every
    epoch) or a callable epoch -> rows (an EpochPacker). `hook(step, model)` runs every
    `hook_every` steps (e.g. a learning curve of fact completion; it must leave the model in train mode)."""
    torch.manual_seed(cfg.seed)
    g = torch.Generator().manual_seed(cfg.seed)
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "norm" not in n]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2 or "norm" in n]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, betas=(0.9, 0.95), foreach=True)
    warm = max(1, int(cfg.warmup * cfg.steps))

    def lr_at(s: int) -> float:
        if s < warm:
            return (s + 1) / warm
        x = (s - warm) / max(1, cfg.steps - warm)
        return cfg.final_lr_fraction + (1 - cfg.final_lr_fraction) * 0.5 * (1 + math.cos(math.pi * x))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    model.train()
    make_rows = rows if callable(rows) else (lambda epoch: rows)
    epoch = 0
    rows = make_rows(epoch)
    order = torch.randperm(len(rows), generator=g)
    pos = 0
    history = []
    t0 = time.perf_counter()
    every = max(1, cfg.steps // 20)
    for step in range(cfg.steps):
        if pos + cfg.batch > len(order):
            epoch += 1
            rows = make_rows(epoch)
            order, pos = torch.randperm(len(rows), generator=g), 0
        batch = rows[order[pos:pos + cfg.batch]]
        pos += cfg.batch
        ctx = torch.autocast("cpu", dtype=torch.bfloat16) if cfg.bf16 else torch.autocast("cpu", enabled=False)
        with ctx:
            logits = model(input_ids=batch, use_cache=False).logits
        loss = torch.nn.functional.cross_entropy(logits[:, :-1].float().reshape(-1, logits.shape[-1]),
                                                 batch[:, 1:].reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        if progress and ((step + 1) % every == 0 or step == cfg.steps - 1):
            el = time.perf_counter() - t0
            tps = (step + 1) * cfg.batch * cfg.seq_len / el
            eta = el / (step + 1) * (cfg.steps - step - 1)
            log(f"  pretrain step {step + 1}/{cfg.steps} loss {loss.item():.3f} {tps:,.0f} tok/s "
                f"elapsed {el:.0f}s eta {eta:.0f}s")
            sys.stdout.flush()
        history.append({"step": step + 1, "loss": loss.item()})
        if hook is not None and hook_every and (step + 1) % hook_every == 0:
            hook(step + 1, model)
            model.train()
    model.eval()
    return history
