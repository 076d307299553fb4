"""Attention kernels for packed rows: which isolate packed examples, where each runs, and ``varlen_attention``.

Why: training packs several examples per row, position ids restarting at 0, no attention mask
(harness/training/packing.py). sdpa and eager then get a dense block-diagonal mask from transformers: R x R
scores per row, of which only the within-example causal part is used. flash_attention_2 skips that work but needs
flash-attn, and transformers finds packed sequences for it only in a batch of ONE row (with several, examples
silently attend to each other; the loop lays one row per micro-batch for it: :func:`needs_one_row`). torch's
``varlen_attn`` is a flash kernel shipped with torch: :func:`make_forward` wraps it as a transformers attention
function that derives the sequence boundaries itself over the flattened batch, so it isolates packed examples
in any number of rows and needs no mask. transformers' ``flex_attention`` isolates several packed rows too (its
block mask carries per-row sequence ids; measured) and runs on CPU, compiled by inductor.

The kernel is one injectable function, so the wrapping (layouts, boundaries, GQA, windows, scaling) is tested on
CPU against a pure-torch reference (tests/test_attention.py); the real varlen_attn is CUDA-only.
"""

from __future__ import annotations

import functools
import importlib.util
import inspect
import math
import shutil
from typing import Callable, NamedTuple

import torch

from harness.errors import ConfigError

try:  # torch >= 2.9; its signature changed by 2.12 (see KernelArgs)
    from torch.nn.attention.varlen import varlen_attn as torch_varlen_attn
except ImportError:  # pragma: no cover - older torch
    torch_varlen_attn = None

VARLEN = "varlen_attention"
HALF = (torch.float16, torch.bfloat16)


def needs_one_row(name: str) -> bool:
    """Whether packed micro-batches must be one row each for `name` to isolate examples: transformers' flash
    path detects packed sequences from position_ids only when the batch is one row."""
    return name.startswith("flash_attention")


def kernel_unavailable(name: str, device: torch.device | str) -> str | None:
    """Why attention kernel `name` cannot run on `device` here (None: it can)."""
    device = torch.device(device)
    if name in ("sdpa", "eager"):
        return None
    if name == "flex_attention":
        if importlib.util.find_spec("torch.nn.attention.flex_attention") is None:
            return f"torch {torch.__version__} has no flex_attention"
        if device.type == "cpu" and not any(shutil.which(c) for c in ("g++", "c++", "clang++")):
            return "flex_attention on CPU is compiled by torch.compile (inductor), which needs a C++ compiler"
        return None
    if name not in (VARLEN, "flash_attention_2"):
        return f"unknown attention implementation {name!r}"
    if device.type != "cuda" or not torch.cuda.is_available():
        return f"{name} is a CUDA-only kernel (device here: {device.type})"
    if torch.cuda.get_device_capability(device) < (8, 0):
        return f"{name} needs an Ampere (sm80) or newer GPU"
    if name == VARLEN and torch_varlen_attn is None:
        return f"torch {torch.__version__} has no torch.nn.attention.varlen (torch >= 2.9 has)"
    if name == "flash_attention_2" and importlib.util.find_spec("flash_attn") is None:
        return "flash-attn is not installed"
    return None


def check_kernel(name: str, device: torch.device | str, dtype=None, *, autocast: bool = False,
                 dropout: float | None = None) -> None:
    """ConfigError, before any weights load, when training with `name` on `device` cannot work. `autocast`:
    the forward runs under half-precision autocast (fp32 weights then feed varlen_attn half inputs)."""
    if (why := kernel_unavailable(name, device)) is not None:
        raise ConfigError(why, where="model.attn_implementation",
                          fix="train on a CUDA GPU, or use sdpa (flex_attention also runs on CPU)")
    if name == VARLEN and dtype in (torch.float32, torch.float64) and not autocast:
        raise ConfigError("varlen_attn computes in float16/bfloat16 only", where="model.dtype",
                          fix="set model.dtype: bfloat16, or train.precision: auto | bf16 (autocast)")
    if name == VARLEN and dropout:
        raise ConfigError("varlen_attn has no attention dropout", where="train.dropout", fix="unset it, or use sdpa")


def eval_implementation(name: str) -> str:
    """The kernel evaluation loads: varlen_attention is for packed training; evaluation's padded (masked), KV-cached
    batches are what sdpa computes, on any device."""
    return "sdpa" if name == VARLEN else name


class KernelArgs(NamedTuple):
    """What a varlen kernel's signature accepts. Older torch (2.9, 2.10): ``varlen_attn(q, k, v, cu_seq_q,
    cu_seq_k, max_q, max_k, is_causal=False, return_aux=None)``; 2.12+ (2.13 here): keyword-only ``scale``,
    ``window_size=(-1, -1)`` (full; ``(-1, 0)`` causal; ``(W, 0)`` causal, W tokens back) and ``enable_gqa``,
    no ``is_causal``."""

    window_size: bool
    enable_gqa: bool
    scale: bool
    is_causal: bool


@functools.lru_cache(maxsize=None)
def kernel_args(kernel: Callable) -> KernelArgs:
    params = inspect.signature(kernel).parameters
    return KernelArgs(*(n in params for n in KernelArgs._fields))


def cu_seqlens(position_ids: torch.Tensor | None, batch: int, seq_len: int,
               device: torch.device) -> tuple[torch.Tensor, int]:
    """(cumulative sequence starts over the flattened ``batch * seq_len`` tokens, int32 [N+1]; longest length).

    A sequence starts at each row start and wherever the position does not continue the previous one by +1 (the
    rule of transformers' packed mask for sdpa): packed examples restart at 0, right padding (position 0 each)
    becomes one-token sequences no real token attends to. No position ids: one sequence per row."""
    if position_ids is None:
        return torch.arange(0, batch * seq_len + 1, seq_len, dtype=torch.int32, device=device), seq_len
    pos = position_ids.to(device).expand(batch, -1)  # models may pass [1, S] for the whole batch
    if pos.shape[-1] != seq_len:
        raise ValueError(f"position_ids cover {pos.shape[-1]} tokens, the attention {seq_len}")
    start = torch.ones_like(pos, dtype=torch.bool)
    start[:, 1:] = pos[:, 1:] != pos[:, :-1] + 1
    starts = start.reshape(-1).nonzero().squeeze(1)
    cu = torch.cat([starts, starts.new_tensor([pos.numel()])]).to(torch.int32)
    return cu, int(cu.diff().max())


def make_forward(kernel: Callable, dtypes: tuple | None = HALF) -> Callable:
    """A transformers attention function over `kernel` (a varlen_attn-like function; its signature is read
    once, here). Inputs [B, H, S, D], output ([B, S, H, D], None). `dtypes`: what the kernel computes in
    (float32 inputs are cast to the autocast dtype, as transformers does for flash; None: any)."""
    args, kname = kernel_args(kernel), getattr(kernel, "__qualname__", repr(kernel))

    def varlen_attention_forward(module, query, key, value, attention_mask, dropout: float = 0.0,
                                 scaling: float | None = None, is_causal: bool | None = None, **kwargs):
        B, H, S, D = query.shape
        if attention_mask is not None or key.shape[2] != S:  # a padding mask or a KV cache: not packed rows
            from transformers.integrations.sdpa_attention import sdpa_attention_forward

            return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                          scaling=scaling, is_causal=is_causal, **kwargs)
        window = kwargs.pop("sliding_window", getattr(module, "sliding_window", None))
        odd = [w for w, v in (("attention dropout", dropout or None), ("softcap", kwargs.get("softcap")),
                              ("sinks", kwargs.get("s_aux")), ("position_bias", kwargs.get("position_bias")))
               if v is not None]
        if odd:
            raise ValueError(f"{VARLEN} cannot compute {', '.join(odd)} (varlen_attn has no such input); "
                             "use attn_implementation sdpa or eager")
        if dtypes is not None and query.dtype not in dtypes:
            if not torch.is_autocast_enabled(query.device.type):
                raise ValueError(f"{VARLEN} computes in {[str(d) for d in dtypes]}, got {query.dtype}: set "
                                 "model.dtype bfloat16 or train with autocast (train.precision auto | bf16)")
            half = torch.get_autocast_dtype(query.device.type)
            query, key, value = query.to(half), key.to(half), value.to(half)
        causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
        given = [kwargs.get(k) for k in ("cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k")]
        if all(g is not None for g in given):
            cu_q, cu_k, max_q, max_k = given[0].to(torch.int32), given[1].to(torch.int32), int(given[2]), int(given[3])
        else:
            cu_q, max_q = cu_seqlens(kwargs.get("position_ids"), B, S, query.device)
            cu_k, max_k = cu_q, max_q
        Hk = key.shape[1]
        q = query.transpose(1, 2).reshape(B * S, H, D)
        k = key.transpose(1, 2).reshape(B * S, Hk, D)
        v = value.transpose(1, 2).reshape(B * S, Hk, value.shape[-1])
        kw = {}
        if Hk != H and args.enable_gqa:
            kw["enable_gqa"] = True
        elif Hk != H:
            k, v = k.repeat_interleave(H // Hk, dim=1), v.repeat_interleave(H // Hk, dim=1)
        if args.scale:
            kw["scale"] = scaling
        elif scaling is not None and not math.isclose(scaling, D ** -0.5):
            q = q * (scaling * math.sqrt(D))  # the kernel scales by 1/sqrt(D)
        windowed = window is not None and max_k > window  # shorter sequences never reach the window's edge
        if args.window_size:
            left = window - 1 if windowed else -1  # transformers: a query sees itself and window-1 before it
            kw["window_size"] = (left, 0 if causal else left)
        elif windowed:
            raise ValueError(f"{kname} has no window_size: it cannot compute this layer's {window}-token sliding "
                             f"window over sequences of up to {max_k} tokens (torch >= 2.12 can; or use sdpa)")
        elif args.is_causal:
            kw["is_causal"] = causal
        elif causal:
            raise ValueError(f"{kname} takes neither window_size nor is_causal: it cannot attend causally")
        out = kernel(q, k, v, cu_q, cu_k, max_q, max_k, **kw)
        out = out[0] if isinstance(out, tuple) else out
        return out.reshape(B, S, H, out.shape[-1]), None

    return varlen_attention_forward


def _mask(**kw):
    """transformers' mask for varlen_attention: none for packed rows (the kernel isolates them from position
    ids); sdpa's where the forward hands over to sdpa (a padding mask, a KV cache)."""
    if kw.get("attention_mask") is None and kw["q_length"] == kw["kv_length"]:
        return None
    from transformers.masking_utils import sdpa_mask

    return sdpa_mask(**kw)


def register(name: str = VARLEN, kernel: Callable | None = None, dtypes: tuple | None = HALF) -> None:
    """Make `name` a transformers attention implementation over `kernel` (default: torch's varlen_attn; none
    where torch has none, which kernel_unavailable reports). Idempotent."""
    from transformers import AttentionInterface, AttentionMaskInterface

    kernel = kernel or torch_varlen_attn
    if kernel is None:
        return
    AttentionInterface.register(name, make_forward(kernel, dtypes))
    AttentionMaskInterface.register(name, _mask)
