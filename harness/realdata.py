"""Real-knowledge data for a real base model: facts it already knows, split by subject into SFT and held-out.

``harness realdata build --model DIR`` reads ``experiments/data/real_facts.jsonl`` (curated facts of four
relations), asks the base model to complete each fact in plain text ("The capital of France is"), keeps the
facts it completes (the normalised answer in the first line of a greedy continuation) and reports the rate
per relation. The kept facts are split by subject (a fixed seed): chat QA conversations about one half are
the SFT data; the other half is evaluated in chat format (an lm-eval generation task through lm-eval's own
chat-template path), so SFT has to *extract* what pretraining stored rather than memorise answers. Raw
questions (no template) feed the format probe, and held-out generic English for the forgetting probe comes
from the text that ships with Python itself: the standard library's documentation topics
(``pydoc_data.topics``), paragraphs of a few sentences each.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
import time
from pathlib import Path

from harness.commands import help_line
from harness.errors import DataError
from harness.evaluation.generate import answer_in_first_line, generate
from harness.evaluation.tasks import generate_task
from harness.fsio import atomic_write_json, atomic_write_text

FACTS = Path(__file__).resolve().parents[1] / "experiments" / "data" / "real_facts.jsonl"
DEFAULT_OUT = Path("results") / "realdata"
RELATIONS = {  # plain-text completion prompt, chat question (the held-out form), paraphrases for SFT
    # "The capital of X is" is continued with "the capital of the country..." by gemma-3-270m: "the city of"
    # makes it name the city (71% vs 12% on 24 capitals, measured)
    "capital": ("The capital of {s} is the city of", "What is the capital of {s}?",
                ("Which city is the capital of {s}?", "Name the capital city of {s}.")),
    "symbol": ("The chemical symbol of {s} is", "What is the chemical symbol of {s}?",
               ("Which symbol stands for {s} in chemistry?", "Give the element symbol of {s}.")),
    "author": ("{s} was written by", "Who wrote {s}?",
               ("Who is the author of {s}?", "Name the writer of {s}.")),
    "country": ("{s} is a city in", "In which country is {s}?",
                ("Which country is {s} in?", "Name the country where the city of {s} lies.")),
}
# chat QA, scored on the answer's first line (a real model answers "Paris." or "The capital is Paris.")
TASK = dict(doc_to_text="{{question}}", until=["<end_of_turn>", "<eos>", "\n"], max_gen_toks=12,
            filter_name="first_line", regex=r"^\s*([^\n]+)")


def load_facts(path: Path = FACTS) -> list[dict]:
    rows = []
    for i, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            r = json.loads(line)
        except ValueError as exc:
            raise DataError(f"not JSON: {exc}", where=f"{path}:{i}", fix="one {relation, subject, answer} per line")
        if r.get("relation") not in RELATIONS or not r.get("subject") or not r.get("answer"):
            raise DataError("needs relation (one of " + ", ".join(RELATIONS) + "), subject and answer",
                            where=f"{path}:{i}", fix="fix the row")
        rows.append(r)
    return rows


def generic_text(n: int, seed: int = 0, min_chars: int = 200, max_chars: int = 600) -> list[str]:
    """`n` paragraphs of English prose from Python's own documentation topics (no code blocks)."""
    from pydoc_data.topics import topics

    paras: list[str] = []
    seen: set[str] = set()
    for key in sorted(topics):
        for p in re.split(r"\n\s*\n", topics[key]):
            p = " ".join(p.split())
            if min_chars <= len(p) <= max_chars and p[0].isalpha() and p.count("(") < 4 and ">>>" not in p \
                    and p.endswith(".") and p not in seen:  # some topics repeat paragraphs of others
                seen.add(p)
                paras.append(p)
    random.Random(seed).shuffle(paras)
    return paras[:n]


def measure_known(model, tok, facts: list[dict], batch_size: int = 32) -> list[bool]:
    prompts = [RELATIONS[f["relation"]][0].format(s=f["subject"]) for f in facts]  # plain text, no template
    gens, _ = generate(model, tok, prompts, max_new_tokens=10, batch_size=batch_size, stop=("<eos>",))
    return [answer_in_first_line(g, f["answer"]) for g, f in zip(gens, facts)]


def build(model_dir: str | Path, out: str | Path = DEFAULT_OUT, *, seed: int = 0, n_text: int = 120,
          log=print) -> dict:
    """Measure, split and write the real-knowledge files under `out`; returns the summary (also summary.json)."""
    import torch

    from harness.modeling import load_tokenizer, quiet_hf_progress

    quiet_hf_progress()
    from transformers import AutoModelForCausalLM

    t0 = time.perf_counter()
    out = Path(out)
    facts = load_facts()
    tok = load_tokenizer(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    known = measure_known(model, tok, facts)
    rates = {rel: sum(k for k, f in zip(known, facts) if f["relation"] == rel) /
             max(1, sum(f["relation"] == rel for f in facts)) for rel in RELATIONS}
    kept = [f for f, k in zip(facts, known) if k]
    rng = random.Random(seed)
    by_rel: dict[str, list[dict]] = {}
    for f in kept:
        by_rel.setdefault(f["relation"], []).append(f)
    train, held = [], []
    for rel in RELATIONS:  # split by subject within each relation: both halves have every relation
        rows = sorted(by_rel.get(rel, []), key=lambda f: f["subject"])
        rng.shuffle(rows)
        half = len(rows) // 2
        train += rows[:half]
        held += rows[half:]

    def qa(f: dict, question: str | None = None) -> dict:
        q = (question or RELATIONS[f["relation"]][1]).format(s=f["subject"])
        return {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": f["answer"] + "."}],
                "question": q, "answer": f["answer"], "relation": f["relation"], "subject": f["subject"]}

    def phrasings(f: dict) -> list[str]:
        _, question, more = RELATIONS[f["relation"]]
        return [question, *more]

    def mixed(rows: list[dict]) -> list[dict]:  # relations interleaved: any prefix (data.train.limit) has all
        rows = list(rows)
        random.Random(seed).shuffle(rows)
        return rows

    data, tasks = out / "data", out / "tasks"
    files = {
        # one conversation per fact, the phrasings taking turns (the held-out questions use the first), and
        # all three per fact for a larger SFT set (three times the training compute of the study)
        "sft_train.jsonl": mixed([qa(f, phrasings(f)[i % 3]) for i, f in enumerate(train)]),
        "sft_train_paraphrased.jsonl": [qa(f, q) for f in train for q in phrasings(f)],
        "eval_qa_heldout.jsonl": [qa(f) for f in held],
        "eval_qa_train.jsonl": [qa(f) for f in train],
        "eval_raw_questions.jsonl": [{"prompt": RELATIONS[f["relation"]][1].format(s=f["subject"]) + "\n",
                                      "answer": f["answer"], "relation": f["relation"]} for f in held],
        "eval_generic_text.jsonl": [{"text": t} for t in generic_text(n_text, seed)],
    }
    for name, rows in files.items():
        atomic_write_text(data / name, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    for name, src in (("real_qa", "eval_qa_heldout.jsonl"), ("real_qa_train", "eval_qa_train.jsonl")):
        atomic_write_text(tasks / f"{name}.yaml", generate_task(name, str((data / src).resolve()), **TASK))
    summary = {"model": str(model_dir), "facts": len(facts), "known": len(kept),
               "known_rate": round(len(kept) / max(1, len(facts)), 4), "known_rate_by_relation": rates,
               "sft_facts": len(train), "heldout_facts": len(held), "generic_texts": len(files["eval_generic_text.jsonl"]),
               "generic_text_source": "Python standard library documentation topics (pydoc_data.topics)",
               "seed": seed, "seconds": round(time.perf_counter() - t0, 1)}
    atomic_write_json(out / "summary.json", summary)
    log(f"base completes {len(kept)}/{len(facts)} facts ({100 * summary['known_rate']:.1f}%): "
        + ", ".join(f"{r} {100 * v:.0f}%" for r, v in rates.items())
        + f"; {len(train)} SFT / {len(held)} held-out facts -> {out}")
    return summary


def build_longprompt(src: str | Path = DEFAULT_OUT, out: str | Path | None = None, *, seed: int = 0,
                     notes: int = 6, log=print) -> dict:
    """The long-prompt/short-answer variant of built real-knowledge data (the phase-diagram studies' decisive
    cell on a real base, issue #18), from `src`'s files without running a model: each question follows notes
    stating `notes` other SFT facts in plain sentences ("The capital of Peru is the city of Lima."), never the
    fact asked about; the answer stays one line. Writes `out` (default `<src>-longprompt`): data/
    sft_train_longprompt.jsonl, data/eval_longprompt_heldout.jsonl and the lm-eval task real_longprompt."""
    src = Path(src)
    out = Path(out) if out else src.with_name(src.name + "-longprompt")
    read = lambda f: [json.loads(x) for x in (src / "data" / f).read_text(encoding="utf-8").splitlines() if x.strip()]
    try:
        sft, held = read("sft_train.jsonl"), read("eval_qa_heldout.jsonl")
    except FileNotFoundError as exc:
        raise DataError("real-knowledge data not built", where=str(exc.filename),
                        fix="harness realdata build --model results/models/gemma-3-270m") from None
    rng = random.Random(f"{seed}/longprompt")
    sentence = lambda f: f"{RELATIONS[f['relation']][0].format(s=f['subject'])} {f['answer']}."

    def long(f: dict) -> dict:
        ctx = " ".join(sentence(o) for o in rng.sample([o for o in sft if o["subject"] != f["subject"]], notes))
        q = f"Here are some notes. {ctx}\nQuestion: {f['question']}"
        return {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": f["answer"] + "."}],
                "question": q, "answer": f["answer"], "relation": f["relation"], "subject": f["subject"]}

    files = {"sft_train_longprompt.jsonl": [long(f) for f in sft],
             "eval_longprompt_heldout.jsonl": [long(f) for f in held]}
    for name, rows in files.items():
        atomic_write_text(out / "data" / name, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    atomic_write_text(out / "tasks" / "real_longprompt.yaml", generate_task(
        "real_longprompt", str((out / "data" / "eval_longprompt_heldout.jsonl").resolve()), **TASK))
    summary = {"source": str(src), "sft": len(files["sft_train_longprompt.jsonl"]),
               "heldout": len(files["eval_longprompt_heldout.jsonl"]), "notes_per_prompt": notes, "seed": seed}
    atomic_write_json(out / "summary.json", summary)
    log(f"long-prompt variant: {summary['sft']} SFT / {summary['heldout']} held-out questions, {notes} notes each "
        f"-> {out}")
    return summary


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("realdata", help=help_line("realdata"))
    s = p.add_subparsers(dest="realdata_command", metavar="ACTION")
    s.required = True
    b = s.add_parser("build", help="measure which curated facts the base completes, keep and split them")
    b.add_argument("--model", default="results/models/gemma-3-270m", help="HF model directory")
    b.add_argument("--out", default=str(DEFAULT_OUT))
    b.add_argument("--seed", type=int, default=0)
    b.set_defaults(func=lambda a: build(a.model, a.out, seed=a.seed, log=lambda m: print(m, file=sys.stderr)) and 0)
    lp = s.add_parser("longprompt", help="the long-prompt/short-answer variant of built data (no model needed)")
    lp.add_argument("--src", default=str(DEFAULT_OUT))
    lp.add_argument("--out", default=None, help="default: <src>-longprompt")
    lp.add_argument("--seed", type=int, default=0)
    lp.set_defaults(func=lambda a: build_longprompt(a.src, a.out, seed=a.seed,
                                                    log=lambda m: print(m, file=sys.stderr)) and 0)
