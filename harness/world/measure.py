"""What `harness world build` measures on its base model (fact completion, chat QA, raw-question format), with
the evaluation's generation and answer-first scoring (harness/evaluation/generate.py)."""

from __future__ import annotations

import re
from typing import Sequence

from harness.evaluation.generate import answer_first, classify_format, first_line, generate


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
                       batch_size, add_special_tokens=False)  # the rendered template holds its own BOS
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
