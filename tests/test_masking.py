"""Regimes over the one tokenization: exactness on real BPE merges, and hypothesis property tests."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harness.data import tokenize_conversation
from harness.data.tokenize import Segment
from harness.errors import ConfigError
from harness.masking import REGIMES, apply_regime, mask_hash, register_regime

SYSTEM = {"role": "system", "content": "You are helpful."}
MULTI = [SYSTEM,
         {"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "4."},
         {"role": "user", "content": "What is the capital of France?"},
         {"role": "assistant", "content": "Paris is the capital of France."}]


def supervised_text(tok, t, m) -> str:
    return tok.decode([i for i, w in zip(t.input_ids.tolist(), m.weights) if w > 0],
                      skip_special_tokens=False, clean_up_tokenization_spaces=False)


def eot_of(tok) -> str:
    return "<|im_end|>" if "im_start" in tok.chat_template else tok.eos_token


def expected_response(tok, messages, turns="all") -> str:
    asst = [m["content"] for m in messages if m["role"] == "assistant"]
    if turns == "last":
        asst = asst[-1:]
    return "".join(a + eot_of(tok) for a in asst)


@pytest.mark.parametrize("tokname", ["chatml_tok", "plain_tok"])
@pytest.mark.parametrize("turns", ["all", "last"])
def test_exact_response_tokens_multi_turn_with_system(tokname, turns, request):
    tok = request.getfixturevalue(tokname)
    t = tokenize_conversation(MULTI, tok)
    m = apply_regime(t, "prompt_masked", turns=turns)
    assert supervised_text(tok, t, m) == expected_response(tok, MULTI, turns)
    # the prompt-only control covers the system + user contents (position 0 is never predicted; under the
    # plain template BPE merges 'User: ' into the user text, so those tokens count as prompt by the rule)
    p = apply_regime(t, "prompt_only")
    text = supervised_text(tok, t, p)
    for x in MULTI:
        if x["role"] == "user":
            assert x["content"] in text
    if tokname == "chatml_tok":
        assert text == "".join(x["content"] for x in MULTI if x["role"] != "assistant")


def test_plain_template_has_merges_across_the_boundary(plain_tok):
    """The test tokenizer really merges across the prompt/response boundary (else the test proves nothing)."""
    t = tokenize_conversation(MULTI, plain_tok, boundary="merge")
    assert t.boundary == "merged"
    pieces = plain_tok.convert_ids_to_tokens(t.input_ids.tolist())
    joined = [plain_tok.convert_tokens_to_string([p]) for p in pieces]
    assert any("Assistant: 4" in p or ": 4" in p for p in joined), joined


def test_split_policy_matches_inference_tokenization(plain_tok):
    """Under `split` the prompt tokens equal the tokenization of the generation prompt alone."""
    msgs = MULTI[:3]
    t = tokenize_conversation(msgs, plain_tok, boundary="split")
    assert t.boundary == "split"
    prompt = plain_tok.apply_chat_template(msgs[:2], tokenize=False, add_generation_prompt=True)
    prompt_ids = plain_tok(prompt, add_special_tokens=False)["input_ids"]
    first_resp = int(np.flatnonzero(t.segments == Segment.ASSISTANT)[0])
    assert t.input_ids[:first_resp].tolist() == prompt_ids


def test_merge_policy_rule(plain_tok):
    """Documented rule: a straddling token takes the highest-priority segment among its characters
    (assistant > end-of-turn > prompt > template), so the response is never cut."""
    t = tokenize_conversation(MULTI, plain_tok, boundary="merge")
    m = apply_regime(t, "prompt_masked")
    sup = supervised_text(plain_tok, t, m)
    for a in ("4.", "Paris is the capital of France."):
        assert a in sup
    for i in range(len(t)):
        s, e = t.offsets[i]
        chars = t.text[s:e]
        if "4." in chars and ":" in chars:  # straddles template ': ' and the response '4.'
            assert t.segments[i] == Segment.ASSISTANT


def test_regime_policies_on_template_and_eot(chatml_tok):
    t = tokenize_conversation(MULTI, chatml_tok)
    pm = apply_regime(t, "prompt_masked")
    no_eot = apply_regime(t, "prompt_masked", eot=False)
    assert supervised_text(chatml_tok, t, no_eot) == "4.Paris is the capital of France."
    assert pm.n_supervised - no_eot.n_supervised == 2  # two <|im_end|> tokens
    tmpl = apply_regime(t, "prompt_only", template=True)
    assert tmpl.n_supervised == int((np.isin(t.segments[1:], [0, 1, 2, 5])).sum())
    assert apply_regime(t, "full").weights[0] == 0 and apply_regime(t, "full").n_supervised == len(t) - 1


def test_unknown_regime_and_option():
    with pytest.raises(ConfigError, match="did you mean 'prompt_masked'"):
        apply_regime(None, "prompt_maskd")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="has no option 'turn'"):
        apply_regime(None, "prompt_masked", turn="all")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"\[0, 1\]"):
        from harness.data.tokenize import Tokenized
        t = Tokenized(np.zeros(3, np.int64), np.zeros(3, np.int8), np.zeros(3, np.int16), np.zeros((3, 2), np.int32),
                      "", ("user",))
        apply_regime(t, "prompt_weight", prompt_weight=1.5)


def test_register_a_regime(chatml_tok):
    @register_regime("assistant_first_token")
    def first(t):
        w = np.zeros(len(t), np.float32)
        w[int(np.flatnonzero(t.segments == Segment.ASSISTANT)[0])] = 1
        return w

    try:
        t = tokenize_conversation(MULTI, chatml_tok)
        assert apply_regime(t, "assistant_first_token").n_supervised == 1
    finally:
        REGIMES.pop("assistant_first_token")


# ------------------------------------------------------------------------------------------ properties

_text = st.text(alphabet=st.sampled_from(list("abcdefgh ijkl:?!.,0123456789+-=\nXYZ éü")), min_size=1, max_size=30)


@st.composite
def conversations(draw):
    msgs = []
    if draw(st.booleans()):
        msgs.append({"role": "system", "content": draw(_text)})
    for _ in range(draw(st.integers(1, 3))):
        msgs.append({"role": "user", "content": draw(_text)})
        msgs.append({"role": "assistant", "content": draw(_text.filter(lambda s: s.strip()))})
    return msgs


_settings = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.mark.parametrize("tokname", ["chatml_tok", "plain_tok"])
@_settings
@given(msgs=conversations())
def test_properties(tokname, msgs, request):
    tok = request.getfixturevalue(tokname)
    t = tokenize_conversation(msgs, tok)
    T = len(t)
    pm = apply_regime(t, "prompt_masked")
    po = apply_regime(t, "prompt_only")
    fu = apply_regime(t, "full")
    for m in (pm, po, fu):
        assert len(m.labels) == len(m.weights) == T
        assert ((m.labels != -100) == (m.weights > 0)).all()
    a, b = pm.weights > 0, po.weights > 0
    assert not (a & b).any(), "prompt_masked and prompt_only overlap"
    tmpl = t.segments == Segment.TEMPLATE
    union = a | b | tmpl
    assert union[1:].all() and (fu.weights[1:] > 0).all(), "union (+ template) is not the full sequence"
    # lambda = 0 / 1 are numerically prompt_masked / full
    assert np.array_equal(apply_regime(t, "prompt_weight", prompt_weight=0.0).weights, pm.weights)
    assert np.array_equal(apply_regime(t, "prompt_weight", prompt_weight=1.0).weights, fu.weights)
    # decoding the supervised tokens gives back exactly the assistant contents + end-of-turn tokens
    assert supervised_text(tok, t, pm) == expected_response(tok, msgs)
    last = apply_regime(t, "prompt_masked", turns="last")
    assert supervised_text(tok, t, last) == expected_response(tok, msgs, "last")
    # one tokenization: the tokens decode back to the rendered text
    assert tok.decode(t.input_ids.tolist(), skip_special_tokens=False, clean_up_tokenization_spaces=False) == t.text


def test_mask_hash_changes_with_the_mask(chatml_tok):
    t = tokenize_conversation(MULTI, chatml_tok)
    h1 = mask_hash([apply_regime(t, "prompt_masked")], [t.input_ids])
    h2 = mask_hash([apply_regime(t, "prompt_masked", turns="last")], [t.input_ids])
    assert h1 != h2 and h1 == mask_hash([apply_regime(t, "prompt_masked")], [t.input_ids])
