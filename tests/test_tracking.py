"""train.report_to: what each tracker stores, read back from its own offline files. TensorBoard, wandb, MLflow and
trackio hold every logged step once (also across a kill and resume, with the values of the attempt that
finished) and each checkpoint's eval metrics at its step, in a run named by the run id, grouped by experiment,
with the axes; tracking never enters the run hash."""

from __future__ import annotations

import json
import math
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from harness.grid import load_experiment
from harness.layout import RunDir
from tests.tiny import build_tiny

HARNESS = [sys.executable, "-m", "harness.cli"]
PACKAGES = {"wandb": "wandb", "mlflow": "mlflow", "trackio": "trackio"}
AXES = {"train.lr": 0.0001, "regime.name": "prompt_masked"}


def _scalars(logdir) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ea = EventAccumulator(str(logdir))
    ea.Reload()
    return {t: [(e.step, e.value) for e in ea.Scalars(t)] for t in ea.Tags()["scalars"]}


def test_tensorboard_holds_step_and_eval_metrics_once_across_a_kill(tmp_path):
    pytest.importorskip("tensorboard", reason="the `track` extra (make test installs it)")
    exp = build_tiny(tmp_path)
    over = ["-o", "train.report_to=[tensorboard]", "-o", "train.save_every_steps=2", "-o", "train.epochs=1"]
    spec = load_experiment(exp, [o for o in over if o != "-o"]).runs[0]
    plain = load_experiment(exp, ["train.save_every_steps=2", "train.epochs=1"]).runs[0]
    assert spec.run_id == plain.run_id  # a tracker never changes which run this is
    rdir = tmp_path / "run"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    cmd = HARNESS + ["train", str(exp), *over, "--out", str(rdir)]
    killed = subprocess.run(cmd, env={**env, "HARNESS_FAULT": "train_step:3"}, capture_output=True, text=True)
    assert killed.returncode != 0  # died after logging step 3; the newest checkpoint is step 2
    rd = RunDir(rdir)
    assert [s for s, _ in rd.completed_checkpoints()] == [2]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]

    logged = [json.loads(x) for x in rd.metrics.read_text().splitlines()]
    tb = _scalars(rd.tracking / "train")
    loss = tb["train/loss"]
    assert [s for s, _ in loss] == [r["step"] for r in logged] == list(range(1, len(logged) + 1))  # each once
    assert [v for _, v in loss] == pytest.approx([r["loss"] for r in logged], rel=1e-6)
    assert {"train/lr", "train/loss_response", "train/tokens_per_s", "train/grad_norm"} <= set(tb)

    from harness.evaluation.evaluate import evaluate_run

    results = evaluate_run(rdir, spec.config)
    assert [r["step"] for r in results] == [s for s, _ in rd.completed_checkpoints()] and len(results) > 1
    tb = _scalars(rd.tracking / "eval")
    assert _scalars(rd.tracking / "train")["train/loss"] == loss  # evaluation leaves the step metrics alone
    for res in results:
        for k, v in res["metrics"].items():
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                assert (res["step"], pytest.approx(v, rel=1e-6, abs=1e-9)) in tb[f"eval/{k}"], k


# ------------------------------------------------------------------ reading each tracker's offline store back


def _wandb_records(path: Path):
    """The records of a .wandb transaction log: a 7-byte ':W&B' header, then LevelDB log blocks of 32 KiB whose
    chunks (crc32c, length, type: 1 full, 2 first, 3 middle, 4 last) carry wandb_internal_pb2.Record messages."""
    from wandb.proto import wandb_internal_pb2 as pb

    data, pos, buf = path.read_bytes(), 7, b""
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        left = 32768 - pos % 32768
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7]) if left >= 7 else (0, 0, 0)
        if left < 7 or (kind == 0 and length == 0):
            pos += left
            continue
        chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        buf = chunk if kind in (1, 2) else buf + chunk
        if kind in (1, 4):
            rec = pb.Record()
            rec.ParseFromString(buf)
            yield rec


def _read_wandb(rd: RunDir, experiment: str) -> dict:
    dirs = sorted((rd.tracking / "wandb").glob("offline-run-*"))
    assert len(dirs) == 1, dirs  # the killed attempt's and the earlier openings' directories were replaced
    out = {"train": [], "eval": []}
    for rec in _wandb_records(next(dirs[0].glob("*.wandb"))):
        if rec.WhichOneof("record_type") == "run":
            out["name"], out["group"], out["project"] = rec.run.display_name, rec.run.run_group, rec.run.project
            out["tags"] = list(rec.run.tags)
            out["axes"] = json.loads({i.key: i.value_json for i in rec.run.config.update}["axes"])
        elif rec.WhichOneof("record_type") == "history":
            row = {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in rec.history.item}
            for kind in ("train", "eval"):
                if f"{kind}/step" in row:
                    out[kind].append((row[f"{kind}/step"], {k: v for k, v in row.items() if k.startswith(kind)}))
    assert out["project"] == experiment and {f"{k}={v}" for k, v in out["axes"].items()} <= set(out["tags"])
    return out


def _read_mlflow(rd: RunDir, experiment: str, root: Path, monkeypatch) -> dict:
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    client = MlflowClient(tracking_uri=(root / "mlruns").resolve().as_uri())
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    assert len(runs) == 1  # the resumed attempt and the evaluation continued the first attempt's run
    run = runs[0]
    out = {"name": run.info.run_name, "group": experiment, "train": [], "eval": [],
           "axes": json.loads(run.data.tags["harness.axes"]), "tag": run.data.tags["harness.run_id"]}
    assert {k: str(v) for k, v in out["axes"].items()} == {k: run.data.params[k] for k in out["axes"]}
    rows: dict[tuple[str, int], dict] = {}
    for key in run.data.metrics:
        for m in client.get_metric_history(run.info.run_id, key):
            rows.setdefault((key.split("/")[0], m.step), {})
            assert key not in rows[key.split("/")[0], m.step], (key, m.step)  # one value per step
            rows[key.split("/")[0], m.step][key] = m.value
    for (kind, step), row in sorted(rows.items()):
        out[kind].append((step, row))
    return out


def _read_trackio(rd: RunDir, experiment: str, root: Path) -> dict:
    import trackio.utils
    from trackio.sqlite_storage import SQLiteStorage

    from harness.tracking.trackio_tracker import point_storage

    assert rd.path.resolve() not in trackio.utils.TRACKIO_DIR.resolve().parents  # put back on close
    restore = point_storage((root / "trackio").resolve())
    try:
        runs = SQLiteStorage.get_runs(experiment)
        config = SQLiteStorage.get_run_config(experiment, runs[0])
        logs = SQLiteStorage.get_logs(experiment, runs[0])
    finally:
        restore()
    out = {"name": runs[0], "group": config["_Group"], "axes": config["axes"], "train": [], "eval": []}
    assert len(runs) == 1
    for row in logs:
        kind = "eval" if any(k.startswith("eval/") for k in row) else "train"
        out[kind].append((row["step"], {k: v for k, v in row.items() if k.startswith(kind)}))
    return out


def _read(name: str, rd: RunDir, experiment: str, root: Path, monkeypatch) -> dict:
    if name == "wandb":
        return _read_wandb(rd, experiment)
    return _read_mlflow(rd, experiment, root, monkeypatch) if name == "mlflow" else _read_trackio(rd, experiment, root)


@pytest.fixture
def offline(tmp_path, monkeypatch):
    """No tracker reaches the network or the home directory."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    for var in ("WANDB_API_KEY", "TRACKIO_DIR", "TRACKIO_SPACE_ID", "TRACKIO_SERVER_URL", "MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(var, raising=False)
    for var in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR"):
        monkeypatch.setenv(var, str(tmp_path / "home" / var.lower()))
    monkeypatch.setenv("NETRC", str(tmp_path / "home" / "netrc"))


ATTEMPT = """
import json, os, sys
from pathlib import Path
from harness.layout import RunDir
from harness.tracking import open_trackers
rdir = Path(sys.argv[2])
track = open_trackers([sys.argv[1]], RunDir(rdir), "lr0.0001-abc", json.loads(sys.argv[3]), {"name": "exp1"})
for s in (1, 2, 3):  # a first attempt that logs steps 1-3 and dies like kill -9 (its checkpoint: step 2)
    row = {"step": s, "loss": float(s), "lr": 0.1, "nan": float("nan"), "time": "now"}
    with open(rdir / "metrics.jsonl", "a") as fh:
        fh.write(json.dumps(row) + "\\n")
    track.log(row, s, prefix="train/")
os._exit(137)
"""


@pytest.mark.parametrize("name", sorted(PACKAGES))
def test_tracker_holds_each_step_once_across_a_kill_and_evaluation(name, tmp_path, offline, monkeypatch):
    pytest.importorskip(PACKAGES[name], reason=f"the `{name}` extra (make test installs it)")
    from harness.tracking import open_trackers

    root = tmp_path / "results" / "exp1"
    rd = RunDir(root / "runs" / "lr0.0001-abc")
    rd.path.mkdir(parents=True)
    rd.config.write_text("name: exp1\ntrain:\n  lr: 0.0001\n")
    killed = subprocess.run([sys.executable, "-c", ATTEMPT, name, str(rd.path), json.dumps(AXES)],
                            env=_child_env(), capture_output=True, text=True)
    assert killed.returncode == 137, killed.stderr[-3000:]
    # the harness's resume: the training log cut to the checkpoint, the steps after it logged again (new values)
    rows = [json.loads(x) for x in rd.metrics.read_text().splitlines()][:2]
    rd.metrics.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with open_trackers([name], rd, rd.name, AXES, {"name": "exp1"}, purge_step=3) as track:
        for s in (3, 4, 5):
            row = {"step": s, "loss": 10.0 + s, "lr": 0.1}
            with open(rd.metrics, "a") as fh:
                fh.write(json.dumps(row) + "\n")
            track.log(row, s, prefix="train/")
    rd.eval_dir.mkdir()
    with open_trackers([name], rd, "run-dir-name", {}, {}, kind="eval") as track:  # as evaluate.py
        for s in (2, 4):
            metrics = {"acc": s / 10, "per_task": {"x": 1.0}}
            rd.eval_json(s).write_text(json.dumps({"schema": 1, "step": s, "metrics": metrics}))
            track.log(metrics, s, prefix="eval/")

    got = _read(name, rd, "exp1", root, monkeypatch)
    assert got["name"] == "lr0.0001-abc" and got["group"] == "exp1" and got["axes"] == AXES
    assert [(s, r["train/loss"]) for s, r in got["train"]] == [(1, 1.0), (2, 2.0), (3, 13.0), (4, 14.0), (5, 15.0)]
    assert all("train/nan" not in r and "train/time" not in r for _, r in got["train"])  # finite numbers only
    assert [(s, r["eval/acc"]) for s, r in got["eval"]] == [(2, 0.2), (4, 0.4)]


def test_a_missing_tracker_package_names_its_extra(tmp_path, monkeypatch):
    from harness.errors import ConfigError
    from harness.tracking import open_trackers

    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb -> ImportError
    with pytest.raises(ConfigError, match=r"\.\[wandb\]"):
        open_trackers(["wandb"], RunDir(tmp_path / "run"), "r", {}, {"name": "e"})


def test_wandb_ids_are_stable_and_valid():
    from harness.tracking.wandb_tracker import wandb_id

    assert wandb_id("lr3e-4-full-abc_1") == "lr3e-4-full-abc_1"
    ids = {wandb_id(r) for r in ("lr0.0001-x", "lr0-0001-x", "a" * 80, "a" * 81)}
    assert len(ids) == 4 and all(len(i) <= 64 and all(c.isalnum() or c in "-_" for c in i) for i in ids)
    assert wandb_id("lr0.0001-x") == wandb_id("lr0.0001-x")


def test_every_tracker_follows_a_killed_harness_run_and_its_evaluation(tmp_path, offline, monkeypatch):
    """The real loop and evaluation, killed after step 3 (checkpoint at 2) and resumed, with every tracker that
    is installed: each holds the training log's rows once and each checkpoint's eval metrics at its step."""
    names = [n for n, pkg in sorted(PACKAGES.items()) if _importable(pkg)]
    if not names:
        pytest.skip("none of the wandb, mlflow, trackio extras is installed")
    exp = build_tiny(tmp_path)
    over = ["train.report_to=[" + ",".join(names) + "]", "train.save_every_steps=2", "train.epochs=1"]
    spec = load_experiment(exp, over).runs[0]
    rdir = tmp_path / "run"
    cmd = HARNESS + ["train", str(exp), *[x for o in over for x in ("-o", o)], "--out", str(rdir)]
    killed = subprocess.run(cmd, env={**_child_env(), "HARNESS_FAULT": "train_step:3"}, capture_output=True,
                            text=True)
    assert killed.returncode != 0
    done = subprocess.run(cmd, env=_child_env(), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    from harness.evaluation.evaluate import evaluate_run

    results = evaluate_run(rdir, spec.config)
    rd = RunDir(rdir)
    logged = [json.loads(x) for x in rd.metrics.read_text().splitlines()]
    for name in names:
        got = _read(name, rd, spec.config.name, rd.tracking, monkeypatch)
        assert got["name"] == spec.run_id and got["group"] == spec.config.name, name
        assert [s for s, _ in got["train"]] == [r["step"] for r in logged], name  # each step once
        assert [r["train/loss"] for _, r in got["train"]] == pytest.approx([r["loss"] for r in logged], rel=1e-6)
        assert [s for s, _ in got["eval"]] == [r["step"] for r in results], name
        for (_, row), res in zip(got["eval"], results):
            want = {f"eval/{k}": v for k, v in res["metrics"].items() if isinstance(v, (int, float))
                    and not isinstance(v, bool) and math.isfinite(v)}
            assert set(row) - {"eval/step"} == set(want), name  # the finite numbers, all of them
            assert {k: row[k] for k in want} == pytest.approx(want, rel=1e-6, abs=1e-9), name


def _child_env() -> dict:
    """This environment without WANDB_SERVICE: a wandb run of this process sets it, and a child would share this
    process's wandb-core, where a killed child's run stays "in use" (its own process exits with the child)."""
    return {k: v for k, v in os.environ.items() if k != "WANDB_SERVICE"}


def _importable(pkg: str) -> bool:
    try:
        __import__(pkg)
    except ImportError:
        return False
    return True

