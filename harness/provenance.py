"""What produced a result: code version, packages, machine, data and mask hashes."""

from __future__ import annotations

import platform
import socket
import subprocess
import sys
from importlib import metadata
from pathlib import Path

from harness import fingerprint

PACKAGES = ("harness", "torch", "transformers", "tokenizers", "datasets", "lm_eval", "numpy", "submitit",
            "safetensors", "pandas", "peft")


def git_info() -> dict:
    root = Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10).stdout.strip()
        dirty = bool(subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                                    capture_output=True, text=True, timeout=10).stdout.strip())
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}
    return {"commit": commit or None, "dirty": dirty if commit else None}


def package_versions() -> dict:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name.replace("_", "-") if name == "lm_eval" else name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def file_sha256(path: str | Path) -> str | None:
    """A file's sha256 (harness/fingerprint.py's, cached), None for anything but a file."""
    return fingerprint.file_sha256(path) if Path(path).is_file() else None


def provenance(**extra) -> dict:
    import torch

    return {"git": git_info(), "packages": package_versions(), "python": sys.version.split()[0],
            "platform": platform.platform(), "host": socket.gethostname(), "torch_threads": torch.get_num_threads(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None, **extra}
