"""The shipped real-knowledge facts and the parts of `harness realdata build` that need no model."""

from __future__ import annotations

import json

import pytest
import yaml

from harness.errors import DataError
from harness.evaluation.tasks import generate_task
from harness.realdata import FACTS, RELATIONS, TASK, generic_text, load_facts


def test_shipped_facts_are_well_formed_and_unique():
    facts = load_facts()
    assert len(facts) >= 200 and {f["relation"] for f in facts} == set(RELATIONS)
    keys = [(f["relation"], f["subject"]) for f in facts]
    assert len(keys) == len(set(keys))
    assert all(f["answer"].lower() != f["subject"].lower() for f in facts)  # never the question's own word


def test_bad_fact_rows_name_the_line(tmp_path):
    p = tmp_path / "f.jsonl"
    p.write_text(json.dumps({"relation": "capital", "subject": "France", "answer": "Paris"}) + "\n"
                 + json.dumps({"relation": "colour", "subject": "sky", "answer": "blue"}) + "\n")
    with pytest.raises(DataError, match=r"f.jsonl:2"):
        load_facts(p)


def test_generic_text_is_prose_from_python_itself():
    texts = generic_text(50)
    assert len(texts) == 50 and len(set(texts)) == 50
    assert all(200 <= len(t) <= 600 and t.endswith(".") and ">>>" not in t for t in texts)
    assert generic_text(50) == texts  # deterministic


def test_task_yaml_is_valid_lm_eval_config(tmp_path):
    cfg = yaml.safe_load(generate_task("real_qa", str(tmp_path / "q.jsonl"), **TASK))
    assert cfg["output_type"] == "generate_until" and cfg["doc_to_text"] == "{{question}}"
    assert cfg["filter_list"][0]["filter"][0]["regex_pattern"] == r"^\s*([^\n]+)"
    assert "<end_of_turn>" in cfg["generation_kwargs"]["until"]
    assert FACTS.exists()


def test_longprompt_variant_never_states_the_fact_it_asks(tmp_path):
    from harness.realdata import build_longprompt

    facts = load_facts()[:40]
    (tmp_path / "src" / "data").mkdir(parents=True)

    def qa(f):
        q = RELATIONS[f["relation"]][1].format(s=f["subject"])
        return {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": f["answer"] + "."}],
                "question": q, "answer": f["answer"], "relation": f["relation"], "subject": f["subject"]}
    for name, rows in (("sft_train.jsonl", facts[:20]), ("eval_qa_heldout.jsonl", facts[20:])):
        (tmp_path / "src" / "data" / name).write_text("".join(json.dumps(qa(f)) + "\n" for f in rows))
    s = build_longprompt(tmp_path / "src", tmp_path / "out", notes=4, log=lambda m: None)
    assert (s["sft"], s["heldout"]) == (20, 20)
    sft_sentences = {f"{RELATIONS[f['relation']][0].format(s=f['subject'])} {f['answer']}." for f in facts[:20]}
    for name, src in (("sft_train_longprompt.jsonl", facts[:20]), ("eval_longprompt_heldout.jsonl", facts[20:])):
        rows = [json.loads(x) for x in (tmp_path / "out" / "data" / name).read_text().splitlines()]
        for r, f in zip(rows, src):
            user, answer = r["messages"][0]["content"], r["messages"][1]["content"]
            notes, question = user.removeprefix("Here are some notes. ").split("\nQuestion: ")
            assert answer == f["answer"] + "." and question == qa(f)["question"]
            stated = [n + "." for n in notes.rstrip(".").split(". ")]
            assert len(stated) == 4 and set(stated) <= sft_sentences  # notes are SFT facts only
            assert f["subject"] not in notes  # never the fact asked about
    task = yaml.safe_load((tmp_path / "out" / "tasks" / "real_longprompt.yaml").read_text())
    assert task["task"] == "real_longprompt" and task["output_type"] == "generate_until"
    with pytest.raises(DataError, match="not built"):
        build_longprompt(tmp_path / "nothing", tmp_path / "o2")
