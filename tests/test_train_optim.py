"""Optimizer registry, parameter groups and LR schedules (pure functions, no training)."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from harness.config import TrainConfig
from harness.errors import ConfigError
from harness.training.optim import lr_lambda, make_optimizer, param_groups


def _model(tie: bool = False):
    cfg = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=tie, attention_bias=True)
    return LlamaForCausalLM(cfg)


@pytest.mark.parametrize("tie", [False, True])
def test_no_decay_on_norms_biases_embeddings(tie):
    model = _model(tie)
    decay, no_decay = param_groups(model, 0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    kept = {names[id(p)] for p in no_decay["params"]}
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert "model.embed_tokens.weight" in kept and not any("norm" in n or n.endswith("bias") for n in decayed)
    assert "model.layers.0.self_attn.q_proj.weight" in decayed and "model.layers.0.mlp.up_proj.weight" in decayed
    assert ("lm_head.weight" in decayed) is not tie  # tied: it is the embedding table
    assert len(decayed) + len(kept) == len(list(model.parameters()))


def test_optimizer_registry_and_fused_adamw():
    model = _model()
    opt = make_optimizer(model, TrainConfig(weight_decay=0.1, betas=(0.9, 0.95)))
    assert isinstance(opt, torch.optim.AdamW) and opt.defaults["betas"] == (0.9, 0.95)
    assert opt.defaults["fused"]  # one kernel per step on CPU too (5x faster than foreach here)
    bad = dataclasses.replace(TrainConfig(), weight_decay=0.0)
    object.__setattr__(bad, "optimizer", "adamz")  # bypass config validation to reach the registry
    with pytest.raises(ConfigError, match="did you mean 'adamw'"):
        make_optimizer(model, bad)


def _lrs(total=100, **kw):
    f = lr_lambda(TrainConfig(**kw), total)
    return [f(s) for s in range(total)]


def test_schedules():
    lima = _lrs(schedule="linear", warmup_ratio=0.0, final_lr_fraction=0.1)  # LIMA: 1e-5 -> 1e-6, no warmup
    assert lima[0] == 1.0 and lima[-1] == pytest.approx(0.1) and all(a > b for a, b in zip(lima, lima[1:]))
    cos = _lrs(schedule="cosine", warmup_ratio=0.1, final_lr_fraction=0.0)
    assert cos[:10] == pytest.approx([(i + 1) / 10 for i in range(10)])  # linear warmup to the peak
    assert cos[10] == 1.0 and cos[-1] == pytest.approx(0.0, abs=1e-12)
    assert cos[55] == pytest.approx(0.5, abs=0.02)  # halfway down the cosine
    assert _lrs(schedule="constant", warmup_ratio=0.05)[5:] == [1.0] * 95
    assert _lrs(total=1, schedule="linear", warmup_ratio=0.0) == [1.0]  # a one-step run trains at the peak


def _batch(vocab: int = 64):
    from harness.training.packing import Batch

    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (2, 12), generator=g)
    labels = ids.clone()
    labels[:, :5] = -100  # a prompt that is not in the loss
    return Batch(input_ids=ids, position_ids=torch.arange(12).repeat(2, 1), labels=labels,
                 weights=(labels != -100).float(), segments=torch.zeros(2, 12, dtype=torch.int8),
                 seq_ids=torch.zeros(2, 12, dtype=torch.long), attention_mask=None, n_tokens=24)


@pytest.mark.parametrize("split_head", [True, False])
def test_sparse_tied_embedding_gradient_equals_the_dense_one(split_head):
    """Tied embeddings with sparse input-side rows: the optimizer still sees one dense gradient, equal to the
    dense path's up to summation order, so one step lands on the same weights."""
    from harness.training.engine import Engine

    after = {}
    for sparse in (False, True):
        torch.manual_seed(0)
        model = _model(tie=True)
        tc = TrainConfig(lr=1e-2, warmup_ratio=0.0, schedule="constant", sparse_embedding_grad=sparse)
        eng = Engine(model, tc, total_steps=1)
        if not split_head:
            eng.head, eng.fwd = None, model
        assert eng.sparse_embedding is sparse and model.model.embed_tokens.sparse is sparse
        grads = []
        model.model.embed_tokens.weight.register_hook(lambda g: grads.append(g.is_sparse) or g)
        eng.step([_batch()], metrics=False)
        assert grads == [False]  # the shared weight receives one gradient, dense, sparse rows or not
        after[sparse] = model.model.embed_tokens.weight.detach().clone()
    torch.testing.assert_close(after[True], after[False], rtol=1e-6, atol=1e-7)


def test_sparse_embedding_auto_rule_and_untied_refusal():
    from harness.training.engine import SPARSE_EMBEDDING_MIN_VOCAB, sparse_tied_embedding

    assert not sparse_tied_embedding(_model(tie=True), TrainConfig())  # a 64-token vocabulary: dense
    big = LlamaForCausalLM(LlamaConfig(vocab_size=SPARSE_EMBEDDING_MIN_VOCAB, hidden_size=8, intermediate_size=8,
                                       num_hidden_layers=1, num_attention_heads=1, num_key_value_heads=1,
                                       tie_word_embeddings=True))
    assert sparse_tied_embedding(big, TrainConfig()) and big.model.embed_tokens.sparse
    assert not sparse_tied_embedding(big, TrainConfig(compile=True))
    untied = _model(tie=False)
    assert not sparse_tied_embedding(untied, TrainConfig()) and not untied.model.embed_tokens.sparse
    with pytest.raises(ConfigError, match="tied"):
        sparse_tied_embedding(untied, TrainConfig(sparse_embedding_grad=True))
