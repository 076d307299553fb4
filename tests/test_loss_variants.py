"""Weighted Instruction Tuning (regime `weighted`, `train.normalization: nonzero`) and DFT (`train.loss: dft`)
on the one tokenization: the special cases are exactly the older regimes, accumulation equals one big batch,
and DFT's autograd gradient is the closed form."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.config import TrainConfig
from harness.config.schema import RegimeConfig
from harness.data.tokenize import Segment, Tokenized
from harness.errors import ConfigError
from harness.masking import REGIME_OPTIONS, apply_all, apply_regime, check_regime, regime_options
from harness.training.loss import (LOSSES, NORMALIZATIONS, loss_denominator, per_token_nll, sft_loss, token_loss,
                                   token_weights)
from tests.test_loss import _grads
from tests.test_loss import _pad as _pad_with_mask

V = 7
PROMPT_ROLES = ("system", "user", "tool")
ROLE_SEG = {"system": Segment.SYSTEM, "user": Segment.USER, "tool": Segment.TOOL, "assistant": Segment.ASSISTANT}


def _tokenized(roles, lengths, eots, tail) -> Tokenized:
    """A conversation as segments: per message a template header, its content and (assistant) an end-of-turn
    token; `tail` template tokens at the end. Token ids are arbitrary (regimes read segments only)."""
    segs, turns = [], []
    for k, (role, n, eot) in enumerate(zip(roles, lengths, eots)):
        segs += [Segment.TEMPLATE] + [ROLE_SEG[role]] * n
        turns += [k] * (n + 1)
        if role == "assistant" and eot:
            segs.append(Segment.EOT)
            turns.append(k)
    segs += [Segment.TEMPLATE] * tail
    turns += [len(roles) - 1] * tail
    T = len(segs)
    ids = np.random.default_rng(T).integers(0, V, T)
    return Tokenized(ids.astype(np.int64), np.array(segs, np.int8), np.array(turns, np.int16),
                     np.zeros((T, 2), np.int32), "", tuple(roles))


@st.composite
def conversations(draw) -> Tokenized:
    roles = ["system"] if draw(st.booleans()) else []
    for _ in range(draw(st.integers(1, 3))):
        roles.append(draw(st.sampled_from(["user", "user", "tool"])))
        roles.append("assistant")
    lengths = [draw(st.integers(1 if r == "assistant" else 0, 6)) for r in roles]
    eots = [draw(st.booleans()) for _ in roles]
    return _tokenized(roles, lengths, eots, draw(st.integers(0, 2)))


def _loss(t: Tokenized, m, logits: torch.Tensor, normalization: str, loss: str = "nll") -> torch.Tensor:
    return sft_loss(logits, torch.from_numpy(m.labels)[None], torch.from_numpy(m.weights)[None], normalization,
                    loss=loss)


_weights = st.sampled_from([0.0, 0.01, 0.1, 0.25, 0.5, 1.0])


@settings(max_examples=50, deadline=None)
@given(t=conversations(), turns=st.sampled_from(["all", "last"]), eot=st.booleans(), lp=_weights, lr=_weights,
       seed=st.integers(0, 2**16))
def test_wit_special_cases_are_the_older_regimes(t, turns, eot, lp, lr, seed):
    pm = apply_regime(t, "prompt_masked", turns=turns, eot=eot)
    wit01 = apply_regime(t, "weighted", prompt_weight=0.0, response_weight=1.0, turns=turns, eot=eot)
    assert np.array_equal(wit01.weights, pm.weights) and np.array_equal(wit01.labels, pm.labels)
    # (1, 1) is full whatever turns/eot say; (lambda, 1) is prompt_weight
    fu = apply_regime(t, "full")
    wit11 = apply_regime(t, "weighted", prompt_weight=1.0, response_weight=1.0, turns=turns, eot=eot)
    assert np.array_equal(wit11.weights, fu.weights) and np.array_equal(wit11.labels, fu.labels)
    pw = apply_regime(t, "prompt_weight", prompt_weight=lp, turns=turns, eot=eot)
    assert np.array_equal(apply_regime(t, "weighted", prompt_weight=lp, turns=turns, eot=eot).weights, pw.weights)
    # general (lp, lr): lr on the response tokens prompt_masked picks, lp on every other token but position 0
    if lp or lr:
        w = apply_regime(t, "weighted", prompt_weight=lp, response_weight=lr, turns=turns, eot=eot).weights
        resp = pm.weights > 0
        assert w[0] == 0 and (w[1:][resp[1:]] == np.float32(lr)).all() and (w[1:][~resp[1:]] == np.float32(lp)).all()
    # the same loss: WIT (0, 1) with the paper's normalisation == prompt_masked with the token normalisation
    logits = torch.randn(1, len(t), V, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    ref = _loss(t, pm, logits, "token")
    for norm in ("nonzero", "token"):
        assert _loss(t, wit01, logits, norm).item() == ref.item()
        assert _loss(t, wit11, logits, norm).item() == _loss(t, fu, logits, "token").item()


def test_wit_on_a_real_chat_template(chatml_tok):
    from harness.data import tokenize_conversation

    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2+2?"},
            {"role": "assistant", "content": "4."}]
    t = tokenize_conversation(msgs, chatml_tok)
    w = apply_regime(t, "weighted", prompt_weight=0.2, response_weight=0.8).weights
    resp = np.isin(t.segments, [Segment.ASSISTANT, Segment.EOT])
    assert (w[resp] == np.float32(0.8)).all() and (w[1:][~resp[1:]] == np.float32(0.2)).all()  # template too
    data = apply_all([t], "weighted", {"prompt_weight": 0.0, "response_weight": 0.5})
    assert data.stats()["supervised_tokens"] == int(resp.sum())


def test_wit_options_and_checks():
    assert REGIME_OPTIONS["weighted"] == ("prompt_weight", "response_weight", "turns", "eot")
    opts = regime_options(RegimeConfig(name="weighted", prompt_weight=0.1))
    assert opts == {"prompt_weight": 0.1, "response_weight": 1.0, "turns": "all", "eot": True}
    with pytest.raises(ConfigError, match="has no option 'response_weight'"):
        check_regime("prompt_weight", {"response_weight": 0.5})
    for bad in (1.5, -0.1, float("nan")):
        with pytest.raises(ConfigError, match=r"\[0, 1\]"):
            RegimeConfig(response_weight=bad)
    t = _tokenized(["user", "assistant"], [2, 2], [True, True], 0)
    with pytest.raises(ConfigError, match="supervises no token"):
        apply_regime(t, "weighted", prompt_weight=0.0, response_weight=0.0)
    with pytest.raises(ConfigError, match=r"response weight must be in \[0, 1\]"):
        apply_regime(t, "weighted", response_weight=2.0)
    # lambda_r = 0, lambda_p > 0: only the prompt side (template included) is trained
    w = apply_regime(t, "weighted", prompt_weight=0.5, response_weight=0.0).weights
    assert w.tolist() == [0, 0.5, 0.5, 0.5, 0, 0, 0]


def test_train_config_choices_match_the_loss_module():
    for n in NORMALIZATIONS:
        TrainConfig(normalization=n)
    for k in LOSSES:
        TrainConfig(loss=k)
    with pytest.raises(ConfigError, match="train.normalization"):
        TrainConfig(normalization="count")
    with pytest.raises(ConfigError, match="train.loss"):
        TrainConfig(loss="asft")
    with pytest.raises(ValueError, match="loss must be one of"):
        token_loss(torch.zeros(2), "asft")


# ------------------------------------------------------------------------------------------ nonzero normalisation


def _logits_with_probs(targets: list[int], probs: list[float]) -> torch.Tensor:
    """[1, T+1, V] logits: position t gives probability probs[t] to targets[t] (the rest uniform)."""
    T = len(targets)
    lg = torch.zeros(1, T + 1, V, dtype=torch.float64)
    for t, (y, p) in enumerate(zip(targets, probs)):
        row = torch.full((V,), (1 - p) / (V - 1), dtype=torch.float64)
        row[y] = p
        lg[0, t] = row.log()
    return lg


def test_nonzero_normalisation_by_hand():
    # targets are positions 1..4; position 3 is -100 even though its weight is not 0: it counts nowhere
    labels = torch.tensor([[-100, 1, 2, -100, 4]])
    weights = torch.tensor([[0.0, 0.5, 1.0, 0.7, 0.25]], dtype=torch.float64)
    probs = [0.5, 0.25, 0.9, 0.125]  # for targets 1, 2, (3), 4
    logits = _logits_with_probs([1, 2, 3, 4], probs)
    ln2 = math.log(2)
    expected = (0.5 * ln2 + 1.0 * 2 * ln2 + 0.25 * 3 * ln2) / 3  # three targets of non-zero weight
    assert loss_denominator(labels, weights, "nonzero").item() == 3
    assert loss_denominator(labels, weights, "token").item() == 1.75
    assert math.isclose(sft_loss(logits, labels, weights, "nonzero").item(), expected, rel_tol=1e-12)
    assert math.isclose(sft_loss(logits, labels, weights, "token").item(), expected * 3 / 1.75, rel_tol=1e-12)


def _examples():
    """Four WIT-weighted examples with very unequal prompt/response lengths (lambda_p 0.25, lambda_r 0.75; weights
    exact in float32, the weights' dtype in the loss, so sums do not depend on their order)."""
    g = torch.Generator().manual_seed(1)
    out = []
    for prompt_len, resp_len in [(30, 1), (20, 3), (10, 20), (5, 40)]:
        ids = torch.randint(0, V, (prompt_len + resp_len,), generator=g)
        w = torch.cat([torch.full((prompt_len,), 0.25), torch.full((resp_len,), 0.75)]).double()
        w[0] = 0
        labels = torch.where(w > 0, ids, torch.full_like(ids, -100))
        out.append((ids, labels, w))
    return out


def _pad(batch):
    return _pad_with_mask(batch)[:3]  # right-padded ids, labels, weights (the attention mask is not needed here)


class _Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.emb = torch.nn.Embedding(V, 8).double()
        self.mix = torch.nn.Linear(16, V).double()

    def forward(self, ids):  # a causal bigram-plus-prefix-mean model: cheap, and every position sees the past
        e = self.emb(ids)
        prefix = e.cumsum(1) / torch.arange(1, ids.shape[1] + 1, dtype=e.dtype)[None, :, None]
        return self.mix(torch.cat([e, prefix], -1))


@pytest.mark.parametrize("normalization", NORMALIZATIONS)
@pytest.mark.parametrize("loss", LOSSES)
def test_accumulation_equals_one_batch_and_the_engine_composition(normalization, loss):
    exs = _examples()
    model = _Tiny()
    ids, lab, w = _pad(exs)
    big = sft_loss(model(ids), lab, w, normalization, loss=loss)
    big.backward()
    g_big = _grads(model)
    model.zero_grad()
    micro = [_pad([e]) for e in exs]
    denom = sum(loss_denominator(l, w_, normalization) for _, l, w_ in micro)
    total = 0.0
    for i, l, w_ in micro:
        part = sft_loss(model(i), l, w_, normalization, denominator=denom, loss=loss)
        part.backward()
        total += part.item()
    assert abs(total - big.item()) < 1e-12
    assert torch.allclose(_grads(model), g_big, atol=1e-12, rtol=0)
    # what the engine computes from token_weights + loss_denominator + token_loss is sft_loss (exactly, but for
    # `sequence`, whose token_weights are float32 per-example shares: equal to float32 precision)
    with torch.no_grad():
        eff = token_weights(lab, w, normalization)
        sup = eff > 0
        nll_sup = per_token_nll(model(ids), lab)[sup]
        engine = (eff[sup] * token_loss(nll_sup, loss)).sum() / loss_denominator(lab, w, normalization).double()
        assert math.isclose(engine.item(), big.item(), rel_tol=1e-6 if normalization == "sequence" else 1e-12)


def test_per_micro_batch_nonzero_means_differ():
    """Sanity: the accumulation test is sensitive (each micro-batch divided by its own count is the known bug)."""
    exs = _examples()
    model = _Tiny()
    with torch.no_grad():
        ids, lab, w = _pad(exs)
        big = sft_loss(model(ids), lab, w, "nonzero").item()
        naive = sum(sft_loss(model(i), l, w_, "nonzero").item() for i, l, w_ in (_pad([e]) for e in exs)) / len(exs)
    assert abs(naive - big) > 1e-3


# ------------------------------------------------------------------------------------------ DFT


@pytest.mark.parametrize("normalization", ["token", "nonzero"])
def test_dft_gradient_is_the_closed_form(normalization):
    g = torch.Generator().manual_seed(3)
    Vs = 3
    logits = torch.randn(1, 5, Vs, dtype=torch.float64, generator=g).requires_grad_(True)
    labels = torch.tensor([[-100, 2, 0, -100, 1]])
    weights = torch.tensor([[0.0, 0.375, 1.0, 0.5, 0.75]], dtype=torch.float64)  # exact in float32
    loss = sft_loss(logits, labels, weights, normalization, loss="dft")
    loss.backward()
    denom = loss_denominator(labels, weights, normalization).double()
    expected_grad = torch.zeros_like(logits)
    expected_value = torch.zeros((), dtype=torch.float64)
    with torch.no_grad():
        for t in range(4):  # position t predicts label t+1
            y = int(labels[0, t + 1])
            if y == -100:
                continue
            probs = torch.softmax(logits[0, t], -1)
            p_y, w = probs[y], weights[0, t + 1]
            onehot = torch.nn.functional.one_hot(torch.tensor(y), Vs).double()
            expected_grad[0, t] = w * p_y * (probs - onehot) / denom
            expected_value += w * p_y * -torch.log(p_y) / denom
    assert torch.allclose(logits.grad, expected_grad, atol=1e-12, rtol=0)
    assert abs(loss.item() - expected_value.item()) < 1e-12
    # the stop-gradient matters: differentiating through p (the loss -p log p) gives another gradient
    lg2 = logits.detach().clone().requires_grad_(True)
    nll = per_token_nll(lg2, labels)
    ((weights[:, 1:] * torch.exp(-nll) * nll).sum() / denom).backward()
    assert not torch.allclose(lg2.grad, expected_grad, atol=1e-6)


def test_dft_is_nll_when_the_model_is_certain_and_scaled_otherwise():
    nll = torch.tensor([0.0, math.log(2), math.log(4)], dtype=torch.float64)
    assert torch.allclose(token_loss(nll, "dft"), nll * torch.tensor([1.0, 0.5, 0.25], dtype=torch.float64))
    # uniform logits over V: the DFT loss is the NLL / V (p_y = 1/V for every target)
    logits = torch.zeros(1, 4, V, dtype=torch.float64)
    labels = torch.tensor([[-100, 1, 2, 3]])
    assert math.isclose(sft_loss(logits, labels, loss="dft").item(), math.log(V) / V, rel_tol=1e-12)


# ------------------------------------------------------------------------------------------ nll is unchanged


@pytest.mark.parametrize("normalization", ["token", "sequence"])
def test_nll_kind_leaves_every_existing_loss_unchanged(normalization):
    exs = _examples()
    model = _Tiny()
    ids, lab, w = _pad(exs)
    with torch.no_grad():
        logits = model(ids)
        nll = per_token_nll(logits, lab)
        assert token_loss(nll, "nll") is nll
        for weights in (None, w):
            default = sft_loss(logits, lab, weights, normalization)
            assert torch.equal(sft_loss(logits, lab, weights, normalization, loss="nll"), default)
            ww = (lab[:, 1:] != -100).double() if weights is None else weights[:, 1:] * (lab[:, 1:] != -100)
            if normalization == "token":  # the formula as it was: sum of weight x NLL / sum of weights
                ref = (ww * nll).sum() / ww.sum()
            else:  # mean per example, then over the examples
                ref = ((ww * nll).sum(-1) / ww.sum(-1)).mean()
            assert math.isclose(default.item(), ref.item(), rel_tol=1e-12)


@pytest.mark.parametrize("overrides", [["train.loss=dft"], ["train.normalization=nonzero", "regime.name=weighted",
                                                            "regime.prompt_weight=0.25", "regime.response_weight=0.75"]])
def test_engine_step_trains_the_configured_loss(tmp_path, overrides):
    """Engine.step (chunked head on supervised positions) reports exactly sft_loss on full logits for the
    configured loss and normalisation, and the fixed-mask metric stays the plain response NLL."""
    from harness.grid import load_experiment
    from harness.training.loop import setup
    from tests.tiny import build_tiny

    exp = build_tiny(tmp_path, n_train=16)
    cfg = load_experiment(exp, ["model.dtype=float64", *overrides]).runs[0].config
    torch.set_num_threads(1)
    s = setup(cfg)
    batches = s.batches(0)
    tc = cfg.train
    denom = sum(loss_denominator(b.labels, b.weights, tc.normalization, b.seq_ids) for b in batches)
    with torch.no_grad():
        want = sum(float(sft_loss(s.model(input_ids=b.input_ids, position_ids=b.position_ids,
                                          attention_mask=b.attention_mask, use_cache=False).logits, b.labels,
                                  b.weights, tc.normalization, denominator=denom, seq_ids=b.seq_ids, loss=tc.loss))
                   for b in batches)
        plain = sum(float(sft_loss(s.model(input_ids=b.input_ids, position_ids=b.position_ids,
                                           attention_mask=b.attention_mask, use_cache=False).logits, b.labels,
                                   b.weights, tc.normalization, denominator=denom, seq_ids=b.seq_ids))
                    for b in batches)
    m, _ = s.engine.step(batches, metrics=True, step=1)
    assert m.loss == pytest.approx(want, rel=1e-9, abs=1e-12)
    if tc.loss == "dft":
        assert m.loss < plain  # p < 1 scales every token's NLL down
        assert m.loss_response > m.loss  # the fixed-mask metric is the plain NLL, not DFT's scaled one
    assert m.loss_response is not None and m.loss_response != pytest.approx(m.loss)
