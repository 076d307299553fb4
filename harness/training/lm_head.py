"""The LM head and its cross-entropy in vocabulary chunks: no [positions, vocab] logits tensor is ever kept.

Why: Gemma-3-270M's vocabulary has 262,144 entries, so the logits of 1,000 positions take 1 GB in fp32, and
autograd would keep them, their log-softmax and then their gradient alive for the backward pass. Here the
forward pass keeps only each position's log-sum-exp and target logit; the backward pass recomputes one vocabulary
chunk of logits at a time, turns it into that chunk's softmax gradient in place, and writes the head weight's
gradient rows for the chunk directly (each vocabulary row belongs to exactly one chunk: nothing [vocab, hidden]
is accumulated). The numbers are those of ``F.cross_entropy(head(hidden), targets, reduction="none")`` up to
summation order (tests/test_lm_head.py).

Under autocast (bf16) the two matrix products per chunk run in the autocast dtype, as ``nn.Linear`` would; the
log-sum-exp, the softmax and every accumulation stay in fp32.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

#: logits elements per chunk (fp32: 128 MiB): one chunk covers the whole vocabulary of a small model
CHUNK_ELEMENTS = 1 << 25
#: up to this many logits (fp32: 16 MiB) in a single chunk, the forward's logits are kept for the backward instead
#: of recomputed: the same matrix product on the same inputs, so the same numbers, one GEMM fewer (a mini-world
#: step's head: 4 MB of logits; benchmarks/NOTES.md)
KEEP_ELEMENTS = 1 << 22


def vocab_chunk(n_positions: int, vocab: int, budget: int = CHUNK_ELEMENTS) -> int:
    """Vocabulary entries per chunk: the chunk's logits stay within `budget` elements (multiple of 256)."""
    width = budget // max(1, n_positions)
    return max(256, min(vocab, width // 256 * 256 or 256))


def _acc(dt: torch.dtype) -> torch.dtype:
    """Softmax and accumulation dtype: fp32, or fp64 for fp64 models (the exactness tests)."""
    return torch.float64 if dt == torch.float64 else torch.float32


def _compute_dtype(hidden: torch.Tensor) -> torch.dtype:
    dev = hidden.device.type
    if torch.is_autocast_enabled(dev):
        return torch.get_autocast_dtype(dev)
    return hidden.dtype


class _ChunkedHeadNLL(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, chunk):
        dt = _compute_dtype(hidden)
        with torch.autocast(hidden.device.type, enabled=False):
            h = hidden.to(dt)
            n, vocab = h.shape[0], weight.shape[0]
            acc = _acc(dt)
            lse = torch.full((n,), float("-inf"), dtype=acc, device=h.device)
            tgt = torch.zeros(n, dtype=acc, device=h.device)
            rows = torch.arange(n, device=h.device)
            for s in range(0, vocab, chunk):
                e = min(vocab, s + chunk)
                z = F.linear(h, weight[s:e].to(dt), None if bias is None else bias[s:e].to(dt)).to(acc)
                lse = torch.logaddexp(lse, torch.logsumexp(z, -1))
                inside = (targets >= s) & (targets < e)
                if bool(inside.any()):
                    tgt[inside] = z[rows[inside], targets[inside] - s]
        keep = chunk >= vocab and z.numel() <= KEEP_ELEMENTS  # one chunk, small: its logits serve the backward
        ctx.save_for_backward(hidden, weight, bias if bias is not None else torch.empty(0), targets, lse,
                              z if keep else torch.empty(0))
        ctx.chunk, ctx.dt, ctx.has_bias, ctx.kept = chunk, dt, bias is not None, keep
        return lse - tgt

    @staticmethod
    def backward(ctx, grad_nll):
        hidden, weight, bias, targets, lse, kept = ctx.saved_tensors
        chunk, dt = ctx.chunk, ctx.dt
        bias = bias if ctx.has_bias else None
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        acc = _acc(dt)
        g = grad_nll.to(acc)[:, None]
        with torch.autocast(hidden.device.type, enabled=False):
            h = hidden.to(dt)
            n, vocab = h.shape[0], weight.shape[0]
            gh = torch.zeros(h.shape, dtype=acc, device=h.device) if need_h else None
            gw = torch.empty_like(weight) if need_w else None
            gb = torch.empty_like(bias) if (need_b and bias is not None) else None
            rows = torch.arange(n, device=h.device)
            for s in range(0, vocab, chunk):
                e = min(vocab, s + chunk)
                wc = weight[s:e].to(dt)
                if ctx.kept:  # a new tensor: the kept logits stay as they were (a second backward sees them)
                    p = kept.sub(lse[:, None]).exp_()
                else:
                    z = F.linear(h, wc, None if bias is None else bias[s:e].to(dt)).to(acc)
                    p = z.sub_(lse[:, None]).exp_()  # the chunk's softmax, in place of its logits
                inside = (targets >= s) & (targets < e)
                if bool(inside.any()):
                    p[rows[inside], targets[inside] - s] -= 1.0
                p.mul_(g)  # d loss / d logits of the chunk
                if gb is not None:
                    gb[s:e] = p.sum(0).to(gb.dtype)
                pc = p.to(dt)
                if gh is not None:
                    gh += (pc @ wc).to(acc)
                if gw is not None:
                    gw[s:e] = (pc.t() @ h).to(gw.dtype)
        return (None if gh is None else gh.to(hidden.dtype)), gw, gb, None, None


def head_nll(hidden: torch.Tensor, head: torch.nn.Linear, targets: torch.Tensor,
             chunk: int | None = None) -> torch.Tensor:
    """NLL [N] (fp32; fp64 for an fp64 model) of `targets` [N] under ``head(hidden)`` for hidden states [N, H], in vocabulary chunks.

    Differentiable in `hidden` and the head's parameters; never materialises more than one chunk of logits."""
    if hidden.shape[0] == 0:  # keeps the graph connected: a micro-batch with no such position adds exactly 0
        return hidden.sum(-1).float() * 0.0
    c = chunk or vocab_chunk(hidden.shape[0], head.weight.shape[0])
    return _ChunkedHeadNLL.apply(hidden, head.weight, head.bias, targets.long(), c)
