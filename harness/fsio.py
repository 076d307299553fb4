"""Writes that readers never see half-done, locks that die with their process, and fault points.

Everything that writes into a results directory goes through these: a file is written to a temp name in the
same directory and renamed into place (``atomic_write_*``); a directory lock is an ``flock`` the kernel drops
when its holder dies, even on kill -9 (``try_lock``, ``file_lock``); ``fault_point`` is where the reliability
suite kills (or holds) a process at a chosen moment instead of after a sleep.
"""

from __future__ import annotations

import atexit
import datetime as _dt
import fcntl
import hashlib
import json
import os
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import yaml

_FAULT_HITS: dict[str, int] = {}


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


# ------------------------------------------------------------------------------------------ atomic writes


def atomic_write_with(path: Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp)`` for a temp path in the same directory, fsync it, then rename it to `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    """Write `text` so that readers see the old file or the whole new one, never half of it."""
    atomic_write_with(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


# ------------------------------------------------------------------------------------------ locks


def is_locked(path: Path) -> bool:
    """True when some process holds an flock on `path`.

    Read from /proc/locks without touching the lock (taking it, even for an instant, could make a run that
    is starting at that moment believe another process owns it); elsewhere, by trying the lock."""
    path = Path(path)
    try:
        st = os.stat(path)
    except OSError:
        return False
    try:
        text = Path("/proc/locks").read_text()
    except OSError:
        return _probe_lock(path)
    want = (os.major(st.st_dev), os.minor(st.st_dev), st.st_ino)
    for line in text.splitlines():
        for part in line.split():
            bits = part.split(":")
            if len(bits) == 3:
                try:
                    if (int(bits[0], 16), int(bits[1], 16), int(bits[2])) == want:
                        return True
                except ValueError:
                    continue
    return False


def _probe_lock(path: Path) -> bool:
    with open(path, "a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return True
        fcntl.flock(fh, fcntl.LOCK_UN)
    return False


@contextmanager
def try_lock(path: Path) -> Iterator[bool]:
    """Non-blocking exclusive flock; yields whether we got it, and records the holder (pid, host, time)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fh = open(path, "a+")
    try:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            yield False
            return
        fh.seek(0)
        fh.truncate()
        fh.write(f"{os.getpid()} {os.uname().nodename} {now_iso()}\n")
        fh.flush()
        try:
            yield True
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
    finally:
        fh.close()


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Blocking exclusive flock: concurrent evaluations of one base wait for the first, then reuse its result."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def lock_holder(path: Path) -> str:
    try:
        return Path(path).read_text().strip() or "unknown"
    except OSError:
        return "unknown"


# ------------------------------------------------------------------------------------------ paths


def is_local_path(path: str | Path) -> bool:
    """Whether a model, tokenizer or data set name means a local path (else: a hub name such as
    ``Qwen/Qwen2.5-0.5B`` or ``GAIR/lima``). The one rule every loader uses: it exists, or it starts with
    ``.``, ``/`` or ``~``, or it has more parts than a hub name's ``org/name``."""
    s = str(path)
    return s.startswith((".", "/", "~")) or len(Path(s).parts) > 2 or Path(s).expanduser().exists()


# ------------------------------------------------------------------------------------------ fault points


def fault_point(name: str) -> None:
    """Fault injection for the reliability suite, off unless ``HARNESS_FAULT`` is set.

    ``HARNESS_FAULT=<name>:<n>`` kills the process (``os._exit(137)``, as kill -9 would: no cleanup, no
    finally) the n-th time execution reaches this point. ``<name>:<n>:wait`` instead creates the file named by
    ``HARNESS_FAULT_MARK`` and waits there while that file exists: the test waits for the file, does what it
    wants at that exact point (kill the process, send a signal) and deletes the file to let it go on. It fires
    once per mark (``<mark>.released`` is written on release), so a requeued job does not stop again. Tests
    kill at a moment they control this way, never after a sleep that a faster CPU would outrun."""
    spec = os.environ.get("HARNESS_FAULT", "")
    if not spec.startswith(name + ":"):
        return
    parts = spec.split(":")
    _FAULT_HITS[name] = _FAULT_HITS.get(name, 0) + 1
    if _FAULT_HITS[name] != int(parts[1]):
        return
    if len(parts) > 2 and parts[2] == "wait":
        mark = Path(os.environ["HARNESS_FAULT_MARK"])
        released = mark.with_name(mark.name + ".released")
        if released.exists():
            return
        atomic_write_text(mark, f"{os.getpid()}\n")
        while mark.exists():
            time.sleep(0.02)
        released.write_text("")
        return
    os._exit(137)


# ------------------------------------------------------------------------------------------ process exit


def exit_without_teardown(rc: int = 0) -> None:
    """Exit now, skipping only the interpreter's module-by-module teardown (with torch, transformers and
    lm-eval loaded it frees nothing the OS does not, and takes seconds; benchmarks/NOTES.md). The atexit
    handlers (logging, temporary directories, libraries' cleanup) run first, then stdout/stderr are flushed.
    Never call it from inside an atexit handler that is still registered (it would run again)."""
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe or stream: nothing left to flush
            pass
    os._exit(rc)


# ------------------------------------------------------------------------------------------ tolerant readers (of results files: harness.layout)


def sha256_file(path: str | Path) -> str:
    """sha256 of a file's bytes, read now (no cache: for verifying what a file is, e.g. shipped weights)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_json(path: Path) -> Any:
    """A JSON file's value; None when it is missing or does not parse (half-written, not ours)."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml's safe loader when present (faster)


def read_yaml(path: Path) -> dict | None:
    try:
        d = yaml.load(Path(path).read_text(encoding="utf-8"), Loader=SAFE_LOADER)
    except (OSError, yaml.YAMLError):
        return None
    return d if isinstance(d, dict) else None


def read_jsonl(path: Path) -> list[dict]:
    """Rows of a JSONL file; a torn last line (a writer killed mid-line) is skipped."""
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return []
    rows = []
    for line in text.splitlines():
        try:
            r = json.loads(line)
        except ValueError:
            continue
        if isinstance(r, dict):
            rows.append(r)
    return rows
