"""Mini-world: generator invariants, determinism, tokenizer, and the test-size build end to end."""

import json
import random

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
    for f in ("sft_train.jsonl", "sft_train_longanswer.jsonl"):
        text = (tmp_path / "data" / f).read_text()
        assert not any(name in text for name in held), f"held-out person in {f}"
    for r in _read(tmp_path / "data" / "sft_train_longprompt.jsonl"):  # context may mention anyone; the
        q = r["messages"][0]["content"].split("Question: ")[-1]         # question is about a train person
        assert not any(name in q for name in held)
    corpus = {r["text"] for r in _read(tmp_path / "data" / "pretrain.jsonl")}
    bios = _read(tmp_path / "data" / "eval_heldout_bios.jsonl")
    assert bios and not any(b["text"] in corpus for b in bios)
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
    assert len(tok(" " + name.split()[0], add_special_tokens=False)["input_ids"]) == 1  # names are single tokens
    AutoModelForCausalLM.from_pretrained(test_world / "model")
    for t in ("world_qa", "world_qa_raw", "world_facts"):
        assert (test_world / "tasks" / f"{t}.yaml").exists()
    # a second build reuses the cached model
    from harness.world import build_world
    logs = []
    build_world("test", test_world, seed=0, log=logs.append)
    assert any("cached" in line for line in logs)
