"""The `harness` console script's exit path."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]


def test_console_script_skips_teardown_but_runs_atexit_and_keeps_the_exit_code(tmp_path):
    """`harness train` on a missing file: the error and exit code 2 come through, torch was loaded (the fast
    exit path), and an atexit handler registered before still runs (logging, temp dirs, libraries' cleanup)."""
    code = ("import atexit, sys\n"
            "atexit.register(lambda: print('cleanup ran, torch loaded:', 'torch' in sys.modules, flush=True))\n"
            f"sys.argv = ['harness', 'train', {str(tmp_path / 'missing.yaml')!r}]\n"
            "from harness.cli import entry\n"
            "entry()\n")
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert p.returncode == 2, p.stderr[-2000:]
    assert "error:" in p.stderr and "missing.yaml" in p.stderr
    assert "cleanup ran, torch loaded: True" in p.stdout


def test_entry_point_is_entry():
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["harness"] == "harness.cli:entry"


def test_worker_exit_handler_runs_the_other_atexit_handlers():
    """The local workers' last atexit handler (registered last, so it runs first) skips only the module
    teardown: handlers registered before it still run, and the exit code stays 0."""
    code = ("import atexit\n"
            "atexit.register(lambda: print('cleanup ran', flush=True))\n"
            "from harness.launch.jobs import _exit_without_teardown\n"
            "atexit.register(_exit_without_teardown)\n"
            "print('main done', flush=True)\n")
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]
    assert p.stdout.split() == ["main", "done", "cleanup", "ran"]
