"""Committed mini-world weights: the demo world's pretraining done once, shipped, verified by hash.

Why: pretraining the demo world is most of a first ``make demo`` (197 s of 489 s from a fresh clone on an AMD
EPYC, 25 min of which ~13 on a slower one; ``benchmarks/NOTES.md``), yet it computes the same weights every time
on one machine (same seed, fixed threads: identical sha256 across builds). So the weights of a world are stored
here once, under the world's model key (``build.py``: world version, pretraining config, vocabulary size, the
corpus's and the SFT data's hashes), with the sha256 of the weights and of the tokenizer they were trained with.

``build_world`` uses them only when all three agree (same key, same tokenizer file, same weights file);
anything else (another size, seed or config, an edited generator, a tampered file) pretrains as before.
``harness world build --pretrain`` always pretrains here. The data, the tokenizer and the measurements are
computed on every build, so a world from prebuilt weights is measured like any other (``measurements.json``).

Shipping one CPU's weights also makes the demo world the same on every machine: pretrained here, an AVX2 and an
AVX-512 CPU give weights that differ in the last bits, and every result downstream with them.

To add or refresh an entry: build the world with ``--pretrain``, then ``harness world ship
results/world/demo-seed0`` (copies its weights here and records the key, the hashes and the machine).
"""

from __future__ import annotations

import json
import platform
import shutil
from datetime import datetime, timezone
from pathlib import Path

from harness.fsio import sha256_file

DIR = Path(__file__).parent / "prebuilt"
INDEX = DIR / "index.json"


def _index() -> dict:
    return json.loads(INDEX.read_text()) if INDEX.exists() else {}


def find(key: str, tokenizer_json: Path) -> tuple[Path, dict] | tuple[None, str]:
    """(weights file, its entry) when weights for this world key are shipped and every hash agrees, else
    (None, why not) - the reason is logged, so a mismatch is never silent."""
    entry = _index().get(key)
    if entry is None:
        return None, f"no shipped weights for world key {key}"
    weights = DIR / entry["file"]
    if not weights.exists():
        return None, f"{weights} is missing (a Git LFS pointer or a partial checkout?)"
    if sha256_file(tokenizer_json) != entry["tokenizer_sha256"]:
        return None, "the tokenizer trained here differs from the one the shipped weights were trained with"
    if sha256_file(weights) != entry["sha256"]:
        return None, f"{weights} does not match its recorded sha256"
    return weights, entry


def load_into(model, weights: Path) -> None:
    """Every tensor of the model from the file, no more and no fewer (strict), in place."""
    from safetensors.torch import load_file

    model.load_state_dict(load_file(str(weights)), strict=True)


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def add(world: Path) -> dict:
    """Ship a built world's weights: copy ``model/model.safetensors`` here, record its key and hashes."""
    world = Path(world)
    info = json.loads((world / "world.json").read_text())
    meas = json.loads((world / "measurements.json").read_text())
    if info.get("weights", {}).get("source") == "prebuilt":
        raise SystemExit(f"{world} was built from shipped weights; build it with --pretrain first")
    key = info["model_key"]
    name = f"{info['size']}-seed{info['seed']}{'' if info['augment'] else '-noaug'}.safetensors"
    built = datetime.fromtimestamp((world / "model" / "model.safetensors").stat().st_mtime, timezone.utc)
    DIR.mkdir(exist_ok=True)
    shutil.copyfile(world / "model" / "model.safetensors", DIR / name)
    entry = {"file": name, "sha256": sha256_file(DIR / name),
             "tokenizer_sha256": sha256_file(world / "tokenizer" / "tokenizer.json"),
             "built": {"cpu": cpu_name(), "date": built.strftime("%Y-%m-%d"),
                       "torch": _torch_version(), "pretrain_seconds": meas.get("pretrain_seconds"),
                       "fact_completion": meas.get("fact_completion")}}
    index = {k: v for k, v in _index().items() if v["file"] != name}
    index[key] = entry
    INDEX.write_text(json.dumps(index, indent=1, sort_keys=True) + "\n")
    return entry


def _torch_version() -> str:
    import torch

    return torch.__version__

