"""`harness world build`: data, tokenizer, base model and lm-eval tasks of the mini-world, in one directory.

Deterministic from the seed: the same seed gives byte-identical data files and identical weights (the base
model is pretrained with a fixed thread count). The model is cached by the hash of its pretraining config and
corpus, so a second build is instant; it is written to a temp dir and renamed (never a half model).
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
import time
from dataclasses import replace
from pathlib import Path

from harness.errors import ConfigError
from harness.fsio import sha256_file
from harness.evaluation.tasks import generate_task
from harness.world import generator as G
from harness.world import prebuilt
from harness.world.pretrain import PretrainConfig

WORLD_VERSION = 2  # 2: trailing-space tokenizer, questions end with a word after the name
MEASURE_ROWS = 500  # rows per build-time measurement (the eval files hold more)
SIZES = {
    # people, bios/person, pretraining config, tokenizer vocab
    # batch 8 x 520 steps: fact completion 83% (batch 16 x 260, the same tokens: 39%)
    "test": dict(people=80, bios=5, vocab=1024,
                 pretrain=PretrainConfig(layers=2, hidden=64, heads=4, batch=8, steps=520, lr=3e-3, bf16=False)),
    # 4x128 fp32: bf16 autocast is far slower on CPUs without avx512_bf16, and 4x256 too slow to pretrain in the
    # demo's budget (benchmarks/NOTES.md)
    # 300 people (150 in the SFT half x 7 conversations = 1,050 SFT examples), ~45 epochs of a 76k-token
    # corpus (1,100 steps: fact completion 89.8%, held-out QA after SFT 46%). Batch 16 over 32 at the same tokens: fact
    # completion 91.5% vs 78.5% after 7/8 of the steps (N=500, lr 2e-3; memorisation needs updates more than
    # tokens per update).
    "demo": dict(people=300, bios=5, vocab=2048, sft_per_person=7,
                 pretrain=PretrainConfig(layers=4, hidden=128, heads=4, batch=16, steps=1500, lr=2e-3, bf16=False)),
}


def world_dir(size: str | int = "test", seed: int = 0, augment: bool = True, root: str = "results/world") -> Path:
    return Path(root) / f"{size}-seed{seed}{'' if augment else '-noaug'}"


def _spec(size: str | int) -> dict:
    if isinstance(size, str) and size.isdigit():
        size = int(size)
    if isinstance(size, int):
        if size < 10:
            raise ConfigError(f"a world needs at least 10 people, got {size}", where="--size", fix="e.g. --size 500")
        demo = SIZES["demo"]
        steps = int(demo["pretrain"].steps * size / demo["people"])
        return dict(demo, people=size, pretrain=replace(demo["pretrain"], steps=max(100, steps)))
    if size not in SIZES:
        raise ConfigError(f"unknown world size {size!r}", where="--size", fix="use test, demo or a number of people")
    return SIZES[size]


def _write_jsonl(path: Path, rows: list[dict]) -> str:
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    path.write_text(text, encoding="utf-8")
    return hashlib.sha256(text.encode()).hexdigest()


def make_data(world: G.World, spec: dict, seed: int, out: Path) -> dict:
    """Write every data file; returns {file: sha256}.

    Each file draws from its own random stream, so worlds that differ only in the corpus (augment on/off)
    share byte-identical SFT and eval files: a knowledge-extraction study then varies the base model alone."""
    def stream(name: str) -> random.Random:
        return random.Random(f"{seed}/{name}")

    docs, seen = G.corpus_docs(world, spec["bios"], question_docs=len(world.people) // 4,
                               filler_docs=len(world.people) // 10, rng=stream("corpus"))
    data = out / "data"
    data.mkdir(parents=True, exist_ok=True)
    hashes = {"pretrain.jsonl": _write_jsonl(data / "pretrain.jsonl", docs)}
    train, held = world.train_people, world.heldout_people
    rng = stream("sft")
    sft = []
    for p in train:
        for k in range(spec.get("sft_per_person", 4)):
            sft.append(G.qa_conversation(p, rng, system=rng.random() < 0.3, multi=rng.random() < 0.2,
                                         long=rng.random() < 0.25))
    rng.shuffle(sft)
    hashes["sft_train.jsonl"] = _write_jsonl(data / "sft_train.jsonl", sft)
    hashes["sft_train_longprompt.jsonl"] = _write_jsonl(
        data / "sft_train_longprompt.jsonl", [G.long_prompt_conversation(p, train, rng) for p in train])
    hashes["sft_train_longanswer.jsonl"] = _write_jsonl(
        data / "sft_train_longanswer.jsonl", [G.long_answer_conversation(p, rng) for p in train])

    rng = stream("eval")

    def qa_rows(people):  # every attribute of every person, shuffled: any prefix is a fair sample
        rows = []
        for p in people:
            for a in G.ATTRIBUTES:
                q = rng.choice(G.QUESTIONS[a]).format(name=p.name)
                rows.append({"messages": [{"role": "user", "content": q},
                                          {"role": "assistant", "content": f"{p.attrs[a]}."}],
                             "question": q, "answer": p.attrs[a], "attribute": a, "person": p.name})
        rng.shuffle(rows)
        return rows

    # held-out people in the two variant formats (fixed-mask NLL for the instruction-modelling studies)
    r = stream("eval-variants")
    hashes["eval_longprompt_heldout.jsonl"] = _write_jsonl(
        data / "eval_longprompt_heldout.jsonl", [G.long_prompt_conversation(p, train, r) for p in held])
    hashes["eval_longanswer_heldout.jsonl"] = _write_jsonl(
        data / "eval_longanswer_heldout.jsonl", [G.long_answer_conversation(p, r) for p in held])
    _phase_data(world, stream("phase"), data, hashes)
    hashes["eval_qa_heldout.jsonl"] = _write_jsonl(data / "eval_qa_heldout.jsonl", qa_rows(held))
    hashes["eval_qa_train.jsonl"] = _write_jsonl(data / "eval_qa_train.jsonl", qa_rows(train))
    raw = []
    for p in held:
        a = rng.choice(G.ATTRIBUTES)
        raw.append({"prompt": rng.choice(G.QUESTIONS[a]).format(name=p.name) + "\n", "answer": p.attrs[a],
                    "attribute": a, "person": p.name})
    hashes["eval_raw_questions.jsonl"] = _write_jsonl(data / "eval_raw_questions.jsonl", raw)
    # held-out biographies: phrasings reserved for this probe, never in the pretraining corpus
    bios = [{"text": G.heldout_biography(p, rng), "person": p.name, "split": p.split} for p in world.people]
    hashes["eval_heldout_bios.jsonl"] = _write_jsonl(data / "eval_heldout_bios.jsonl", bios)
    values = {a: sorted({p.attrs[a] for p in world.people}) for a in G.ATTRIBUTES}
    facts = []
    for p in world.people:
        for a in G.ATTRIBUTES:
            wrong = rng.sample([v for v in values[a] if v != p.attrs[a]], 3)
            choices = wrong + [p.attrs[a]]
            rng.shuffle(choices)
            prompt = G.FACT_PROMPTS[a].format(name=p.name)
            facts.append({"prompt": prompt, "answer": p.attrs[a], "choices": list(choices),
                          "sentences": [f"{prompt}{c}." for c in choices], "label": choices.index(p.attrs[a]),
                          "attribute": a, "person": p.name, "split": p.split})
    rng.shuffle(facts)
    hashes["eval_facts.jsonl"] = _write_jsonl(data / "eval_facts.jsonl", facts)
    return hashes


PHASE_PER_PERSON = 7  # long-prompt / long-answer conversations per SFT person in the *_large files (1,050 at demo size)


def _phase_data(world: G.World, rng: random.Random, data: Path, hashes: dict) -> None:
    """The phase-diagram studies' data (issue #18): larger SFT sets in the two variant formats (shuffled, so a
    `data.train.limit` prefix is a fair sample of any size up to 1,050) and held-out test sets in each format's
    own shape for lm-eval: every attribute of every held-out person behind a long prompt (exact match), and
    "Tell me about X" for every held-out person (the share of the person's attributes the biography states).
    Their own random stream: every other file of a world stays byte-identical."""
    train, held = world.train_people, world.heldout_people
    lp = [G.long_prompt_conversation(p, train, rng) for p in train for _ in range(PHASE_PER_PERSON)]
    la = [G.long_answer_conversation(p, rng) for p in train for _ in range(PHASE_PER_PERSON)]
    rng.shuffle(lp)
    rng.shuffle(la)
    hashes["sft_train_longprompt_large.jsonl"] = _write_jsonl(data / "sft_train_longprompt_large.jsonl", lp)
    hashes["sft_train_longanswer_large.jsonl"] = _write_jsonl(data / "sft_train_longanswer_large.jsonl", la)
    lp_test = []
    for p in held:
        for a in G.ATTRIBUTES:
            conv = G.long_prompt_conversation(p, train, rng, attribute=a)
            lp_test.append({"prompt": conv["messages"][0]["content"], "answer": p.attrs[a], "attribute": a,
                            "person": p.name})
    rng.shuffle(lp_test)
    hashes["eval_longprompt_task.jsonl"] = _write_jsonl(data / "eval_longprompt_task.jsonl", lp_test)
    la_test = [{"prompt": f"Tell me about {p.name}.", "values": [p.attrs[a] for a in G.ATTRIBUTES],
                "person": p.name} for p in held]
    hashes["eval_longanswer_task.jsonl"] = _write_jsonl(data / "eval_longanswer_task.jsonl", la_test)


ANSWER_FIRST = r"^\s*([^,.\n]+)"  # the scored part: up to the first comma or period (one-word answers)
CHAT_QA = dict(doc_to_text="<|im_start|>user\n{{question}}<|im_end|>\n<|im_start|>assistant\n",
               until=["<|im_end|>", "\n", "<|endoftext|>"], max_gen_toks=16, filter_name="answer_first",
               regex=ANSWER_FIRST)
GENERATE = {  # name -> (data file, options of harness.evaluation.tasks.generate_task)
    "world_qa": ("eval_qa_heldout.jsonl", CHAT_QA),
    # QA about the SFT (train) half: memorisation of SFT answers (world_qa: extraction on the held-out half)
    "world_qa_train": ("eval_qa_train.jsonl", CHAT_QA),
    "world_qa_raw": ("eval_raw_questions.jsonl",
                     dict(CHAT_QA, doc_to_text="{{prompt}}", until=["\n", "<|endoftext|>"])),
    # the variant formats' own test sets (phase-diagram studies): a long prompt with a one-line answer
    "world_longprompt": ("eval_longprompt_task.jsonl",
                         dict(CHAT_QA, doc_to_text="<|im_start|>user\n{{prompt}}<|im_end|>\n<|im_start|>assistant\n")),
}
# "Tell me about X" scored by how many of X's attributes the generated biography states (a partial credit the
# exact-match template cannot express: its own metric function, written next to the YAML)
BIO_FACTS_PY = '''"""lm-eval metric of world_longanswer (written by harness world build)."""
import re


def _norm(s):
    return re.sub(r"[^a-z0-9 ]+", " ", s.lower()).split()


def process_results(doc, results):
    words = " " + " ".join(_norm(results[0])) + " "
    return {"facts": sum((" " + " ".join(_norm(v)) + " ") in words for v in doc["values"]) / len(doc["values"])}
'''
TASKS = {
    "world_longanswer": """task: world_longanswer
dataset_path: json
dataset_kwargs:
  data_files: {{test: "{data}/eval_longanswer_task.jsonl"}}
test_split: test
output_type: generate_until
doc_to_text: "<|im_start|>user\\n{{{{prompt}}}}<|im_end|>\\n<|im_start|>assistant\\n"
doc_to_target: "{{{{person}}}}"
generation_kwargs:
  until: ["<|im_end|>", "<|endoftext|>", "\\n"]
  do_sample: false
  max_gen_toks: 112
process_results: !function bio_facts.process_results
metric_list:
  - metric: facts
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
""",
    # whole bio-format sentences after the document separator, compared by log-likelihood: the choices differ
    # only in the value, so the shared prefix cancels; a context ending in "born in " would be split by lm-eval
    # before the space, and "in" without its space is a token the corpus never uses
    "world_facts": """task: world_facts
dataset_path: json
dataset_kwargs:
  data_files: {{test: "{data}/eval_facts.jsonl"}}
test_split: test
output_type: multiple_choice
doc_to_text: "<|endoftext|>"
doc_to_choice: "{{{{sentences}}}}"
doc_to_target: "{{{{label}}}}"
target_delimiter: ""
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
""",
}



def write_tasks(out: Path) -> None:
    tasks = out / "tasks"
    tasks.mkdir(parents=True, exist_ok=True)
    data = (out / "data").resolve()
    for name, (file, options) in GENERATE.items():
        (tasks / f"{name}.yaml").write_text(generate_task(name, f"{data}/{file}", **options), encoding="utf-8")
    for name, text in TASKS.items():
        (tasks / f"{name}.yaml").write_text(text.format(data=data), encoding="utf-8")
    (tasks / "bio_facts.py").write_text(BIO_FACTS_PY, encoding="utf-8")


def _hash(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


def model_key(pcfg: PretrainConfig, vocab: int, hashes: dict) -> str:
    """What the base model's weights depend on (the cache key, and the key of shipped weights)."""
    return _hash({"version": WORLD_VERSION, "pretrain": pcfg.to_dict(), "vocab": vocab,
                  "corpus": hashes["pretrain.jsonl"], "sft": hashes["sft_train.jsonl"]})


def build_world(size: str | int = "test", out: str | Path | None = None, seed: int = 0, augment: bool = True,
                progress: bool = True, log=print, overrides: dict | None = None, pretrain_here: bool = False) -> Path:
    """Build (or reuse) a mini-world; returns its directory.

    `overrides` replaces fields of the size's PretrainConfig (e.g. {"lr": 1e-3, "steps": 800}); they enter
    the model's cache key and world.json. The weights come from `harness/world/prebuilt` when shipped for this
    world's key and tokenizer (hash-verified, `prebuilt.py`), else from pretraining here; `pretrain_here`
    always pretrains (and replaces a world built from shipped weights)."""
    import torch

    from harness.modeling import quiet_hf_progress
    from harness.world import measure as M
    from harness.world.pretrain import EpochPacker, make_model, pretrain
    from harness.world.tokenizer import train_tokenizer

    quiet_hf_progress()
    t_start = time.perf_counter()
    spec = _spec(size)
    out = Path(out) if out else world_dir(size, seed, augment)
    out.mkdir(parents=True, exist_ok=True)
    world = G.World(seed, G.make_people(spec["people"], seed), augment)
    log(f"world {out}: {len(world.people)} people ({len(world.train_people)} SFT / {len(world.heldout_people)} "
        f"held out), augment={augment}")
    hashes = make_data(world, spec, seed, out)
    write_tasks(out)
    doc_rows = [json.loads(x) for x in (out / "data" / "pretrain.jsonl").read_text().splitlines()]
    docs = [d["text"] for d in doc_rows]
    try:
        pcfg = replace(spec["pretrain"], **{**(overrides or {}), "seed": seed})
    except TypeError as exc:
        raise ConfigError(f"unknown pretraining field: {exc}", where="overrides",
                          fix=f"use fields of PretrainConfig: {', '.join(PretrainConfig().to_dict())}") from None
    key = model_key(pcfg, spec["vocab"], hashes)
    model_dir, tok_dir = out / "model", out / "tokenizer"
    cached = (model_dir / "world_key.txt").exists() and (model_dir / "world_key.txt").read_text().strip() == key
    # where the cached weights came from (world.json of the earlier build): kept, or replaced under pretrain_here
    cached_weights = json.loads((out / "world.json").read_text()).get("weights") if cached and \
        (out / "world.json").exists() else None
    if pretrain_here and (cached_weights or {}).get("source") == "prebuilt":
        cached = False
    measurements_path = out / "measurements.json"
    if cached and measurements_path.exists():
        log(f"base model cached ({key}); nothing to do")
        return out
    threads_before = torch.get_num_threads()
    torch.set_num_threads(pcfg.threads)  # fixed: same seed -> identical weights, whatever the machine's cores
    try:
        if not cached:
            # the tokenizer sees the corpus and the SFT/eval text (so chat answers tokenize like the corpus)
            sft_text = [m["content"] for f in ("sft_train.jsonl", "eval_qa_heldout.jsonl")
                        for r in (json.loads(x) for x in (out / "data" / f).read_text().splitlines())
                        for m in r["messages"]]
            tmp_tok = out / ".tmp-tokenizer"
            shutil.rmtree(tmp_tok, ignore_errors=True)
            tok = train_tokenizer(docs + sft_text, spec["vocab"], tmp_tok)
            shutil.rmtree(tok_dir, ignore_errors=True)
            tmp_tok.rename(tok_dir)
            ids = [tok(d, add_special_tokens=False)["input_ids"] for d in docs]
            rows = EpochPacker(ids, [d.get("person") for d in doc_rows], pcfg.seq_len, tok.eos_token_id, seed)
            n_tokens, n_rows = rows.tokens_per_epoch(), len(rows(0))
            epochs = pcfg.steps * pcfg.batch / n_rows
            log(f"corpus: {len(docs)} documents, {n_tokens:,} tokens, ~{n_rows} rows of {pcfg.seq_len} per epoch; "
                f"pretraining {pcfg.layers}x{pcfg.hidden} for {pcfg.steps} steps (~{epochs:.1f} epochs)")
            model = make_model(pcfg, len(tok), tok.eos_token_id, tok.pad_token_id)
            shipped, entry = (None, "--pretrain") if pretrain_here else prebuilt.find(key, tok_dir / "tokenizer.json")
            pretrain_s = None
            if shipped is not None:
                prebuilt.load_into(model, shipped)
                weights = {"source": "prebuilt", "file": shipped.name, "sha256": entry["sha256"], **entry["built"]}
                log(f"weights: shipped with harness ({shipped.name}, sha256 verified; pretrained on "
                    f"{entry['built']['cpu']}, {entry['built']['date']}); `--pretrain` computes them here instead")
            else:
                log(f"weights: pretraining here ({entry})")
                t0 = time.perf_counter()
                pretrain(model, rows, pcfg, progress=progress, log=log)
                pretrain_s = time.perf_counter() - t0
                weights = {"source": "pretrained here", "cpu": prebuilt.cpu_name()}
            tmp_model = out / ".tmp-model"
            shutil.rmtree(tmp_model, ignore_errors=True)
            model.config.use_cache = True
            model.save_pretrained(tmp_model, safe_serialization=True)
            tok.save_pretrained(tmp_model)
            (tmp_model / "world_key.txt").write_text(key + "\n")
            shutil.rmtree(model_dir, ignore_errors=True)
            tmp_model.rename(model_dir)
        else:
            pretrain_s, weights = None, cached_weights
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tok = AutoTokenizer.from_pretrained(model_dir)
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
        read = lambda f: [json.loads(x) for x in (out / "data" / f).read_text().splitlines()]
        t0 = time.perf_counter()
        torch.set_num_threads(1)  # a ~1M-parameter model's small ops gain nothing from more (see eval.threads)
        # the eval files are shuffled, so these prefixes are fair samples
        facts, qa = read("eval_facts.jsonl")[:MEASURE_ROWS], read("eval_qa_heldout.jsonl")[:MEASURE_ROWS]
        raw = read("eval_raw_questions.jsonl")[:MEASURE_ROWS // 2]
        fact_ok, qa_ok = M.fact_correct(model, tok, facts), M.chat_qa_correct(model, tok, qa)
        meas = {
            "fact_completion": M.mean(fact_ok),
            "chat_qa_heldout": M.mean(qa_ok),
            **{f"raw_{k}": v for k, v in M.raw_format_rates(model, tok, raw).items()},
            "fact_completion_by_attribute": M.by_key(facts, fact_ok),
            "chat_qa_heldout_by_attribute": M.by_key(qa, qa_ok),
            "n": {"fact_completion": len(facts), "chat_qa_heldout": len(qa), "raw": len(raw)},
        }
        meas.update(measure_seconds=round(time.perf_counter() - t0, 1),
                    pretrain_seconds=None if pretrain_s is None else round(pretrain_s, 1),
                    build_seconds=round(time.perf_counter() - t_start, 1),
                    params=sum(p.numel() for p in model.parameters()))
    finally:
        torch.set_num_threads(threads_before)
    info = {"version": WORLD_VERSION, "seed": seed, "size": str(size), "augment": augment,
            "people": len(world.people), "attributes": list(G.ATTRIBUTES),
            "split": {"train": [p.name for p in world.train_people], "heldout": [p.name for p in world.heldout_people]},
            "pretrain": pcfg.to_dict(), "vocab_size": spec["vocab"], "model_key": key, "files": hashes,
            "weights": {**(weights or {}), "model_sha256": sha256_file(model_dir / "model.safetensors")}}
    (out / "world.json").write_text(json.dumps(info, indent=1) + "\n")
    measurements_path.write_text(json.dumps(meas, indent=1) + "\n")
    _table(meas, log)
    return out


def _table(meas: dict, log) -> None:
    log("measurement                            value")
    rows = [("bio-format fact completion", meas["fact_completion"]),
            ("chat QA on held-out people (strict)", meas["chat_qa_heldout"]),
            ("raw question -> another question", meas["raw_continued_question"]),
            ("raw question -> answered", meas["raw_answered"])]
    for name, v in rows:
        log(f"{name:38s} {100 * v:5.1f}%")
    pre = "shipped weights" if meas["pretrain_seconds"] is None else f"pretraining {meas['pretrain_seconds']} s"
    log(f"{'build time':38s} {meas['build_seconds']:5.0f} s  ({pre}, "
        f"{meas['params']:,} params)")
