"""Content fingerprints of the files and directories a run reads, with a cache so a large file is hashed once.

A fingerprint is the sha256 of the bytes (a directory: of its relevant files' relative names and contents), so
touching or copying a file never changes it and editing one always does. Hashing a 15 GB model takes tens of
seconds, so each file's digest is cached, keyed by its absolute path, size and mtime in nanoseconds: a changed
file has a new size or mtime and is hashed again. A file modified less than two seconds before it was hashed is
not cached (git's "racily clean" rule: a same-size rewrite within the filesystem's timestamp granularity would
keep its mtime). The cache is a JSON file written atomically (``$HARNESS_CACHE_DIR``, else
``$XDG_CACHE_HOME/harness``, else ``~/.cache/harness``); a lost or unreadable cache only costs a re-hash.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from pathlib import Path

from harness.fsio import atomic_write_json

CACHE_FILE = "file-sha256.json"
# the files of a model or tokenizer directory that decide what is loaded (not a README or a training log)
MODEL_FILES = (".safetensors", ".bin", ".json", ".model", ".txt", ".jinja", ".py", ".tiktoken")
# an lm-eval include_path: task definitions and the files they may read
TASK_FILES = (".yaml", ".yml", ".py", ".json", ".jsonl", ".txt")
_RACY_NS = 2_000_000_000
_LOUD_BYTES = 1 << 30

_cache: dict[str, list] | None = None
_dirty = False


def cache_path() -> Path:
    root = os.environ.get("HARNESS_CACHE_DIR") or Path(
        os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "harness"
    return Path(root) / CACHE_FILE


def _load() -> dict[str, list]:
    global _cache
    if _cache is None:
        try:
            d = json.loads(cache_path().read_text(encoding="utf-8"))
            _cache = d if isinstance(d, dict) else {}
        except (OSError, ValueError):
            _cache = {}
    return _cache


def _save() -> None:
    """Merge this process's new digests into the cache file (another process may have added its own)."""
    global _dirty
    if not _dirty:
        return
    path = cache_path()
    try:
        on_disk = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        on_disk = {}
    merged = {**(on_disk if isinstance(on_disk, dict) else {}), **_load()}
    merged = {k: v for k, v in merged.items() if os.path.exists(k)}  # forget deleted files
    try:
        atomic_write_json(path, merged)
    except OSError:  # a read-only home: the digests are recomputed next time, nothing else is lost
        pass
    _dirty = False


def file_sha256(path: str | Path) -> str:
    """sha256 of a file's bytes, from the cache when its path, size and mtime are the ones hashed before."""
    global _dirty
    p = Path(path).resolve()
    st = p.stat()
    key, cache = str(p), _load()
    hit = cache.get(key)
    if isinstance(hit, list) and len(hit) == 3 and hit[0] == st.st_size and hit[1] == st.st_mtime_ns:
        return hit[2]
    started = time.time_ns()
    if st.st_size > _LOUD_BYTES:  # the one slow step of `harness status` on a new model: say why it waits
        print(f"hashing {p} ({st.st_size / 2**30:.1f} GiB) once; its digest is cached in {cache_path()}",
              file=sys.stderr, flush=True)
    h = hashlib.sha256()
    with open(p, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    digest = h.hexdigest()
    after = p.stat()
    if (after.st_size, after.st_mtime_ns) == (st.st_size, st.st_mtime_ns) and started - st.st_mtime_ns > _RACY_NS:
        cache[key] = [st.st_size, st.st_mtime_ns, digest]
        _dirty = True
    return digest


def _dir_files(root: Path, suffixes: tuple[str, ...] | None) -> list[Path]:
    out = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))  # .cache/, .git/, lock folders
        for name in sorted(filenames):
            if not name.startswith(".") and (suffixes is None or name.endswith(suffixes)):
                out.append(Path(dirpath) / name)
    return out


def fingerprint(path: str | Path, suffixes: tuple[str, ...] | None = MODEL_FILES) -> dict | None:
    """{"sha256", "bytes", "files"} of a file, or of a directory's files with these suffixes (relative name
    and contents of each, hidden files left out); None when the path does not exist."""
    p = Path(path).expanduser()
    try:
        if p.is_file():
            return {"sha256": file_sha256(p), "bytes": p.stat().st_size, "files": 1}
        if not p.is_dir():
            return None
        h, total = hashlib.sha256(), 0
        files = _dir_files(p, suffixes)
        for f in files:
            h.update(f"{f.relative_to(p).as_posix()}\0{file_sha256(f)}\0".encode())
            total += f.stat().st_size
        return {"sha256": h.hexdigest(), "bytes": total, "files": len(files)}
    finally:
        _save()


def short(path: str | Path | None, suffixes: tuple[str, ...] | None = MODEL_FILES) -> str | None:
    """The first 16 hex digits of :func:`fingerprint` (None for a missing path): what an eval hash takes."""
    fp = fingerprint(path, suffixes) if path else None
    return fp["sha256"][:16] if fp else None
