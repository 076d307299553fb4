"""Per-example ("varlen") attention for packed rows on CPU.

A packed row holds several examples back to back. transformers keeps them apart by turning the restarting
position ids into a block-diagonal [B, 1, T, T] mask, and sdpa then scores every query against every key of
the row: T^2 pairs per row, however short the examples are. On the mini-world's data (examples of ~60 tokens in
512-token rows) that is several times the within-example causal attention that is actually needed, and with
an explicit mask the CPU flash kernel cannot skip the blocks above the diagonal either.

Here each example of a row is attended on its own, with ``is_causal=True``: the same function (no query sees
another example or a later token), only the pairs inside an example's causal triangle are computed. It is
what flash-attention's varlen kernels do on GPUs (``cu_seqlens``); on CPU it is a loop of sdpa calls over views
of the row (``split`` forward, one ``cat`` backward, no copies per example).

The engine turns it on per forward pass (:func:`varlen_attention`): inside the context the model's config
names :data:`NAME`, whose mask function builds no mask, and the forward call carries ``segment_lengths`` (per
row, the lengths of its examples and of its padding tail, from :func:`harness.packing.collate`). Outside it,
the model is untouched; checkpoints keep ``sdpa``. A forward under :data:`NAME` without segment lengths raises
instead of silently attending across examples.
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Sequence

import torch
import torch.nn.functional as F

NAME = "harness_varlen_sdpa"
_REGISTERED = False


def varlen_sdpa(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                segment_lengths: Sequence[Sequence[int]] | None = None, **kwargs) -> tuple[torch.Tensor, None]:
    """transformers attention-interface function. query [B, Hq, T, D], key/value [B, Hkv, T, D] ->
    ([B, T, Hq, D], None). `segment_lengths[b]` lists the examples of row b in order (summing to T); a trailing
    ``-n`` marks n padding positions, whose outputs are zero (nothing reads them: they are never keys of a real
    token and carry no loss)."""
    if segment_lengths is None:
        raise RuntimeError(f"{NAME} needs segment_lengths for every forward pass: without them packed examples "
                           "would attend to each other (use harness.attention.varlen_attention)")
    if attention_mask is not None:
        raise RuntimeError(f"{NAME} is for packed rows without a padding mask")
    window = kwargs.get("sliding_window")
    longest = max((n for row in segment_lengths for n in row), default=0)
    if window and longest > window:
        raise RuntimeError(f"{NAME}: an example of {longest} tokens exceeds the sliding window ({window})")
    gqa = query.shape[1] != key.shape[1]
    rows = []
    # rows as [1, H, T, D] views: sdpa's CPU flash kernel takes 4-d inputs (3-d ones go to the slower math path)
    for q, k, v, lens in zip(query.split(1), key.split(1), value.split(1), segment_lengths):
        sizes = [abs(n) for n in lens]
        if sum(sizes) != q.shape[2]:
            raise RuntimeError(f"{NAME}: segment lengths {list(lens)} do not cover the row's {q.shape[2]} tokens")
        outs = []
        for n, qs, ks, vs in zip(lens, q.split(sizes, 2), k.split(sizes, 2), v.split(sizes, 2)):
            if n < 0:  # padding tail: no attention computed
                outs.append(qs.new_zeros(qs.shape))
            else:
                outs.append(F.scaled_dot_product_attention(qs, ks, vs, dropout_p=dropout, is_causal=True,
                                                           scale=scaling, enable_gqa=gqa))
        rows.append(outs[0] if len(outs) == 1 else torch.cat(outs, 2))
    return (rows[0] if len(rows) == 1 else torch.cat(rows)).transpose(1, 2), None


def _no_mask(*args, **kwargs) -> None:
    return None  # varlen_sdpa isolates the examples itself


def register() -> None:
    """Make :data:`NAME` known to transformers (attention and mask interfaces). Idempotent."""
    global _REGISTERED
    if _REGISTERED:
        return
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(NAME, varlen_sdpa)
    AttentionMaskInterface.register(NAME, _no_mask)
    _REGISTERED = True


def _configs(model: torch.nn.Module) -> list:
    """Every distinct config object the model's modules read their attention implementation from."""
    seen: dict[int, object] = {}
    for m in model.modules():
        cfg = getattr(m, "config", None)
        if cfg is not None and hasattr(cfg, "_attn_implementation"):
            seen.setdefault(id(cfg), cfg)
    return list(seen.values())


@contextlib.contextmanager
def varlen_attention(model: torch.nn.Module, configs: list | None = None) -> Iterator[None]:
    """Within the context, `model`'s attention is :func:`varlen_sdpa` (the forward must pass
    ``segment_lengths=``); on leaving, each config's previous implementation is restored."""
    register()
    configs = _configs(model) if configs is None else configs
    before = [c._attn_implementation for c in configs]
    try:
        for c in configs:
            c._attn_implementation = NAME
        yield
    finally:
        for c, b in zip(configs, before):
            c._attn_implementation = b


def row_lengths(seq_ids: torch.Tensor) -> list[list[int]]:
    """Segment lengths per row from a batch's example ids ([B, T], -1 on padding): the examples in order, then
    ``-n`` for a padding tail of n tokens. Padding must be at the end of a row (as collate lays it out)."""
    out = []
    for row in seq_ids.tolist():
        lens: list[int] = []
        prev = None
        for s in row:
            if s != prev:
                if prev == -1:
                    raise ValueError("padding inside a packed row")
                lens.append(0)
                prev = s
            lens[-1] += 1
        if prev == -1:
            lens[-1] = -lens[-1]
        out.append(lens)
    return out


def supports_varlen(model: torch.nn.Module, sample_ids: torch.Tensor) -> bool:
    """Checked numerically, like the split LM head: two copies of `sample_ids` packed into one row give, under
    varlen_sdpa, the logits the model gives with its own block-diagonal mask. A model whose attention does
    something else (soft-capping, sinks, a bias) fails and keeps its own path."""
    ids = sample_ids.reshape(-1)
    n = ids.numel()
    if n < 2:
        return False
    row = torch.cat([ids, ids[: n // 2]])[None]
    pos = torch.cat([torch.arange(n), torch.arange(n // 2)])[None].to(ids.device)
    lens = [[n, n // 2]]
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            ref = model(input_ids=row, position_ids=pos, use_cache=False).logits
            with varlen_attention(model):
                mine = model(input_ids=row, position_ids=pos, use_cache=False, segment_lengths=lens).logits
    except Exception:  # an architecture whose attention cannot take it
        return False
    finally:
        model.train(was)
    return ref.shape == mine.shape and bool(torch.allclose(ref.float(), mine.float(), rtol=1e-4, atol=1e-4))
