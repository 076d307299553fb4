"""harness/layout.py: the results-schema doc embeds describe(), and every reader of a results directory
(``harness status``, evaluation, analysis) sees each run in the same state."""

import json
import subprocess
import sys
from pathlib import Path

from analysis.load import load_runs, run_table
from harness import layout
from harness.config.load import save_yaml
from harness.evaluation.evaluate import pending_checkpoints
from harness.fsio import is_locked
from harness.grid import load_experiment
from harness.launch.plan import write_plan
from harness.launch.status import status_rows
from harness.versions import EVAL_SCHEMA, SCHEMA_VERSION

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "results-schema.md"
BEGIN, END = "<!-- layout.describe() begin -->", "<!-- layout.describe() end -->"


def test_results_schema_doc_embeds_describe_and_every_name():
    text = DOC.read_text(encoding="utf-8")
    assert text.count(BEGIN) == 1 and text.count(END) == 1, "the doc needs exactly one pair of marker lines"
    embedded = text.split(BEGIN, 1)[1].split(END, 1)[0]
    assert embedded.strip("\n") == layout.describe(), (
        "docs/results-schema.md is out of date: paste harness.layout.describe() between the markers")
    names = {k: v for k, v in vars(layout).items() if k.isupper() and not k.startswith("_") and isinstance(v, str)}
    assert {"PLAN", "DONE", "FAILED", "LOCK", "COMPLETED", "METRICS"} <= set(names)
    missing = {k: v for k, v in names.items() if v not in text}
    assert not missing, f"layout names not in docs/results-schema.md: {missing}"
    for state in layout.STATES:
        assert f"**{state}**" in text
    assert f"(version {SCHEMA_VERSION})" in text.splitlines()[0]
    assert f'"schema": {SCHEMA_VERSION}' in text and f'"schema": {EVAL_SCHEMA}' in text


# ------------------------------------------------------------------------------------------ readers agree

EXP = """\
name: agree
results_dir: {root}
data: {{train: {{path: d.jsonl}}}}
train: {{epochs: 1}}
launcher: {{backend: debug}}
grid:
  - train.seed: [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]
  - {{train.seed: [100], eval.every_checkpoint: [false]}}
"""

VALID = json.dumps({"schema": EVAL_SCHEMA, "metrics": {}})

# holds an flock on every path given, says "locked", and keeps them until its stdin closes
HOLDER = """\
import contextlib, sys
from harness.fsio import try_lock
with contextlib.ExitStack() as stack:
    got = [stack.enter_context(try_lock(p)) for p in sys.argv[1:]]
    print("locked" if all(got) else "busy", flush=True)
    sys.stdin.read()
"""


def _started(rd, spec, log_to=4):
    """What training writes first: config.yaml, provenance.json, the log up to `log_to`."""
    rd.path.mkdir(parents=True)
    save_yaml(spec.config, rd.config)
    rd.provenance.write_text(json.dumps({"run_id": spec.run_id}))
    rd.metrics.write_text("".join(json.dumps({"step": s, "epoch": s / 4, "loss": 1.0 / s}) + "\n"
                                  for s in range(1, log_to + 1)))


def _ckpt(rd, step, completed=True):
    rd.step_dir(step).mkdir(parents=True)
    if completed:
        (rd.step_dir(step) / layout.COMPLETED).write_text("2026-01-01T00:00:00Z\n")


def _eval(rd, step, text=VALID):
    rd.eval_dir.mkdir(exist_ok=True)
    rd.eval_json(step).write_text(text)


def _trained(rd, spec, evals=(2, 4)):
    """Two COMPLETED checkpoints, DONE, and valid evaluations of `evals`."""
    _started(rd, spec)
    _ckpt(rd, 2)
    _ckpt(rd, 4)
    rd.done.write_text(json.dumps({"status": "done", "run_id": spec.run_id, "steps": 4}) + "\n")
    for s in evals:
        _eval(rd, s)


def _failed(rd, spec):
    rd.failed.write_text(f"2026-01-01T00:00:00Z {spec.run_id}\nTraceback (most recent call last):\n"
                         "RuntimeError: boom\n")


# seed -> (what is on disk, expected state, expected pending_checkpoints steps, locked by the holder)
SCENARIOS = {
    0: ("done: DONE, every COMPLETED checkpoint evaluated", "done", [], False),
    1: ("failed: FAILED during training", "failed", [2], False),
    2: ("interrupted: a COMPLETED checkpoint, no DONE", "partial", [2], False),
    3: ("locked: as 2, a live process holds .lock", "running", [2], True),
    4: ("unevaluated: DONE, the last checkpoint without eval JSON", "partial", [4], False),
    5: ("half-written training: checkpoint without COMPLETED, truncated eval JSON", "partial", [2], False),
    6: ("half-written evaluation: DONE, truncated eval JSON", "partial", [4], False),
    7: ("wrong eval schema: DONE, eval JSON of another schema", "partial", [4], False),
    8: ("failed in evaluation: DONE, FAILED, an evaluation missing", "failed", [4], False),
    9: ("pending: planned, no directory", "pending", [], False),
    10: ("locked done: DONE and every evaluation, a live process holds .lock", "running", [], True),
    11: ("done over a stale FAILED: done is the first rule after running", "done", [], False),
    100: ("done, eval.every_checkpoint false: only the newest evaluated", "done", [], False),
}


def _build(seed, rd, spec):
    if seed in (0, 10):
        _trained(rd, spec)
    elif seed == 1:
        _started(rd, spec, log_to=3)
        _ckpt(rd, 2)
        _failed(rd, spec)
    elif seed in (2, 3):
        _started(rd, spec, log_to=3)
        _ckpt(rd, 2)
    elif seed == 4:
        _trained(rd, spec, evals=(2,))
    elif seed == 5:
        _started(rd, spec)
        _ckpt(rd, 2)
        _ckpt(rd, 4, completed=False)  # killed between the rename and COMPLETED
        _eval(rd, 2, '{"schema": ')  # and an evaluation cut short
    elif seed == 6:
        _trained(rd, spec, evals=(2,))
        _eval(rd, 4, '{"schema": ')
    elif seed == 7:
        _trained(rd, spec, evals=(2,))
        _eval(rd, 4, json.dumps({"schema": EVAL_SCHEMA + 1, "metrics": {}}))
    elif seed == 8:
        _trained(rd, spec, evals=(2,))
        _failed(rd, spec)
    elif seed == 9:
        pass
    elif seed == 11:
        _trained(rd, spec)
        _failed(rd, spec)
    elif seed == 100:
        _trained(rd, spec, evals=(4,))


def _eval_view(rd, spec) -> tuple[bool, list[int]]:
    """Evaluation's view: done iff trained (DONE), nothing left to evaluate, and nobody holds the run."""
    todo = [s for s, _ in pending_checkpoints(rd, spec.config)]
    return rd.done.exists() and not todo and not is_locked(rd.lock), todo


def _states(exp) -> dict[str, dict[str, str]]:
    """run id -> {reader: state}: harness status, analysis (run_table, load_runs' state rows), layout itself."""
    out: dict[str, dict[str, str]] = {r.run_id: {} for r in exp.runs}
    for row in status_rows(exp):
        out[row["run_id"]]["status"] = row["state"]
    for _, row in run_table(exp.out_dir).iterrows():
        out[row["run_id"]]["run_table"] = row["state"]
    df = load_runs(exp.out_dir)
    for _, row in df[df["metric"] == "state"].iterrows():
        out[row["run_id"]]["load_runs"] = str(row["state"])
    for r in exp.runs:
        rd = exp.run_dir(r)
        out[r.run_id]["layout"] = rd.state(r.config.eval.every_checkpoint).state
    return out


def test_every_reader_agrees_on_every_run_state(tmp_path):
    p = tmp_path / "agree.yaml"
    p.write_text(EXP.format(root=tmp_path / "results"))
    exp = load_experiment(p)
    by_seed = {r.config.train.seed: r for r in exp.runs}
    assert set(by_seed) == set(SCENARIOS) and len(exp.runs) == len(SCENARIOS)
    assert by_seed[100].config.eval.every_checkpoint is False
    write_plan(exp)
    for seed, spec in by_seed.items():
        _build(seed, exp.run_dir(spec), spec)

    locks = [str(exp.run_dir(by_seed[s]).lock) for s, (_, _, _, locked) in SCENARIOS.items() if locked]
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, *locks], cwd=ROOT, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"  # the holder has every lock from here on
        assert all(is_locked(Path(lk)) for lk in locks)
        states = _states(exp)
        for seed, (what, expected, todo, _) in SCENARIOS.items():
            spec = by_seed[seed]
            seen = states[spec.run_id]
            assert len(seen) == 4, (what, seen)
            assert set(seen.values()) == {expected}, f"seed {seed} ({what}): readers say {seen}, want {expected}"
            done_for_eval, pending = _eval_view(exp.run_dir(spec), spec)
            assert pending == todo, f"seed {seed} ({what}): pending_checkpoints {pending}, want {todo}"
            assert done_for_eval == (expected == "done"), f"seed {seed} ({what}): evaluation's view disagrees"
    finally:
        holder.stdin.close()  # the holder exits; the kernel drops its locks before wait() returns
        holder.wait()
        holder.stdout.close()

    # the lock gone, the locked runs are what their files say: 3 an interrupted run, 10 a done one
    after = _states(exp)
    for seed, expected in ((3, "partial"), (10, "done")):
        assert not is_locked(exp.run_dir(by_seed[seed]).lock)
        seen = after[by_seed[seed].run_id]
        assert set(seen.values()) == {expected}, f"seed {seed} after unlock: {seen}"
        assert _eval_view(exp.run_dir(by_seed[seed]), by_seed[seed])[0] == (expected == "done")
    assert {s: set(v.values()) for s, v in after.items()} == {
        by_seed[s].run_id: {"partial" if s == 3 else "done" if s == 10 else e}
        for s, (_, e, _, _) in SCENARIOS.items()}


def test_experiment_of_looks_only_where_a_run_keeps_things(tmp_path):
    exp = tmp_path / "results" / "e"
    rd = layout.ExperimentDir(exp).run("r1")
    for inside in (rd.path, rd.step_dir(4), rd.eval_json(4), rd.eval_json(4, adhoc=True), rd.tracking / "train"):
        assert layout.experiment_of(inside).path == exp.resolve(), inside
    elsewhere = tmp_path / "runs" / "mine" / "notes" / "deep" / "x.json"  # a folder named runs higher up
    assert layout.experiment_of(elsewhere) is None and layout.experiment_of(tmp_path / "out") is None
    assert layout.run_of_checkpoint(rd.step_dir(4)).path == rd.path
    assert layout.run_of_checkpoint(tmp_path / "model") is None and layout.step_of("step-000400.json") == 400
    assert layout.step_of("step-4") is None and layout.step_of("step-000400.samples.jsonl.gz") is None
