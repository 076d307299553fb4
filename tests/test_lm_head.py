"""The chunked LM head + cross-entropy equals the plain one (values and gradients), for any chunking."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from harness.training.lm_head import head_nll, vocab_chunk


def _plain(hidden, head, targets):
    z = head(hidden)
    return F.cross_entropy(z.to(torch.promote_types(z.dtype, torch.float32)), targets, reduction="none")


def _grads(fn, hidden, head, targets, g):
    for p in (hidden, *head.parameters()):
        p.grad = None
    out = fn(hidden, head, targets)
    (out * g).sum().backward()
    return out.detach(), hidden.grad.clone(), [p.grad.clone() for p in head.parameters()]


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("chunk", [256, 512, 1000, 4096])
def test_chunked_equals_plain_values_and_gradients(bias, chunk):
    torch.manual_seed(0)
    head = torch.nn.Linear(48, 1000, bias=bias).double()
    hidden = torch.randn(37, 48, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, 1000, (37,))
    targets[:3] = torch.tensor([0, 999, 255])  # chunk edges
    g = torch.rand(37, dtype=torch.float64)  # per-token loss weights, as the engine's eff
    ref = _grads(_plain, hidden, head, targets, g)
    got = _grads(lambda h, m, t: head_nll(h, m, t, chunk=chunk), hidden, head, targets, g)
    assert got[0].dtype == torch.float64  # an fp64 model keeps fp64 throughout: exact to rounding
    assert torch.allclose(got[0], ref[0], atol=1e-12)
    assert torch.allclose(got[1], ref[1], atol=1e-12)
    for a, b in zip(got[2], ref[2]):
        assert torch.allclose(a, b, atol=1e-12)


def test_fp32_matches_within_rounding_and_no_positions_is_zero():
    torch.manual_seed(1)
    head = torch.nn.Linear(32, 3000, bias=False)
    hidden = torch.randn(20, 32, requires_grad=True)
    t = torch.randint(0, 3000, (20,))
    assert torch.allclose(head_nll(hidden, head, t, chunk=512), _plain(hidden, head, t), atol=1e-4)
    empty = head_nll(hidden[:0], head, t[:0])
    assert empty.shape == (0,)
    empty.sum().backward()  # connected to the graph, zero gradient
    assert float(hidden.grad.abs().sum()) == 0.0


def test_bf16_autocast_agrees_with_fp32():
    torch.manual_seed(2)
    head = torch.nn.Linear(64, 2048, bias=False)
    hidden = torch.randn(16, 64, requires_grad=True)
    t = torch.randint(0, 2048, (16,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        lo = head_nll(hidden, head, t, chunk=512)
    lo.sum().backward()
    assert lo.dtype == torch.float32 and hidden.grad.dtype == torch.float32
    assert head.weight.grad.dtype == torch.float32
    ref = _plain(hidden, head, t)
    assert (lo - ref).abs().max() < 0.1  # bf16 products, fp32 softmax


def test_chunk_width_stays_within_budget():
    assert vocab_chunk(10, 262144) == 262144  # a few positions: the whole vocabulary at once
    w = vocab_chunk(4096, 262144)
    assert w * 4096 <= 1 << 25 and w % 256 == 0
    assert vocab_chunk(10**9, 1000) == 256


@pytest.mark.parametrize("bias", [False, True])
def test_kept_logits_give_the_recomputed_gradients_bit_for_bit(bias, monkeypatch):
    """One small chunk keeps its forward logits for the backward (lm_head.KEEP_ELEMENTS) instead of recomputing
    the same product: values and gradients identical to the recomputing path, and a second backward
    (retain_graph) sees the kept logits unchanged."""
    import harness.training.lm_head as L

    torch.manual_seed(0)
    head = torch.nn.Linear(32, 300, bias=bias)
    hidden = torch.randn(21, 32, requires_grad=True)
    targets = torch.randint(0, 300, (21,))
    g = torch.rand(21)
    kept = _grads(head_nll, hidden, head, targets, g)
    monkeypatch.setattr(L, "KEEP_ELEMENTS", 0)  # recompute, as for a large chunk
    recomputed = _grads(head_nll, hidden, head, targets, g)
    for a, b in zip([kept[0], kept[1], *kept[2]], [recomputed[0], recomputed[1], *recomputed[2]]):
        assert torch.equal(a, b)
    monkeypatch.setattr(L, "KEEP_ELEMENTS", 1 << 22)
    out = head_nll(hidden, head, targets)
    first = torch.autograd.grad((out * g).sum(), hidden, retain_graph=True)[0]
    assert torch.equal(torch.autograd.grad((out * g).sum(), hidden)[0], first)
