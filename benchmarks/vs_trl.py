"""Side by side on identical work: `harness` training steps vs TRL's `SFTTrainer`, per optimizer step.

    .venv/bin/pip install -e ".[bench]"          # TRL is a benchmark-only extra (make bench does this)
    .venv/bin/python benchmarks/vs_trl.py                     # tiny Llamas h128x2, h256x4 on mini-world chats
    .venv/bin/python benchmarks/vs_trl.py --models gemma-3-270m --regimes prompt_masked,full,prompt_weight \\
        --seq 512 --rows 4 --steps 6 --warmup 2 --rounds 2 --out benchmarks/out/vs_trl_gemma.json
    .venv/bin/python benchmarks/vs_trl.py --models gemma-3-270m --bf16 ...     # bf16 autocast (avx512_bf16 CPUs)

**Identical work.** The driver tokenizes and masks the data with harness's own pipeline, plans the optimizer
steps with ``plan_steps`` (the plan ``train()`` follows) and hands TRL the very same packed rows, in the same
order, as a pre-tokenized dataset (``input_ids``, ``labels``, ``seq_lengths``): TRL's padding-free collator turns
``seq_lengths`` into per-example position ids (no attention mask: its best attention-isolating configuration),
one row per micro-batch, ``gradient_accumulation_steps`` = rows per step, a sequential sampler. Both sides then
train on the same examples, the same real tokens and the same supervised tokens in every optimizer step; the
driver asserts all three per step (and stops with the step and both counts when they differ). The model weights,
AdamW (betas 0.9/0.95, no decay, eps 1e-8, constant LR), clipping 1.0 and the step-wide token normalisation are
the same, so the loss curves must agree step by step, up to floating-point summation order.

* **ours**: ``harness.training.loop.setup`` + ``Engine.step`` per step: what ``train()`` runs, without its
  metrics.jsonl append and checkpoints; the fixed-mask prompt/response metrics off (TRL computes no such thing).
  ``ours_logged``: the same with those metrics on every step (``train.log_every: 1``, the default).
  ``ours_lean``: one row per forward pass and ``train.gradient_checkpointing`` (the memory-lean setting).
  The LM head runs only on positions with a non-zero loss weight, in vocabulary chunks (harness/training/lm_head.py).
* **trl**: ``SFTTrainer`` (its fused, chunked LM head: on CPU it scores every position; labels -100 where our
  weight is 0). Regime ``prompt_weight`` has no TRL equivalent: TRL's partner is the full-loss run on the same rows
  (the same positions carry loss; weights all 1), so its loss curve is not compared.

Every run is its own subprocess (clean peak RSS), the kinds alternate within each round, and rates are steady-state
(after ``--warmup`` steps). Time per step: ours from the batch's collation to the end of the optimizer step; TRL
from one ``on_step_end`` to the next. Each worker also measures the fp32 (or bf16) GEMM peak for CPU-MFU.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (MODELS, ROOT, gemm_peak, load, machine, mini_world_conversations, param_counts,  # noqa: E402
                     peak_rss_mb, save_model, train_tokenizer, write_jsonl)

KINDS = ("ours", "trl", "ours_logged", "ours_lean")
REAL_MODELS = {"gemma-3-270m": (ROOT / "results/models/gemma-3-270m",
                                ROOT / "results/realdata/data/sft_train_paraphrased.jsonl")}
REGIMES = {"prompt_masked": "{name: prompt_masked, turns: all}", "full": "{name: full}",
           "prompt_weight": "{name: prompt_weight, prompt_weight: W}"}  # W: --prompt-weight
EXPERIMENT = """\
name: vs_trl
results_dir: {root}/results
model: {{name_or_path: {model}{tokenizer}}}
data: {{train: {{path: {data}}}, max_length: {seq}}}
regime: {regime}
train: {{lr: {lr}, epochs: 1000, batch_tokens: {batch}, max_steps: {steps}, threads: {threads}, {micro}
        save_every_epoch: false, schedule: constant, warmup_ratio: 0, betas: [0.9, 0.95], weight_decay: 0.0,
        max_grad_norm: 1.0, seed: 0, precision: {precision}}}
"""


def experiment(a, model: Path, data: Path, regime: str, tokenizer: Path | None, bf16: bool = False,
               lean: bool = False) -> Path:
    """Our side's experiment file; `lean`: one row per forward pass and activation checkpointing (memory)."""
    exp = Path(a.root) / f"exp-{model.name}-{regime}{'-bf16' if bf16 else ''}{'-lean' if lean else ''}.yaml"
    micro = (f"micro_batch_tokens: {a.seq}, gradient_checkpointing: true," if lean else
             f"micro_batch_tokens: {a.micro_rows * a.seq}," if a.micro_rows else "")
    exp.write_text(EXPERIMENT.format(
        root=a.root, model=model, tokenizer=f", tokenizer: {tokenizer}" if tokenizer else "", data=data, seq=a.seq,
        regime=REGIMES[regime].replace("W", str(a.prompt_weight)), lr=a.lr, batch=a.rows * a.seq, steps=2 * a.steps + 2,
        threads=a.threads, micro=micro,
        precision="bf16" if bf16 else "fp32"))
    return exp


def plan_rows(exp: Path, steps: int) -> tuple[list[dict], list[dict], list[int], int]:
    """The first `steps` full optimizer steps of the run's plan (an epoch's last, shorter step is left out of both
    sides: TRL accumulates a fixed number of rows): their packed rows in order as TRL records, the expected
    per-step counts, the steps' indices in the plan, and the rows per step."""
    import numpy as np

    from harness.grid import load_experiment
    from harness.training.loop import prepare_data
    from harness.training.packing import plan_steps

    spec = load_experiment(exp).runs[0]
    _, data = prepare_data(spec.config)
    plan = plan_steps(data, spec.config)
    rows_per_step = max(len(st.rows) for st in plan)
    chosen = [i for i, st in enumerate(plan) if len(st.rows) == rows_per_step][:steps]
    if len(chosen) < steps:
        raise SystemExit(f"only {len(chosen)} full steps of {rows_per_step} rows in {exp}: fewer --rows or --steps")
    records, expected = [], []
    for st in (plan[i] for i in chosen):
        tok = sup = 0
        for row in st.rows:
            ids = np.concatenate([data.examples[i].input_ids for i in row.examples])
            m = [data.masks[i] for i in row.examples]
            on = np.concatenate([(x.labels != -100) & (x.weights > 0) for x in m])
            lengths = [len(data.examples[i]) for i in row.examples]
            starts = np.cumsum([0] + lengths[:-1])
            on[starts] = False  # an example's first token is never predicted (TRL's collator: the same rule)
            labels = np.where(on, ids, -100)
            records.append({"input_ids": ids.tolist(), "labels": labels.tolist(), "seq_lengths": lengths})
            tok += int(sum(lengths))
            sup += int(on[1:].sum())
        expected.append({"tokens": tok, "supervised": sup, "rows": len(st.rows)})
    return records, expected, chosen, rows_per_step


# ------------------------------------------------------------------------------------------ workers


def worker_ours(a: argparse.Namespace, metrics: bool) -> dict:
    import torch

    from harness.grid import load_experiment
    from harness.training.loop import setup

    torch.set_num_threads(a.threads)
    peak = gemm_peak(a.threads, dtype=torch.bfloat16 if a.bf16 else torch.float32)
    t0 = time.perf_counter()
    s = setup(load_experiment(a.exp).runs[0].config)
    steps = []
    for i in map(int, a.plan_steps.split(",")):
        t = time.perf_counter()
        batches = s.batches(i)
        m, _ = s.engine.step(batches, metrics=metrics, step=i + 1)
        lens = [len(s.data.examples[j]) for row in s.plan[i].rows for j in row.examples]
        steps.append({"step": len(steps) + 1, "plan_step": i + 1, "loss": m.loss, "tokens": m.tokens,
                      "supervised": m.supervised, "seconds": time.perf_counter() - t, "attn_nn": sum(n * (n + 1) for n in lens)})
    return {"steps": steps, "wall_s": time.perf_counter() - t0, "peak_rss_mb": peak_rss_mb(),
            "gemm_peak_flops": peak, "lm_head": "supervised positions" if s.engine.head is not None else "full"}


def worker_trl(a: argparse.Namespace) -> dict:
    import torch
    from datasets import Dataset
    from torch.utils.data import SequentialSampler
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from transformers.trainer_callback import PrinterCallback
    from trl import SFTConfig, SFTTrainer

    torch.set_num_threads(a.threads)
    peak = gemm_peak(a.threads, dtype=torch.bfloat16 if a.bf16 else torch.float32)
    acc = {"tokens": 0, "supervised": 0, "attn_nn": 0}

    class Trainer(SFTTrainer):  # counts what each micro-batch holds and keeps the given order; the step is TRL's
        def _get_train_sampler(self, *args, **kwargs):
            return SequentialSampler(self.train_dataset)

        def training_step(self, model, inputs, num_items_in_batch=None):
            acc["supervised"] += int((inputs["labels"][:, 1:] != -100).sum())
            pos = inputs["position_ids"][0]
            starts = (pos == 0).nonzero().flatten().tolist() + [pos.numel()]
            lens = [e - s for s, e in zip(starts[:-1], starts[1:])]
            acc["tokens"] += int(sum(lens))
            acc["attn_nn"] += int(sum(n * (n + 1) for n in lens))
            return super().training_step(model, inputs, num_items_in_batch)

    steps: list[dict] = []
    mark = {"t": None, "acc": dict(acc)}

    class Clock(TrainerCallback):
        def on_train_begin(self, args, state, control, **kw):
            mark["t"] = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            now = time.perf_counter()
            steps.append({"step": state.global_step, "seconds": now - mark["t"],
                          **{k: acc[k] - mark["acc"][k] for k in acc}})
            mark["t"], mark["acc"] = now, dict(acc)

        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "loss" in logs and steps and steps[-1]["step"] == state.global_step:
                steps[-1]["loss"] = float(logs["loss"])

    t0 = time.perf_counter()
    tok = AutoTokenizer.from_pretrained(a.tokenizer)
    ds = Dataset.from_list([json.loads(x) for x in Path(a.rows_file).read_text().splitlines()])
    model = AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.float32, attn_implementation="sdpa")
    cfg = SFTConfig(output_dir=str(Path(a.root) / "trl-out"), max_steps=a.steps, per_device_train_batch_size=1,
                    gradient_accumulation_steps=a.accum, learning_rate=a.lr, lr_scheduler_type="constant",
                    warmup_steps=0, weight_decay=0.0, adam_beta1=0.9, adam_beta2=0.95, adam_epsilon=1e-8,
                    max_grad_norm=1.0, logging_steps=1, save_strategy="no", report_to="none", bf16=a.bf16,
                    fp16=False, gradient_checkpointing=False, use_cpu=True, max_length=None, packing=False,
                    padding_free=True, shuffle_dataset=False, dataloader_num_workers=0,
                    dataloader_pin_memory=False, disable_tqdm=True, seed=0, data_seed=0)
    trainer = Trainer(model=model, args=cfg, train_dataset=ds, processing_class=tok, callbacks=[Clock()])
    trainer.remove_callback(PrinterCallback)  # no per-step dict printing to our stdout
    trainer.train()
    opt = trainer.optimizer.optimizer if hasattr(trainer.optimizer, "optimizer") else trainer.optimizer
    return {"steps": steps, "wall_s": time.perf_counter() - t0, "peak_rss_mb": peak_rss_mb(),
            "gemm_peak_flops": peak, "optimizer": type(opt).__name__, "optim_arg": str(cfg.optim)}


# ------------------------------------------------------------------------------------------ the driver


def flops(steps: list[dict], pc: dict) -> float:
    """Model FLOPs of these steps by the usual convention: 6 x (body + head params) x tokens (the head on every
    position) + causal attention within each example (2 x 2 x d MACs per attended pair forward, x3 with backward)."""
    n = pc["body"] + pc["head"]
    return sum(6 * n * s["tokens"] + 6 * pc["hidden"] * pc["layers"] * s["attn_nn"] for s in steps)


def summarise(res: dict, warmup: int, pc: dict) -> dict:
    timed = res["steps"][warmup:]
    sec = sum(s["seconds"] for s in timed)
    tok = sum(s["tokens"] for s in timed)
    sup = sum(s["supervised"] for s in timed)
    return {"seconds_per_step": sec / len(timed), "tokens_per_s": tok / sec, "supervised_per_s": sup / sec,
            "peak_rss_mb": res["peak_rss_mb"], "wall_s": res["wall_s"], "tokens_per_step": tok / len(timed),
            "supervised_per_step": sup / len(timed), "mfu": flops(timed, pc) / sec / res["gemm_peak_flops"],
            "gemm_peak_flops": res["gemm_peak_flops"], "losses": [s.get("loss") for s in res["steps"]]}


def count_mismatches(res: dict, expected: list[dict]) -> list[str]:
    """Steps whose real or supervised token count differs from the plan's (empty: identical work)."""
    bad = [f"step {i + 1}: {k} {s[k]} != {e[k]}" for i, (s, e) in enumerate(zip(res["steps"], expected))
           for k in ("tokens", "supervised") if s[k] != e[k]]
    if len(res["steps"]) != len(expected):
        bad.append(f"{len(res['steps'])} steps, planned {len(expected)}")
    return bad


def curves(a: list[float], b: list[float], tol: float) -> dict:
    """Step-by-step relative difference of two loss curves on identical steps; agreement below `tol`."""
    rel = [abs(x - y) / max(abs(x), abs(y), 1e-12) for x, y in zip(a, b)]
    return {"a": a, "b": b, "rel_diff": rel, "max_rel_diff": max(rel), "tol": tol, "agree": max(rel) < tol}


def run_worker(kind: str, a: argparse.Namespace, ctx: dict) -> dict:
    out = Path(a.root) / f"res-{kind}.json"
    base = "ours" if kind == "ours_lean" else kind.removesuffix("_bf16")
    cmd = [sys.executable, __file__, "--worker", base, "--root", str(a.root), "--out", str(out),
           "--steps", str(a.steps), "--seq", str(a.seq), "--threads", str(a.threads), "--lr", str(a.lr),
           "--model", str(ctx["model"]), "--tokenizer", str(ctx["tokenizer"]), "--exp", str(ctx[kind]["exp"]),
           "--rows-file", str(ctx["rows_file"]), "--accum", str(ctx["accum"]),
           "--plan-steps", ",".join(map(str, ctx["plan_steps"]))] + \
        (["--bf16"] if kind.endswith("_bf16") else [])
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-6000:])
        raise SystemExit(f"worker {kind} failed ({proc.returncode})")
    return json.loads(out.read_text())


def compare(runs: dict, ours: str, trl: str, curves_tol: float | None) -> dict:
    o, t = runs[ours], runs[trl]
    speed = [y["seconds_per_step"] / x["seconds_per_step"] for x, y in zip(o, t)]
    rss = [x["peak_rss_mb"] / y["peak_rss_mb"] for x, y in zip(o, t)]
    out = {"trl_time_over_ours": speed, "median_speedup": statistics.median(speed),
           "ours_rss_over_trl": rss, "median_rss_ratio": statistics.median(rss),
           "median": {k: {key: statistics.median(x[key] for x in runs[k]) for key in
                          ("seconds_per_step", "tokens_per_s", "supervised_per_s", "peak_rss_mb", "mfu")}
                      for k in (ours, trl)}}
    if curves_tol is not None:
        out["curves"] = curves(o[0]["losses"], t[0]["losses"], curves_tol)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="h128x2,h256x4", help=f"comma list of {sorted(MODELS) + sorted(REAL_MODELS)}")
    ap.add_argument("--kinds", default="ours,trl", help=f"comma list of {KINDS} (+ '_bf16' for bf16 autocast)")
    ap.add_argument("--regimes", default="prompt_masked", help=f"comma list of {sorted(REGIMES)}")
    ap.add_argument("--prompt-weight", type=float, default=0.1, help="lambda of the prompt_weight regime")
    ap.add_argument("--data", help="messages .jsonl to train on (default: mini-world chats for the tiny Llamas, "
                    "the real-knowledge chats for gemma-3-270m)")
    ap.add_argument("--rounds", type=int, default=3, help="rounds; the kinds alternate within each")
    ap.add_argument("--steps", type=int, default=10, help="optimizer steps per run")
    ap.add_argument("--warmup", type=int, default=3, help="untimed first steps")
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--rows", type=int, default=8, help="packed rows of --seq tokens per optimizer step")
    ap.add_argument("--micro-rows", type=int, help="ours: rows per forward pass (default: the whole step in one)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--examples", type=int, default=2000, help="mini-world conversations (tiny Llamas)")
    ap.add_argument("--curves-tol", type=float, default=0.02, help="largest relative loss difference on a step")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "out" / "vs_trl.json"))
    for hidden in ("--worker", "--root", "--model", "--tokenizer", "--exp", "--rows-file", "--plan-steps"):
        ap.add_argument(hidden, help=argparse.SUPPRESS)
    ap.add_argument("--accum", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--bf16", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.worker:
        res = worker_trl(args) if args.worker == "trl" else worker_ours(args, metrics=args.worker == "ours_logged")
        Path(args.out).write_text(json.dumps(res))
        return

    kinds = args.kinds.split(",")
    info = machine()
    if any(k.endswith("_bf16") for k in kinds) and "avx512_bf16" not in info["cpu_flags"].split():
        print(f"note: {info['cpu']} has no avx512_bf16: bf16 runs are emulated, slow and not representative")
    print(f"vs_trl: {args.threads} threads, seq {args.seq}, {args.rows}x{args.seq} tokens/step, {args.steps} steps "
          f"({args.warmup} warm-up), {args.rounds} rounds, kinds {kinds}; {load()}", flush=True)
    report = {"machine": info, "args": {k: v for k, v in vars(args).items() if k not in
                                        ("worker", "root", "model", "tokenizer", "exp", "rows_file", "out",
                                         "accum", "bf16", "plan_steps")}, "models": {}}
    with tempfile.TemporaryDirectory() as tmp:
        args.root = root = Path(tmp)
        for name in args.models.split(","):
            if name in REAL_MODELS:
                model_dir, data = REAL_MODELS[name]
                data, tokenizer = Path(args.data or data), None
                if not (model_dir / "config.json").exists():
                    raise SystemExit(f"{model_dir} missing: run `harness model get {name}` (and `harness realdata "
                                     "build` for its data)")
            else:
                data = Path(args.data) if args.data else write_jsonl(root / "train.jsonl",
                                                                     mini_world_conversations(args.examples, 0))
                tok = train_tokenizer(root, mini_world_conversations(6000, seed=1))
                model_dir, tokenizer = save_model(root, name, len(tok), args.seq, tok.eos_token_id), root / "tokenizer"
            pc = param_counts(model_dir)
            report["models"][name] = entry = {"params": pc, "data": str(data), "regimes": {}}
            for regime in args.regimes.split(","):
                ctx = {"model": model_dir, "tokenizer": tokenizer or model_dir}
                exp32 = experiment(args, model_dir, data, regime, tokenizer)
                for k in kinds:
                    own = k == "ours_lean" or k.endswith("_bf16")  # an experiment file of its own
                    ctx[k] = {"exp": experiment(args, model_dir, data, regime, tokenizer, bf16=k.endswith("_bf16"),
                                                lean=k == "ours_lean") if own else exp32}
                records, expected, ctx["plan_steps"], ctx["accum"] = plan_rows(exp32, args.steps)
                ctx["rows_file"] = write_jsonl(root / f"rows-{name}-{regime}.jsonl", records)
                runs: dict[str, list[dict]] = {k: [] for k in kinds}
                for r in range(args.rounds):
                    for kind in kinds:
                        res = run_worker(kind, args, ctx)
                        if bad := count_mismatches(res, expected):
                            raise SystemExit(f"{name} {regime} {kind}: not the planned work: " + "; ".join(bad[:5]))
                        s = summarise(res, args.warmup, pc)
                        runs[kind].append(s)
                        print(f"  {name} {regime} round {r + 1} {kind:12s} {s['seconds_per_step']:7.2f} s/step "
                              f"{s['tokens_per_s']:7.0f} tok/s {s['supervised_per_s']:6.0f} sup/s "
                              f"MFU {s['mfu']:5.1%} RSS {s['peak_rss_mb']:6.0f} MB loss {s['losses'][-1]:.4f} "
                              f"({load()})", flush=True)
                tol = None if regime == "prompt_weight" else args.curves_tol
                same_loss = ("ours", "ours_logged", "ours_lean")  # the bf16 pair's curves: compared to fp32 below
                pairs = {f"{o} / {t}": compare(runs, o, t, tol if o in same_loss else None)
                         for o, t in (("ours", "trl"), ("ours_logged", "trl"), ("ours_lean", "trl"),
                                      ("ours_bf16", "trl_bf16"))
                         if o in runs and t in runs}
                if "ours" in runs and "ours_bf16" in runs:
                    pairs["ours_bf16 vs ours (curves)"] = {"curves": curves(runs["ours"][0]["losses"],
                                                                            runs["ours_bf16"][0]["losses"], 0.05)}
                entry["regimes"][regime] = {"counts_equal_per_step": True, "per_step": expected[0],
                                            "runs": runs, "pairs": pairs}
                for key, p in pairs.items():
                    if "median_speedup" in p:
                        c = p.get("curves")
                        per_round = ", ".join(f"{x:.2f}" for x in p["trl_time_over_ours"])
                        agree = f"; loss curves agree: {c['agree']} (max rel diff {c['max_rel_diff']:.2e})" if c else ""
                        print(f"{name} {regime}: {key}: TRL time per identical step / ours = {p['median_speedup']:.2f}x"
                              f" (rounds {per_round}), peak RSS ours / TRL = {p['median_rss_ratio']:.2f}{agree}",
                              flush=True)
    report["load_avg_end"] = os.getloadavg()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1))
    print(f"wrote {args.out}; {load()}")


if __name__ == "__main__":
    main()
