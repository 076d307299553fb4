"""The `harness` console script's exit path."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
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


# ------------------------------------------------------------------------------------------ start-up imports

HEAVY = ("torch", "transformers", "pandas", "lm_eval", "matplotlib", "datasets", "peft")


def _heavy_after(code: str, tmp_path: Path) -> list[str]:
    """The heavy modules a fresh interpreter has imported after `code` (which may exit: --help does)."""
    script = ("import atexit, json, sys\n"
              f"atexit.register(lambda: print('HEAVY', json.dumps([m for m in {HEAVY!r} if m in sys.modules])))\n"
              + code)
    p = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                       env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    line = [ln for ln in p.stdout.splitlines() if ln.startswith("HEAVY ")]
    assert line, p.stdout[-1000:] + p.stderr[-2000:]
    return __import__("json").loads(line[-1][len("HEAVY "):])


EXP = """\
name: fast
results_dir: {root}/results
model: {{name_or_path: {root}/no-model}}
data: {{train: {{path: {root}/d.jsonl}}}}
launcher: {{backend: local}}
grid: {{train.lr: [1e-4, 3e-4]}}
"""


def test_help_config_and_status_import_no_torch(tmp_path):
    """`harness --help`, `harness config`, `harness status` start without torch, transformers, pandas or lm-eval
    (seconds of imports each): guarded by what they import, not by a timing that depends on the machine."""
    (tmp_path / "e.yaml").write_text(EXP.format(root=tmp_path))
    main = "from harness.cli import main\n"
    for argv in (["--help"], [], ["config", "e.yaml"], ["config", "--explain"], ["status", "e.yaml"],
                 ["run", "e.yaml", "--dry-run"], ["train", "--help"]):
        heavy = _heavy_after(main + f"try:\n    main({argv!r})\nexcept SystemExit:\n    pass\n", tmp_path)
        if argv == ["train", "--help"]:  # the control: a command that needs torch does import it
            assert "torch" in heavy, heavy
        else:
            assert heavy == [], f"harness {' '.join(argv)} imported {heavy}"


def test_doctor_judges_the_config_before_importing_torch(tmp_path):
    """`harness doctor`'s verdict on the config comes before torch is imported (then the model checks need it)."""
    (tmp_path / "e.yaml").write_text(EXP.format(root=tmp_path))
    code = ("from harness.doctor import doctor\n"
            "def out(line):\n"
            "    if line.strip().startswith('ok    config'):\n"
            "        print('AT_CONFIG', [m for m in ('torch', 'transformers') if m in sys.modules])\n"
            "doctor('e.yaml', out=out)\n")
    p = subprocess.run([sys.executable, "-c", "import sys\n" + code], cwd=tmp_path, capture_output=True, text=True,
                       timeout=300, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert "AT_CONFIG []" in p.stdout, p.stdout[-1000:] + p.stderr[-2000:]


def test_every_command_is_listed_and_defined_where_the_table_says():
    """harness/commands.py lists every command once, and the module it names defines that command's parser."""
    from harness.cli import build_parser
    from harness.commands import COMMANDS

    full = build_parser()
    sub = next(a for a in full._actions if a.dest == "command")
    assert sorted(sub.choices) == sorted(COMMANDS)
    for name in COMMANDS:
        assert name in build_parser(name)._actions[-1].choices


def test_a_wrong_command_lists_the_commands_without_importing_them(tmp_path):
    """`harness bogus`: argparse's error with every command to choose from, exit code 2, and no module of any
    command imported to say so."""
    heavy = _heavy_after("from harness.cli import main\ntry:\n    main(['bogus'])\nexcept SystemExit as e:\n"
                         "    print('EXIT', e.code)\n", tmp_path)
    assert heavy == []
    p = subprocess.run([sys.executable, "-m", "harness.cli", "bogus"], cwd=tmp_path, capture_output=True, text=True,
                       timeout=300, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert p.returncode == 2 and "invalid choice: 'bogus'" in p.stderr and "'train'" in p.stderr


def test_export_of_a_checkpoint_outside_a_run_names_it_and_the_fix(tmp_path):
    """A COMPLETED checkpoint copied out of its run's checkpoints/ has no config to export with: a clear error."""
    from harness.errors import ConfigError
    from harness.export import checkpoint_of

    ck = tmp_path / "copied" / "step-000004"
    ck.mkdir(parents=True)
    (ck / "COMPLETED").write_text("")
    with pytest.raises(ConfigError, match="export from the run directory") as err:
        checkpoint_of(ck)
    assert str(ck) in str(err.value)
