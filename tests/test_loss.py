"""Loss normalisation: accumulation over micro-batches equals one big batch; zero supervision is an error."""

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from harness.errors import SupervisionError
from harness.training.loss import loss_denominator, sft_loss

torch.manual_seed(0)
V = 50


def _model():
    cfg = LlamaConfig(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    torch.manual_seed(0)
    return LlamaForCausalLM(cfg).double()


def _examples():
    """Four examples with very unequal response lengths (1, 3, 20 and 40 supervised tokens)."""
    g = torch.Generator().manual_seed(1)
    out = []
    for prompt_len, resp_len in [(30, 1), (20, 3), (10, 20), (5, 40)]:
        ids = torch.randint(0, V, (prompt_len + resp_len,), generator=g)
        labels = ids.clone()
        labels[:prompt_len] = -100
        w = (labels != -100).double() * torch.rand(len(ids), generator=g, dtype=torch.float64).add(0.5)
        out.append((ids, labels, w))
    return out


def _pad(batch):
    T = max(len(i) for i, _, _ in batch)
    ids = torch.zeros(len(batch), T, dtype=torch.long)
    lab = torch.full((len(batch), T), -100)
    w = torch.zeros(len(batch), T, dtype=torch.float64)
    att = torch.zeros(len(batch), T, dtype=torch.long)
    for r, (i, l, ww) in enumerate(batch):
        ids[r, :len(i)], lab[r, :len(i)], w[r, :len(i)], att[r, :len(i)] = i, l, ww, 1
    return ids, lab, w, att


def _grads(model):
    return torch.cat([p.grad.flatten() for p in model.parameters()])


@pytest.mark.parametrize("normalization", ["token", "sequence"])
@pytest.mark.parametrize("weighted", [False, True])
def test_accumulated_micro_batches_equal_one_batch(normalization, weighted):
    exs = _examples()
    model = _model()
    ids, lab, w, att = _pad(exs)
    ww = w if weighted else None
    big = sft_loss(model(input_ids=ids, attention_mask=att).logits, lab, ww, normalization)
    big.backward()
    g_big = _grads(model)
    model.zero_grad()

    micro = [_pad([e]) for e in exs]
    denom = sum(loss_denominator(l, w_ if weighted else None, normalization) for _, l, w_, _ in micro)
    total = 0.0
    for i, l, w_, a in micro:
        loss = sft_loss(model(input_ids=i, attention_mask=a).logits, l, w_ if weighted else None, normalization,
                        denominator=denom)
        loss.backward()
        total += loss.item()
    assert abs(total - big.item()) < 1e-6
    assert torch.allclose(_grads(model), g_big, atol=1e-6, rtol=0)


def test_naive_mean_of_means_differs():
    """Sanity: the test above is sensitive; averaging per-micro-batch means is the known bug."""
    exs = _examples()
    model = _model()
    with torch.no_grad():
        ids, lab, w, att = _pad(exs)
        big = sft_loss(model(input_ids=ids, attention_mask=att).logits, lab).item()
        naive = sum(sft_loss(model(input_ids=i, attention_mask=a).logits, l).item()
                    for i, l, _, a in (_pad([e]) for e in exs)) / len(exs)
    assert abs(naive - big) > 1e-3


def test_sequence_normalisation_with_packed_seq_ids():
    """Two examples packed in one row with seq_ids == the same two examples as separate rows."""
    exs = _examples()[:2]
    model = _model()
    with torch.no_grad():
        ids, lab, w, att = _pad(exs)
        separate = sft_loss(model(input_ids=ids, attention_mask=att).logits, lab, normalization="sequence").item()
        logits = [model(input_ids=e[0][None]).logits for e in exs]  # each alone (what isolation gives)
        packed_logits = torch.cat(logits, dim=1)
        packed_labels = torch.cat([e[1] for e in exs])[None]
        packed_labels[0, len(exs[0][0])] = -100  # position 0 of the 2nd example is never predicted
        seq = torch.cat([torch.full((len(e[0]),), k) for k, e in enumerate(exs)])[None]
        packed = sft_loss(packed_logits, packed_labels, normalization="sequence", seq_ids=seq).item()
    assert abs(packed - separate) < 1e-9


def test_zero_supervised_tokens_is_an_error():
    logits = torch.randn(2, 5, V)
    with pytest.raises(SupervisionError, match="zero supervised tokens"):
        sft_loss(logits, torch.full((2, 5), -100))
    with pytest.raises(SupervisionError):
        sft_loss(logits, torch.full((2, 5), -100), normalization="sequence")
