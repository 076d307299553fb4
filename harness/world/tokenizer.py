"""A byte-level BPE tokenizer trained on the mini-world corpus, saved as an HF fast tokenizer with ChatML."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

from harness.data.templates import CHATML

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def train_tokenizer(texts: Iterable[str], vocab_size: int, out: Path):
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    # Words carry their *trailing* space ("Lisbon" in "born in Lisbon." and at the start of an answer line is
    # one token; GPT-2 style leading spaces make " Lisbon" mid-sentence and "Lisbon" after "assistant\n" two
    # unrelated tokens, and a tiny model cannot learn that they are the same word: SFT then had to learn every
    # answer as a new token and extracted nothing, 4% held-out QA vs 24% with the same token). Merges never
    # cross these pieces, so a name keeps one token per part.
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(r"\w+ ?|[^\w\s]+ ?|\s+"), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS, min_frequency=2,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>",
                                   additional_special_tokens=["<|im_start|>", "<|im_end|>"])
    fast.chat_template = CHATML
    fast.model_max_length = 4096
    fast.save_pretrained(out)
    return fast
