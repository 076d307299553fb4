"""Per-example (varlen) attention for packed rows (harness/attention.py): the same function as transformers'
block-diagonal mask, exactly (float64), through the model, one engine step, checkpointing and train()."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
import torch.nn.functional as F

from harness.attention import NAME, row_lengths, supports_varlen, varlen_attention
from harness.packing import Row, collate, pack_rows
from tests.test_train import _tiny_data, spec_of, weights
from tests.tiny import build_tiny


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny_attn")
    return root, build_tiny(root)


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _model(root, dtype=torch.float64):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(root / "model", dtype=dtype, attn_implementation="sdpa")


def test_row_lengths():
    ids = torch.tensor([[0, 0, 0, 1, 1, -1, -1], [2, 2, 2, 2, 2, 2, 2], [3, -1, -1, -1, -1, -1, -1]])
    assert row_lengths(ids) == [[3, 2, -2], [7], [1, -6]]
    with pytest.raises(ValueError, match="padding inside"):
        row_lengths(torch.tensor([[0, -1, 1]]))


def test_varlen_logits_equal_each_example_alone(tiny, monkeypatch):
    """A packed row with a padding tail, its GQA model (4 query / 2 key-value heads) under varlen_sdpa: every
    example's logits equal the example run alone; sdpa is called once per example per layer, causal, no mask,
    nothing for the padding; the config names sdpa again afterwards."""
    root, exp = tiny
    _, tok, data = _tiny_data(exp)
    model = _model(root).eval()
    assert model.config.num_key_value_heads < model.config.num_attention_heads
    idx = [0, 5, 7, 11]
    n = sum(len(data.examples[i]) for i in idx)
    rows = [Row(idx[:2], 0), Row(idx[2:], 0)]
    b = collate(rows, data.examples, data.masks, tok.pad_token_id, width=n)
    lens = row_lengths(b.seq_ids)
    assert all(row[-1] < 0 for row in lens)  # both rows end in padding
    calls = []
    sdpa = F.scaled_dot_product_attention

    def spy(*args, **kw):
        calls.append((args[0].shape[2], kw.get("attn_mask"), kw.get("is_causal")))
        return sdpa(*args, **kw)

    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
    with torch.no_grad(), varlen_attention(model):
        assert model.config._attn_implementation == NAME
        out = model(input_ids=b.input_ids, position_ids=b.position_ids, use_cache=False, segment_lengths=lens).logits
    monkeypatch.setattr(F, "scaled_dot_product_attention", sdpa)
    assert model.config._attn_implementation == "sdpa"
    L = model.config.num_hidden_layers
    assert len(calls) == L * len(idx) and all(m is None and c is True for _, m, c in calls)
    assert sorted(c[0] for c in calls) == sorted([len(data.examples[i]) for i in idx] * L)
    with torch.no_grad():
        for r, row in enumerate(rows):
            off = 0
            for i in row.examples:
                alone = model(input_ids=torch.from_numpy(data.examples[i].input_ids)[None]).logits[0]
                assert (out[r, off:off + len(alone)] - alone).abs().max().item() < 1e-10
                off += len(alone)


def test_varlen_refuses_a_forward_without_lengths(tiny):
    root, exp = tiny
    model = _model(root)
    ids = torch.arange(3, 11)[None]
    with varlen_attention(model), pytest.raises(RuntimeError, match="segment_lengths"):
        model(input_ids=ids, use_cache=False)
    with varlen_attention(model), pytest.raises(RuntimeError, match="do not cover"):
        model(input_ids=ids, use_cache=False, segment_lengths=[[3, 4]])
    assert model.config._attn_implementation == "sdpa"  # restored after an error too


def test_supports_varlen_is_a_numerical_check(tiny, monkeypatch):
    """The engine uses varlen only where it reproduces the model's own masked attention: an attention that
    leaks across examples (here: sdpa told to ignore the causal flag) fails the check."""
    root, exp = tiny
    import harness.attention as A

    model = _model(root, torch.float32)
    sample = torch.arange(3, 19)[None]
    assert supports_varlen(model, sample)
    sdpa = F.scaled_dot_product_attention
    monkeypatch.setattr(A.F, "scaled_dot_product_attention", lambda *a, **kw: sdpa(*a, **{**kw, "is_causal": False}))
    assert not supports_varlen(model, sample)
    monkeypatch.undo()
    model.train()
    assert supports_varlen(model, sample) and model.training  # the check leaves the mode as it found it
    from harness.train import Engine

    spec = spec_of(exp)
    assert Engine(_model(root, torch.float32), spec.config.train, 5, sample_ids=sample).varlen
    assert not Engine(_model(root, torch.float32), spec.config.train, 5).varlen  # no sample: no check, no varlen
    assert not Engine(_model(root, torch.float32), dataclasses.replace(spec.config.train, compile=True), 5,
                      sample_ids=sample).varlen


def _one_step(root, exp, varlen: bool, *overrides):
    """One engine step over two packed micro-batches (float64): (metrics, grad norm, weights after)."""
    from harness.train import Engine

    spec, tok, data = _tiny_data(exp, "model.dtype=float64", *overrides)
    idx = list(range(16))
    rows = pack_rows([len(data.examples[i]) for i in idx], 64, idx)
    assert any(len(r.examples) > 1 for r in rows)
    batches = [collate(rows[:2], data.examples, data.masks, tok.pad_token_id),
               collate(rows[2:], data.examples, data.masks, tok.pad_token_id)]
    torch.manual_seed(0)
    model = _model(root)
    eng = Engine(model, spec.config.train, 10, sample_ids=batches[0].input_ids[:1, :16])
    assert eng.varlen and eng.head is not None  # chosen on its own for packed rows on CPU
    eng.varlen = varlen
    m, gn = eng.step(batches, metrics=True, step=1)
    assert model.config._attn_implementation == "sdpa"
    return m, gn, [p.detach().clone() for p in model.parameters()]


@pytest.mark.parametrize("extra", [(), ("train.normalization=sequence",), ("train.gradient_checkpointing=true",)])
def test_engine_step_varlen_equals_masked(tiny, extra):
    """One engine step, varlen vs transformers' block-diagonal mask (float64): the same loss, metrics, grad norm
    and weights; with activation checkpointing too (the attention is recomputed in backward, still inside the
    varlen context)."""
    root, exp = tiny
    m0, g0, p0 = _one_step(root, exp, False, *extra)
    m1, g1, p1 = _one_step(root, exp, True, *extra)
    assert torch.allclose(m0, m1, rtol=1e-12, atol=1e-12) and abs(g0 - g1) < 1e-10
    assert all(torch.allclose(a, b, rtol=1e-10, atol=1e-12) for a, b in zip(p0, p1))


def test_varlen_attention_dropout_replays_under_checkpointing(tiny):
    """Attention dropout inside the per-example sdpa calls: activation checkpointing replays the same dropout
    masks in backward (same weights), and dropout did act."""
    root, exp = tiny
    m0, g0, p0 = _one_step(root, exp, True, "train.dropout=0.2")
    m1, g1, p1 = _one_step(root, exp, True, "train.dropout=0.2", "train.gradient_checkpointing=true")
    m2, g2, p2 = _one_step(root, exp, True)
    assert torch.allclose(m0, m1, rtol=1e-12, atol=1e-12) and abs(g0 - g1) < 1e-10
    assert all(torch.allclose(a, b, rtol=1e-10, atol=1e-12) for a, b in zip(p0, p1))
    assert abs(float(m0[0]) - float(m2[0])) > 1e-6


def test_train_with_varlen_equals_masked(tiny, tmp_path, monkeypatch):
    """Three steps of train() (float64) with and without varlen: same metrics and checkpoint weights; the saved
    config names sdpa (the checkpoint loads anywhere)."""
    root, exp = tiny
    from harness import train as T

    args = ("train.max_steps=3", "model.dtype=float64")
    T.train(spec_of(exp, *args), tmp_path / "varlen")
    monkeypatch.setattr(T, "supports_varlen", lambda *a, **k: False)
    T.train(spec_of(exp, *args), tmp_path / "masked")
    ma = [json.loads(x) for x in (tmp_path / "masked/metrics.jsonl").read_text().splitlines()]
    mb = [json.loads(x) for x in (tmp_path / "varlen/metrics.jsonl").read_text().splitlines()]
    assert len(ma) == len(mb) == 3
    for ra, rb in zip(ma, mb):
        for key in ("loss", "loss_response", "loss_prompt", "grad_norm"):
            assert abs(ra[key] - rb[key]) < 1e-9, key
    a, b = (weights(tmp_path / f"{x}/checkpoints/step-000003") for x in ("masked", "varlen"))
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-9
    cfg = json.loads((tmp_path / "varlen/checkpoints/step-000003/config.json").read_text())
    assert NAME not in json.dumps(cfg)
