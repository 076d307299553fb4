"""Data preparation: tokenize + segment + label N mini-world conversations, ours vs TRL's dataset preparation.

    .venv/bin/python benchmarks/data_prep.py                   # 20,000 conversations, 2 rounds
    .venv/bin/python benchmarks/data_prep.py --n 2000 --rounds 1

Both start from the same JSONL file on disk and end with trainer-ready examples under the assistant-only regime:

* **ours**: ``load_conversations`` (parse + validate) -> ``tokenize_all`` (render once, one batched fast-tokenizer
  call with offsets, a segment per token) -> ``apply_all('prompt_masked', turns='all')`` (labels + weights),
  and for the packed variant ``pack_rows`` (first-fit rows of 512).
* **trl**: read the lines into a ``datasets.Dataset`` (in memory: no on-disk cache to hit on a second round) and
  ``SFTTrainer._prepare_dataset`` with ``assistant_only_loss=True`` and the ChatML template with
  ``{% generation %}`` markers (``apply_chat_template(return_assistant_tokens_mask=True)`` per example, labels
  column), with ``packing=False`` and with ``packing=True`` (bfd); ``dataset_num_proc`` unset (one process, like
  ours), and also 2 processes.

Rounds alternate ours / TRL in one process after an untimed warm-up of each on --check other conversations,
which also checks that both produce the same tokens and the same supervised positions for every conversation;
the median of the rounds is reported.
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
from _common import (ROOT, CHATML_GENERATION, load, machine, mini_world_conversations, save_model,  # noqa: E402
                     train_tokenizer, write_jsonl)


def ours(path: Path, tok, seq: int, packed: bool):
    from harness.data import ConversationTokenizer, load_conversations, tokenize_all
    from harness.masking import apply_all
    from harness.training.packing import epoch_order, pack_rows

    convs = load_conversations(str(path))
    examples, drops = tokenize_all(convs, ConversationTokenizer(tok, max_length=seq))
    data = apply_all(examples, "prompt_masked", {"turns": "all"}, drops)
    if packed:
        pack_rows([len(t) for t in data.examples], seq, epoch_order(len(data.examples), 0, 0))
    return data


def trl_prepare(trainer, path: Path, tok, seq: int, packed: bool, num_proc: int | None):
    from datasets import Dataset
    from trl import SFTConfig

    rows = [json.loads(x) for x in path.read_text().splitlines()]
    ds = Dataset.from_list(rows)
    args = SFTConfig(output_dir=trainer.args.output_dir, max_length=seq, packing=packed, packing_strategy="bfd",
                     assistant_only_loss=True, dataset_num_proc=num_proc, use_cpu=True, report_to="none",
                     bf16=False)
    return trainer._prepare_dataset(ds, tok, args, packed, None, "train")


def check_same(data, prepared) -> dict:
    """Per conversation: same token ids, same supervised positions (labels != -100)?"""
    import numpy as np

    ids, labels = prepared["input_ids"], prepared["labels"]
    same_ids = same_sup = 0
    for t, m, i, lab in zip(data.examples, data.masks, ids, labels):
        if np.array_equal(t.input_ids, np.asarray(i)):
            same_ids += 1
            ours_sup = m.labels != -100
            trl_sup = np.asarray(lab) != -100
            trl_sup[0] = False  # position 0 is never a target (TRL drops it at collation, ours in the mask)
            same_sup += bool(np.array_equal(ours_sup, trl_sup))
    return {"examples": len(data.examples), "trl_examples": len(ids), "same_tokens": same_ids,
            "same_supervised_positions": same_sup}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=20_000, help="conversations")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--check", type=int, default=2000, help="conversations of the untimed warm-up + equality check")
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-num-proc", action="store_true", help="skip TRL with dataset_num_proc=2")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "out" / "data_prep.json"))
    args = ap.parse_args()

    import datasets
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    torch.set_num_threads(args.threads)
    datasets.disable_progress_bars()
    datasets.disable_caching()
    print(f"data_prep: {args.n} conversations, {args.rounds} rounds; {load()}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        path = write_jsonl(root / "train.jsonl", mini_world_conversations(args.n, seed=0))
        tok = train_tokenizer(root, mini_world_conversations(6000, seed=1))
        tok = AutoTokenizer.from_pretrained(root / "tokenizer")
        trl_tok = AutoTokenizer.from_pretrained(root / "tokenizer")
        trl_tok.chat_template = CHATML_GENERATION
        model = AutoModelForCausalLM.from_pretrained(save_model(root, "h128x2", len(tok), args.seq,
                                                                tok.eos_token_id))
        small = write_jsonl(root / "small.jsonl", mini_world_conversations(50, seed=3))
        from datasets import Dataset

        trainer = SFTTrainer(model=model, processing_class=trl_tok, train_dataset=Dataset.from_list(
            [json.loads(x) for x in small.read_text().splitlines()]),
            args=SFTConfig(output_dir=str(root / "o"), max_length=args.seq, assistant_only_loss=True,
                           use_cpu=True, report_to="none", bf16=False))
        variants = {"ours_padded": lambda p: ours(p, tok, args.seq, False),
                    "trl_padded": lambda p: trl_prepare(trainer, p, trl_tok, args.seq, False, None),
                    "ours_packed": lambda p: ours(p, tok, args.seq, True),
                    "trl_packed": lambda p: trl_prepare(trainer, p, trl_tok, args.seq, True, None)}
        if not args.no_num_proc:
            variants["trl_padded_2proc"] = lambda p: trl_prepare(trainer, p, trl_tok, args.seq, False, 2)
        times: dict[str, list[float]] = {k: [] for k in variants}
        warm = write_jsonl(root / "warm.jsonl", mini_world_conversations(args.check, seed=2))
        out = {k: fn(warm) for k, fn in variants.items()}  # warm-up (imports, template compilation)
        same = check_same(out["ours_padded"], out["trl_padded"])
        print(f"  warm-up on {args.check} other conversations: same tokens {same['same_tokens']}/{same['examples']}, "
              f"same supervised positions {same['same_supervised_positions']}/{same['examples']}", flush=True)
        del out
        for r in range(args.rounds):
            for k, fn in variants.items():
                t0 = time.perf_counter()
                fn(path)
                times[k].append(time.perf_counter() - t0)
                print(f"  round {r + 1} {k:17s} {times[k][-1]:6.2f} s  ({args.n / times[k][-1]:7.0f} conv/s; "
                      f"{load()})", flush=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    ratios = {"padded": med["trl_padded"] / med["ours_padded"], "packed": med["trl_packed"] / med["ours_packed"]}
    if "trl_padded_2proc" in med:
        ratios["padded_vs_trl_2proc"] = med["trl_padded_2proc"] / med["ours_padded"]
    for k, v in ratios.items():
        print(f"ours vs TRL ({k}): {v:.2f}x faster")
    report = {"machine": machine(), "n": args.n, "seq": args.seq, "seconds": times, "median_s": med,
              "speedup": ratios, "same": same, "load_avg_end": os.getloadavg()}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1))
    print(f"wrote {args.out}; {load()}")


if __name__ == "__main__":
    main()
