"""The seed chapter's worked example must hold in our code: 2 of 7 tokens supervised, loss 2.4545 (4.86 unmasked)."""

import math

import numpy as np
import torch

from harness.data.tokenize import Segment, Tokenized
from harness.masking import apply_regime
from harness.training.loss import sft_loss

IDS = [101, 234, 567, 8, 9, 42, 99]  # "User:", " 2", "+", "2", "?" | "4", "."
SEGS = [Segment.USER] * 5 + [Segment.ASSISTANT] * 2
VOCAB = 600


def _tokenized(ids, segs):
    n = len(ids)
    return Tokenized(np.array(ids, np.int64), np.array(segs, np.int8), np.zeros(n, np.int16),
                     np.zeros((n, 2), np.int32), "", ("user", "assistant"))


def _logits_for(next_probs: dict[int, tuple[int, float]], T: int) -> torch.Tensor:
    """Logits whose softmax gives probability p to token id at position t (predicting t+1)."""
    logits = torch.full((1, T, VOCAB), 0.0, dtype=torch.float64)
    for t, (tok, p) in next_probs.items():
        probs = torch.full((VOCAB,), (1 - p) / (VOCAB - 1), dtype=torch.float64)
        probs[tok] = p
        logits[0, t] = probs.log()
    return logits


def test_labels_of_the_seven_token_example():
    m = apply_regime(_tokenized(IDS, SEGS), "prompt_masked")
    assert m.labels.tolist() == [-100, -100, -100, -100, -100, 42, 99]
    assert m.n_supervised == 2 and len(m.labels) == 7


def test_masked_loss_is_2_4545():
    m = apply_regime(_tokenized(IDS, SEGS), "prompt_masked")
    # position 4 predicts token 5 (id 42) with p=0.018; position 5 predicts token 6 (id 99) with p=0.41
    logits = _logits_for({4: (42, 0.018), 5: (99, 0.41)}, 7)
    loss = sft_loss(logits, torch.tensor([m.labels]), torch.tensor([m.weights]))
    assert round(loss.item(), 4) == 2.4545
    assert math.isclose(loss.item(), (-math.log(0.018) - math.log(0.41)) / 2, rel_tol=1e-12)


def test_unmasked_loss_is_4_86():
    # The seed averages 7 NLLs, so every one of the 7 tokens must be predicted: put a BOS in front.
    nll = [6.1, 5.3, 9.7, 4.2, 3.8, 4.017, 0.892]
    ids = [1] + IDS
    t = _tokenized(ids, [Segment.TEMPLATE] + SEGS)
    m = apply_regime(t, "full")
    assert m.n_supervised == 7
    logits = _logits_for({i: (ids[i + 1], math.exp(-nll[i])) for i in range(7)}, 8)
    loss = sft_loss(logits, torch.tensor([m.labels]), torch.tensor([m.weights]))
    assert round(loss.item(), 2) == 4.86
    # and prompt_weight with lambda=1 is numerically the same loss
    mw = apply_regime(t, "prompt_weight", prompt_weight=1.0)
    assert sft_loss(logits, torch.tensor([mw.labels]), torch.tensor([mw.weights])).item() == loss.item()
