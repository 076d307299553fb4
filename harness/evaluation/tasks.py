"""The lm-eval task YAMLs the harness writes for its own data (the mini-world's, harness/world/build.py, and the
real-knowledge data's, harness/realdata.py): greedy generation over a local .jsonl, the first line (or a prefix
of it) compared with the reference by exact match."""

from __future__ import annotations

import json

GENERATE_TASK = """\
task: {name}
dataset_path: json
dataset_kwargs:
  data_files: {{test: "{data_file}"}}
test_split: test
output_type: generate_until
doc_to_text: {doc_to_text}
doc_to_target: "{{{{{target}}}}}"
generation_kwargs:
  until: [{until}]
  do_sample: false
  max_gen_toks: {max_gen_toks}
filter_list:
  - name: {filter_name}
    filter:
      - function: regex
        regex_pattern: {regex}
      - function: take_first
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
    ignore_case: true
    ignore_punctuation: true
metadata:
  version: 1.0
"""


def generate_task(name: str, data_file: str, *, doc_to_text: str, until: list[str], max_gen_toks: int,
                  filter_name: str, regex: str, target: str = "answer") -> str:
    """One generate_until task over `data_file`. `doc_to_text` is a Jinja template (e.g. ``{{question}}``),
    `regex` the filter's capture of the scored part of the generation. Strings are written as JSON (valid
    double-quoted YAML scalars)."""
    return GENERATE_TASK.format(name=name, data_file=data_file, doc_to_text=json.dumps(doc_to_text), target=target,
                                until=", ".join(json.dumps(u) for u in until), max_gen_toks=max_gen_toks,
                                filter_name=filter_name, regex=json.dumps(regex))
