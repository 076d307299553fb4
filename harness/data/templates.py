"""Fallback chat templates for tokenizers that ship without one (most base models).

A template is chosen with ``model.chat_template`` in the experiment: a name below, a path to a ``.jinja``
file, or a literal Jinja string. The tokenizer's own template wins when it has one unless the config
names a template explicitly.
"""

from __future__ import annotations

from pathlib import Path

from harness.errors import TemplateError

# ChatML (Qwen, many others). No default system prompt: a template that injects one would add
# template tokens the data never asked for.
CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# Plain text for tokenizers without chat special tokens: the only end-of-turn marker is eos.
PLAIN = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ message['content'] + '\n\n' }}"
    "{% elif message['role'] == 'user' %}{{ 'User: ' + message['content'] + '\n' }}"
    "{% elif message['role'] == 'tool' %}{{ 'Tool: ' + message['content'] + '\n' }}"
    "{% else %}{{ 'Assistant: ' + message['content'] + eos_token + '\n' }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ 'Assistant: ' }}{% endif %}"
)

BUILTIN = {"chatml": CHATML, "plain": PLAIN}


def resolve_template(spec: str | None) -> str | None:
    """Turn a config value (builtin name, .jinja path or literal Jinja) into template text."""
    if spec is None:
        return None
    if spec in BUILTIN:
        return BUILTIN[spec]
    if "{%" in spec or "{{" in spec:
        return spec
    path = Path(spec)
    if path.suffix in (".jinja", ".j2", ".txt") or path.exists():
        if not path.exists():
            raise TemplateError("chat template file not found", where=spec,
                                fix=f"give a path to a .jinja file or one of {sorted(BUILTIN)}")
        return path.read_text(encoding="utf-8")
    raise TemplateError(f"unknown chat template '{spec}'", where="model.chat_template",
                        fix=f"use one of {sorted(BUILTIN)}, a path to a .jinja file, or Jinja text")
