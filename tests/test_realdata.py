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
