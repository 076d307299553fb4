"""Data: load any format, normalise to messages, tokenize once with a segment per token."""

from harness.data.formats import Conversation, load_conversations
from harness.data.prepare import Drops, per_turn, tokenize_all
from harness.data.render import TemplateRenderer
from harness.data.tokenize import ConversationTokenizer, Segment, Tokenized, tokenize_conversation

__all__ = [
    "Conversation", "ConversationTokenizer", "Drops", "Segment", "TemplateRenderer", "Tokenized",
    "load_conversations", "per_turn", "tokenize_all", "tokenize_conversation",
]
