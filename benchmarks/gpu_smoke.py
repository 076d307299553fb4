"""GPU smoke and throughput: a Qwen2-0.5B-shaped model (random weights) through the training engine.

    python benchmarks/gpu_smoke.py                 # CUDA: bf16 autocast, packed 2048-token rows
    python benchmarks/gpu_smoke.py --cpu-tiny      # a shrunk model on CPU: checks the script end to end

Same code path as ``train()``: synthetic conversations become ``Tokenized`` examples, the real regime
(``apply_regime``) gives their masks, ``pack_rows``/``collate`` build the packed rows (per-example position
ids, no attention mask) and ``harness.training.engine.Engine.step`` runs the optimizer steps (step-wide token
normalisation, LM head on supervised positions, fused AdamW, clipping). Only the tokenizer and the disk are
left out: there is nothing to learn from random weights, and a 0.5B checkpoint write would dominate.

Reported: real (non-pad) tokens/s, peak memory, and MFU = achieved FLOP/s over the card's dense bf16 peak,
with model FLOPs = 6 x params x tokens + causal attention 12 x layers x hidden x (sum over examples of
n(n+1)/2) (the usual convention, LM head on every token). The engine computes the LM head only where a
token is supervised (and, on logging steps, where a metric needs it), so it runs fewer FLOPs than that
convention counts; "executed MFU" counts only those.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

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

    rng = random.Random(seed)
    out = []
    for _ in range(n):
        total = rng.randint(64, max_len)
        p = max(8, int(total * rng.uniform(0.2, 0.6)))
        r = max(4, total - p - 9)
        seg = ([Segment.TEMPLATE] * 3 + [Segment.USER] * p + [Segment.TEMPLATE] * 4 + [Segment.ASSISTANT] * r
               + [Segment.EOT] + [Segment.TEMPLATE])
        turns = [0] * (3 + p) + [1] * (4 + r + 2)
        ids = np.array([rng.randrange(3, vocab) for _ in seg], dtype=np.int64)
        out.append(Tokenized(input_ids=ids, segments=np.array(seg, dtype=np.int8),
                             turns=np.array(turns, dtype=np.int16), offsets=np.zeros((len(seg), 2), np.int32),
                             text="", roles=("user", "assistant"), source=f"synthetic:{len(out)}"))
    return out


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

    from transformers import AutoModelForCausalLM, Qwen2Config

    from harness.config import RegimeConfig, TrainConfig
    from harness.masking import apply_regime, regime_options
    from harness.training.packing import collate, pack_rows
    from harness.training.engine import Engine

    cuda = torch.cuda.is_available() and not args.cpu_tiny
    if not cuda and not args.cpu_tiny:
        sys.exit("no CUDA device: run with --cpu-tiny to check the script on CPU")
    device = torch.device("cuda" if cuda else "cpu")
    seq = args.seq or (2048 if cuda else 256)
    shape = QWEN2_05B if cuda else dict(TINY, max_position_embeddings=max(512, seq))
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True  # fp32 leftovers (norms' grads, optimizer) on tensor cores
    else:
        torch.set_num_threads(args.threads)

    cfg = Qwen2Config(**shape)
    torch.manual_seed(0)
    t0 = time.perf_counter()
    with device:  # initialise on the device: no 2 GB host copy
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32, attn_implementation=args.attn)
    model.config.use_cache = False
    n_params = sum(p.numel() for p in model.parameters())  # a tied lm_head counts once (it is one matrix)
    print(f"model: Qwen2 {shape['hidden_size']}x{shape['num_hidden_layers']}L vocab {shape['vocab_size']}, "
          f"{n_params / 1e6:.1f}M params, built in {time.perf_counter() - t0:.1f}s on {device}"
          + (f" ({torch.cuda.get_device_name()})" if cuda else ""), flush=True)

    tc = TrainConfig(lr=1e-5, batch_tokens=args.rows * seq, micro_batch_tokens=args.micro_rows * seq,
                     gradient_checkpointing=args.gradient_checkpointing, compile=args.compile, warmup_ratio=0.0,
                     precision="auto" if cuda else "bf16")
    regime = RegimeConfig(name=args.regime)
    n_steps = args.warmup + args.steps
    examples = synthetic_examples(n_steps * args.rows * max(1, seq // 300) * 2, seq, shape["vocab_size"])
    masks = [apply_regime(t, regime.name, **regime_options(regime)) for t in examples]
    rows = pack_rows([len(t) for t in examples], seq, list(range(len(examples))))
    steps = [rows[i * args.rows:(i + 1) * args.rows] for i in range(n_steps)]
    if len(steps[-1]) < args.rows:
        sys.exit("not enough synthetic rows; lower --rows or --steps")

    sample = torch.as_tensor(examples[0].input_ids[:32], device=device)[None]
    eng = Engine(model, tc, n_steps, sample_ids=sample)
    print(f"engine: lm_head on {'supervised positions' if eng.head is not None else 'every position'}, "
          f"{type(eng.opt).__name__}(fused={eng.opt.defaults.get('fused')}), bf16 autocast, "
          f"{args.rows}x{seq} packed rows/step in micro-batches of {args.micro_rows}", flush=True)

    d, L, V = shape["hidden_size"], shape["num_hidden_layers"], shape["vocab_size"]
    tokens = sup = head_metric = 0
    pairs = 0
    seconds = 0.0
    losses = []
    for i, step_rows in enumerate(steps):
        batches = [collate(step_rows[j:j + args.micro_rows], examples, masks, 0).to(device)
                   for j in range(0, len(step_rows), args.micro_rows)]
        if cuda:
            torch.cuda.synchronize()
        t = time.perf_counter()
        m, gnorm = eng.step(batches, metrics=True, step=i + 1)
        if cuda:
            torch.cuda.synchronize()
        dt = time.perf_counter() - t
        losses.append(m.loss)
        print(f"step {i + 1}: loss {m.loss:.4f} grad_norm {gnorm:.3f} {m.tokens / dt:,.0f} tok/s "
              f"({dt:.2f}s)", flush=True)
        if i >= args.warmup:
            seconds += dt
            tokens += m.tokens
            sup += m.supervised
            head_metric += m.response_tokens + m.prompt_tokens  # response + prompt positions the metrics evaluate
            pairs += sum(len(examples[k]) * (len(examples[k]) + 1) // 2 for r in step_rows for k in r.examples)
    if not all(np.isfinite(losses)):
        sys.exit(f"non-finite loss: {losses}")

    attn = 12 * L * d * pairs
    model_flops = 6 * n_params * tokens + attn
    head = V * d
    # executed: body 6x on every token; head 6x where supervised, 2x (forward only) on the other metric tokens
    executed = 6 * (n_params - head) * tokens + 6 * head * sup + 2 * head * max(0, head_metric - sup) + attn
    tps = tokens / seconds
    print(f"throughput: {tps:,.0f} real tokens/s over {args.steps} steps ({tokens:,} tokens, "
          f"{sup / tokens:.0%} supervised)")
    peak = args.peak_tflops or next((v for k, v in PEAKS.items() if cuda and k in torch.cuda.get_device_name()), None)
    if peak:
        print(f"MFU: {model_flops / seconds / (peak * 1e12):.1%} (6N convention), executed "
              f"{executed / seconds / (peak * 1e12):.1%}, of {peak:.0f} TFLOP/s bf16 dense")
    else:
        print(f"achieved: {model_flops / seconds / 1e12:.3f} TFLOP/s (6N convention), executed "
              f"{executed / seconds / 1e12:.3f} (no peak known for this device: pass --peak-tflops for MFU)")
    if cuda:
        print(f"peak memory: {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")


if __name__ == "__main__":
    main()
