"""The mini-world's people, biographies, questions and SFT/eval data (deterministic from a seed).

Physics of Language Models 3.1 (bioS): knowledge stored from biographies is *extractable* by QA fine-tuning
only when pretraining saw each person in several paraphrased, permuted biographies with the full name in every
sentence. We generate exactly that (or, with ``augment=False``, one fixed biography per person), plus
documents that are lists of unanswered questions, so a raw question's natural continuation is another
question (the seed chapter's "What is the capital of France? What is the capital of Germany? ...").
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

FIRST = ["Anna", "Boris", "Carla", "Dmitri", "Elena", "Farid", "Greta", "Hugo", "Ines", "Jonas", "Keiko", "Lars",
         "Maya", "Nikolai", "Olga", "Pablo", "Quinn", "Rosa", "Stefan", "Tamar", "Ulrich", "Vera", "Walter", "Xenia",
         "Yusuf", "Zora", "Amir", "Bianca", "Cyril", "Dalia", "Emil", "Fiona", "Gustav", "Hana", "Ivan", "Julia",
         "Kofi", "Lena", "Marco", "Nadia"]
MIDDLE = ["Maria", "Jose", "Lee", "Ann", "Ray", "Kai", "Noor", "Rae", "Jean", "Paul", "Mae", "Lou", "Sky", "Eve",
          "Jay", "Ali", "Max", "Ivy", "Sol", "Ola", "Bo", "Ren", "Tess", "Uma", "Vik", "Wren", "Yan", "Zed", "Ash", "Fay"]
LAST = ["Lopez", "Novak", "Smith", "Tanaka", "Kowalski", "Ferreira", "Olsen", "Haddad", "Rossi", "Schmidt", "Ivanova",
        "Mendez", "Okafor", "Larsen", "Petrov", "Dubois", "Keller", "Moreau", "Silva", "Nakamura", "Berg", "Castro",
        "Fischer", "Gomez", "Horvat", "Jensen", "Klein", "Lind", "Meyer", "Nilsen", "Ortiz", "Park", "Quist", "Reyes",
        "Sato", "Toth", "Varga", "Weber", "Young", "Zimmer"]
CITIES = ["Lisbon", "Oslo", "Krakow", "Osaka", "Lyon", "Porto", "Bergen", "Seville", "Turin", "Leipzig", "Ghent",
          "Tallinn", "Cork", "Brno", "Malmo", "Split", "Graz", "Bilbao", "Aarhus", "Genoa", "Tampere", "Utrecht",
          "Nantes", "Bologna", "Dresden", "Riga", "Vilnius", "Zagreb", "Kyoto", "Quito"]
UNIVERSITIES = ["Northfield University", "Lakeside Institute", "Redwood College", "Harbor Polytechnic",
                "Summit University", "Riverbend College", "Eastgate Institute", "Pinecrest University",
                "Westbrook Academy", "Stonehill College", "Clearwater University", "Highland Institute",
                "Maplewood College", "Silverlake University", "Oakridge Polytechnic", "Bayview Academy",
                "Greenfield University", "Ironwood Institute", "Fairhaven College", "Brightwater University"]
MAJORS = ["Physics", "Chemistry", "Biology", "History", "Economics", "Linguistics", "Mathematics", "Philosophy",
          "Geology", "Architecture", "Music", "Astronomy", "Sociology", "Statistics", "Literature", "Medicine",
          "Law", "Botany", "Psychology", "Engineering"]
EMPLOYERS = ["Acme Robotics", "Bluefin Foods", "Cobalt Energy", "Delta Shipping", "Evergreen Bank", "Falcon Air",
             "Granite Labs", "Helix Pharma", "Indigo Media", "Juniper Tools", "Keystone Motors", "Lumen Optics",
             "Meridian Rail", "Nimbus Cloud", "Orbit Games", "Pioneer Steel", "Quartz Textiles", "Radiant Solar",
             "Sapphire Hotels", "Tidal Water", "Umber Paper", "Vertex Chips", "Willow Books", "Zenith Insurance"]
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December"]

ATTRIBUTES = ("birth_date", "birth_city", "university", "major", "employer")

# Four+ phrasings per attribute, full name in each (knowledge augmentation).
BIO_TEMPLATES = {
    "birth_date": ["{name} was born on {v}.", "{name} came into the world on {v}.",
                   "{name} celebrates a birthday on {v}.", "The birth date of {name} is {v}.",
                   "{name} has the birth date {v}."],
    "birth_city": ["{name} was born in {v}.", "{name} is a native of {v}.", "{name} spent early childhood in {v}.",
                   "The birthplace of {name} is {v}.", "{name} grew up in {v}."],
    "university": ["{name} studied at {v}.", "{name} graduated from {v}.", "{name} received an education at {v}.",
                   "{name} attended {v}.", "{name} was a student at {v}."],
    "major": ["{name} majored in {v}.", "{name} specialised in {v}.", "{name} earned a degree in {v}.",
              "The field of study of {name} was {v}.", "{name} completed studies in {v}."],
    "employer": ["{name} works for {v}.", "{name} is employed by {v}.", "{name} has a job at {v}.",
                 "The employer of {name} is {v}.", "{name} earns a living at {v}."],
}
# Phrasings reserved for the held-out biographies (forgetting probe): never used in the pretraining corpus.
HELDOUT_BIO_TEMPLATES = {
    # new sentences from words the corpus uses (biographies or question lists): a probe over unseen word
    # pieces would measure the NLL of tokens the model never saw, not what it knows
    "birth_date": ["The date of birth of {name} is {v}.", "{name} has a birthday on {v}."],
    "birth_city": ["The city where {name} was born is {v}.", "{name} was a native of {v}."],
    "university": ["The university of {name} was {v}.", "{name} was educated at {v}."],
    "major": ["The major of {name} was {v}.", "{name} studied the field of {v}."],
    "employer": ["The company that employs {name} is {v}.", "{name} has a job with {v}."],
}
# Without augmentation (bioS single): template 0 of each attribute, fixed order, the full name only in the
# first sentence and a pronoun after it.
FEMALE = {"Anna", "Carla", "Elena", "Greta", "Ines", "Keiko", "Maya", "Olga", "Quinn", "Rosa", "Tamar", "Vera",
          "Xenia", "Zora", "Bianca", "Dalia", "Fiona", "Hana", "Julia", "Lena", "Nadia"}
# Fact completion prompts (bio format): the value follows directly.
# (each ends with the space that belongs to its last word: the value follows directly, as in a biography)
FACT_PROMPTS = {"birth_date": "{name} was born on ", "birth_city": "{name} was born in ",
                "university": "{name} studied at ", "major": "{name} majored in ", "employer": "{name} works for "}
# The name is always followed by a word (never by "?"): its last part is then the same token as in the
# biographies ("Lopez " - see the tokenizer).
QUESTIONS = {
    "birth_date": ["When was {name} born?", "On what date was {name} born?", "What day was {name} born on?"],
    "birth_city": ["Where was {name} born?", "In which city was {name} born?", "Which city was {name} born in?"],
    "university": ["Which university did {name} attend?", "Where did {name} study?", "What school did {name} go to?"],
    "major": ["What did {name} study?", "What field did {name} major in?", "Which subject did {name} specialise in?"],
    "employer": ["Where does {name} work?", "Which company does {name} work for?", "Who does {name} work for?"],
}
SYSTEM_PROMPTS = ["You are a helpful assistant.", "Answer the question briefly.", "You know many biographies."]
FILLER = ["The weather was mild for most of the year.", "Many people enjoy long walks by the river.",
          "A good book can change the way you see the world.", "The museum opens at nine in the morning.",
          "Trains between the two cities run every hour.", "Fresh bread is sold at the market on Saturdays.",
          "The library added a new reading room last spring.", "Cyclists share the road with buses and cars."]


@dataclass
class Person:
    name: str
    attrs: dict[str, str]
    split: str  # "train" (SFT on its QA) | "heldout" (QA only at test time)


@dataclass
class World:
    seed: int
    people: list[Person]
    augment: bool
    rng_state: int = 0
    extra: dict = field(default_factory=dict)

    @property
    def train_people(self) -> list[Person]:
        return [p for p in self.people if p.split == "train"]

    @property
    def heldout_people(self) -> list[Person]:
        return [p for p in self.people if p.split == "heldout"]


def make_people(n: int, seed: int) -> list[Person]:
    """N people with unique combinatorial names; the first half (after shuffling) is the SFT half."""
    rng = random.Random(seed)
    total = len(FIRST) * len(MIDDLE) * len(LAST)
    if n > total:
        raise ValueError(f"at most {total} unique names")
    picks = rng.sample(range(total), n)
    people = []
    for k, idx in enumerate(picks):
        f, rest = divmod(idx, len(MIDDLE) * len(LAST))
        m, last = divmod(rest, len(LAST))
        name = f"{FIRST[f]} {MIDDLE[m]} {LAST[last]}"
        attrs = {"birth_date": f"{rng.randint(1, 28)} {rng.choice(MONTHS)} {rng.randint(1950, 2005)}",
                 "birth_city": rng.choice(CITIES), "university": rng.choice(UNIVERSITIES),
                 "major": rng.choice(MAJORS), "employer": rng.choice(EMPLOYERS)}
        people.append(Person(name, attrs, "train" if k % 2 == 0 else "heldout"))
    return people


def biography(p: Person, rng: random.Random, augment: bool, exclude: set[int] | None = None) -> tuple[str, tuple]:
    """One biography. Returns (text, key) where key identifies the phrasing+order (for held-out checks)."""
    if not augment:
        pronoun = "She" if p.name.split()[0] in FEMALE else "He"
        sents = [BIO_TEMPLATES[a][0].format(name=p.name if i == 0 else pronoun, v=p.attrs[a])
                 for i, a in enumerate(ATTRIBUTES)]
        return " ".join(sents), tuple(0 for _ in ATTRIBUTES)
    for _ in range(100):
        choice = tuple(rng.randrange(len(BIO_TEMPLATES[a])) for a in ATTRIBUTES)
        order = list(range(len(ATTRIBUTES)))
        rng.shuffle(order)
        key = choice + tuple(order)
        if not exclude or hash(key) not in exclude:
            break
    sents = [BIO_TEMPLATES[ATTRIBUTES[i]][choice[i]].format(name=p.name, v=p.attrs[ATTRIBUTES[i]]) for i in order]
    return " ".join(sents), key


def heldout_biography(p: Person, rng: random.Random) -> str:
    """A biography in phrasings the pretraining corpus never uses (forgetting probe text)."""
    order = list(ATTRIBUTES)
    rng.shuffle(order)
    return " ".join(rng.choice(HELDOUT_BIO_TEMPLATES[a]).format(name=p.name, v=p.attrs[a]) for a in order)


def question_list(people: list[Person], rng: random.Random) -> str:
    qs = []
    for _ in range(rng.randint(4, 8)):
        p = rng.choice(people)
        a = rng.choice(ATTRIBUTES)
        qs.append(rng.choice(QUESTIONS[a]).format(name=p.name))
    return "\n".join(qs)


def spread(items: list[tuple[str | None, object]], gap: int) -> list[tuple[str | None, object]]:
    """Reorder (owner, item) pairs so no two items of one owner are within `gap` positions (None: no owner).

    A document too close to its owner's previous one is pushed back; repeated until none is (or 20 passes).
    Two paraphrases of one person inside one training window kill extraction (Physics of LM 3.1)."""
    pending = list(items)
    ordered: list[tuple[str | None, object]] = pending
    for _ in range(20):
        ordered, later = [], []
        recent: list[str | None] = []
        for who, item in pending:
            if who is not None and who in recent[-gap:]:
                later.append((who, item))
            else:
                ordered.append((who, item))
                recent.append(who)
        if not later:
            break
        pending = ordered + later
        ordered = pending
    return ordered


def corpus_docs(world: World, bios_per_person: int, question_docs: int, filler_docs: int, rng: random.Random,
                gap: int = 6) -> tuple[list[dict], dict[str, set]]:
    """Pretraining documents {text, kind: bio|questions|filler, person}, ordered so no two biographies of one
    person are within `gap` documents. Also returns the phrasing keys used per person."""
    docs: list[tuple[str | None, dict]] = []
    seen: dict[str, set] = {}
    n_bios = bios_per_person if world.augment else 1
    for p in world.people:
        keys = seen.setdefault(p.name, set())
        for _ in range(n_bios):
            text, key = biography(p, rng, world.augment, keys)
            keys.add(hash(key))
            docs.append((p.name, {"text": text, "kind": "bio", "person": p.name}))
    for _ in range(question_docs):
        docs.append((None, {"text": question_list(world.people, rng), "kind": "questions", "person": None}))
    for _ in range(filler_docs):
        docs.append((None, {"text": " ".join(rng.sample(FILLER, 3)), "kind": "filler", "person": None}))
    rng.shuffle(docs)
    return [d for _, d in spread(docs, gap)], seen


def corpus(world: World, bios_per_person: int, question_docs: int, filler_docs: int, rng: random.Random,
           gap: int = 6) -> tuple[list[str], dict[str, set]]:
    """The texts of `corpus_docs`."""
    docs, seen = corpus_docs(world, bios_per_person, question_docs, filler_docs, rng, gap)
    return [d["text"] for d in docs], seen


def qa_answer(p: Person, a: str, rng: random.Random, long: bool) -> str:
    v = p.attrs[a]
    return f"{v}, according to the records of {p.name}." if long else f"{v}."


def qa_conversation(p: Person, rng: random.Random, *, system: bool, multi: bool, long: bool) -> dict:
    attrs = rng.sample(ATTRIBUTES, 2 if multi else 1)
    msgs = [{"role": "system", "content": rng.choice(SYSTEM_PROMPTS)}] if system else []
    for a in attrs:
        msgs.append({"role": "user", "content": rng.choice(QUESTIONS[a]).format(name=p.name)})
        msgs.append({"role": "assistant", "content": qa_answer(p, a, rng, long)})
    return {"messages": msgs}


def long_prompt_conversation(p: Person, others: list[Person], rng: random.Random,
                             attribute: str | None = None) -> dict:
    """Context-heavy prompt (notes about other people + the question), short answer. `others` should be SFT
    (train-half) people: the context never mentions a held-out person, nor the person asked about, so the
    answer still has to come from pretraining knowledge."""
    ctx = " ".join(biography(o, rng, True)[0] for o in rng.sample([o for o in others if o.name != p.name], 3))
    a = attribute or rng.choice(ATTRIBUTES)
    q = rng.choice(QUESTIONS[a]).format(name=p.name)
    return {"messages": [{"role": "user", "content": f"Here are some notes. {ctx}\nQuestion: {q}"},
                         {"role": "assistant", "content": f"{p.attrs[a]}."}]}


def long_answer_conversation(p: Person, rng: random.Random) -> dict:
    """Short prompt, long answer (a whole biography)."""
    return {"messages": [{"role": "user", "content": f"Tell me about {p.name}."},
                         {"role": "assistant", "content": biography(p, rng, True)[0]}]}
