"""How fast could the world's pretraining step be without computing something else? Its matrix-product floor.

One step of the demo world's pretraining (`harness.world.pretrain`, the 4x128 Llama, 16 x 128 tokens, AdamW,
the same threads) is run under a dispatch mode that records every matrix product it calls (mm, addmm, bmm,
and the attention kernel), with its shapes and dtypes. Those products alone are then replayed, on fresh
tensors of the same shapes, in the same process and thread count, and timed; so is the whole step.

    step_ms / gemm_ms  =  the largest speed-up any change to the loop can give while it still computes the
                          same fp32 products in the same shapes (fusing elementwise work, compiling, fewer
                          Python ops, another optimizer implementation all leave them in place);
    step_ms / ideal_ms =  the same bound if every product (GEMMs and the causal half of attention) ran at
                          this machine's 2048^3 GEMM peak and nothing else cost anything: a bound no loop
                          that computes the same fp32 products can pass.

Issue #33 asked for world pretraining tokens/s x2 (new / old); this measures whether x2 is possible on the
machine at hand. Usage: `python benchmarks/pretrain_floor.py [--steps 40] [--rounds 5]`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, gemm_peak, machine  # noqa: E402

import torch  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402

aten = torch.ops.aten
PRODUCTS = {aten.mm.default, aten.addmm.default, aten.bmm.default, aten.baddbmm.default}
ATTENTION = {getattr(aten, n).default for n in ("_scaled_dot_product_flash_attention_for_cpu",
                                                 "_scaled_dot_product_flash_attention_for_cpu_backward")
             if hasattr(aten, n)}


class Recorder(TorchDispatchMode):
    """Records (op, args as shapes/dtypes) of every matrix product and attention kernel, then runs it."""

    def __init__(self):
        super().__init__()
        self.calls: list[tuple] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in PRODUCTS or func in ATTENTION:
            self.calls.append((func, [_spec(a) for a in args], {k: _spec(v) for k, v in kwargs.items()}))
        return func(*args, **kwargs)


def _spec(x):
    if isinstance(x, torch.Tensor):
        return ("T", tuple(x.shape), tuple(x.stride()), x.dtype)
    return ("V", x)


def _make(spec, g: torch.Generator):
    if spec[0] != "T":
        return spec[1]
    _, shape, stride, dtype = spec
    if dtype.is_floating_point:
        t = torch.empty_strided(shape, stride, dtype=dtype)
        return t.copy_(torch.randn(shape, generator=g, dtype=torch.float32).to(dtype) * 0.02)
    return torch.zeros(shape, dtype=dtype)


def flops(func, args) -> float:
    shp = [a[1] for a in args if a[0] == "T"]
    if func is aten.mm.default:
        (m, k), (_, n) = shp[0], shp[1]
        return 2.0 * m * k * n
    if func is aten.addmm.default:
        (m, k), (_, n) = shp[1], shp[2]
        return 2.0 * m * k * n
    if func in (aten.bmm.default, aten.baddbmm.default):
        a, b = shp[-2], shp[-1]
        return 2.0 * a[0] * a[1] * a[2] * b[2]
    return 0.0  # attention kernel: see attention_flops


def attention_flops(func, args) -> float:
    """The fewest FLOPs the attention kernel's products can take: q (B, H, S, D), causal, so half of
    Q K^T and P V (4 B H S^2 D / 2) forward, and twice that backward (dQ, dK, dV, dP)."""
    if func not in ATTENTION:
        return 0.0
    b, h, s, d = args[0][1]
    fwd = 4.0 * b * h * s * s * d / 2
    return fwd * (2 if "backward" in str(func) else 1)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=40, help="steps (or replays) per timing round")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "pretrain_floor.json")
    args = ap.parse_args()

    from harness.world.build import SIZES
    from harness.world.pretrain import make_model, pretrain

    vocab = SIZES["demo"]["vocab"]
    cfg = replace(SIZES["demo"]["pretrain"], steps=args.steps, warmup=0.0)
    torch.set_num_threads(cfg.threads)
    rows = torch.randint(1, vocab, (527, cfg.seq_len), generator=torch.Generator().manual_seed(0))

    rec = Recorder()
    with rec:
        pretrain(make_model(replace(cfg, steps=1), vocab, 0, 0), rows, replace(cfg, steps=1), progress=False)
    kinds = Counter(str(f).split(".")[-2] for f, _, _ in rec.calls)
    gemm_flop = sum(flops(f, a) for f, a, _ in rec.calls)
    attn_flop = sum(attention_flops(f, a) for f, a, _ in rec.calls)
    g = torch.Generator().manual_seed(0)
    replay = [(f, [_make(a, g) for a in a_], {k: _make(v, g) for k, v in kw.items()}) for f, a_, kw in rec.calls]
    gemm_only = [c for c in replay if c[0] in PRODUCTS]

    def run_replay(calls) -> float:
        t0 = time.perf_counter()
        for _ in range(args.steps):
            for f, a, kw in calls:
                f(*a, **kw)
        return (time.perf_counter() - t0) / args.steps * 1e3

    step_ms, all_ms, gemm_ms = [], [], []
    for _ in range(args.rounds):  # interleaved, best of rounds: the least disturbed of each
        model = make_model(cfg, vocab, 0, 0)
        t0 = time.perf_counter()
        pretrain(model, rows, cfg, progress=False)
        step_ms.append((time.perf_counter() - t0) / args.steps * 1e3)
        all_ms.append(run_replay(replay))
        gemm_ms.append(run_replay(gemm_only))
    best = min
    peak = {t: gemm_peak(t) for t in (1, cfg.threads)}
    ideal_ms = (gemm_flop + attn_flop) / peak[cfg.threads] * 1e3
    res = {"machine": machine(), "gemm_2048_gflops": {f"{t}_threads": round(v / 1e9, 1) for t, v in peak.items()},
           "threads": cfg.threads, "shape": f"{cfg.layers}x{cfg.hidden}, vocab {vocab}",
           "batch": f"{cfg.batch}x{cfg.seq_len}", "calls": dict(kinds), "gemm_gflop_per_step": round(gemm_flop / 1e9, 2),
           "step_ms": round(best(step_ms), 1), "gemm_ms": round(best(gemm_ms), 1),
           "gemm_and_attention_ms": round(best(all_ms), 1),
           "attention_gflop_per_step_causal_min": round(attn_flop / 1e9, 2),
           "ideal_ms_all_products_at_2048_peak": round(ideal_ms, 1),
           "max_speedup_ideal": round(best(step_ms) / ideal_ms, 3),
           "gemm_gflops_in_step_shapes": round(gemm_flop / best(gemm_ms) / 1e6, 1),
           "max_speedup_same_products": round(best(step_ms) / best(all_ms), 3),
           "max_speedup_same_gemms": round(best(step_ms) / best(gemm_ms), 3),
           "tok_s": round(cfg.batch * cfg.seq_len / best(step_ms) * 1e3),
           "all_step_ms": [round(x, 1) for x in step_ms], "all_gemm_ms": [round(x, 1) for x in gemm_ms],
           "all_products_ms": [round(x, 1) for x in all_ms]}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=2) + "\n")
    print(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
