"""Tool calls and reasoning located and masked exactly under real templates and vocabularies.

Templates: the harness's Qwen3-style ``chatml_tools`` and Llama-3.1-style ``llama3_tools`` (written for the
harness), on Qwen's real 151k BPE (qwen_tok: the `real` extra) and the session's small BPE. Every data path
decodes the supervised tokens and compares them with the assistant text written out by hand."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from harness.data import Conversation, ConversationTokenizer, tokenize_conversation
from harness.data.agent_templates import CHATML_TOOLS, LLAMA3_TOOLS
from harness.data.tokenize import PROMPT_SEGMENTS, RESPONSE_SEGMENTS, Segment
from harness.errors import TemplateError
from harness.masking import apply_regime
from harness.parity import check_parity
from tests.conftest import train_bpe

CALL = {"type": "function", "id": "c1", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather now",
                                           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]
AGENT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Weather in Paris?"},
         {"role": "assistant", "content": "", "reasoning_content": "Need the tool.", "tool_calls": [CALL]},
         {"role": "tool", "tool_call_id": "c1", "content": "sunny, 21C"},
         {"role": "assistant", "content": "It is sunny.", "reasoning_content": "The tool says sunny."}]
CALL_TEXT = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'


def think(r: str) -> str:
    return f"<think>\n{r}\n</think>\n\n"


@pytest.fixture(scope="module")
def qwen_chatml(qwen_tok):
    tok = copy.deepcopy(qwen_tok)
    tok.chat_template = CHATML_TOOLS
    return tok


@pytest.fixture(scope="module")
def qwen_llama(qwen_tok):
    tok = copy.deepcopy(qwen_tok)
    tok.add_special_tokens({"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>",
                            "additional_special_tokens": ["<|start_header_id|>", "<|end_header_id|>"]})
    tok.chat_template = LLAMA3_TOOLS
    return tok


@pytest.fixture(scope="module")
def bpe_chatml():
    return train_bpe(template=CHATML_TOOLS)


def supervised(tok, t, **opts):
    m = apply_regime(t, "prompt_masked", **opts)
    return tok.decode(t.input_ids[m.weights > 0].tolist()), m


def check_never_prompt(t, m):
    """Tool results, user and system contents and template text are never in the loss under prompt_masked."""
    assert not (m.weights[np.isin(t.segments, [*PROMPT_SEGMENTS, Segment.TEMPLATE])] > 0).any()
    assert set(np.unique(t.segments[m.weights > 0])) <= set(RESPONSE_SEGMENTS)


@pytest.mark.parametrize("fixture", ["qwen_chatml", "bpe_chatml"])
def test_chatml_tools_trains_calls_and_final_reasoning(request, fixture):
    tok = request.getfixturevalue(fixture)
    t = tokenize_conversation(AGENT, tok, tools=TOOLS)
    got, m = supervised(tok, t)
    assert got == (think("Need the tool.") + CALL_TEXT + "<|im_end|>"
                   + think("The tool says sunny.") + "It is sunny.<|im_end|>")
    check_never_prompt(t, m)
    eot = tok.convert_tokens_to_ids("<|im_end|>")
    assert int((t.input_ids[m.weights > 0] == eot).sum()) == 2  # one end of turn per assistant turn
    assert tok.decode(t.input_ids[t.segments == Segment.TOOL].tolist()) == "sunny, 21C"
    assert tok.decode(t.input_ids[t.segments == Segment.TOOL_CALL].tolist()) == CALL_TEXT
    assert "get_weather" in tok.decode(t.input_ids[t.segments == Segment.TEMPLATE].tolist())  # the tools list
    # ".\n\n" is one Qwen token straddling the system content and the template: the prompt segment wins
    assert tok.decode(t.input_ids[t.segments == Segment.SYSTEM].tolist()).rstrip("\n") == "Be brief."


def test_options_mask_reasoning_and_tool_calls(qwen_chatml):
    t = tokenize_conversation(AGENT, qwen_chatml, tools=TOOLS)
    assert supervised(qwen_chatml, t, reasoning="mask")[0] == CALL_TEXT + "<|im_end|>It is sunny.<|im_end|>"
    assert supervised(qwen_chatml, t, tool_calls="mask")[0] == (
        think("Need the tool.") + "<|im_end|>" + think("The tool says sunny.") + "It is sunny.<|im_end|>")
    # masked parts become context: prompt_weight gives them lambda, like template text
    w = apply_regime(t, "prompt_weight", prompt_weight=0.25, reasoning="mask").weights
    assert set(np.round(w[t.segments == Segment.REASONING], 4)) == {0.25}
    assert set(w[t.segments == Segment.TOOL_CALL]) == {1.0}


def test_empty_reasoning_block_and_inline_think(qwen_chatml):
    msgs = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]
    t = tokenize_conversation(msgs, qwen_chatml)  # the template renders an empty block in the last turn
    assert qwen_chatml.decode(t.input_ids[t.segments == Segment.EMPTY_REASONING].tolist()) == think("")
    assert supervised(qwen_chatml, t)[0] == "Hello.<|im_end|>"  # default: the empty block is not trained
    assert supervised(qwen_chatml, t, empty_reasoning="train")[0] == think("") + "Hello.<|im_end|>"
    # inline <think> in the content goes to reasoning_content for a template that renders that field
    inline = [msgs[0], {"role": "assistant", "content": "<think>\nSay hi.\n</think>\n\nHello."}]
    t = tokenize_conversation(inline, qwen_chatml)
    assert supervised(qwen_chatml, t)[0] == think("Say hi.") + "Hello.<|im_end|>"
    assert supervised(qwen_chatml, t, reasoning="mask")[0] == "Hello.<|im_end|>"


def test_history_reasoning_dropped_one_render_vs_per_turn(qwen_chatml):
    """Qwen3-style: reasoning of turns before the last user query is not rendered. One render trains turn 1
    without it (counted; the parity check flags it); per_turn trains each turn with its own reasoning."""
    msgs = [{"role": "user", "content": "q1"}, {"role": "assistant", "content": "A1", "reasoning_content": "R1"},
            {"role": "user", "content": "q2"}, {"role": "assistant", "content": "A2", "reasoning_content": "R2"}]
    t = tokenize_conversation(msgs, qwen_chatml)
    assert t.meta["reasoning_dropped"] == 1
    assert supervised(qwen_chatml, t)[0] == "A1<|im_end|>" + think("R2") + "A2<|im_end|>"
    ct = ConversationTokenizer(qwen_chatml)
    conv = [Conversation(tuple(msgs), "d.jsonl:1")]
    bad = check_parity(conv, ct, "prompt_masked", template="chatml_tools")
    assert (bad.turns_checked, bad.mismatches) == (2, 1)
    issue = bad.issues[0]
    assert issue.turn == 1 and (issue.train, issue.inference) == ("A", "<th")  # Qwen BPE: "<th" "ink" ">" and "chatml_tools" in bad.describe()
    assert check_parity(conv, ct, "prompt_masked", {"multiturn": "per_turn"}).ok
    assert check_parity(conv, ct, "prompt_masked", {"turns": "last"}).ok
    from harness.data import per_turn
    from harness.data.prepare import tokenize_all

    examples, _ = tokenize_all(per_turn(conv), ct)
    got = [supervised(qwen_chatml, x, multiturn="per_turn")[0] for x in examples]
    assert got == [think("R1") + "A1<|im_end|>", think("R2") + "A2<|im_end|>"]


def test_llama3_tools(qwen_llama):
    """Llama-3.1-style: the call is rendered instead of the content, tool results are ipython turns, reasoning
    (a field this template does not render) is written inline into the content (counted)."""
    msgs = [AGENT[0], AGENT[1], {**AGENT[2], "reasoning_content": None},
            AGENT[3], AGENT[4]]
    msgs[2] = {k: v for k, v in msgs[2].items() if k != "reasoning_content"}
    t = tokenize_conversation(msgs, qwen_llama, tools=TOOLS)
    got, m = supervised(qwen_llama, t)
    assert got == ('{"name": "get_weather", "parameters": {"city": "Paris"}}<|eot_id|>'
                   + think("The tool says sunny.") + "It is sunny.<|eot_id|>")
    check_never_prompt(t, m)
    assert t.meta["reasoning_inlined"] == 1
    assert qwen_llama.decode(t.input_ids[t.segments == Segment.TOOL].tolist()) == "sunny, 21C"
    assert check_parity([Conversation(tuple(msgs), "d:1", tuple(TOOLS))], ConversationTokenizer(qwen_llama),
                        "prompt_masked").ok
    # reasoning on a call turn: the template drops that turn's content, so the inlined reasoning: clear error
    with pytest.raises(TemplateError, match="does not render message 2"):
        tokenize_conversation(AGENT, qwen_llama, tools=TOOLS)


def test_message_weights_compose_with_regimes(bpe_chatml):
    msgs = [{"role": "user", "content": "q1"}, {"role": "assistant", "content": "A1", "weight": 0.0},
            {"role": "user", "content": "q2"}, {"role": "assistant", "content": "A2", "weight": 0.5}]
    t = tokenize_conversation(msgs, bpe_chatml)
    got, m = supervised(bpe_chatml, t)
    assert got == "A2<|im_end|>"  # turn 1 has weight 0; turn 3 weight 0.5
    assert set(m.weights[m.weights > 0]) == {0.5}
    full = apply_regime(t, "full").weights
    assert (full[t.turns == 1] == 0).all() and (full[1:][t.turns[1:] == 0] == 1).all()


def test_template_without_tool_support_refuses_calls(bpe_chatml):
    from harness.data.templates import CHATML

    tok = train_bpe(template=CHATML)
    with pytest.raises(TemplateError, match="does not render tool_calls"):
        tokenize_conversation(AGENT, tok)
    with pytest.raises(TemplateError, match="does not render a tools list"):
        tokenize_conversation(AGENT[:2] + [{"role": "assistant", "content": "x"}], tok, tools=TOOLS)


@pytest.mark.slow
def test_gemma3_official_template(gemma_tok):
    """Gemma 3's official template (as `harness model get` writes it) has no tool role and no tool calls: a clear
    error either way; reasoning is written inline and trained, with its end of turn; parity holds."""
    with pytest.raises(TemplateError, match="does not render tool_calls"):
        tokenize_conversation(AGENT, gemma_tok)
    with pytest.raises(TemplateError, match="alternate"):
        tokenize_conversation([AGENT[1], {"role": "assistant", "content": "x"}, AGENT[3],
                               {"role": "assistant", "content": "y"}], gemma_tok)
    msgs = [{"role": "user", "content": "q1"}, {"role": "assistant", "content": "A1", "reasoning_content": "R1"},
            {"role": "user", "content": "q2"}, {"role": "assistant", "content": "A2", "reasoning_content": "R2"}]
    t = tokenize_conversation(msgs, gemma_tok)
    got, m = supervised(gemma_tok, t)
    assert got == think("R1") + "A1<end_of_turn>" + think("R2") + "A2<end_of_turn>"
    check_never_prompt(t, m)
    assert t.meta["reasoning_inlined"] == 2
    assert supervised(gemma_tok, t, reasoning="mask")[0] == "A1<end_of_turn>A2<end_of_turn>"
    assert check_parity([Conversation(tuple(msgs), "d:1")], ConversationTokenizer(gemma_tok), "prompt_masked").ok


def test_sharegpt_and_dataset_tools_decode_to_the_assistant_text(tmp_path, bpe_chatml):
    """ShareGPT function_call/observation rows and a data set's tools file, loaded and tokenized: the supervised
    tokens are the call and the answer, each with its end of turn; the tools are in the system turn."""
    import json

    from harness.data import load_conversations, tokenize_all

    row = {"system": "Use tools.", "conversations": [
        {"from": "human", "value": "Weather in Paris?"},
        {"from": "function_call", "value": json.dumps({"name": "get_weather", "arguments": {"city": "Paris"}})},
        {"from": "observation", "value": "sunny"}, {"from": "gpt", "value": "Sunny."}]}
    (tmp_path / "d.jsonl").write_text(json.dumps(row) + "\n")
    (tmp_path / "tools.json").write_text(json.dumps(TOOLS))
    convs = load_conversations(str(tmp_path / "d.jsonl"), tools=str(tmp_path / "tools.json"))
    (t,), _ = tokenize_all(convs, ConversationTokenizer(bpe_chatml))
    got, m = supervised(bpe_chatml, t)
    assert got == CALL_TEXT + "<|im_end|>Sunny.<|im_end|>"  # the final empty <think></think> is masked by default
    check_never_prompt(t, m)
    assert '"name": "get_weather", "description": "Weather now"' in t.text.split("<|im_start|>user")[0]


def test_inline_think_under_a_template_without_reasoning(chatml_tok):
    """The builtin ChatML template renders inline reasoning as content: it is located inside the content."""
    msgs = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "<think>\nSay hi.\n</think>\n\nHello."},
            {"role": "user", "content": "Again"}, {"role": "assistant", "content": "<think></think>Hello again."}]
    t = tokenize_conversation(msgs, chatml_tok)
    assert supervised(chatml_tok, t, empty_reasoning="train")[0] == msgs[1]["content"] + "<|im_end|>" + msgs[3][
        "content"] + "<|im_end|>"
    assert supervised(chatml_tok, t)[0] == msgs[1]["content"] + "<|im_end|>Hello again.<|im_end|>"
    assert supervised(chatml_tok, t, reasoning="mask")[0] == "Hello.<|im_end|>Hello again.<|im_end|>"


def test_parity_flags_a_generation_prompt_unlike_the_history_header():
    """A template whose generation prompt is not the header its history turns start with (here one newline more,
    as a Qwen3 `enable_thinking=False` prompt adds an empty think block): every trained turn is flagged."""
    from harness.data.templates import CHATML

    odd = CHATML.replace("'<|im_start|>assistant\n' }}{% endif %}", "'<|im_start|>assistant\n\n' }}{% endif %}")
    assert odd != CHATML
    tok = train_bpe(template=odd)
    msgs = [{"role": "user", "content": "q1"}, {"role": "assistant", "content": "A1"},
            {"role": "user", "content": "q2"}, {"role": "assistant", "content": "A2"}]
    p = check_parity([Conversation(tuple(msgs), "d:1")], ConversationTokenizer(tok), "prompt_masked", template="odd")
    assert (p.turns_checked, p.mismatches) == (2, 2) and "not the prompt inference builds" in p.issues[0].reason
    assert check_parity([Conversation(tuple(msgs), "d:1")], ConversationTokenizer(train_bpe()), "prompt_masked").ok
