"""Greedy generation and how its output is read: answer-first scoring and the raw-question format probe.

Scoring is *answer-first*: an answer counts only if its first line starts with the expected value (a loose
"value anywhere" rule leaks: a base model that keeps writing a biography mentions the value by chance). The
mini-world's build measurements (harness/world/measure.py) use the same functions.
"""

from __future__ import annotations

import re
from typing import Sequence

import torch

from harness.data.render import end_of_turn_markers

QUESTION_WORDS = ("what", "where", "when", "who", "which", "how", "why", "in which", "on what")


@torch.no_grad()
def generate(model, tok, prompts: Sequence[str], max_new_tokens: int = 24, batch_size: int = 64,
             stop: Sequence[str] = ("<|im_end|>", "<|endoftext|>"), add_special_tokens: bool = True
             ) -> tuple[list[str], list[bool]]:
    """Greedy continuations of prompts (left-padded batches). Returns (texts, finished) where finished is
    False when a generation hit `max_new_tokens` without a stop string. Raw text gets the tokenizer's own
    special tokens (a BOS, for models that were pretrained with one, e.g. Gemma); a prompt rendered with the
    chat template already holds them: pass add_special_tokens=False."""
    model.eval()
    device = next(model.parameters()).device
    pad = tok.pad_token_id
    stop_ids = [tok.convert_tokens_to_ids(s) for s in stop if s in tok.get_vocab()]
    outs, finished = [], []
    for i in range(0, len(prompts), batch_size):
        enc = [tok(p, add_special_tokens=add_special_tokens)["input_ids"] for p in prompts[i:i + batch_size]]
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


def normalise(text: str) -> str:
    """Lower case, punctuation dropped, whitespace collapsed: for matching an answer inside a line."""
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


def answer_in_first_line(generated: str, answer: str) -> bool:
    """The normalised answer appears, as whole words, in the normalised first line (any model's phrasing:
    "The capital of France is Paris." answers "Paris")."""
    a = normalise(answer)
    return bool(a) and f" {a} " in f" {normalise(first_line(generated))} "


FORMAT_RULES = {"answer_first": answer_first, "contains": answer_in_first_line}


def classify_format(generated: str, answer: str, rule: str = "answer_first") -> str:
    """answered | continued_question | other (the seed's format probe). `rule` decides "answered":
    answer_first (the first line starts with the answer: the mini-world's strict rule) or contains (the
    answer appears in the first line: any model)."""
    if FORMAT_RULES[rule](generated, answer):
        return "answered"
    if is_question(first_line(generated)):
        return "continued_question"
    return "other"


# ------------------------------------------------------------------------------------------ format probe


def stop_strings(tok, eot: str | None = None) -> list[str]:
    """Where a generation counts as finished: eos and the template's end-of-turn markers."""
    out = list(end_of_turn_markers(tok, eot))
    if tok.eos_token and tok.eos_token not in out:
        out.append(tok.eos_token)
    return out


def format_probe(model, tok, rows: Sequence[dict], max_new_tokens: int = 32, stop: Sequence[str] | None = None,
                 batch_size: int = 128, rule: str = "answer_first") -> tuple[dict, list[dict]]:
    """Greedy continuations of raw questions ({prompt, answer}), classified by `rule`. Returns the rates
    (format/answered + format/continued_question + format/other = 1; format/unfinished separately: the
    share that hit max_new_tokens without a stop token) and one sample row per question."""
    stop = list(stop) if stop is not None else stop_strings(tok)
    gens, finished = generate(model, tok, [r["prompt"] for r in rows], max_new_tokens, batch_size, stop=stop)
    samples = []
    for i, (r, g, f) in enumerate(zip(rows, gens, finished)):
        samples.append({"task": "probe/format", "doc_id": i, "prompt": r["prompt"], "answer": r.get("answer", ""),
                        "generation": g, "class": classify_format(g, str(r.get("answer", "")), rule), "finished": f})
    n = max(1, len(rows))
    rates = {f"format/{c}": sum(s["class"] == c for s in samples) / n
             for c in ("answered", "continued_question", "other")}
    rates["format/unfinished"] = sum(not s["finished"] for s in samples) / n
    return rates, samples
