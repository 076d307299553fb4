"""Mini-world: generator invariants, determinism, tokenizer, and the test-size build end to end."""

import json
import random

import pytest
import torch

from harness.world import generator as G
from harness.world.build import SIZES, make_data
from harness.world.pretrain import PretrainConfig, make_model, pretrain


def _world(n=60, seed=3, augment=True):
    return G.World(seed, G.make_people(n, seed), augment)


def _read(path):
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_unique_names_and_split():
    people = G.make_people(500, 0)
    assert len({p.name for p in people}) == 500
    assert sum(p.split == "train" for p in people) == 250
    assert all(len(p.attrs) >= 5 for p in people)


def test_data_invariants(tmp_path):
    w = _world()
    make_data(w, SIZES["test"], 3, tmp_path)
    held = {p.name for p in w.heldout_people}
    for f in ("sft_train.jsonl", "sft_train_longanswer.jsonl", "sft_train_longprompt.jsonl",
              "eval_qa_train.jsonl"):
        text = (tmp_path / "data" / f).read_text()
        assert not any(name in text for name in held), f"held-out person in {f}"
    corpus = "\n".join(r["text"] for r in _read(tmp_path / "data" / "pretrain.jsonl"))
    bios = _read(tmp_path / "data" / "eval_heldout_bios.jsonl")
    assert {b["person"] for b in bios} == {p.name for p in w.people}
    for b in bios:  # paraphrases never seen in pretraining: not one sentence of them is in the corpus
        for sent in b["text"].split(". "):
            assert sent.rstrip(".") + "." not in corpus, sent
    assert {r["person"] for r in _read(tmp_path / "data" / "eval_qa_heldout.jsonl")} == held
    conv = _read(tmp_path / "data" / "sft_train.jsonl")
    assert any(c["messages"][0]["role"] == "system" for c in conv)
    assert any(len(c["messages"]) >= 4 for c in conv)
    facts = _read(tmp_path / "data" / "eval_facts.jsonl")
    assert all(f["choices"][f["label"]] == f["answer"] for f in facts)


def test_question_lists_and_no_adjacent_bios(tmp_path):
    w = _world(80)
    docs, _ = G.corpus(w, 5, question_docs=20, filler_docs=8, rng=random.Random(0))
    assert sum(d.count("?") >= 4 and "\n" in d for d in docs) == 20
    owner = []
    for d in docs:
        names = [p.name for p in w.people if d.startswith(p.name) or f"{p.name} " in d[:60]]
        owner.append(names[0] if names and "?" not in d else None)
    for i, o in enumerate(owner):
        if o is not None:
            assert o not in owner[max(0, i - 6):i], f"two biographies of {o} within 6 documents"


def test_same_seed_same_bytes(tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    ha = make_data(_world(), SIZES["test"], 3, a)
    assert ha == make_data(_world(), SIZES["test"], 3, b)
    for f in ha:
        assert (a / "data" / f).read_bytes() == (b / "data" / f).read_bytes()
    assert ha != make_data(_world(seed=4), SIZES["test"], 4, c)


def test_augmented_and_plain_worlds_share_sft_and_eval_files(tmp_path):
    """One random stream per file: a knowledge-extraction study varies the base model alone."""
    ha = make_data(_world(augment=True), SIZES["test"], 3, tmp_path / "aug")
    hb = make_data(_world(augment=False), SIZES["test"], 3, tmp_path / "plain")
    assert ha["pretrain.jsonl"] != hb["pretrain.jsonl"]
    assert {f: h for f, h in ha.items() if f != "pretrain.jsonl"} == {f: h for f, h in hb.items() if f != "pretrain.jsonl"}
    held = {p.name for p in _world().heldout_people}
    for f in ("eval_longprompt_heldout.jsonl", "eval_longanswer_heldout.jsonl"):
        rows = _read(tmp_path / "aug" / "data" / f)
        assert len(rows) == len(held) and all(r["messages"][-1]["role"] == "assistant" for r in rows)
        assert sum(any(n in r["messages"][0]["content"] for n in held) for r in rows) == len(held)


def test_epoch_packer_rows_start_at_documents_and_reshuffle():
    from harness.world.pretrain import EpochPacker

    docs = [[10 + i] * (3 + i % 5) for i in range(40)]
    owners = [f"p{i % 8}" for i in range(40)]
    pk = EpochPacker(docs, owners, seq_len=16, eos=0, seed=1, gap=3)
    r0, r1 = pk(0), pk(1)
    assert r0.shape[1] == 16 and not torch.equal(r0, r1) and torch.equal(r0, pk(0))
    starts = {d[0] for d in docs}
    assert all(int(row[0]) in starts for row in r0)  # every row begins at a document start
    for row in r0:  # no two documents of one owner in one row
        ids = [int(t) for t in row if int(t) != 0]
        firsts = sorted({t for t in ids})
        assert len({owners[t - 10] for t in firsts}) == len(firsts)
    assert pk.tokens_per_epoch() == sum(len(d) + 1 for d in docs)


def test_no_augment_world_has_one_fixed_bio_per_person():
    w = _world(20, augment=False)
    docs, _ = G.corpus(w, 5, question_docs=0, filler_docs=0, rng=random.Random(0))
    assert len(docs) == 20


def test_pretraining_is_deterministic():
    cfg = PretrainConfig(layers=1, hidden=32, heads=2, batch=4, steps=5, seq_len=16, bf16=False)
    rows = torch.randint(0, 50, (12, 16), generator=torch.Generator().manual_seed(0))
    outs = []
    for _ in range(2):
        m = make_model(cfg, 50, 0, 0)
        pretrain(m, rows, cfg, progress=False)
        outs.append({k: v.clone() for k, v in m.state_dict().items()})
    assert all(torch.equal(outs[0][k], outs[1][k]) for k in outs[0])


def test_test_size_build_end_to_end(test_world):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    info = json.loads((test_world / "world.json").read_text())
    meas = json.loads((test_world / "measurements.json").read_text())
    assert info["people"] == 80 and set(info["files"]) >= {"sft_train.jsonl", "eval_facts.jsonl"}
    assert meas["raw_continued_question"] >= 0.5  # the base model continues a raw question with another
    assert meas["chat_qa_heldout"] <= 0.10  # and cannot answer in chat format before SFT
    tok = AutoTokenizer.from_pretrained(test_world / "tokenizer")
    text = tok.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True)
    assert text == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == text and tok.is_fast
    name = info["split"]["train"][0]
    for part in name.split():  # a name part is one token, mid-sentence and at the start of a line alike
        assert len(tok(part + " ", add_special_tokens=False)["input_ids"]) == 1
    # a value is the same token in a biography and at the start of an answer (trailing-space pre-tokenizer)
    value = json.loads((test_world / "data" / "eval_facts.jsonl").read_text().splitlines()[0])
    bio = tok(value["prompt"] + value["answer"] + ".", add_special_tokens=False)["input_ids"]
    answer = tok(value["answer"] + ".", add_special_tokens=False)["input_ids"]
    assert bio[-len(answer):] == answer
    AutoModelForCausalLM.from_pretrained(test_world / "model")
    for t in ("world_qa", "world_qa_train", "world_qa_raw", "world_facts"):
        assert (test_world / "tasks" / f"{t}.yaml").exists()
    # a second build reuses the cached model
    from harness.world import build_world
    logs = []
    build_world("test", test_world, seed=0, log=logs.append)
    assert any("cached" in line for line in logs)


def test_no_augment_bio_uses_pronouns_after_first_sentence():
    w = _world(10, augment=False)
    docs, _ = G.corpus(w, 5, question_docs=0, filler_docs=0, rng=random.Random(0))
    for d in docs:
        sents = d.split(". ")
        assert sum(any(p.name in s for p in w.people) for s in sents) == 1
        assert all(s.startswith(("She ", "He ")) for s in sents[1:])


def test_answer_first_scoring():
    from harness.evaluation.generate import answer_first, classify_format

    assert answer_first("Lisbon.", "Lisbon") and answer_first(" Lisbon\nmore", "Lisbon")
    assert answer_first("3 May 1990, in spring", "3 May 1990")
    assert not answer_first("Lisbonia", "Lisbon") and not answer_first("13 May 1990", "3 May 1990")
    # the base model's failure mode: it keeps writing a biography that mentions the value later
    assert not answer_first("Anna Lee Smith was born in Lisbon.", "Lisbon")
    assert classify_format("Where does Anna Lee Smith work?\n", "Lisbon") == "continued_question"
    assert classify_format("Lisbon", "Lisbon") == "answered"


def test_tokenizer_round_trip_and_chat_template(test_world):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(test_world / "tokenizer")
    assert tok.is_fast and tok.eos_token == tok.pad_token == "<|endoftext|>"
    for text in ["Anna Maria Lopez was born in Lisbon.", "  two  spaces\n\nand lines\t", "Zoë naïve 東京 🙂",
                 (test_world / "data" / "pretrain.jsonl").read_text()[:2000]]:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert tok.decode(ids) == text
    for special in ("<|endoftext|>", "<|im_start|>", "<|im_end|>"):
        assert len(tok(special, add_special_tokens=False)["input_ids"]) == 1
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Where?"},
            {"role": "assistant", "content": "Lisbon."}]
    assert tok.apply_chat_template(msgs, tokenize=False) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nWhere?<|im_end|>\n"
        "<|im_start|>assistant\nLisbon.<|im_end|>\n")
    assert tok.apply_chat_template(msgs[1:2], tokenize=False, add_generation_prompt=True) == (
        "<|im_start|>user\nWhere?<|im_end|>\n<|im_start|>assistant\n")
    enc = tok("Anna Maria Lopez", return_offsets_mapping=True, add_special_tokens=False)
    assert enc["offset_mapping"][0][0] == 0 and enc["offset_mapping"][-1][1] == len("Anna Maria Lopez")
    # the model directory carries the same tokenizer
    same = AutoTokenizer.from_pretrained(test_world / "model")
    assert same.get_vocab() == tok.get_vocab() and same.chat_template == tok.chat_template


def test_lm_eval_resolves_the_world_tasks_offline(test_world):
    from lm_eval.tasks import TaskManager

    tm = TaskManager(include_path=str(test_world / "tasks"), include_defaults=False)
    tasks = tm.load_task_or_group(["world_qa", "world_qa_train", "world_qa_raw", "world_facts"])
    assert set(tasks) == {"world_qa", "world_qa_train", "world_qa_raw", "world_facts"}
    qa = tasks["world_qa"]
    doc = next(iter(qa.test_docs()))
    assert qa.doc_to_text(doc).startswith("<|im_start|>user\n") and qa.doc_to_target(doc) == doc["answer"]
    facts = tasks["world_facts"]
    doc = next(iter(facts.test_docs()))
    assert facts.doc_to_choice(doc)[facts.doc_to_target(doc)] == doc["prompt"] + doc["answer"] + "."
    assert facts.doc_to_text(doc) == "<|endoftext|>"  # whole sentences: the context never ends in a split word


def test_world_facts_scores_the_base_model_like_greedy_completion(test_world):
    """Log-likelihood multiple choice and greedy completion agree on what the base knows (a context ending
    in "born in" without its space once put the MC accuracy near chance while greedy completion was 90%)."""
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(test_world / "model")
    tok = AutoTokenizer.from_pretrained(test_world / "model")
    res = lm_eval.simple_evaluate(model=HFLM(pretrained=model, tokenizer=tok, batch_size=64), tasks=["world_facts"],
                                  task_manager=TaskManager(include_path=str(test_world / "tasks"), include_defaults=False),
                                  limit=200, verbosity="ERROR")
    mc = res["results"]["world_facts"]["acc,none"]
    greedy = json.loads((test_world / "measurements.json").read_text())["fact_completion"]
    assert mc >= greedy - 0.05 and mc > 0.5, (mc, greedy)


def test_cli_world_build_parses_and_rejects_bad_size(capsys):
    from harness.cli import build_parser, main

    args = build_parser().parse_args(["world", "build", "--size", "demo", "--seed", "3", "--no-augment"])
    assert callable(args.func) and args.size == "demo" and args.seed == 3 and args.no_augment
    assert main(["world", "build", "--size", "huge"]) == 2
    assert "unknown world size" in capsys.readouterr().err


@pytest.mark.slow
def test_same_seed_same_world_and_weights(test_world, tmp_path):
    """A second cold build with the same seed: byte-identical data files and identical weights."""
    from harness.world import build_world

    again = build_world("test", tmp_path / "again", seed=0, progress=False, log=lambda *a: None)
    for f in sorted((test_world / "data").iterdir()):
        assert (again / "data" / f.name).read_bytes() == f.read_bytes(), f.name
    assert (again / "tokenizer" / "tokenizer.json").read_bytes() == (test_world / "tokenizer" / "tokenizer.json").read_bytes()
    assert (again / "model" / "model.safetensors").read_bytes() == (test_world / "model" / "model.safetensors").read_bytes()
