"""`harness world reasoning`: two-hop questions with reasoning traces over a world's people, and the scoring regex."""

import json
import re

import yaml

from harness.world import generator as G
from harness.world.reasoning import AFTER_THINK, CAMPUS, COUNTRY, write_reasoning_data


def test_two_hop_data_and_task(tmp_path):
    people = G.make_people(20, 3)
    world = tmp_path / "w"
    world.mkdir()
    (world / "world.json").write_text(json.dumps({"people": 20, "seed": 3, "split": {
        "train": [p.name for p in people if p.split == "train"],
        "heldout": [p.name for p in people if p.split == "heldout"]}}))
    out = write_reasoning_data(world, tmp_path / "out")
    read = {n: [json.loads(x) for x in (out / n).read_text().splitlines()]
            for n in ("sft_2hop_reasoning.jsonl", "sft_2hop_answer.jsonl", "eval_2hop_heldout.jsonl")}
    train = {p.name: p for p in people if p.split == "train"}
    held = {p.name: p for p in people if p.split == "heldout"}
    assert len(read["sft_2hop_reasoning.jsonl"]) == len(train) * 2 * 2 and len(read["eval_2hop_heldout.jsonl"]) == len(held) * 2
    for with_r, without in zip(read["sft_2hop_reasoning.jsonl"], read["sft_2hop_answer.jsonl"]):
        user, answer = with_r["messages"]
        assert without["messages"] == [user, {"role": "assistant", "content": answer["content"]}]  # same order
        name = next(n for n in train if n in user["content"])
        p = train[name]
        trace = answer["reasoning_content"]
        if "country" in user["content"]:  # the trace states the first hop and the bridge, then the answer follows
            city = p.attrs["birth_city"]
            assert trace == f"{name} was born in {city}. {city} is in {COUNTRY[city]}." and answer["content"] == f"{COUNTRY[city]}."
        else:
            uni = p.attrs["university"]
            assert trace == f"{name} studied at {uni}. {uni} is in {CAMPUS[uni]}." and answer["content"] == f"{CAMPUS[uni]}."
    assert {r["person"] for r in read["eval_2hop_heldout.jsonl"]} == set(held)  # held-out people only
    task = yaml.safe_load((out / "tasks" / "world_2hop.yaml").read_text())
    pattern = task["filter_list"][0]["filter"][0]["regex_pattern"]
    assert pattern == AFTER_THINK
    for generated, scored in (("<think>\nA was born in Lyon. Lyon is in France.\n</think>\n\nFrance.", "France"),
                              ("France.", "France"), ("  Porto, I think", "Porto"), ("<think>\nunfinished", None)):
        got = re.findall(pattern, generated)
        assert (got[0] if got else None) == scored
