"""Shared pieces of the comparison benchmarks (vs_trl.py, data_prep.py, mfu.py): mini-world data, a tokenizer
trained on it, random-init tiny Llamas, the machine description and a peak-GEMM probe.

Benchmark-only: nothing in the package imports this.
"""

from __future__ import annotations

import json
import os
import platform
import random
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DISABLE_MLFLOW_INTEGRATION", "TRUE")
os.environ.setdefault("WANDB_DISABLED", "true")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from harness.world.prebuilt import cpu_name  # noqa: E402  (the one reader of the CPU's name)

try:  # per-shard progress bars of save/load would drown the benchmark output
    from transformers.utils import logging as _hf_logging

    _hf_logging.disable_progress_bar()
    _hf_logging.set_verbosity_error()
except ImportError:  # pragma: no cover
    pass

MODELS = {"h128x2": (128, 2, 4), "h256x4": (256, 4, 4)}  # hidden, layers, heads (as train_throughput.py)
VOCAB = 2048  # the demo mini-world's vocabulary size

# ChatML with TRL's `{% generation %}` markers around what our prompt_masked regime supervises (assistant
# content + <|im_end|>): renders the same text as harness.data.templates.CHATML.
CHATML_GENERATION = (
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}"
    "{{ '<|im_start|>assistant\n' }}{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}"
    "{{ '\n' }}"
    "{% else %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def mini_world_conversations(n: int, seed: int = 0) -> list[dict]:
    """`n` SFT conversations drawn like the mini-world's (harness.world.build.make_data): per SFT person four
    QA chats (30% with a system prompt, 20% two-question, 25% long answers), one long-prompt and one
    long-answer chat; people are added until there are `n`, then the list is shuffled."""
    from harness.world import generator as G

    rng = random.Random(seed + 1)
    people = [p for p in G.make_people(max(20, n // 2), seed) if p.split == "train"]
    out: list[dict] = []
    for p in people:
        for _ in range(4):
            out.append(G.qa_conversation(p, rng, system=rng.random() < 0.3, multi=rng.random() < 0.2,
                                         long=rng.random() < 0.25))
        out.append(G.long_prompt_conversation(p, people[:200], rng))
        out.append(G.long_answer_conversation(p, rng))
        if len(out) >= n:
            break
    rng.shuffle(out)
    return out[:n]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def train_tokenizer(root: Path, convs: list[dict]):
    """The mini-world tokenizer recipe (byte-level BPE + ChatML), trained on these conversations."""
    from harness.world.tokenizer import train_tokenizer as _train

    return _train((m["content"] for c in convs for m in c["messages"]), VOCAB, root / "tokenizer")


def save_model(root: Path, name: str, vocab: int, max_pos: int, eos_id: int) -> Path:
    """Random-init Llama of the given size (seed 0), written once; both trainers load the same weights."""
    from transformers import LlamaConfig, LlamaForCausalLM

    hidden, layers, heads = MODELS[name]
    out = root / f"model-{name}"
    if (out / "config.json").exists():
        return out
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=int(hidden * 8 / 3) // 8 * 8,
                      num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads,
                      max_position_embeddings=max(max_pos, 1024), tie_word_embeddings=False, eos_token_id=eos_id,
                      bos_token_id=eos_id, pad_token_id=eos_id)
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).save_pretrained(out, safe_serialization=True)
    return out


def param_counts(model_dir: Path) -> dict:
    """Parameter counts: total, input embedding, LM head, and the decoder body (matmul weights + norms)."""
    from transformers import AutoModelForCausalLM

    m = AutoModelForCausalLM.from_pretrained(model_dir)
    total = sum(p.numel() for p in m.parameters())  # a tied weight is one parameter, counted once
    emb_w, head_w = m.get_input_embeddings().weight, m.get_output_embeddings().weight
    emb, head = emb_w.numel(), head_w.numel()
    tied = emb_w is head_w
    cfg = m.config.get_text_config()
    return {"total": total, "embedding": emb, "head": head, "tied": tied,
            "body": total - emb - (0 if tied else head), "hidden": cfg.hidden_size,
            "layers": cfg.num_hidden_layers}


def gemm_peak(threads: int, n: int = 2048, repeats: int = 7, dtype: torch.dtype = torch.float32) -> float:
    """Matmul peak in FLOP/s on `threads` threads: best of `repeats` n x n x n GEMMs of `dtype` (this process)."""
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    c = torch.empty(n, n, dtype=dtype)
    torch.mm(a, b, out=c)  # warm-up
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.mm(a, b, out=c)
        best = min(best, time.perf_counter() - t0)
    torch.set_num_threads(old)
    return 2 * n ** 3 / best


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far (ru_maxrss, KiB on Linux)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def current_rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20


def machine() -> dict:
    import transformers

    cpu = cpu_name()
    flags = ""
    try:
        txt = Path("/proc/cpuinfo").read_text()
        flags = " ".join(f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "fma") if f" {f}" in txt)
    except OSError:
        pass
    versions = {"python": platform.python_version(), "torch": torch.__version__,
                "transformers": transformers.__version__}
    try:
        import trl

        versions["trl"] = trl.__version__
    except ImportError:
        versions["trl"] = None
    return {"cpu": cpu, "cpu_flags": flags, "cores": os.cpu_count(), "platform": platform.platform(),
            "versions": versions, "date": time.strftime("%Y-%m-%d %H:%M %Z"), "load_avg": os.getloadavg()}


def load() -> str:
    a, b, c = os.getloadavg()
    return f"load average {a:.2f} {b:.2f} {c:.2f} on {os.cpu_count()} cores"
