"""Template handling: content located by character offsets; templates that hide or rewrite turns fail loudly."""

import numpy as np
import pytest

from harness.data import tokenize_conversation
from harness.data.templates import CHATML, resolve_template
from harness.data.tokenize import Segment
from harness.errors import DataError, TemplateError

MSGS = [{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "4."},
        {"role": "user", "content": "And 3+3?"}, {"role": "assistant", "content": "6."}]

# A reasoning-style template that drops earlier assistant turns: the prompt is then not a prefix.
DROPS_HISTORY = (
    "{% for m in messages %}{% if m['role'] == 'assistant' and not loop.last %}"
    "{{ '<|im_start|>assistant\n<|im_end|>\n' }}{% else %}"
    "{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}{% endif %}{% endfor %}"
)
UPPER = "{% for m in messages %}{{ m['role'] + ': ' + m['content'] | upper + '\n' }}{% endfor %}"
TRIM = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] | trim + '<|im_end|>\n' }}"
        "{% endfor %}")
NO_EOT = "{% for m in messages %}{{ m['role'] + ': ' + m['content'] + '\n' }}{% endfor %}"


def test_template_that_drops_earlier_turns_is_an_error(chatml_tok):
    with pytest.raises(TemplateError, match="does not render message 1 \\(assistant\\) verbatim") as info:
        tokenize_conversation(MSGS, chatml_tok, chat_template=DROPS_HISTORY, source="d.jsonl:7")
    assert "d.jsonl:7" in str(info.value) and "fix:" in str(info.value)


def test_template_that_rewrites_content_is_an_error(chatml_tok):
    with pytest.raises(TemplateError, match="verbatim"):
        tokenize_conversation(MSGS, chatml_tok, chat_template=UPPER)


def test_trimming_template_is_handled(chatml_tok):
    msgs = [{"role": "user", "content": "  hi  "}, {"role": "assistant", "content": " 4. "}]
    t = tokenize_conversation(msgs, chatml_tok, chat_template=TRIM)
    resp = t.input_ids[np.isin(t.segments, [Segment.ASSISTANT])].tolist()
    assert chatml_tok.decode(resp) == "4."


def test_template_without_end_marker_is_counted(chatml_tok):
    t = tokenize_conversation(MSGS, chatml_tok, chat_template=NO_EOT)
    assert t.no_eot_turns == 2 and not (t.segments == Segment.EOT).any()
    t = tokenize_conversation(MSGS, chatml_tok, chat_template=NO_EOT, eot="\n")
    assert t.no_eot_turns == 0 and (t.segments == Segment.EOT).sum() == 2


def test_tokenizer_without_template(chatml_tok):
    import copy

    tok = copy.deepcopy(chatml_tok)
    tok.chat_template = None
    with pytest.raises(TemplateError, match="has no chat template") as info:
        tokenize_conversation(MSGS, tok)
    assert "chatml" in str(info.value)
    assert tokenize_conversation(MSGS, tok, chat_template=resolve_template("chatml")).text.startswith("<|im_start|>")


def test_resolve_template(tmp_path):
    assert resolve_template("chatml") == CHATML and resolve_template(None) is None
    p = tmp_path / "t.jinja"
    p.write_text(NO_EOT)
    assert resolve_template(str(p)) == NO_EOT
    with pytest.raises(TemplateError, match="unknown chat template 'chatm'"):
        resolve_template("chatm")


def test_truncation_policies(chatml_tok):
    full = tokenize_conversation(MSGS, chatml_tok)
    right = tokenize_conversation(MSGS, chatml_tok, max_length=10, truncation="right")
    left = tokenize_conversation(MSGS, chatml_tok, max_length=10, truncation="left")
    assert right.input_ids.tolist() == full.input_ids[:10].tolist() and right.truncated == len(full) - 10
    assert left.input_ids.tolist() == full.input_ids[-10:].tolist()
    assert tokenize_conversation(MSGS, chatml_tok, max_length=10, truncation="drop") is None
    with pytest.raises(DataError, match="unknown truncation policy"):
        tokenize_conversation(MSGS, chatml_tok, truncation="middle")


def test_merge_policy_never_cuts_the_response(plain_tok):
    """Under boundary=merge every character of every assistant content is inside a supervised token."""
    from harness.masking import apply_regime

    msgs = [{"role": "system", "content": "S."}, *MSGS]
    t = tokenize_conversation(msgs, plain_tok, boundary="merge")
    w = apply_regime(t, "prompt_masked").weights
    covered = np.zeros(len(t.text), bool)
    for (s, e), wt in zip(t.offsets.tolist(), w):
        if wt > 0:
            covered[s:e] = True
    for m in msgs:
        if m["role"] == "assistant":
            start = t.text.index(m["content"] + plain_tok.eos_token)
            assert covered[start:start + len(m["content"])].all()


def test_hub_dataset_offline_is_a_clear_error():
    from harness.data import load_conversations

    with pytest.raises(DataError, match="could not load hub dataset 'nobody/nothing'") as info:
        load_conversations("nobody/nothing")
    assert "fix:" in str(info.value)
