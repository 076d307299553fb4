"""Adapters (``model.adapter``): PEFT's LoRA and DoRA on the base model, what an adapted checkpoint holds, and
how it becomes one merged model again.

Why PEFT rather than home-made low-rank layers: a checkpoint is then ``adapter_config.json`` +
``adapter_model.safetensors``, which ``peft.PeftModel.from_pretrained`` (and vLLM, TRL, axolotl) load as they are.

* Training wraps the freshly loaded base (:func:`attach`; the adapter's random init drawn from ``train.seed``, the
  same on every rank, without moving the training RNG stream) or loads a checkpoint's adapter trainable
  (:func:`load`: the base from ``model.name_or_path`` plus the adapter, bit-exact resume). The training engine
  steps the adapted transformers model itself (:func:`unwrap`): the LoRA layers are injected in place, so the
  loss, packing, normalisation and probes are the same code for every method; only the adapter's parameters
  require grad, so only they reach the optimizer.
* Evaluation and ``harness export --merged`` merge the adapter into the base weights (:func:`merged`): what is
  evaluated is exactly the model that is exported.
"""

from __future__ import annotations

from pathlib import Path

import torch

from harness.config.schema import AdapterConfig
from harness.errors import ConfigError
from harness.fsio import is_local_path

ADAPTER_CONFIG = "adapter_config.json"
_FIX = 'pip install -e ".[peft]"'


def _peft():
    try:
        import peft
    except ImportError as exc:
        raise ConfigError(f"model.adapter needs PEFT, which cannot be imported ({exc})", where="model.adapter.method",
                          fix=_FIX) from None
    return peft


def is_adapter_dir(path: str | Path) -> bool:
    """A checkpoint that holds an adapter (not full weights)."""
    return (Path(path) / ADAPTER_CONFIG).is_file()


def peft_config(ac: AdapterConfig):
    """``model.adapter`` as a ``peft.LoraConfig`` (DoRA is LoRA with ``use_dora``)."""
    peft = _peft()
    targets = "all-linear" if tuple(ac.target_modules) == ("all-linear",) else list(ac.target_modules)
    return peft.LoraConfig(r=ac.r, lora_alpha=ac.alpha, lora_dropout=ac.dropout, target_modules=targets,
                           use_dora=ac.method == "dora", bias="none", task_type="CAUSAL_LM")


def attach(model: torch.nn.Module, ac: AdapterConfig, seed: int, base_path: str | Path) -> torch.nn.Module:
    """`model` wrapped with a new adapter. Its init (LoRA's A is random) is drawn from `seed` inside a forked RNG:
    every rank gets the same adapter, and the RNG stream that dropout and data order draw from is not moved, so a
    resumed run (whose stream is restored from the checkpoint) continues exactly as an uninterrupted one."""
    peft = _peft()
    with torch.random.fork_rng(devices=[model.device] if model.device.type == "cuda" else []):
        torch.manual_seed(seed)
        try:
            wrapped = peft.get_peft_model(model, peft_config(ac))
        except ValueError as exc:  # e.g. target modules that are not in the model
            raise ConfigError(f"cannot attach the adapter: {exc}", where="model.adapter.target_modules",
                              fix="name modules the model has (print(model)), or use [all-linear]") from None
    _record_base(wrapped, base_path)
    return wrapped


def load(model: torch.nn.Module, ckpt: str | Path, *, training: bool) -> torch.nn.Module:
    """The base `model` with the adapter saved in `ckpt` (trainable when `training`)."""
    peft = _peft()
    return peft.PeftModel.from_pretrained(model, str(ckpt), is_trainable=training)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The transformers model inside a PEFT wrapper (with its adapter layers injected), else `model`."""
    get = getattr(model, "get_base_model", None)
    return get() if callable(get) and is_peft(model) else model


def is_peft(model: torch.nn.Module) -> bool:
    return type(model).__module__.startswith("peft.")


def merged(model: torch.nn.Module) -> torch.nn.Module:
    """One plain transformers model: the adapter folded into the base weights (W + alpha/r * B @ A)."""
    return model.merge_and_unload() if is_peft(model) else model


def save(model: torch.nn.Module, path: Path) -> None:
    """Full weights (plain model) or the adapter only (PEFT model), as safetensors; ``use_cache`` saved as true
    (the inference default for whoever loads it)."""
    inner = getattr(model, "_orig_mod", model)  # torch.compile wrapper
    hf = unwrap(inner)
    use_cache = hf.config.use_cache
    hf.config.use_cache = True
    try:
        inner.save_pretrained(path, safe_serialization=True)
    finally:
        hf.config.use_cache = use_cache


def param_counts(model: torch.nn.Module) -> dict:
    """{"trainable", "total"} parameters (tied weights counted once; the adapter's parameters in both)."""
    seen: dict[int, torch.nn.Parameter] = {id(p): p for p in model.parameters()}
    total = sum(p.numel() for p in seen.values())
    trainable = sum(p.numel() for p in seen.values() if p.requires_grad)
    return {"trainable": int(trainable), "total": int(total),
            "trainable_fraction": round(trainable / total, 8) if total else 0.0}


def _record_base(model: torch.nn.Module, base_path: str | Path) -> None:
    """adapter_config.json's base_model_name_or_path: an absolute path for a local base, so that
    ``AutoPeftModelForCausalLM.from_pretrained(checkpoint)`` finds it from any working directory."""
    base = str(Path(base_path).expanduser().resolve()) if is_local_path(base_path) else str(base_path)
    for pc in model.peft_config.values():
        pc.base_model_name_or_path = base
