"""Side by side: `harness.training.loop.train()` vs TRL's `SFTTrainer` on the same tiny Llamas and mini-world data.

    .venv/bin/pip install -e ".[bench]"          # TRL is a benchmark-only extra
    .venv/bin/python benchmarks/vs_trl.py         # h128x2 and h256x4, 3 rounds -> benchmarks/out/vs_trl.json
    .venv/bin/python benchmarks/vs_trl.py --threads 1 --models h256x4 --kinds ours,trl_packed \\
        --out benchmarks/out/vs_trl_1thread.json  # contention check: no OpenMP barriers
    .venv/bin/python benchmarks/vs_trl.py --models h128x2 --rounds 1 --steps 8
    .venv/bin/python benchmarks/vs_trl.py --threads 1 --kinds ours,ours_packed --layout bucketed --rounds 2 \
        --out benchmarks/out/vs_trl_layout.json  # A/B of train.layout: ours (bucketed) / ours_packed

Same for every run: random-init Llama (seed 0, fp32, sdpa), mini-world SFT conversations, a byte-BPE ChatML
tokenizer, regime assistant-only (every assistant turn's content + its <|im_end|>; loss normalised over all
supervised tokens of the optimizer step), sequence length 512, 8 x 512 tokens per optimizer step, AdamW
(lr 1e-3 constant, betas 0.9/0.95, no decay, clip 1.0), 2 torch threads on CPU, loss logged every step.

* **ours**: ``train()`` on the real path (8 packed rows in one forward, per-example position ids), or with
  ``--layout bucketed`` the step's examples sorted by length into right-padded causal micro-batches
  (``train.layout``, harness/training/packing.py).
* **ours_packed**: ``train()`` with ``train.layout: packed`` whatever ``--layout`` says (the A/B baseline).
* **trl_packed**: TRL's best attention-isolating setting: ``packing=True, packing_strategy="bfd"`` (padding-free:
  position ids, no attention mask), per-device batch 1 + 8 accumulation steps, ``assistant_only_loss=True``,
  ``bf16=False, gradient_checkpointing=False``.
* **trl_packed_compile**: ``trl_packed`` with ``torch_compile=True`` (TRL's own compile switch), the fair
  partner when ``--compile`` compiles ours (``train.compile``: packed rows all ``--seq`` wide, one shape).
* **trl_padded**: ``packing=False``, ``assistant_only_loss=True``, per-device batch 16 x 4 accumulation steps
  (~4k real tokens per step, as above), padded to the longest example of each micro-batch.

Every run is its own subprocess (clean peak RSS, no shared thread pools or patched modules); the configurations
run in rounds, ours / trl_packed / trl_padded, so slow phases of a shared machine hit all of them. Rates are
steady-state (after ``--warmup`` optimizer steps): real (non-pad) tokens / s and supervised tokens / s. TRL's
per-step time runs from one ``on_step_end`` to the next (its batch fetch + collation, forward/backward, clip,
optimizer, logging); ours is train()'s own per-step time (collation, forward/backward, clip, optimizer, metrics;
the metrics.jsonl append is outside it). Each worker also measures the fp32 matmul peak (2048^3 GEMM, same
process, same threads) for CPU-MFU.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (MODELS, ROOT, CHATML_GENERATION, gemm_peak, load, machine, mini_world_conversations,  # noqa: E402
                     param_counts, peak_rss_mb, save_model, train_tokenizer, write_jsonl)

KINDS = ("ours", "trl_packed", "trl_padded", "ours_packed", "trl_packed_compile")
EXPERIMENT = """\
name: vs_trl
results_dir: {root}/results
model: {{name_or_path: {model}, tokenizer: {tokenizer}}}
data: {{train: {{path: {data}}}, max_length: {seq}}}
regime: {{name: prompt_masked, turns: all}}
train: {{lr: {lr}, epochs: 100, batch_tokens: {batch}, max_steps: {steps}, log_every: 1, threads: {threads},
        save_every_epoch: false, schedule: constant, warmup_ratio: 0, betas: [0.9, 0.95], weight_decay: 0.0,
        max_grad_norm: 1.0, seed: 0, layout: {layout}, compile: {compile}}}
"""


# ------------------------------------------------------------------------------------------ workers


def worker_ours(a: argparse.Namespace, layout: str, compile: bool = False) -> dict:
    import torch

    from harness.grid import load_experiment
    from harness.training.packing import plan_steps
    from harness.training.loop import prepare_data, train

    torch.set_num_threads(a.threads)
    peak = gemm_peak(a.threads)
    exp = Path(a.root) / f"exp-{Path(a.model).name}.yaml"
    exp.write_text(EXPERIMENT.format(root=a.root, model=a.model, tokenizer=Path(a.root) / "tokenizer",
                                     data=a.data, seq=a.seq, batch=a.rows * a.seq, steps=a.steps,
                                     threads=a.threads, lr=a.lr, layout=layout, compile=str(compile).lower()))
    spec = load_experiment(exp).runs[0]
    rdir = Path(a.root) / "runs" / f"ours-{Path(a.model).name}"
    shutil.rmtree(rdir, ignore_errors=True)
    t0 = time.perf_counter()
    train(spec, rdir)
    wall = time.perf_counter() - t0
    log = [json.loads(x) for x in (rdir / "metrics.jsonl").read_text().splitlines()]
    # attention work per step (sum over examples of n(n+1)) from the same deterministic plan train() used
    _, data = prepare_data(spec.config)
    plan = plan_steps(data, spec.config)
    steps, prev_t, prev_s = [], 0, 0
    for r, p in zip(log, plan):
        tok, sup = r["tokens"] - prev_t, r["supervised_tokens"] - prev_s
        prev_t, prev_s = r["tokens"], r["supervised_tokens"]
        lens = [len(data.examples[i]) for row in p.rows for i in row.examples]
        steps.append({"step": r["step"], "loss": r["loss"], "tokens": tok, "supervised": sup,
                      "seconds": tok / r["tokens_per_s"], "attn_nn": sum(n * (n + 1) for n in lens)})
    shutil.rmtree(rdir, ignore_errors=True)
    return {"steps": steps, "wall_s": wall, "peak_rss_mb": peak_rss_mb(), "gemm_peak_flops": peak,
            "layout": layout, "compile": compile}


def worker_trl(a: argparse.Namespace, packed: bool, compile: bool = False) -> dict:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    torch.set_num_threads(a.threads)
    peak = gemm_peak(a.threads)
    acc = {"tokens": 0, "supervised": 0, "attn_nn": 0}

    class Trainer(SFTTrainer):  # counts what each micro-batch holds; the step itself is TRL's
        def training_step(self, model, inputs, num_items_in_batch=None):
            lab = inputs["labels"]
            acc["supervised"] += int((lab[:, 1:] != -100).sum())
            if inputs.get("attention_mask") is not None:
                lens = inputs["attention_mask"].sum(1).tolist()
            else:  # padding-free: one flattened row, sequences start where position_ids restart
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
    tok = AutoTokenizer.from_pretrained(Path(a.root) / "tokenizer")
    tok.chat_template = CHATML_GENERATION
    rows = [json.loads(x) for x in Path(a.data).read_text().splitlines()]
    ds = Dataset.from_list(rows)
    model = AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.float32, attn_implementation="sdpa")
    batch, accum = (1, a.rows) if packed else (a.padded_batch, a.padded_accum)
    cfg = SFTConfig(output_dir=str(Path(a.root) / "trl-out"), max_steps=a.steps, per_device_train_batch_size=batch,
                    gradient_accumulation_steps=accum, learning_rate=a.lr, lr_scheduler_type="constant",
                    warmup_steps=0, weight_decay=0.0, adam_beta1=0.9, adam_beta2=0.95, adam_epsilon=1e-8,
                    max_grad_norm=1.0, logging_steps=1, save_strategy="no", report_to="none", bf16=False,
                    fp16=False, gradient_checkpointing=False, use_cpu=True, max_length=a.seq,
                    packing=packed, packing_strategy="bfd", assistant_only_loss=True, dataloader_num_workers=0,
                    dataloader_pin_memory=False, disable_tqdm=True, seed=0, data_seed=0, torch_compile=compile)
    trainer = Trainer(model=model, args=cfg, train_dataset=ds, processing_class=tok, callbacks=[Clock()])
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)  # no per-step dict printing to our stdout
    trainer.train()
    wall = time.perf_counter() - t0
    return {"steps": steps, "wall_s": wall, "peak_rss_mb": peak_rss_mb(), "gemm_peak_flops": peak,
            "optimizer": type(trainer.optimizer.optimizer if hasattr(trainer.optimizer, "optimizer")
                              else trainer.optimizer).__name__, "optim_arg": str(cfg.optim)}


# ------------------------------------------------------------------------------------------ the driver


def flops(steps: list[dict], pc: dict) -> float:
    """Model FLOPs of these steps: 6 x (non-embedding params) x tokens + causal attention within each example
    (QK^T and AV: 2 x 2 x d MACs per attended pair forward, x3 for forward + backward)."""
    n = pc["body"] + pc["head"]
    return sum(6 * n * s["tokens"] + 6 * pc["hidden"] * pc["layers"] * s["attn_nn"] for s in steps)


def summarise(res: dict, warmup: int, pc: dict) -> dict:
    timed = res["steps"][warmup:]
    sec = sum(s["seconds"] for s in timed)
    tok = sum(s["tokens"] for s in timed)
    sup = sum(s["supervised"] for s in timed)
    fl = flops(timed, pc)
    return {"tokens_per_s": tok / sec, "supervised_per_s": sup / sec, "peak_rss_mb": res["peak_rss_mb"],
            "wall_s": res["wall_s"], "tokens_per_step": tok / len(timed), "supervised_fraction": sup / tok,
            "model_flops_per_s": fl / sec, "gemm_peak_flops": res["gemm_peak_flops"],
            "mfu": fl / sec / res["gemm_peak_flops"], "losses": [s.get("loss") for s in res["steps"]],
            **({"layout": res["layout"]} if "layout" in res else {})}


def curves_agree(ours: list[float], trl: list[float], bins: int = 4, tol: float = 0.10) -> dict:
    """Mean loss in `bins` consecutive windows of steps (the first step excluded: both start at ~ln V); agreement
    when every window differs by less than `tol` (relative). Data order differs (first-fit on a shuffled order vs
    best-fit decreasing), so step-by-step equality is not expected."""
    n = min(len(ours), len(trl))
    a, b = ours[1:n], trl[1:n]
    k = max(1, len(a) // bins)
    wins = []
    for i in range(0, len(a) - k + 1, k):
        x, y = statistics.fmean(a[i:i + k]), statistics.fmean(b[i:i + k])
        wins.append({"steps": [i + 2, i + k + 1], "ours": x, "trl": y, "rel_diff": abs(x - y) / max(x, y)})
    return {"first_step": [ours[0], trl[0]], "windows": wins, "tol": tol,
            "agree": all(w["rel_diff"] < tol for w in wins)}


def run_worker(kind: str, args: argparse.Namespace, root: Path, model_dir: Path, data: Path) -> dict:
    out = root / f"res-{kind}-{model_dir.name}.json"
    cmd = [sys.executable, __file__, "--worker", kind, "--root", str(root), "--model", str(model_dir),
           "--data", str(data), "--out", str(out), "--steps", str(args.steps), "--seq", str(args.seq),
           "--rows", str(args.rows), "--threads", str(args.threads), "--lr", str(args.lr),
           "--padded-batch", str(args.padded_batch), "--padded-accum", str(args.padded_accum),
           "--layout", args.layout] + (["--compile"] if args.compile else [])
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-6000:])
        raise SystemExit(f"worker {kind} failed ({proc.returncode})")
    return json.loads(out.read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="h128x2,h256x4", help=f"comma list of {sorted(MODELS)}")
    ap.add_argument("--kinds", default=",".join(KINDS), help=f"comma list of {KINDS}")
    ap.add_argument("--rounds", type=int, default=3, help="rounds of ours / trl_packed / trl_padded")
    ap.add_argument("--steps", type=int, default=10, help="optimizer steps per run")
    ap.add_argument("--warmup", type=int, default=3, help="untimed first steps")
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--rows", type=int, default=8, help="rows of --seq tokens per optimizer step")
    ap.add_argument("--padded-batch", type=int, default=16)
    ap.add_argument("--padded-accum", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--examples", type=int, default=2000, help="training conversations")
    ap.add_argument("--layout", choices=("packed", "bucketed"), default="packed",
                    help="train.layout of the 'ours' runs (ours_packed is always packed)")
    ap.add_argument("--compile", action="store_true",
                    help="train.compile for the 'ours' runs (packed rows then all --seq wide: one compiled shape); "
                    "the kind trl_packed_compile is TRL packed with torch_compile=True")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "out" / "vs_trl.json"))
    ap.add_argument("--worker", choices=KINDS, help=argparse.SUPPRESS)
    ap.add_argument("--root", help=argparse.SUPPRESS)
    ap.add_argument("--model", help=argparse.SUPPRESS)
    ap.add_argument("--data", help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.worker:
        if args.worker in ("ours", "ours_packed"):
            res = worker_ours(args, args.layout if args.worker == "ours" else "packed",
                              args.compile and args.worker == "ours")
        else:
            res = worker_trl(args, args.worker in ("trl_packed", "trl_packed_compile"),
                             args.worker == "trl_packed_compile")
        Path(args.out).write_text(json.dumps(res))
        return

    kinds = args.kinds.split(",")
    print(f"vs_trl: {args.threads} threads, fp32, seq {args.seq}, {args.rows}x{args.seq} tokens/step, "
          f"ours: layout {args.layout}{' compiled' if args.compile else ''}, "
          f"{args.steps} steps ({args.warmup} warm-up), {args.rounds} rounds; {load()}", flush=True)
    report = {"machine": machine(), "args": {k: v for k, v in vars(args).items() if k not in
                                             ("worker", "root", "model", "data", "out")}, "models": {}}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        convs = mini_world_conversations(args.examples, seed=0)
        data = write_jsonl(root / "train.jsonl", convs)
        tok = train_tokenizer(root, mini_world_conversations(6000, seed=1))
        for name in args.models.split(","):
            model_dir = save_model(root, name, len(tok), args.seq, tok.eos_token_id)
            pc = param_counts(model_dir)
            runs: dict[str, list[dict]] = {k: [] for k in kinds}
            loads = []
            for r in range(args.rounds):
                for kind in kinds:
                    loads.append(round(os.getloadavg()[0], 2))
                    res = run_worker(kind, args, root, model_dir, data)
                    s = summarise(res, args.warmup, pc)
                    runs[kind].append(s)
                    print(f"  {name} round {r + 1} {kind:10s} {s['tokens_per_s']:8.0f} tok/s "
                          f"{s['supervised_per_s']:7.0f} sup/s  MFU {s['mfu']:5.1%}  RSS {s['peak_rss_mb']:5.0f} MB "
                          f"wall {s['wall_s']:5.1f}s  final loss {s['losses'][-1]:.3f}  ({load()})", flush=True)
            entry = {"params": pc, "runs": runs, "load_at_start": loads, "pairs": {}}
            for kind in kinds[1:]:
                if "ours" not in runs:
                    break
                ratios = [o["tokens_per_s"] / t["tokens_per_s"] for o, t in zip(runs["ours"], runs[kind])]
                sup_ratios = [o["supervised_per_s"] / t["supervised_per_s"] for o, t in zip(runs["ours"], runs[kind])]
                entry["pairs"][kind] = {
                    "ratios": ratios, "median_ratio": statistics.median(ratios),
                    "supervised_ratios": sup_ratios, "median_supervised_ratio": statistics.median(sup_ratios),
                    "median": {k: {key: statistics.median(x[key] for x in runs[k]) for key in
                                   ("tokens_per_s", "supervised_per_s", "peak_rss_mb", "mfu", "wall_s",
                                    "tokens_per_step")} for k in ("ours", kind)},
                    "curves": curves_agree(runs["ours"][0]["losses"], runs[kind][0]["losses"])}
                p = entry["pairs"][kind]
                print(f"{name}: ours / {kind}: median ratio {p['median_ratio']:.2f}x real tok/s "
                      f"(pairs {', '.join(f'{x:.2f}' for x in ratios)}), {p['median_supervised_ratio']:.2f}x "
                      f"supervised tok/s; loss curves agree: {p['curves']['agree']}", flush=True)
            report["models"][name] = entry
    report["load_avg_end"] = os.getloadavg()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1))
    print(f"wrote {args.out}; {load()}")


if __name__ == "__main__":
    main()
