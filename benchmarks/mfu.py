"""CPU-MFU of our training step and where its time goes: a profile of `Engine.step` (exactly train()'s step) on
the vs_trl setup, and the levers tried.

    .venv/bin/python benchmarks/mfu.py                       # h128x2 and h256x4, profile + levers
    .venv/bin/python benchmarks/mfu.py --models h256x4 --no-levers

* **MFU** = model FLOPs/s / fp32 matmul peak. Model FLOPs = 6 x non-embedding parameters (decoder + LM head) x
  real tokens + causal attention inside each example (6 x d x layers x n(n+1) per example of n tokens); the peak
  is the best of 7 2048^3 fp32 GEMMs on the same threads in the same process, measured next to the steps.
* **executed** utilisation counts the FLOPs the step actually performs: our LM head runs only on the supervised
  positions (forward + backward) and, on logging steps, forward-only on the other prompt/response positions.
* **profile**: torch.profiler self time per ATen op, grouped (matmul, attention, elementwise/norm, loss and
  head selection, optimizer + clipping, copies/allocation, other), plus the time outside ATen ops (Python,
  dispatch, collation); the matmul group's own FLOP rate shows what the GEMMs reach at these shapes.
* **levers**: the same steps with torch.compile (inductor), with 1 thread, and with the step split into
  micro-batches of at most one row's tokens (`--seq`; TRL runs one packed row per forward), each as
  steady-state real tokens/s next to a fresh eager baseline.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (ROOT, gemm_peak, load, machine, mini_world_conversations, param_counts,  # noqa: E402
                     save_model, train_tokenizer, write_jsonl)

GROUPS = [
    ("matmul", ("aten::mm", "aten::addmm", "aten::bmm", "aten::matmul", "aten::linear", "aten::baddbmm")),
    ("attention", ("scaled_dot_product", "flash_attention", "aten::_efficient_attention")),
    ("loss+head selection", ("cross_entropy", "log_softmax", "nll_loss", "aten::index", "aten::nonzero",
                             "masked_select", "aten::index_put", "index_select", "aten::gather", "scatter")),
    ("optimizer+clip", ("adamw", "aten::norm", "linalg_vector_norm", "_foreach", "clamp", "aten::stack")),
    ("copy/alloc", ("aten::copy_", "aten::fill_", "aten::zero_", "aten::empty", "aten::clone", "aten::to",
                    "aten::_to_copy", "aten::contiguous", "aten::cat", "aten::full", "aten::ones", "aten::zeros")),
    ("embedding", ("embedding",)),
    ("elementwise/norm", ("aten::mul", "aten::add", "aten::sub", "aten::div", "aten::pow", "aten::rsqrt",
                          "aten::mean", "aten::silu", "aten::neg", "aten::cos", "aten::sin", "aten::exp",
                          "aten::where", "aten::sum", "aten::sqrt", "aten::threshold", "aten::masked_fill",
                          "aten::eq", "aten::ne", "aten::lt", "aten::gt", "aten::bitwise", "aten::logical",
                          "aten::arange", "aten::cumsum", "aten::expand", "aten::t", "aten::view",
                          "aten::reshape", "aten::transpose", "aten::slice", "aten::select", "aten::unsqueeze",
                          "aten::permute", "aten::_unsafe_view", "aten::detach", "aten::as_strided")),
]
EXP = """\
name: mfu
results_dir: {root}/results
model: {{name_or_path: {model}, tokenizer: {root}/tokenizer}}
data: {{train: {{path: {data}}}, max_length: {seq}}}
regime: {{name: prompt_masked, turns: all}}
train: {{lr: 1e-3, epochs: 100, batch_tokens: {batch}, micro_batch_tokens: {micro}, log_every: 1,
        threads: {threads}, schedule: constant, warmup_ratio: 0, betas: [0.9, 0.95], compile: {compile}}}
"""


def group_of(name: str) -> str:
    for g, keys in GROUPS:
        if any(k in name for k in keys):
            return g
    return "other"


class Setup:
    """train()'s own set-up (``harness.training.loop.setup``: data, plan, model, engine) on CPU, stepped in a loop."""

    def __init__(self, root: Path, model_dir: Path, data: Path, seq: int, rows: int, threads: int,
                 compile: bool = False, micro_rows: int | None = None):
        from harness.grid import load_experiment
        from harness.training.loop import setup

        exp = root / "mfu.yaml"
        exp.write_text(EXP.format(root=root, model=model_dir, data=data, seq=seq, batch=rows * seq,
                                  micro=(micro_rows or rows) * seq, threads=threads, compile=str(compile).lower()))
        self.setup = setup(load_experiment(exp).runs[0].config)  # train.threads sets torch's CPU threads
        self.k = 0

    def step(self) -> tuple[int, int, int, int]:
        """One optimizer step; returns (real tokens, supervised, other scored positions, sum n(n+1)).
        The step's micro-batches are train()'s own (``Setup.batches``: layout_step's short packed rows, or
        max_length-wide ones under compile)."""
        s = self.setup
        i = self.k % len(s.plan)
        self.k += 1
        m, _ = s.engine.step(s.batches(i), metrics=True, step=self.k)
        # metrics=True: the head also ran (forward only) on the prompt/response positions not supervised
        rest = m.response_tokens + m.prompt_tokens - m.supervised
        lens = [len(s.data.examples[j]) for r in s.plan[i].rows for j in r.examples]
        return m.tokens, m.supervised, rest, sum(n * (n + 1) for n in lens)


def timed_steps(s: Setup, steps: int, warmup: int) -> dict:
    for _ in range(warmup):
        s.step()
    tok = sup = rest = attn = 0
    t0 = time.perf_counter()
    for _ in range(steps):
        a, b, c, d = s.step()
        tok, sup, rest, attn = tok + a, sup + b, rest + c, attn + d
    dt = time.perf_counter() - t0
    return {"seconds": dt, "tokens": tok, "supervised": sup, "rest": rest, "attn_nn": attn, "tokens_per_s": tok / dt}


def flops(r: dict, pc: dict) -> tuple[float, float]:
    """(model FLOPs, executed FLOPs) of the steps in `r`."""
    attn = 6 * pc["hidden"] * pc["layers"] * r["attn_nn"]
    model = 6 * (pc["body"] + pc["head"]) * r["tokens"] + attn
    executed = 6 * pc["body"] * r["tokens"] + 6 * pc["head"] * r["supervised"] + 2 * pc["head"] * r["rest"] + attn
    return model, executed


def profile(s: Setup, steps: int) -> dict:
    from torch.profiler import ProfilerActivity, profile as prof

    with prof(activities=[ProfilerActivity.CPU], with_flops=True) as p:
        t0 = time.perf_counter()
        for _ in range(steps):
            s.step()
        wall = time.perf_counter() - t0
    groups: dict[str, float] = {}
    mm_flops = 0.0
    top = []
    for e in p.key_averages():
        us = e.self_cpu_time_total
        groups[group_of(e.key)] = groups.get(group_of(e.key), 0.0) + us / 1e6
        if group_of(e.key) == "matmul":
            mm_flops += e.flops or 0
        top.append((us / 1e6, e.key, e.count))
    in_ops = sum(groups.values())
    top.sort(reverse=True)
    return {"wall_s": wall, "groups_s": groups, "outside_ops_s": max(0.0, wall - in_ops),
            "matmul_flops": mm_flops, "matmul_flops_per_s": mm_flops / groups.get("matmul", 1e-9),
            "top_ops": [{"op": k, "self_s": t, "calls": c} for t, k, c in top[:15]]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="h128x2,h256x4")
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--rows", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2, help="timed blocks per setting (median)")
    ap.add_argument("--no-levers", action="store_true")
    ap.add_argument("--levers-model", default="h256x4")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "out" / "mfu.json"))
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    print(f"mfu: seq {args.seq}, {args.rows} rows/step, {args.threads} threads; {load()}", flush=True)
    report: dict = {"machine": machine(), "args": vars(args), "models": {}, "levers": {}}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        data = write_jsonl(root / "train.jsonl", mini_world_conversations(2000, seed=0))
        tok = train_tokenizer(root, mini_world_conversations(6000, seed=1))
        for name in args.models.split(","):
            model_dir = save_model(root, name, len(tok), args.seq, tok.eos_token_id)
            pc = param_counts(model_dir)
            s = Setup(root, model_dir, data, args.seq, args.rows, args.threads)
            runs = []
            for _ in range(args.repeats):  # peak next to each block: both see the same machine load
                peak = gemm_peak(args.threads)
                r = timed_steps(s, args.steps, args.warmup if not runs else 0)
                fm, fx = flops(r, pc)
                runs.append({**r, "peak": peak, "mfu": fm / r["seconds"] / peak,
                             "executed_util": fx / r["seconds"] / peak, "model_flops_per_s": fm / r["seconds"]})
            med = {k: statistics.median(x[k] for x in runs) for k in
                   ("tokens_per_s", "peak", "mfu", "executed_util", "model_flops_per_s")}
            prof = profile(s, max(2, args.steps // 2))
            report["models"][name] = {"params": pc, "runs": runs, "median": med, "profile": prof,
                                      "supervised_fraction": runs[0]["supervised"] / runs[0]["tokens"]}
            g = prof["groups_s"]
            tot = prof["wall_s"]
            parts = ", ".join(f"{k} {v / tot:.0%}" for k, v in sorted(g.items(), key=lambda x: -x[1]) if v / tot >= .01)
            print(f"{name}: {med['tokens_per_s']:.0f} tok/s, model {med['model_flops_per_s'] / 1e9:.1f} GFLOP/s, "
                  f"peak {med['peak'] / 1e9:.1f} GFLOP/s -> CPU-MFU {med['mfu']:.1%} (executed "
                  f"{med['executed_util']:.1%}); profile: {parts}, outside ATen ops {prof['outside_ops_s'] / tot:.0%}; "
                  f"matmuls at {prof['matmul_flops_per_s'] / 1e9:.1f} GFLOP/s; {load()}", flush=True)
            del s
        if not args.no_levers:
            name = args.levers_model
            model_dir = save_model(root, name, len(tok), args.seq, tok.eos_token_id)
            other = 1 if args.threads > 1 else 2
            settings = {"eager (baseline)": dict(), "torch.compile": dict(compile=True),
                        f"{other} thread{'s' if other > 1 else ''}": dict(threads=other),
                        f"micro-batches of {args.seq} tokens": dict(micro_rows=1)}
            for label, kw in settings.items():
                t0 = time.perf_counter()
                s = Setup(root, model_dir, data, args.seq, args.rows, kw.pop("threads", args.threads), **kw)
                r = timed_steps(s, args.steps, args.warmup)
                r["setup_and_warmup_s"] = time.perf_counter() - t0 - r["seconds"]
                report["levers"][label] = r
                print(f"  lever {label:22s} {r['tokens_per_s']:7.0f} tok/s (set-up + warm-up "
                      f"{r['setup_and_warmup_s']:.0f} s; {load()})", flush=True)
                del s
                torch.set_num_threads(args.threads)
    report["load_avg_end"] = os.getloadavg()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
