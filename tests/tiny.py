"""A tiny model + tokenizer + SFT data written into a directory, for CPU tests of the real pipeline."""

from __future__ import annotations

import json
import random
from pathlib import Path

from tests.conftest import train_bpe

EXPERIMENT = """\
name: tiny
results_dir: {root}/results
model: {{name_or_path: {root}/model}}
data:
  train: {{path: {root}/train.jsonl}}
  eval: {{path: {root}/eval.jsonl}}
  max_length: 64
train:
  lr: 3e-3
  epochs: 2
  batch_tokens: 256
  seed: 1
  log_every: 1
  threads: 1
launcher: {{backend: debug}}
"""


def conversations(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        a, b = rng.randint(0, 9), rng.randint(0, 9)
        msgs = [{"role": "user", "content": f"What is {a}+{b}?"},
                {"role": "assistant", "content": f"{a + b}." + (" It is the sum." if i % 3 == 0 else "")}]
        if i % 4 == 0:
            msgs.insert(0, {"role": "system", "content": "You are helpful."})
        if i % 5 == 0:
            msgs += [{"role": "user", "content": "And the capital of France?"},
                     {"role": "assistant", "content": "Paris."}]
        out.append({"messages": msgs})
    return out


def build_tiny(root: Path, n_train: int = 48, layers: int = 2, hidden: int = 32) -> Path:
    """Write tokenizer+model (random init, seed 0), train/eval JSONL and an experiment file; return the yaml."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    root = Path(root)
    tok = train_bpe()
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=2 * hidden,
                      num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=128, tie_word_embeddings=False,
                      eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, bos_token_id=None)
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg)
    model.save_pretrained(root / "model", safe_serialization=True)
    tok.save_pretrained(root / "model")
    for name, rows in (("train.jsonl", conversations(n_train, 0)), ("eval.jsonl", conversations(12, 1))):
        (root / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    exp = root / "tiny.yaml"
    exp.write_text(EXPERIMENT.format(root=root))
    return exp


def spec_of(exp_path, *overrides):
    """The first run of an experiment file, with `-o` style overrides."""
    from harness.grid import load_experiment

    return load_experiment(exp_path, list(overrides)).runs[0]


def weights(ckpt: Path) -> dict:
    """The tensors of a checkpoint (or model) directory's model.safetensors."""
    from safetensors.torch import load_file

    return load_file(str(Path(ckpt) / "model.safetensors"))
