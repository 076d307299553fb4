"""Acceptance check for the mini-world: does prompt-masked SFT teach the base model to *answer*?

A deliberately plain loop (not the project's training engine): loss on assistant-content and <|im_end|>
tokens only (labels -100 elsewhere), AdamW, linear warmup + cosine decay, padded batches. It measures the
base model and the tuned one with the same functions `harness world build` uses:

* chat QA on held-out people (answer-first strict scoring) - the acceptance number (>= 60%);
* chat QA on the SFT people; bio-format fact completion (forgetting); raw-question format rates.

    HF_HUB_OFFLINE=1 .venv/bin/python scripts/world_sft_check.py results/world/demo-seed0 [--lr 2e-4 --epochs 2]
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import time
from pathlib import Path

import torch

ASSISTANT = re.compile(r"<\|im_start\|>assistant\n(.*?<\|im_end\|>)", re.S)


def supervised_example(tok, messages: list[dict]) -> tuple[list[int], list[int]]:
    """Token ids and labels: label = id on assistant content + <|im_end|>, -100 elsewhere.

    The assistant spans are found in the rendered ChatML text and mapped to tokens with the fast
    tokenizer's offsets; a token straddling a span boundary is an error (the mask would be ambiguous).
    """
    text = tok.apply_chat_template(messages, tokenize=False)
    spans = [(m.start(1), m.end(1)) for m in ASSISTANT.finditer(text)]
    if not spans:
        raise ValueError(f"no assistant turn in {messages!r}")
    enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    labels = []
    for tid, (a, b) in zip(enc["input_ids"], enc["offset_mapping"]):
        inside = any(s <= a and b <= e for s, e in spans)
        if not inside and any(a < e and s < b for s, e in spans):
            raise ValueError(f"token {tok.convert_ids_to_tokens(tid)!r} straddles an assistant span boundary")
        labels.append(tid if inside else -100)
    return enc["input_ids"], labels


def batches(examples, batch_size: int, pad: int, g: torch.Generator):
    order = torch.randperm(len(examples), generator=g).tolist()
    for i in range(0, len(order), batch_size):
        chunk = [examples[j] for j in order[i:i + batch_size]]
        T = max(len(ids) for ids, _ in chunk)
        ids = torch.full((len(chunk), T), pad, dtype=torch.long)
        lab = torch.full((len(chunk), T), -100, dtype=torch.long)
        att = torch.zeros((len(chunk), T), dtype=torch.long)
        for r, (x, y) in enumerate(chunk):
            ids[r, :len(x)] = torch.tensor(x)
            lab[r, :len(y)] = torch.tensor(y)
            att[r, :len(x)] = 1
        yield ids, lab, att


def measure_all(model, tok, world: Path, limit: int) -> dict:
    from harness.world import measure as M

    read = lambda f: [json.loads(x) for x in (world / "data" / f).read_text().splitlines()][:limit]
    t0 = time.perf_counter()
    out = {
        "qa_heldout": M.chat_qa_accuracy(model, tok, read("eval_qa_heldout.jsonl")),
        "qa_train": M.chat_qa_accuracy(model, tok, read("eval_qa_train.jsonl")),
        "fact_completion": M.fact_accuracy(model, tok, read("eval_facts.jsonl")),
        **{f"raw_{k}": v for k, v in M.raw_format_rates(model, tok, read("eval_raw_questions.jsonl")).items()},
    }
    out["seconds"] = round(time.perf_counter() - t0, 1)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("world", type=Path, help="a built world directory (harness world build)")
    ap.add_argument("--data", default="sft_train.jsonl", help="SFT file under WORLD/data")
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--epochs", type=float, default=2.0)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--warmup", type=float, default=0.03)
    ap.add_argument("--weight-decay", type=float, default=0.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--limit", type=int, default=1000, help="max eval rows per measurement")
    ap.add_argument("--out", type=Path, default=None, help="write the numbers as JSON here")
    ap.add_argument("--save", type=Path, default=None, help="save the tuned model here")
    args = ap.parse_args(argv)

    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    torch.set_num_threads(2)
    torch.manual_seed(args.seed)
    model_dir = args.world / "model"
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)

    rows = [json.loads(x) for x in (args.world / "data" / args.data).read_text().splitlines() if x.strip()]
    examples = [supervised_example(tok, r["messages"]) for r in rows]
    n_sup = sum(sum(y != -100 for y in lab) for _, lab in examples)
    n_tok = sum(len(ids) for ids, _ in examples)
    print(f"{len(examples)} conversations, {n_tok:,} tokens, {n_sup:,} supervised ({n_sup / n_tok:.0%})")

    before = measure_all(model, tok, args.world, args.limit)
    print("base   ", json.dumps(before))

    steps_per_epoch = math.ceil(len(examples) / args.batch)
    total = max(1, int(round(args.epochs * steps_per_epoch)))
    warm = max(1, int(args.warmup * total))
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=args.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / warm if s < warm else 0.5 * (1 + math.cos(math.pi * (s - warm) / max(1, total - warm))))
    g = torch.Generator().manual_seed(args.seed)
    model.train()
    step, t0 = 0, time.perf_counter()
    while step < total:
        for ids, lab, att in batches(examples, args.batch, tok.pad_token_id, g):
            logits = model(input_ids=ids, attention_mask=att, use_cache=False).logits
            loss = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]),
                                                     lab[:, 1:].reshape(-1), ignore_index=-100)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            step += 1
            if step % max(1, total // 10) == 0 or step == total:
                print(f"  sft step {step}/{total} loss {loss.item():.3f} {time.perf_counter() - t0:.0f}s", flush=True)
            if step >= total:
                break
    train_s = time.perf_counter() - t0
    model.eval()
    after = measure_all(model, tok, args.world, args.limit)
    print("tuned  ", json.dumps(after))
    result = {"world": str(args.world), "data": args.data, "lr": args.lr, "epochs": args.epochs, "batch": args.batch,
              "steps": total, "train_seconds": round(train_s, 1), "before": before, "after": after}
    print(f"held-out QA (strict): {before['qa_heldout']:.1%} -> {after['qa_heldout']:.1%}   "
          f"train QA: {before['qa_train']:.1%} -> {after['qa_train']:.1%}   "
          f"fact completion: {before['fact_completion']:.1%} -> {after['fact_completion']:.1%}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1) + "\n")
    if args.save:
        model.save_pretrained(args.save, safe_serialization=True)
        tok.save_pretrained(args.save)
    return 0


if __name__ == "__main__":
    sys.exit(main())
