"""Probe arithmetic on a tiny random model: fixed-mask NLL, KL to the base from cached top-k log-probs,
pretraining-NLL delta, format classification and never-stopping generations, bad probe files."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from harness.data.tokenize import Segment
from harness.errors import DataError
from harness.evaluation import probes as P
from harness.evaluation.generate import format_probe, stop_strings

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny_model(tok, seed: int = 0, hidden: int = 32):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                      eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, bos_token_id=None)
    torch.manual_seed(seed)
    return LlamaForCausalLM(cfg).eval()


CONVS = [
    [{"role": "system", "content": "You are helpful."}, {"role": "user", "content": "What is 2+2?"},
     {"role": "assistant", "content": "4."}],
    [{"role": "user", "content": "What is the capital of France?"},
     {"role": "assistant", "content": "Paris is the capital of France."},
     {"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hello!"}],
    [{"role": "user", "content": "the quick brown fox jumps over the lazy dog"},
     {"role": "assistant", "content": "Answer: 4."}],
]


@pytest.fixture()
def conv_file(tmp_path):
    p = tmp_path / "eval.jsonl"
    p.write_text("".join(json.dumps({"messages": c}) + "\n" for c in CONVS))
    return p


def test_fixed_mask_nll_is_the_segment_mean_of_per_token_nll(chatml_tok, conv_file):
    from harness.training.loss import per_token_nll

    model = tiny_model(chatml_tok)
    ex = P.tokenize_eval_conversations(str(conv_file), chatml_tok, max_length=64)
    metrics, rows, items = P.fixed_mask_nll(model, chatml_tok, ex, token_examples=2, batch_tokens=60)
    # reference: one unpadded forward per example, harness.loss.per_token_nll, segment masks
    sums = {g: [0.0, 0] for g in P.GROUPS}
    for t in ex:
        ids = torch.as_tensor(t.input_ids)[None]
        with torch.no_grad():
            nll = per_token_nll(model(input_ids=ids).logits, ids)[0].double().numpy()
        seg = t.segments[1:]
        for g, segs in P.GROUPS.items():
            m = np.isin(seg, segs)
            sums[g][0] += nll[m].sum()
            sums[g][1] += m.sum()
    for g in P.GROUPS:
        assert metrics[f"nll/{g}"] == pytest.approx(sums[g][0] / sums[g][1], rel=1e-5)
        # the per-example items (what the findings' bootstrap resamples) add up to the same mean
        assert sum(i[f"{g}_sum"] for i in items) / sum(i[f"{g}_tokens"] for i in items) == \
            pytest.approx(metrics[f"nll/{g}"], rel=1e-9)
    assert [i["doc_id"] for i in items] == list(range(len(ex))) and {i["task"] for i in items} == {"probe/nll"}
    # response = assistant + end-of-turn; the per-token rows of the first two examples
    assert {r["example"] for r in rows} == {0, 1}
    assert len(rows) == len(ex[0]) + len(ex[1])
    assert set(rows[0]) == {"example", "position", "token", "token_id", "segment", "turn", "nll"}
    assert np.isnan(rows[0]["nll"]) and not np.isnan(rows[1]["nll"])
    segs = {r["segment"] for r in rows}
    assert {"system", "user", "assistant", "eot", "template"} <= segs
    assert "".join(r["token"] for r in rows if r["example"] == 0) == ex[0].text


def test_fixed_mask_nll_does_not_depend_on_batching(chatml_tok, conv_file):
    model = tiny_model(chatml_tok)
    ex = P.tokenize_eval_conversations(str(conv_file), chatml_tok, max_length=64)
    a, _, _ = P.fixed_mask_nll(model, chatml_tok, ex, 0, batch_tokens=1)
    b, _, _ = P.fixed_mask_nll(model, chatml_tok, ex, 0, batch_tokens=10**5)  # right padding must not change a number
    for k in a:
        assert a[k] == pytest.approx(b[k], rel=1e-5)


def _exact_kl(base, tuned, ids):
    tot, n = 0.0, 0
    for x in ids:
        t = torch.as_tensor(x)[None]
        with torch.no_grad():
            lb = F.log_softmax(base(input_ids=t).logits.double(), -1)
            lt = F.log_softmax(tuned(input_ids=t).logits.double(), -1)
        tot += float((lb.exp() * (lb - lt)).sum())
        n += len(x)
    return tot / n


def test_kl_from_cached_base_logprobs(chatml_tok, tmp_path):
    base, tuned = tiny_model(chatml_tok, 0), tiny_model(chatml_tok, 1)
    texts = ["the quick brown fox jumps over the lazy dog.", "What is the capital of France? Paris.", "2+2=4, 3+3=6."]
    ids = P.text_ids(chatml_tok, texts, 64)
    V = len(chatml_tok)
    full = P.base_logprobs(base, chatml_tok, ids, top_k=V + 10, batch_tokens=40)  # k >= vocabulary: exact
    assert full.k == V
    full.save(tmp_path / "b.npz")
    loaded = P.BaseLogprobs.load(tmp_path / "b.npz")
    assert all(np.array_equal(a, b) for a, b in zip(loaded.ids, ids)) and loaded.pretrain_nll == full.pretrain_nll
    exact = _exact_kl(base, tuned, ids)
    m, items = P.pretrain_probe(tuned, chatml_tok, ids, loaded, batch_tokens=10**5)
    assert m["forgetting/kl_base"] == pytest.approx(exact, rel=1e-4)
    assert [i["doc_id"] for i in items] == [0, 1, 2]  # one item per text, summing to the means
    assert sum(i["nll_sum"] for i in items) / sum(i["nll_tokens"] for i in items) == \
        pytest.approx(m["forgetting/pretrain_nll"], rel=1e-9)
    assert sum(i["kl_sum"] for i in items) / sum(i["kl_tokens"] for i in items) == \
        pytest.approx(m["forgetting/kl_base"], rel=1e-9)
    assert m["forgetting/pretrain_nll_delta"] == pytest.approx(m["forgetting/pretrain_nll"] - full.pretrain_nll)
    # top-k + tail: a lower bound of the exact KL, and close to it
    small = P.base_logprobs(base, chatml_tok, ids, top_k=16)
    approx = P.pretrain_probe(tuned, chatml_tok, ids, small)[0]["forgetting/kl_base"]
    assert 0 < approx <= exact * (1 + 1e-6)
    # the base against its own cache: zero; NLL agrees with the cached one
    self_m, _ = P.pretrain_probe(base, chatml_tok, ids, small)
    assert self_m["forgetting/kl_base"] == pytest.approx(0, abs=1e-6)
    assert self_m["forgetting/pretrain_nll"] == pytest.approx(small.pretrain_nll, rel=1e-6)
    with pytest.raises(DataError, match="other probe tokens"):
        P.pretrain_probe(tuned, chatml_tok, ids[:2], small)


class _Scripted(torch.nn.Module):
    """A 'model' whose greedy generation is a fixed token sequence per prompt (for the format probe)."""

    def __init__(self, tok, outputs: list[str]):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.tok, self.outputs = tok, [tok(o, add_special_tokens=False)["input_ids"] for o in outputs]

    def eval(self):
        return self

    def generate(self, input_ids, attention_mask, max_new_tokens, **kw):
        rows = []
        for i in range(input_ids.shape[0]):
            out = (self.outputs[i] + [self.tok.pad_token_id] * max_new_tokens)[:max_new_tokens]
            rows.append(input_ids[i].tolist() + out)
        return torch.tensor(rows)


def test_format_probe_classes_and_unfinished(chatml_tok):
    tok = chatml_tok
    rows = [{"prompt": "What is 2+2?\n", "answer": "4"}, {"prompt": "What is the capital of France?\n",
            "answer": "Paris"}, {"prompt": "Hi?\n", "answer": "Hello"}, {"prompt": "What is 3+3?\n", "answer": "6"}]
    outs = ["4.<|im_end|>", "What is the capital of France?\nWhat is", "the quick brown fox<|endoftext|>",
            "Paris is the capital<|im_end|>"]
    rates, samples = format_probe(_Scripted(tok, outs), tok, rows, max_new_tokens=6)
    assert [s["class"] for s in samples] == ["answered", "continued_question", "other", "other"]
    assert [s["finished"] for s in samples] == [True, False, True, True]
    assert rates["format/answered"] == 0.25 and rates["format/continued_question"] == 0.25
    assert rates["format/other"] == 0.5 and rates["format/unfinished"] == 0.25
    assert samples[0]["generation"] == "4." and samples[0]["task"] == "probe/format"


def test_a_generation_that_never_stops_is_bounded_and_counted(chatml_tok):
    model = tiny_model(chatml_tok)  # random weights: never emits an end-of-turn in 5 tokens
    rows = [{"prompt": "What is 2+2?\n", "answer": "4"}] * 3
    stop = stop_strings(chatml_tok)
    assert set(stop) == {"<|endoftext|>", "<|im_end|>"}
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([chatml_tok("What is 2+2?\n")["input_ids"]])).logits
    assert logits[0, -1].argmax().item() not in [chatml_tok.convert_tokens_to_ids(s) for s in stop]
    rates, samples = format_probe(model, chatml_tok, rows, max_new_tokens=5)
    assert rates["format/unfinished"] == 1.0 and not any(s["finished"] for s in samples)
    assert rates["format/answered"] + rates["format/continued_question"] + rates["format/other"] == 1.0


def test_probe_files_bad_input(tmp_path):
    with pytest.raises(DataError, match="probe file not found"):
        P.read_jsonl(tmp_path / "nope.jsonl", "text")
    p = tmp_path / "empty.jsonl"
    p.write_text("\n\n")
    with pytest.raises(DataError, match="probe corpus is empty"):
        P.read_jsonl(p, "text")
    p.write_text('{"text": ""}\n{"text": "  "}\n')
    with pytest.raises(DataError, match="probe corpus is empty"):
        P.read_jsonl(p, "text")
    p.write_text('{"text": "a"}\n{"prompt": "b"}\n')
    with pytest.raises(DataError, match="no 'text' field") as exc:
        P.read_jsonl(p, "text")
    assert f"{p}:2" in str(exc.value)
    p.write_text('{"text": "a"}\n{oops\n')
    with pytest.raises(DataError, match="malformed JSON"):
        P.read_jsonl(p, "text")
    p.write_text("".join(json.dumps({"text": f"t{i}"}) + "\n" for i in range(10)))
    assert len(P.read_jsonl(p, "text", limit=4)) == 4


def test_segment_groups_cover_every_segment():
    covered = sorted(s for segs in P.GROUPS.values() for s in segs)
    # replay text (data.replay) is mixed into training steps only; evaluation conversations never hold it
    assert covered == sorted(int(s) for s in Segment if s != Segment.REPLAY)


def test_format_rules_answer_first_and_contains():
    from harness.evaluation.generate import classify_format

    real = "The capital of France is Paris.\nWhat is the capital of Spain?"
    assert classify_format(real, "Paris", "contains") == "answered"  # a real model answers in a sentence
    assert classify_format(real, "Paris", "answer_first") == "other"  # the mini-world's strict rule
    assert classify_format("Paris. Next question", "Paris", "answer_first") == "answered"
    assert classify_format("What is the capital of Spain?", "Paris", "contains") == "continued_question"
    assert classify_format("Parisian food is famous.", "Paris", "contains") == "other"  # whole words only
    assert classify_format("  PARIS!  ", "Paris", "contains") == "answered"
    assert classify_format("It is New  York, of course", "new york", "contains") == "answered"


def test_eval_hash_covers_only_differences_from_the_defaults(tmp_path):
    import dataclasses

    from harness.config import ExperimentConfig
    from harness.evaluation.identity import eval_hash

    cfg = ExperimentConfig()
    same = dataclasses.replace(cfg, eval=dataclasses.replace(cfg.eval, format_rule="answer_first"))
    other = dataclasses.replace(cfg, eval=dataclasses.replace(cfg.eval, format_rule="contains"))
    assert eval_hash(same) == eval_hash(cfg) != eval_hash(other)
