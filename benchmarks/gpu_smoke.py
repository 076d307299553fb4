"""GPU smoke and throughput: a Qwen2-0.5B-shaped model (random weights) through the training engine.

    python benchmarks/gpu_smoke.py                 # CUDA: bf16 autocast, packed 2048-token rows
    python benchmarks/gpu_smoke.py --cpu-tiny      # a shrunk model on CPU: checks the script end to end

Same code path as ``train()``: synthetic conversations become ``Tokenized`` examples, the real regime
(``apply_regime``) gives their masks, ``harness.training.loop.Setup.batches`` lays out the micro-batches (its
packing: ``short_rows`` + ``collate``: per-example position ids, no attention mask, one row per micro-batch
for flash_attention_2) and ``harness.training.engine.Engine.step`` runs the optimizer steps (step-wide token
normalisation, LM head on supervised positions, fused AdamW, clipping). Only the tokenizer and the disk are
left out: there is nothing to learn from random weights, and a 0.5B checkpoint write would dominate.

Reported: real (non-pad) tokens/s, peak memory, and MFU = achieved FLOP/s over the card's dense bf16 peak,
with model FLOPs = 6 x params x tokens + causal attention 12 x layers x hidden x (sum over examples of
n(n+1)/2) (the usual convention, LM head on every token). The engine computes the LM head only where a
token is supervised (and, on logging steps, where a metric needs it), so it runs fewer FLOPs than that
convention counts; "executed MFU" counts only those. benchmarks/gpu_suite.py reuses these pieces.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import math
import os
import platform
import random
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from harness.attention import kernel_unavailable, register  # noqa: E402

# dense bf16 peak TFLOP/s (no sparsity), by a substring of torch.cuda.get_device_name()
PEAKS = {"H100": 989.0, "H200": 989.0, "GH200": 989.0, "A100": 312.0, "L40S": 362.0, "A10G": 125.0, "L4": 121.0}

QWEN2_05B = dict(hidden_size=896, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
                 intermediate_size=4864, vocab_size=151936, max_position_embeddings=32768, tie_word_embeddings=True,
                 rope_theta=1_000_000.0, rms_norm_eps=1e-6)
TINY = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, intermediate_size=128,
            vocab_size=1024, max_position_embeddings=512, tie_word_embeddings=True)


def synthetic_examples(n: int, max_len: int, vocab: int, seed: int = 0):
    """Single-turn conversations with SFT-like shapes: prompt 40% / response 60% of 64..max_len tokens."""
    from harness.data.tokenize import Segment, Tokenized

    rng, ids_rng = random.Random(seed), np.random.default_rng(seed)
    out = []
    for _ in range(n):
        total = rng.randint(64, max_len)
        p = max(8, int(total * rng.uniform(0.2, 0.6)))
        r = max(4, total - p - 9)
        seg = ([Segment.TEMPLATE] * 3 + [Segment.USER] * p + [Segment.TEMPLATE] * 4 + [Segment.ASSISTANT] * r
               + [Segment.EOT] + [Segment.TEMPLATE])
        turns = [0] * (3 + p) + [1] * (4 + r + 2)
        ids = ids_rng.integers(3, vocab, len(seg), dtype=np.int64)
        out.append(Tokenized(input_ids=ids, segments=np.array(seg, dtype=np.int8),
                             turns=np.array(turns, dtype=np.int16), offsets=np.zeros((len(seg), 2), np.int32),
                             text="", roles=("user", "assistant"), source=f"synthetic:{len(out)}"))
    return out


def synthetic_data(n: int, max_len: int, vocab: int, regime: str = "prompt_masked", seed: int = 0):
    """`n` synthetic examples under the real regime: a ``MaskedData`` (ids never below 3: 0 is free for pads)."""
    from harness.config import RegimeConfig
    from harness.masking import apply_all, regime_options

    return apply_all(synthetic_examples(n, max_len, vocab, seed), regime, regime_options(RegimeConfig(name=regime)))


def engine_plan(n_steps: int, rows: int, seq: int, vocab: int, regime: str = "prompt_masked"):
    """(synthetic examples, the packed rows of each of `n_steps` steps): first-fit rows of `seq` tokens, `rows`
    per step, from just enough examples (benchmarks/gpu_suite.py gives TRL exactly the examples these hold)."""
    from harness.training.packing import pack_rows

    data = synthetic_data(math.ceil(n_steps * rows * seq / ((64 + seq) / 2) * 1.3) + 8, seq, vocab, regime)
    packed = pack_rows([len(t) for t in data.examples], seq, list(range(len(data.examples))))
    plan = [packed[i * rows:(i + 1) * rows] for i in range(n_steps)]
    if len(plan[-1]) < rows:
        raise RuntimeError("not enough synthetic rows; lower rows or steps")
    return data, plan


def machine(device: torch.device) -> dict:
    v = {"python": platform.python_version(), "cuda": torch.version.cuda}
    for p in ("torch", "transformers", "trl", "datasets", "accelerate", "huggingface-hub", "pyarrow", "tokenizers",
              "numpy", "flash-attn", "dill", "multiprocess", "fsspec"):
        try:
            v[p] = importlib.metadata.version(p)
        except importlib.metadata.PackageNotFoundError:
            v[p] = None
    m = {"platform": platform.platform(), "cpus": os.cpu_count(), "device": str(device), "versions": v,
         "date": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        m.update(gpu=p.name, gpu_memory_gib=round(p.total_memory / 2 ** 30, 1), sm_count=p.multi_processor_count)
    try:  # the device machine's copy may have no .git
        git = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    except OSError:
        git = ""
    return dict(m, git=git or None)


def build_model(shape: dict, attn: str, device: torch.device, dtype=torch.float32, seed: int = 0):
    """Random-init Qwen2 of `shape`, initialised on `device` (no host copy), KV cache off."""
    from transformers import AutoModelForCausalLM, Qwen2Config

    register()  # varlen_attention, before from_config checks the name
    torch.manual_seed(seed)
    with device:
        model = AutoModelForCausalLM.from_config(Qwen2Config(**shape), dtype=dtype, attn_implementation=attn)
    model.config.use_cache = False
    return model


def harness_batches(rows: list, data, attn: str, max_length: int, tc, device: torch.device, pad: int = 0) -> list:
    """The micro-batches ``train()`` would run for these rows of one step: ``Setup.batches`` itself."""
    from harness.config import DataConfig, ExperimentConfig, ModelConfig
    from harness.training.distributed import Dist
    from harness.training.loop import Setup
    from harness.training.packing import PlannedStep

    cfg = ExperimentConfig(model=ModelConfig(attn_implementation=attn), data=DataConfig(max_length=max_length),
                           train=tc)
    ns = SimpleNamespace(cfg=cfg, dist=Dist(device=device), data=data, plan=[PlannedStep(0, list(rows), 1.0)],
                         pad=pad, _lengths=[len(t) for t in data.examples])
    return Setup.batches(ns, 0)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def gemm_flops(device: torch.device, n: int = 8192, dtype=torch.bfloat16, warmup: int = 3, reps: int = 10) -> float:
    """Dense matmul FLOP/s in this process: mean of `reps` timed n^3 GEMMs after `warmup` untimed ones."""
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(warmup):
        c = a @ b
    sync(device)
    t = time.perf_counter()
    for _ in range(reps):
        c = a @ b
    sync(device)
    del a, b, c
    return 2 * n ** 3 * reps / (time.perf_counter() - t)


def device_peak(device: torch.device, override: float | None = None) -> float | None:
    """Dense bf16 peak TFLOP/s of this device (PEAKS), or `override`."""
    if override or device.type != "cuda":
        return override
    return next((v for k, v in PEAKS.items() if k in torch.cuda.get_device_name(device)), None)


def packed_vs_alone(model, batches: list) -> dict:
    """Final hidden states of packed micro-batches vs each example run alone (no position ids, no mask), and of a
    control: the same rows with an all-ones attention mask (HF then ignores the position resets: a leak)."""
    body = getattr(model, model.base_model_prefix)
    worst = leak_worst = scale = 0.0
    n_ex, per_row, control_error = 0, 0, None
    with torch.no_grad():
        for b in batches:
            h = body(input_ids=b.input_ids, position_ids=b.position_ids, attention_mask=b.attention_mask,
                     use_cache=False).last_hidden_state.float()
            try:
                leak = body(input_ids=b.input_ids, position_ids=b.position_ids, attention_mask=(b.seq_ids >= 0).long(),
                            use_cache=False).last_hidden_state.float()
            except Exception as exc:  # noqa: BLE001 - a kernel that refuses a mask: no control
                leak, control_error = None, f"{type(exc).__name__}: {exc}"[:300]
            for r in range(b.input_ids.shape[0]):
                ks = [k for k in b.seq_ids[r].unique().tolist() if k >= 0]
                per_row = max(per_row, len(ks))
                for k in ks:
                    sel = b.seq_ids[r] == k
                    alone = body(input_ids=b.input_ids[r, sel][None], use_cache=False).last_hidden_state[0].float()
                    worst = max(worst, float((h[r, sel] - alone).abs().max()))
                    scale = max(scale, float(alone.abs().max()))
                    if leak is not None:
                        leak_worst = max(leak_worst, float((leak[r, sel] - alone).abs().max()))
                    n_ex += 1
    return {"max_abs_diff": worst, "max_abs_value": scale, "examples": n_ex, "max_examples_per_row": per_row,
            "micro_batches": [list(b.input_ids.shape) for b in batches],
            "control_max_abs_diff_with_mask": None if control_error else leak_worst,
            **({"control_error": control_error} if control_error else {})}


def run_engine(shape: dict, *, device: torch.device, seq: int, rows: int, micro_rows: int, steps: int, warmup: int,
               attn: str = "sdpa", regime: str = "prompt_masked", gradient_checkpointing: bool = False,
               compile: bool = False, log=print) -> dict:
    """`warmup` + `steps` optimizer steps of ``Engine.step`` on packed rows of `seq` tokens; the timed steps'
    real tokens/s and model FLOPs (6N convention and executed), plus the losses and peak memory."""
    from harness.config import TrainConfig
    from harness.training.engine import Engine

    cuda = device.type == "cuda"
    shape = dict(shape, max_position_embeddings=max(shape.get("max_position_embeddings", 0), seq))
    t0 = time.perf_counter()
    model = build_model(shape, attn, device)
    n_params = sum(p.numel() for p in model.parameters())  # a tied lm_head counts once (it is one matrix)
    log(f"model: Qwen2 {shape['hidden_size']}x{shape['num_hidden_layers']}L vocab {shape['vocab_size']}, "
        f"{n_params / 1e6:.1f}M params, {attn}, built in {time.perf_counter() - t0:.1f}s on {device}"
        + (f" ({torch.cuda.get_device_name(device)})" if cuda else ""))
    tc = TrainConfig(lr=1e-5, batch_tokens=rows * seq, micro_batch_tokens=micro_rows * seq, warmup_ratio=0.0,
                     gradient_checkpointing=gradient_checkpointing, compile=compile,
                     precision="auto" if cuda else "bf16")
    n_steps = warmup + steps
    data, plan = engine_plan(n_steps, rows, seq, shape["vocab_size"], regime)
    sample = torch.as_tensor(data.examples[0].input_ids[:32], device=device)[None]
    eng = Engine(model, tc, n_steps, sample_ids=sample)
    fused = eng.opt.defaults.get("fused")
    log(f"engine: lm_head on {'supervised positions' if eng.head is not None else 'every position'}, "
        f"{type(eng.opt).__name__}(fused={fused}), bf16 autocast, {rows}x{seq} packed rows/step in "
        f"micro-batches of {micro_rows}")
    d, L, V = shape["hidden_size"], shape["num_hidden_layers"], shape["vocab_size"]
    tokens = sup = head_metric = pairs = 0
    seconds, losses, times, micro = 0.0, [], [], []
    for i, step_rows in enumerate(plan):
        batches = harness_batches(step_rows, data, attn, seq, tc, device)
        micro.append([tuple(b.input_ids.shape) for b in batches])
        sync(device)
        t = time.perf_counter()
        m, gnorm = eng.step(batches, metrics=True, step=i + 1)
        sync(device)
        dt = time.perf_counter() - t
        losses.append(m.loss)
        times.append(dt)
        log(f"step {i + 1}: loss {m.loss:.4f} grad_norm {gnorm:.3f} {m.tokens / dt:,.0f} tok/s ({dt:.2f}s)")
        if i >= warmup:
            seconds += dt
            tokens += m.tokens
            sup += m.supervised
            head_metric += m.response_tokens + m.prompt_tokens  # response + prompt positions the metrics evaluate
            pairs += sum(len(data.examples[k]) * (len(data.examples[k]) + 1) // 2
                         for r in step_rows for k in r.examples)
    if not all(np.isfinite(losses)):
        raise RuntimeError(f"non-finite loss: {losses}")
    attn_flops = 12 * L * d * pairs
    head = V * d
    # executed: body 6x on every token; head 6x where supervised, 2x (forward only) on the other metric tokens
    executed = 6 * (n_params - head) * tokens + 6 * head * sup + 2 * head * max(0, head_metric - sup) + attn_flops
    return {"attn": attn, "n_params": n_params, "seq": seq, "rows_per_step": rows, "micro_rows": micro_rows,
            "steps": steps, "warmup": warmup, "tokens": tokens, "supervised": sup, "seconds": seconds,
            "tokens_per_s": tokens / seconds, "tokens_per_step": tokens / steps,
            "model_flops": 6 * n_params * tokens + attn_flops, "executed_flops": executed,
            "losses": losses, "step_seconds": times, "micro_batch_shapes": micro[-1],
            "optimizer": f"{type(eng.opt).__name__}(fused={fused})", "lm_head_on_supervised": eng.head is not None,
            "peak_memory_gib": torch.cuda.max_memory_allocated(device) / 2 ** 30 if cuda else None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cpu-tiny", action="store_true", help="shrunk model on CPU (verifies the script)")
    ap.add_argument("--seq", type=int, default=None, help="packed row length (default 2048; 256 with --cpu-tiny)")
    ap.add_argument("--rows", type=int, default=8, help="rows per optimizer step")
    ap.add_argument("--micro-rows", type=int, default=4, help="rows per forward pass (gradient accumulation)")
    ap.add_argument("--steps", type=int, default=6, help="timed optimizer steps")
    ap.add_argument("--warmup", type=int, default=2, help="untimed first steps")
    ap.add_argument("--regime", default="prompt_masked")
    ap.add_argument("--attn", default="sdpa", help="attn_implementation (sdpa | eager | flash_attention_2)")
    ap.add_argument("--gradient-checkpointing", action="store_true")
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--threads", type=int, default=1, help="CPU threads with --cpu-tiny (1: robust on a busy box)")
    ap.add_argument("--peak-tflops", type=float, default=None, help="override the device's bf16 peak")
    args = ap.parse_args()

    cuda = torch.cuda.is_available() and not args.cpu_tiny
    if not cuda and not args.cpu_tiny:
        sys.exit("no CUDA device: run with --cpu-tiny to check the script on CPU")
    device = torch.device("cuda" if cuda else "cpu")
    seq = args.seq or (2048 if cuda else 256)
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True  # fp32 leftovers (norms' grads, optimizer) on tensor cores
    else:
        torch.set_num_threads(args.threads)
    try:
        r = run_engine(QWEN2_05B if cuda else TINY, device=device, seq=seq, rows=args.rows,
                       micro_rows=args.micro_rows, steps=args.steps, warmup=args.warmup, attn=args.attn,
                       regime=args.regime, gradient_checkpointing=args.gradient_checkpointing, compile=args.compile,
                       log=lambda s: print(s, flush=True))
    except RuntimeError as exc:
        sys.exit(str(exc))
    tokens, seconds = r["tokens"], r["seconds"]
    print(f"throughput: {r['tokens_per_s']:,.0f} real tokens/s over {args.steps} steps ({tokens:,} tokens, "
          f"{r['supervised'] / tokens:.0%} supervised)")
    peak = device_peak(device, args.peak_tflops)
    if peak:
        print(f"MFU: {r['model_flops'] / seconds / (peak * 1e12):.1%} (6N convention), executed "
              f"{r['executed_flops'] / seconds / (peak * 1e12):.1%}, of {peak:.0f} TFLOP/s bf16 dense")
    else:
        print(f"achieved: {r['model_flops'] / seconds / 1e12:.3f} TFLOP/s (6N convention), executed "
              f"{r['executed_flops'] / seconds / 1e12:.3f} (no peak known for this device: pass --peak-tflops for MFU)")
    if cuda:
        print(f"peak memory: {r['peak_memory_gib']:.1f} GiB")


if __name__ == "__main__":
    main()
