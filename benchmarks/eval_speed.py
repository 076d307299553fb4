"""How long does evaluating one checkpoint take (all lm-eval tasks + every probe)? Target: <= 60 s for a
demo-size checkpoint on 2 CPU cores.

    HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 .venv/bin/python benchmarks/eval_speed.py [--world DIR]

Uses the mini-world at --world (default: results/world/demo-seed0, else test-seed0). The checkpoint is the
world's base model saved as a COMPLETED checkpoint: the base never stops generating, so every generation runs
to its token limit (the worst case). If the world has no model yet (build still running), a randomly
initialised model of the demo shape is used and the output says so. Evaluates every world task on all its
documents (no limit) and every probe with the defaults (probe_limit 200, max_new_tokens 32), and prints:

* setup: task manager, tokenizer and tokenized probes (once per process) + the base's cached log-probs
  (once per experiment);
* per checkpoint: what `evaluate_run` pays for each checkpoint, broken down by component.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

EXP = """\
name: evalbench
results_dir: {out}/results
model: {{name_or_path: {model}}}
data:
  train: {{path: {w}/data/sft_train.jsonl}}
  eval: {{path: {w}/data/eval_qa_heldout.jsonl}}
  max_length: 128
eval:
  include_path: [{w}/tasks]
  tasks: [{{name: world_qa, batch_size: {bs}}}, {{name: world_qa_raw, batch_size: {bs}}},
          {{name: world_facts, batch_size: {bs}}}]
  pretrain_text: {w}/data/eval_heldout_bios.jsonl
  raw_questions: {w}/data/eval_raw_questions.jsonl
  threads: {threads}
"""


def _random_demo_model(world: Path, out: Path) -> Path:
    """A demo-shaped Llama (harness.world.build SIZES['demo']) with random weights and the world tokenizer."""
    import torch
    from transformers import AutoTokenizer

    from harness.world.build import SIZES
    from harness.world.pretrain import make_model

    tok = AutoTokenizer.from_pretrained(world / "tokenizer")
    torch.manual_seed(0)
    model = make_model(SIZES["demo"]["pretrain"], len(tok), tok.eos_token_id, tok.pad_token_id)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--world", help="mini-world directory (default: results/world/demo-seed0, else test-seed0)")
    ap.add_argument("--batch-size", type=int, default=64, help="lm-eval batch size of every task")
    ap.add_argument("--threads", type=int, default=None,
                    help="eval.threads (default: the evaluator's choice: 1 for models under 20M parameters)")
    ap.add_argument("--json", help="also write the numbers to this JSON file")
    args = ap.parse_args()
    root = Path(__file__).resolve().parents[1]
    cands = [Path(args.world)] if args.world else [root / "results/world/demo-seed0", root / "results/world/test-seed0"]
    world = next((c for c in cands if (c / "data" / "eval_qa_heldout.jsonl").exists() and (c / "tasks").is_dir()), None)
    if world is None:
        print(f"no mini-world with data at {[str(c) for c in cands]}: run `harness world build --size demo`")
        return 1
    t_import = time.perf_counter()
    import torch  # noqa: F401  (import cost reported separately)

    from harness.grid import load_experiment
    from harness.evaluation.evaluator import Evaluator
    from harness.evaluation.evaluate import evaluate_checkpoint

    import lm_eval.models.huggingface  # noqa: F401  (import cost reported separately)

    t_import = time.perf_counter() - t_import
    tmp = Path(tempfile.mkdtemp(prefix="evalbench-"))
    try:
        model_dir = world / "model"
        note = ""
        if not (model_dir / "config.json").exists():
            model_dir = _random_demo_model(world, tmp / "random-model")
            note = " (world model not built: randomly initialised model of the demo shape)"
        exp_path = tmp / "bench.yaml"
        exp_path.write_text(EXP.format(out=tmp, model=model_dir, w=world, bs=args.batch_size,
                                       threads="null" if args.threads is None else args.threads))
        cfg = load_experiment(exp_path).config
        ckpt = tmp / "results/evalbench/runs/bench/checkpoints/step-000001"
        shutil.copytree(model_dir, ckpt)
        (ckpt / "COMPLETED").write_text("bench\n")

        t0 = time.perf_counter()
        ev = Evaluator(cfg, base_dir=tmp / "results/evalbench/base")
        t_setup = time.perf_counter() - t0
        t0 = time.perf_counter()
        from harness.evaluation.evaluator import _eval_threads
        from harness.modeling import load_model

        base = load_model(cfg, model_dir, ev.device, training=False)
        with _eval_threads(base, args.threads):
            ev.base_logprobs(base_model=base)
        t_base = time.perf_counter() - t0
        t0, c0 = time.perf_counter(), time.process_time()
        r = evaluate_checkpoint(ckpt, cfg, ckpt.parent.parent / "eval" / "step-000001.json", evaluator=ev)
        t_ckpt, c_ckpt = time.perf_counter() - t0, time.process_time() - c0
        n_params = sum(p.numel() for p in __import__("transformers").AutoModelForCausalLM.from_pretrained(
            model_dir).parameters())
        le = r["lm_eval"]["n-samples"]
        res = {"world": str(world), "model": str(model_dir) + note, "params": n_params,
               "threads": args.threads or "auto", "cpus": os.cpu_count(), "load_avg_1min": os.getloadavg()[0],
               "docs": {k: v["effective"] for k, v in le.items()},
               "probes": {k: v for k, v in r["probes"].items() if isinstance(v, dict) and k != "seconds"},
               "import_s": round(t_import, 2), "setup_s": round(t_setup, 2), "base_logprobs_s": round(t_base, 2),
               "checkpoint_s": round(t_ckpt, 2), "checkpoint_cpu_s": round(c_ckpt, 2),
               "checkpoint_breakdown_s": r["probes"]["seconds"]}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"world {res['world']}; model {res['model']} ({res['params']:,} params); "
          f"{res['threads']} torch threads on {res['cpus']} CPUs; load average {res['load_avg_1min']:.1f}")
    print(f"lm-eval documents: {res['docs']}")
    print(f"imports (torch, lm-eval)       {res['import_s']:6.1f} s  (once per process)")
    print(f"setup (tasks, tokenized probes) {res['setup_s']:6.1f} s  (once per process and config)")
    print(f"base log-probs for KL           {res['base_logprobs_s']:6.1f} s  (once per experiment)")
    print(f"one checkpoint, all tasks+probes {res['checkpoint_s']:5.1f} s  {res['checkpoint_breakdown_s']}")
    print(f"  (process CPU time {res['checkpoint_cpu_s']:.1f} s; a load average above the core count means "
          "other processes shared the cores and the wall time is inflated)")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
