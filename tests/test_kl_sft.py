"""forgetting/kl_sft (harness/evaluation/kl_prompts.py): forward KL(base || tuned) on the fine-tuning prompts'
continuations against a brute-force computation on a tiny model (full vocabulary: exact), zero for the base,
positive after a weight perturbation, exactly the response / continuation positions, the base's sampler, the
cache computed once per experiment and read back, and the eval hash changing only when the probe is on."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from harness.data.tokenize import Segment
from harness.errors import ConfigError
from harness.evaluation import kl_prompts as K
from harness.evaluation import probes as P
from tests.test_probes import CONVS, tiny_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")
RESPONSE = (int(Segment.ASSISTANT), int(Segment.EOT))


def perturbed(model, noise: float = 0.2, seed: int = 1):
    """A 'fine-tuned' model: a copy of `model` with Gaussian noise on every weight."""
    tuned = copy.deepcopy(model).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in tuned.parameters():
            p.add_(noise * torch.randn(p.shape, generator=g))
    return tuned


@pytest.fixture()
def examples(chatml_tok, tmp_path):
    p = tmp_path / "train.jsonl"
    p.write_text("".join(json.dumps({"messages": c}) + "\n" for c in CONVS))
    return P.tokenize_eval_conversations(str(p), chatml_tok, max_length=64)


def brute_force_kl(base, tuned, kp: K.KLPrompts) -> float:
    """One unpadded float64 forward per sequence, full-vocabulary KL at the given positions, token mean."""
    base, tuned = copy.deepcopy(base).double(), copy.deepcopy(tuned).double()
    tot, n = 0.0, 0
    for seq, pos in zip(kp.seqs, kp.positions):
        x = torch.as_tensor(seq)[None]
        with torch.no_grad():
            lb = F.log_softmax(base(input_ids=x).logits[0, pos], -1)
            lt = F.log_softmax(tuned(input_ids=x).logits[0, pos], -1)
        tot += float((lb.exp() * (lb - lt)).sum())
        n += len(pos)
    return tot / n


def _stop_ids(tok):
    return [tok.convert_tokens_to_ids(s) for s in ("<|im_end|>", "<|endoftext|>")]


@pytest.mark.parametrize("continuations", ["data", "base"])
def test_kl_sft_is_the_exact_kl_zero_for_the_base_and_positive_when_perturbed(chatml_tok, examples,
                                                                              continuations, tmp_path):
    base = tiny_model(chatml_tok)
    kp = K.build_kl_prompts(examples, continuations, 64, base=base, max_new_tokens=8, stop_ids=_stop_ids(chatml_tok))
    V = len(chatml_tok)
    cache = K.base_kl_cache(base, chatml_tok, kp, top_k=V + 5, batch_tokens=50)  # k >= vocabulary: exact
    assert cache.k == V and cache.tokens == sum(len(p) for p in kp.positions)
    cache.save(tmp_path / "c.npz")
    loaded = K.KLCache.load(tmp_path / "c.npz")
    assert all(np.array_equal(a, b) for a, b in zip(loaded.prompts.seqs, kp.seqs))
    assert all(np.array_equal(a, b) for a, b in zip(loaded.prompts.positions, kp.positions))
    tuned = perturbed(base)
    m, items = K.kl_sft_probe(tuned, chatml_tok, loaded, batch_tokens=10**5)
    exact = brute_force_kl(base, tuned, kp)
    assert exact > 1e-3 and m["forgetting/kl_sft"] == pytest.approx(exact, abs=1e-6)
    # one item per sequence, adding up to the token mean
    assert [i["doc_id"] for i in items] == list(range(len(kp.seqs))) and {i["task"] for i in items} == {"probe/kl_sft"}
    assert sum(i["kl_sum"] for i in items) / sum(i["kl_tokens"] for i in items) == \
        pytest.approx(m["forgetting/kl_sft"], rel=1e-9)
    assert K.kl_sft_probe(base, chatml_tok, loaded)[0]["forgetting/kl_sft"] == pytest.approx(0, abs=1e-6)
    # top-k + tail: a lower bound
    small = K.base_kl_cache(base, chatml_tok, kp, top_k=8)
    assert 0 < K.kl_sft_probe(tuned, chatml_tok, small)[0]["forgetting/kl_sft"] <= exact * (1 + 1e-6)


def test_data_positions_are_exactly_the_response_positions(chatml_tok, examples):
    kp = K.build_kl_prompts(examples, "data", 64)
    assert len(kp.seqs) == len(examples)
    for t, seq, pos in zip(examples, kp.seqs, kp.positions):
        assert np.array_equal(seq, t.input_ids)
        # position j compares the distributions of token j + 1: exactly the response (assistant + eot) tokens
        assert np.array_equal(pos + 1, np.flatnonzero(np.isin(t.segments, RESPONSE)))
    assert sum(len(p) for p in kp.positions) == sum(int(np.isin(t.segments, RESPONSE).sum()) for t in examples)


def test_base_continuations_follow_each_prompt_of_every_assistant_turn(chatml_tok, examples):
    base = tiny_model(chatml_tok)
    stop = _stop_ids(chatml_tok)
    kp = K.build_kl_prompts(examples, "base", 64, base=base, max_new_tokens=6, stop_ids=stop)
    starts = [(i, int(np.flatnonzero(np.isin(t.segments, RESPONSE) & (t.turns == turn))[0]))
              for i, t in enumerate(examples) for turn in sorted(set(t.turns[np.isin(t.segments, RESPONSE)]))]
    assert len(kp.seqs) == len(starts) == 4  # conversation 2 has two assistant turns
    for (i, L), seq, pos in zip(starts, kp.seqs, kp.positions):
        t = examples[i]
        assert np.array_equal(seq[:L], t.input_ids[:L])  # the prompt: every token before the turn's response
        assert t.segments[L] in RESPONSE and t.segments[L - 1] not in RESPONSE
        y = seq[L:]
        assert 1 <= len(y) <= 6 and np.array_equal(pos, np.arange(L - 1, len(seq) - 1))
        assert not np.isin(y[:-1], stop).any()  # cut after the first stop token
    # deterministic, and a prompt's sample does not depend on its batch
    again = K.build_kl_prompts(examples, "base", 64, base=base, max_new_tokens=6, stop_ids=stop)
    assert all(np.array_equal(a, b) for a, b in zip(kp.seqs, again.seqs))
    prompts = K.turn_prompts(examples, 64)
    one = K.sample_continuations(base, prompts, [6] * len(prompts), stop, batch_rows=1)
    assert all(np.array_equal(np.concatenate([p, y]), s) for p, y, s in zip(prompts, one, kp.seqs))
    # no room for a continuation: the prompt is skipped
    assert len(K.turn_prompts(examples, max(len(p) for p in prompts))) < len(prompts)


def test_the_sampler_draws_from_the_models_own_distribution(chatml_tok):
    base = tiny_model(chatml_tok)
    with torch.no_grad():
        base.lm_head.weight.mul_(12)  # a peaked next-token distribution, so a wrong sampler shows
    base.generation_config.top_k, base.generation_config.temperature = 1, 0.1  # must not apply
    prompt = np.asarray(chatml_tok("What is 2+2?")["input_ids"], dtype=np.int64)
    n = 2000
    ys = K.sample_continuations(base, [prompt] * n, [1] * n, [], batch_rows=1000)
    counts = np.bincount([int(y[0]) for y in ys], minlength=len(chatml_tok))
    with torch.no_grad():
        p = F.softmax(base(input_ids=torch.as_tensor(prompt)[None]).logits[0, -1].double(), -1).numpy()
    assert p.max() > 0.05 and len(counts) == len(p)
    tv = 0.5 * np.abs(counts / n - p).sum()
    rng = np.random.default_rng(0)  # the total variation of n exact draws from p, for scale
    ref = np.mean([0.5 * np.abs(rng.multinomial(n, p) / n - p).sum() for _ in range(20)])
    assert tv < 1.3 * ref
    assert counts.max() < 0.5 * n and (counts > 0).sum() > 20  # not greedy, not top-k=1


def test_config_checks():
    from harness.config import EvalConfig

    assert not EvalConfig().kl_sft  # off by default
    with pytest.raises(ConfigError, match="kl_sft is false"):
        EvalConfig(kl_prompts="x.jsonl")
    with pytest.raises(ConfigError, match="kl_sft is false"):
        EvalConfig(kl_continuations="data")
    with pytest.raises(ConfigError, match="kl_continuations"):
        EvalConfig(kl_sft=True, kl_continuations="greedy")
    with pytest.raises(ConfigError, match="kl_prompt_limit"):
        EvalConfig(kl_sft=True, kl_prompt_limit=0)


# ------------------------------------------------------------------------------------------ the evaluator


@pytest.fixture(scope="module")
def tiny_kl(tmp_path_factory):
    from harness.grid import load_experiment
    from tests.tiny import build_tiny

    root = tmp_path_factory.mktemp("tinykl")
    return load_experiment(build_tiny(root), ["eval.kl_sft=true", "eval.kl_prompt_limit=10", "eval.max_new_tokens=6",
                                              "eval.kl_top_k=1000"])


def test_evaluator_caches_the_base_once_and_every_checkpoint_gets_the_metric(tiny_kl, monkeypatch, tmp_path):
    from harness.evaluation import evaluator as E
    from harness.modeling import load_model

    cfg = tiny_kl.config
    base_dir = tmp_path / "base"
    ev = E.Evaluator(cfg, base_dir, tasks=[])
    base = load_model(cfg, cfg.model.name_or_path, torch.device("cpu"), training=False)
    rb = ev.evaluate(base, is_base=True)
    assert rb.metrics["forgetting/kl_sft"] == 0.0
    files = sorted((base_dir / "eval").glob("base_kl_sft-*.npz"))
    assert [f.name for f in files] == [f"base_kl_sft-{ev.hash}.npz"]
    info = rb.probes["kl_sft"]
    assert info["continuations"] == "base" and info["conversations"] == 10 and info["kl_top_k"] == len(ev.tok)
    assert info["sequences"] == 12 and info["tokens"] > 12  # conversations 0 and 5 have two assistant turns
    # a later evaluator (another process) reads the cache back: neither samples nor loads the base again
    monkeypatch.setattr(K, "sample_continuations", lambda *a, **k: pytest.fail("sampled again"))
    monkeypatch.setattr(K, "base_kl_cache", lambda *a, **k: pytest.fail("the base's log-probs were recomputed"))
    monkeypatch.setattr(E, "load_model", lambda *a, **k: pytest.fail("the base was loaded again"))
    ev2 = E.Evaluator(cfg, base_dir, tasks=[])
    rt = ev2.evaluate(perturbed(base, 0.05), is_base=False)
    assert rt.metrics["forgetting/kl_sft"] > 0
    assert all(np.array_equal(a, b) for a, b in zip(ev2.kl_cache().prompts.seqs, ev.kl_cache().prompts.seqs))
    items = [s for s in rt.samples if s.get("task") == "probe/kl_sft"]
    assert len(items) == 12 and sum(i["kl_tokens"] for i in items) == info["tokens"]
    assert "kl_sft" in rt.probes["seconds"]


def test_eval_hash_changes_only_when_the_probe_is_on(tiny_kl, tmp_path):
    import shutil

    from harness.evaluation.identity import eval_hash
    from harness.grid import load_experiment

    path = tiny_kl.path
    off = eval_hash(load_experiment(path).config)
    on = eval_hash(tiny_kl.config)
    assert off != on
    assert eval_hash(load_experiment(path, ["eval.kl_sft=false"]).config) == off  # the default, written out
    # off: the training data is no input of the evaluation; on: its contents are (a copy elsewhere is the same
    # input: where a file lies is no part of the eval hash, harness/evaluation/identity.py)
    train = Path(tiny_kl.config.data.train.path)
    copy = tmp_path / "train.jsonl"
    shutil.copy(train, copy)
    assert eval_hash(load_experiment(path, [f"data.train.path={copy}"]).config) == off
    over = ["eval.kl_sft=true", "eval.kl_prompt_limit=10", "eval.max_new_tokens=6", "eval.kl_top_k=1000"]
    moved = load_experiment(path, over + [f"data.train.path={copy}"]).config
    before = eval_hash(moved)
    assert before == on
    copy.write_text(copy.read_text() + copy.read_text().splitlines()[0] + "\n")
    assert eval_hash(moved) != before
    assert eval_hash(load_experiment(path, over + ["eval.kl_continuations=data"]).config) != on
    assert eval_hash(load_experiment(path, over + ["data.train.limit=5"]).config) == on  # not applied
