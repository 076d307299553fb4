"""Two-hop questions with reasoning traces over a built mini-world (experiments/reasoning_masking.yaml).

``harness world reasoning WORLD_DIR [--out DIR]`` writes, for the world's people (regenerated from its seed):

* ``sft_2hop_reasoning.jsonl``: SFT-half people, two two-hop questions each ("In which country was X born?",
  "In which city is the university X attended?"), two phrasings each; the assistant's ``reasoning_content`` states
  the intermediate fact and the bridge ("X was born in Lyon. Lyon is in France.") and its content the answer;
* ``sft_2hop_answer.jsonl``: the same conversations without the reasoning;
* ``eval_2hop_heldout.jsonl`` and the lm-eval task ``world_2hop`` (tasks/): the held-out half's two-hop questions.
  The model generates freely (a reasoning block, or none) and the answer scored is the text after ``</think>``,
  else its first phrase. The first hop (X's birth city, university) is known to the base only from pretraining
  biographies (the held-out people's facts were never in SFT); the bridge (city -> country, university -> city)
  is a fixed map the SFT data shows for the SFT half's values, most of which recur in the held-out half.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from harness.evaluation.tasks import generate_task
from harness.world import generator as G

COUNTRY = dict(zip(G.CITIES, [
    "Portugal", "Norway", "Poland", "Japan", "France", "Portugal", "Norway", "Spain", "Italy", "Germany", "Belgium",
    "Estonia", "Ireland", "Czechia", "Sweden", "Croatia", "Austria", "Spain", "Denmark", "Italy", "Finland",
    "Netherlands", "France", "Italy", "Germany", "Latvia", "Lithuania", "Croatia", "Japan", "Ecuador"]))
CAMPUS = {u: G.CITIES[(7 * i + 3) % len(G.CITIES)] for i, u in enumerate(G.UNIVERSITIES)}
QUESTIONS = {
    "birth_country": (["In which country was {name} born?", "Which country was {name} born in?"],
                      "{name} was born in {v}. {v} is in {answer}.", "birth_city", COUNTRY),
    "campus_city": (["In which city is the university {name} attended?", "Where is the university of {name}?"],
                    "{name} studied at {v}. {v} is in {answer}.", "university", CAMPUS),
}
# the scored answer: the text after </think> if the model wrote a reasoning block, else its first phrase
AFTER_THINK = r"(?:^|</think>)\s*([^<,.\n]+)"
TASK = dict(doc_to_text="<|im_start|>user\n{{question}}<|im_end|>\n<|im_start|>assistant\n",
            until=["<|im_end|>", "<|endoftext|>"], max_gen_toks=64, filter_name="after_think", regex=AFTER_THINK)


def two_hop(person: G.Person, kind: str, phrasing: int) -> tuple[str, str, str]:
    """(question, reasoning trace, answer) of one two-hop question about `person`."""
    questions, trace, attr, bridge = QUESTIONS[kind]
    v = person.attrs[attr]
    answer = bridge[v]
    return questions[phrasing].format(name=person.name), trace.format(name=person.name, v=v, answer=answer), answer


def write_reasoning_data(world_dir: str | Path, out: str | Path | None = None) -> Path:
    world_dir = Path(world_dir)
    info = json.loads((world_dir / "world.json").read_text())
    people = G.make_people(info["people"], info["seed"])
    if sorted(p.name for p in people if p.split == "train") != sorted(info["split"]["train"]):
        raise ValueError(f"{world_dir}: the regenerated people differ from world.json's split (generator changed?)")
    out = Path(out) if out else Path("results") / "reasoning" / world_dir.name
    (out / "tasks").mkdir(parents=True, exist_ok=True)
    rng = random.Random(info["seed"] + 31)
    with_r, without, heldout = [], [], []
    for p in people:
        for kind in QUESTIONS:
            if p.split == "train":
                for phrasing in (0, 1):
                    q, trace, a = two_hop(p, kind, phrasing)
                    with_r.append({"messages": [{"role": "user", "content": q},
                                                {"role": "assistant", "content": f"{a}.", "reasoning_content": trace}]})
                    without.append({"messages": [{"role": "user", "content": q},
                                                 {"role": "assistant", "content": f"{a}."}]})
            else:
                q, _, a = two_hop(p, kind, 0)
                heldout.append({"question": q, "answer": a, "person": p.name, "kind": kind,
                                "messages": [{"role": "user", "content": q}, {"role": "assistant", "content": f"{a}."}]})
    order = list(range(len(with_r)))
    rng.shuffle(order)  # the same order in both files: the conditions differ only in the reasoning
    for name, rows in (("sft_2hop_reasoning.jsonl", [with_r[i] for i in order]),
                       ("sft_2hop_answer.jsonl", [without[i] for i in order]), ("eval_2hop_heldout.jsonl", heldout)):
        tmp = out / f".{name}.tmp"
        tmp.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        tmp.replace(out / name)
    (out / "tasks" / "world_2hop.yaml").write_text(
        generate_task("world_2hop", f"{out.resolve()}/eval_2hop_heldout.jsonl", **TASK), encoding="utf-8")
    return out
