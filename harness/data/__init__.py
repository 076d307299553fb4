"""Data: load any format, normalise to messages, tokenize once with a segment per token."""

from harness.data.formats import Conversation, load_conversations
from harness.data.prepare import Drops, MaskedData, apply_all, tokenize_all
from harness.data.tokenize import (
    ConversationTokenizer,
    Segment,
    Tokenized,
    TemplateRenderer,
    tokenize_conversation,
)
from harness.data.tokenizer import load_tokenizer

__all__ = [
    "Conversation", "ConversationTokenizer", "Drops", "MaskedData", "Segment", "TemplateRenderer", "Tokenized",
    "apply_all", "load_conversations", "load_tokenizer", "tokenize_all", "tokenize_conversation",
]
