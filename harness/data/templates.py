"""Fallback chat templates for tokenizers that ship without one (most base models).

A template is chosen with ``model.chat_template`` in the experiment: a name below, a path to a ``.jinja``
file, or a literal Jinja string. The tokenizer's own template wins when it has one unless the config
names a template explicitly.
"""

from __future__ import annotations

from pathlib import Path

from harness.data.agent_templates import AGENT_TEMPLATES
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

# Gemma 3's official chat template (the instruction-tuned models'; the base GGUF carries none): the system
# message is folded into the first user turn, each content is trimmed, the assistant role is "model", turns
# alternate user/model and each ends with <end_of_turn>.
GEMMA3 = (
    "{{ bos_token }}"
    "{%- if messages[0]['role'] == 'system' -%}"
    "{%- if messages[0]['content'] is string -%}"
    "{%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}"
    "{%- else -%}"
    "{%- set first_user_prefix = messages[0]['content'][0]['text'] + '\n\n' -%}"
    "{%- endif -%}"
    "{%- set loop_messages = messages[1:] -%}"
    "{%- else -%}"
    "{%- set first_user_prefix = \"\" -%}"
    "{%- set loop_messages = messages -%}"
    "{%- endif -%}"
    "{%- for message in loop_messages -%}"
    "{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}"
    "{{ raise_exception(\"Conversation roles must alternate user/assistant/user/assistant/...\") }}"
    "{%- endif -%}"
    "{%- if (message['role'] == 'assistant') -%}"
    "{%- set role = \"model\" -%}"
    "{%- else -%}"
    "{%- set role = message['role'] -%}"
    "{%- endif -%}"
    "{{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else \"\") }}"
    "{%- if message['content'] is string -%}"
    "{{ message['content'] | trim }}"
    "{%- elif message['content'] is iterable -%}"
    "{%- for item in message['content'] -%}"
    "{%- if item['type'] == 'image' -%}"
    "{{ '<start_of_image>' }}"
    "{%- elif item['type'] == 'text' -%}"
    "{{ item['text'] | trim }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- else -%}"
    "{{ raise_exception(\"Invalid content type\") }}"
    "{%- endif -%}"
    "{{ '<end_of_turn>\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}"
    "{{'<start_of_turn>model\n'}}"
    "{%- endif -%}"
)

BUILTIN = {"chatml": CHATML, "plain": PLAIN, "gemma3": GEMMA3, **AGENT_TEMPLATES}


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
