"""Load an HF tokenizer the way every part of the harness needs it (fast, with a pad token, safe)."""

from __future__ import annotations

import logging
from pathlib import Path

from harness.errors import ConfigError

log = logging.getLogger(__name__)


def load_tokenizer(name_or_path: str, *, trust_remote_code: bool = False, chat_template: str | None = None):
    """AutoTokenizer (fast) with a pad token. `chat_template` (already resolved text) overrides the tokenizer's."""
    from transformers import AutoTokenizer

    p = Path(name_or_path)
    if (name_or_path.startswith((".", "/")) or p.suffix) and not p.exists():
        raise ConfigError("tokenizer/model path not found", where=name_or_path,
                          fix="check model.name_or_path (build the mini-world with `harness world build`)")
    try:
        tok = AutoTokenizer.from_pretrained(name_or_path, use_fast=True, trust_remote_code=trust_remote_code)
    except OSError as exc:
        raise ConfigError(f"cannot load tokenizer: {exc}", where=name_or_path,
                          fix="check the path or hub name; offline runs need a local copy") from None
    if chat_template is not None:
        tok.chat_template = chat_template
    if tok.pad_token is None:
        # Padding positions are never in the loss, so reusing eos is safe; say so once.
        tok.pad_token = tok.eos_token
        log.warning("tokenizer %s has no pad token; using eos %r", name_or_path, tok.eos_token)
    return tok
