"""Greedy-generation measurements shared by `harness world build` and the evaluation probes.

Scoring is *answer-first*: a chat answer counts only if its first line starts with the expected value (a
loose "value anywhere" rule leaks: a base model that keeps writing a biography mentions the value by chance).
"""

from __future__ import annotations

import re
from typing import Sequence

import torch

QUESTION_WORDS = ("what", "where", "when", "who", "which", "how", "why", "in which", "on what")


@torch.no_grad()
def generate(model, tok, prompts: Sequence[str], max_new_tokens: int = 24, batch_size: int = 64,
             stop: Sequence[str] = ("<|im_end|>", "<|endoftext|>")) -> tuple[list[str], list[bool]]:
    """Greedy continuations of raw text prompts (left-padded batches). Returns (texts, finished) where
    finished is False when a generation hit `max_new_tokens` without a stop string."""
    model.eval()
    device = next(model.parameters()).device
    pad = tok.pad_token_id
    stop_ids = [tok.convert_tokens_to_ids(s) for s in stop if s in tok.get_vocab()]
    outs, finished = [], []
    for i in range(0, len(prompts), batch_size):
        enc = [tok(p, add_special_tokens=False)["input_ids"] for p in prompts[i:i + batch_size]]
        T = max(len(e) for e in enc)
        ids = torch.full((len(enc), T), pad, dtype=torch.long)
        att = torch.zeros((len(enc), T), dtype=torch.long)
        for r, e in enumerate(enc):
            ids[r, T - len(e):] = torch.tensor(e)
            att[r, T - len(e):] = 1
        gen = model.generate(input_ids=ids.to(device), attention_mask=att.to(device), max_new_tokens=max_new_tokens,
                             do_sample=False, pad_token_id=pad, eos_token_id=stop_ids or None)
        for row in gen[:, T:].tolist():
            done = any(t in stop_ids for t in row)
            cut = next((j for j, t in enumerate(row) if t in stop_ids), len(row))
            outs.append(tok.decode(row[:cut], skip_special_tokens=True))
            finished.append(done)
    return outs, finished


def first_line(text: str) -> str:
    return text.strip().split("\n")[0].strip()


def answer_first(generated: str, answer: str) -> bool:
    """The first line starts with the answer, followed by nothing, punctuation or a space."""
    line = first_line(generated)
    if not line.lower().startswith(answer.lower()):
        return False
    rest = line[len(answer):]
    return not rest or not rest[0].isalnum()


def is_question(line: str) -> bool:
    line = line.strip()
    return line.endswith("?") or line.lower().startswith(QUESTION_WORDS)


def classify_format(generated: str, answer: str) -> str:
    """answered | continued_question | other (the seed's format probe)."""
    if answer_first(generated, answer):
        return "answered"
    if is_question(first_line(generated)):
        return "continued_question"
    return "other"


def chat_prompt(tok, question: str, system: str | None = None) -> str:
    msgs = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": question}]
    return tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)


def fact_correct(model, tok, facts: Sequence[dict], max_new_tokens: int = 8, batch_size: int = 64) -> list[bool]:
    """Bio-format fact completion ({prompt, answer}): the greedy continuation starts with the answer."""
    gens, _ = generate(model, tok, [f["prompt"] for f in facts], max_new_tokens, batch_size)
    return [answer_first(g, f["answer"].strip()) for g, f in zip(gens, facts)]


def chat_qa_correct(model, tok, qa: Sequence[dict], max_new_tokens: int = 16, batch_size: int = 64,
                    system: str | None = None) -> list[bool]:
    """Chat QA ({question, answer}) under the tokenizer's chat template, answer-first strict scoring."""
    gens, _ = generate(model, tok, [chat_prompt(tok, q["question"], system) for q in qa], max_new_tokens,
                       batch_size)
    return [answer_first(g, q["answer"]) for g, q in zip(gens, qa)]


def mean(flags: Sequence[bool]) -> float:
    return sum(flags) / max(1, len(flags))


def by_key(rows: Sequence[dict], flags: Sequence[bool], key: str = "attribute") -> dict[str, float]:
    """Accuracy per value of rows[i][key] (e.g. per attribute)."""
    groups: dict[str, list[bool]] = {}
    for r, f in zip(rows, flags):
        groups.setdefault(str(r.get(key)), []).append(bool(f))
    return {k: mean(v) for k, v in sorted(groups.items())}


def fact_accuracy(model, tok, facts: Sequence[dict], max_new_tokens: int = 8) -> float:
    return mean(fact_correct(model, tok, facts, max_new_tokens))


def chat_qa_accuracy(model, tok, qa: Sequence[dict], max_new_tokens: int = 16) -> float:
    return mean(chat_qa_correct(model, tok, qa, max_new_tokens))


def raw_format_rates(model, tok, raw: Sequence[dict], max_new_tokens: int = 24) -> dict:
    gens, fin = generate(model, tok, [r["prompt"] for r in raw], max_new_tokens, stop=("<|endoftext|>",))
    classes = [classify_format(g, r["answer"]) for g, r in zip(gens, raw)]
    n = max(1, len(raw))
    return {"answered": classes.count("answered") / n, "continued_question": classes.count("continued_question") / n,
            "other": classes.count("other") / n, "unfinished": sum(not f for f in fin) / n}


def normalise_answer(text: str) -> str:
    return re.sub(r"[^\w\s]", "", first_line(text)).strip().lower()
