"""Chat templates with tool use and reasoning, written for the harness (no template text copied from a model).

* ``chatml_tools``: Qwen3-style. ChatML turns; a ``tools`` list goes into the system turn; an assistant turn
  renders ``<think>\\n{reasoning}\\n</think>\\n\\n`` (an empty block when it has none) only when it comes after the
  last user message, so the reasoning of turns before the last user query is dropped from the history, as Qwen3's
  template does; tool calls follow the content as ``<tool_call>\\n{"name", "arguments"}\\n</tool_call>``; tool
  results are user turns wrapped in ``<tool_response>``.
* ``llama3_tools``: Llama-3.1-style. Header tokens ``<|start_header_id|>role<|end_header_id|>``, ``<|eot_id|>``
  ends a turn, tools listed in the system turn, an assistant turn with tool calls renders only the call as
  ``{"name": ..., "parameters": ...}`` (its content is not rendered), tool results are ``ipython`` turns.

Both render ``add_generation_prompt`` as the same header a history assistant turn starts with, so the prompt
inference builds is a prefix of the training render (harness/parity.py checks it per turn).
"""

CHATML_TOOLS = (
    "{%- set ns = namespace(last_user=-1) -%}"
    "{%- for m in messages -%}{%- if m['role'] == 'user' -%}{%- set ns.last_user = loop.index0 -%}{%- endif -%}"
    "{%- endfor -%}"
    "{%- if tools -%}"
    "{{ '<|im_start|>system\\n' }}"
    "{%- if messages[0]['role'] == 'system' -%}{{ messages[0]['content'] + '\\n\\n' }}{%- endif -%}"
    "{{ 'Functions you may call, one JSON schema per line:\\n<tools>\\n' }}"
    "{%- for t in tools -%}{{ (t | tojson) + '\\n' }}{%- endfor -%}"
    "{{ '</tools>\\nTo call a function, write <tool_call>{\"name\": ..., \"arguments\": {...}}</tool_call>.'"
    " + '<|im_end|>\\n' }}"
    "{%- elif messages[0]['role'] == 'system' -%}"
    "{{ '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
    "{%- endif -%}"
    "{%- for m in messages -%}"
    "{%- if m['role'] == 'user' -%}"
    "{{ '<|im_start|>user\\n' + m['content'] + '<|im_end|>\\n' }}"
    "{%- elif m['role'] == 'assistant' -%}"
    "{{ '<|im_start|>assistant\\n' }}"
    "{%- if loop.index0 > ns.last_user -%}"
    "{{ '<think>\\n' + ((m['reasoning_content'] or '') | trim) + '\\n</think>\\n\\n' }}"
    "{%- endif -%}"
    "{{ m['content'] }}"
    "{%- for c in (m['tool_calls'] or []) -%}"
    "{%- if m['content'] or not loop.first -%}{{ '\\n' }}{%- endif -%}"
    "{{ '<tool_call>\\n{\"name\": \"' + c['function']['name'] + '\", \"arguments\": '"
    " + (c['function']['arguments'] | tojson) + '}\\n</tool_call>' }}"
    "{%- endfor -%}"
    "{{ '<|im_end|>\\n' }}"
    "{%- elif m['role'] == 'tool' -%}"
    "{%- if loop.first or messages[loop.index0 - 1]['role'] != 'tool' -%}{{ '<|im_start|>user' }}{%- endif -%}"
    "{{ '\\n<tool_response>\\n' + m['content'] + '\\n</tool_response>' }}"
    "{%- if loop.last or messages[loop.index0 + 1]['role'] != 'tool' -%}{{ '<|im_end|>\\n' }}{%- endif -%}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}"
)

LLAMA3_TOOLS = (
    "{{ bos_token }}"
    "{%- if tools or messages[0]['role'] == 'system' -%}"
    "{{ '<|start_header_id|>system<|end_header_id|>\\n\\n' }}"
    "{%- if tools -%}"
    "{{ 'Tools you can use. To use one, reply only with {\"name\": tool name, \"parameters\": arguments}.\\n\\n' }}"
    "{%- for t in tools -%}{{ (t | tojson) + '\\n\\n' }}{%- endfor -%}"
    "{%- endif -%}"
    "{%- if messages[0]['role'] == 'system' -%}{{ messages[0]['content'] | trim }}{%- endif -%}"
    "{{ '<|eot_id|>' }}"
    "{%- endif -%}"
    "{%- for m in messages -%}"
    "{%- if m['role'] == 'system' -%}"
    "{%- elif m['role'] == 'tool' -%}"
    "{{ '<|start_header_id|>ipython<|end_header_id|>\\n\\n' + (m['content'] | trim) + '<|eot_id|>' }}"
    "{%- elif m['role'] == 'assistant' and m['tool_calls'] -%}"
    "{%- if m['tool_calls'] | length != 1 -%}{{ raise_exception('one tool call per assistant turn') }}{%- endif -%}"
    "{%- set c = m['tool_calls'][0]['function'] -%}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n{\"name\": \"' + c['name'] + '\", \"parameters\": '"
    " + (c['arguments'] | tojson) + '}<|eot_id|>' }}"
    "{%- else -%}"
    "{{ '<|start_header_id|>' + m['role'] + '<|end_header_id|>\\n\\n' + (m['content'] | trim) + '<|eot_id|>' }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif -%}"
)

AGENT_TEMPLATES = {"chatml_tools": CHATML_TOOLS, "llama3_tools": LLAMA3_TOOLS}
