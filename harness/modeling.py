"""Models and tokenizers: where a name points, and how it is loaded for training and for evaluation.

One rule decides whether a name is a local path or a hub name (:func:`harness.fsio.is_local_path`); weights
load from safetensors only; custom model code runs only with ``model.trust_remote_code``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from harness import adapters
from harness.attention import check_kernel, eval_implementation, register
from harness.config import ExperimentConfig
from harness.data.templates import resolve_template
from harness.errors import ConfigError
from harness.fsio import is_local_path
from harness.stages import base_weights

log = logging.getLogger("harness.modeling")

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16,
          "float64": torch.float64, "auto": "auto"}
_NOT_FOUND_FIX = "check model.name_or_path (build the mini-world with `harness world build`)"


def quiet_hf_progress() -> None:
    """transformers' per-shard "Loading weights" bars, once per checkpoint, drown the training and eval logs."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def check_local(path: str | Path, what: str = "model", need: str | None = "config.json") -> None:
    """A local name must exist (and hold `need`); hub names are left to the hub client."""
    if not is_local_path(path):
        return
    p = Path(path).expanduser()
    if not p.exists():
        raise ConfigError(f"{what} path not found", where=str(p.absolute()), fix=_NOT_FOUND_FIX)
    if need and p.is_dir() and not (p / need).exists():
        raise ConfigError(f"no {need} in {what} path", where=str(p.absolute()), fix=_NOT_FOUND_FIX)


def _revision(cfg: ExperimentConfig, path: str | Path) -> str | None:
    return None if is_local_path(path) else cfg.model.revision


def load_tokenizer(name_or_path: str | Path, *, trust_remote_code: bool = False, chat_template: str | None = None):
    """AutoTokenizer (fast) with a pad token. `chat_template` (already resolved text) overrides the tokenizer's."""
    from transformers import AutoTokenizer

    check_local(name_or_path, "tokenizer/model", need=None)
    try:
        tok = AutoTokenizer.from_pretrained(str(name_or_path), use_fast=True, trust_remote_code=trust_remote_code)
    except OSError as exc:
        raise ConfigError(f"cannot load tokenizer: {exc}", where=str(name_or_path),
                          fix="check the path or hub name; offline runs need a local copy") from None
    if chat_template is not None:
        tok.chat_template = chat_template
    if tok.pad_token is None:
        # Padding positions are never in the loss, so reusing eos is safe; say so once.
        tok.pad_token = tok.eos_token
        log.warning("tokenizer %s has no pad token; using eos %r", name_or_path, tok.eos_token)
    return tok


def tokenizer_for(cfg: ExperimentConfig):
    """The experiment's tokenizer (model.tokenizer or the base's, with model.chat_template): the same for
    training, the base and every checkpoint, so every probe is tokenized identically."""
    mc = cfg.model
    return load_tokenizer(mc.tokenizer or mc.name_or_path, trust_remote_code=mc.trust_remote_code,
                          chat_template=resolve_template(mc.chat_template))


def check_model(cfg: ExperimentConfig) -> None:
    """Fail before any data work: the model exists and its positions cover data.max_length."""
    from transformers import AutoConfig

    path = cfg.model.name_or_path
    check_local(path)
    try:
        mcfg = AutoConfig.from_pretrained(path, trust_remote_code=cfg.model.trust_remote_code,
                                          revision=_revision(cfg, path))
    except OSError as exc:
        raise ConfigError(f"cannot load the model config: {exc}", where=str(path),
                          fix="check the path or hub name; offline runs need a local copy") from None
    max_pos = getattr(mcfg, "max_position_embeddings", None)
    if max_pos and cfg.data.max_length > max_pos:
        raise ConfigError(f"data.max_length {cfg.data.max_length} exceeds the model's {max_pos} positions",
                          where="data.max_length", fix=f"set data.max_length <= {max_pos}")


def load_model(cfg: ExperimentConfig, path: str | Path, device: torch.device, *, training: bool):
    """The base or a checkpoint with the config's dtype and attention kernel.

    training: KV cache off (useless in training, and it breaks packed attention isolation). Evaluation: KV
    cache on, eval mode, half precision upcast to fp32 on CPU (slow and inexact there; lossless upcast), and
    sdpa for varlen_attention (harness.attention.eval_implementation). A kernel that cannot run is a
    ConfigError here, before the weights load.

    Adapters (model.adapter, harness/adapters.py): a checkpoint that holds an adapter loads the base from
    model.name_or_path (model.init_from's checkpoint in a later stage) plus the adapter (trainable for training, merged into the weights for evaluation); the
    base itself, loaded for training with an adapter configured, gets a new adapter (seeded by train.seed)."""
    from transformers import AutoModelForCausalLM

    quiet_hf_progress()
    adapter_ckpt = path if adapters.is_adapter_dir(path) else None
    weights = base_weights(cfg) if adapter_ckpt is not None else path
    check_local(weights)
    dtype = DTYPES[cfg.model.dtype]
    if not training and device.type == "cpu" and dtype in (torch.bfloat16, torch.float16):
        dtype = torch.float32
    attn = cfg.model.attn_implementation if training else eval_implementation(cfg.model.attn_implementation)
    # varlen_attention is CUDA-only, and there precision auto | bf16 trains under bf16 autocast (engine.py)
    check_kernel(attn, device, dtype, autocast=cfg.train.precision != "fp32", dropout=cfg.train.dropout)
    register()  # varlen_attention, before from_pretrained checks the name
    model = AutoModelForCausalLM.from_pretrained(weights, dtype=dtype, attn_implementation=attn,
                                                 trust_remote_code=cfg.model.trust_remote_code,
                                                 revision=_revision(cfg, weights), use_safetensors=True)
    model.config.use_cache = not training
    model = model.to(device)
    if adapter_ckpt is not None:
        model = adapters.load(model, adapter_ckpt, training=training)
        if not training:
            model = adapters.merged(model)
    elif training and cfg.model.adapter.enabled:
        model = adapters.attach(model, cfg.model.adapter, cfg.train.seed, str(base_weights(cfg)))
    return model.train() if training else model.eval()


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
