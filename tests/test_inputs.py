"""A run is tied to what it read: content fingerprints (never mtimes), inputs.json, the "changed" state that
`harness status` shows and `harness run` refuses (or keeps with --accept-changed-inputs); options that do not
apply are no part of a run's identity."""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from pathlib import Path

import pytest

from harness import fingerprint, inputs
from harness.errors import ConfigError, HarnessError
from harness.evaluation.identity import eval_hash
from harness.grid import config_hash, load_experiment
from harness.launch.status import run_status, status_rows
from harness.launch.submit import launch
from harness.layout import RunDir
from tests.test_launch_unit import fake_pipeline  # noqa: F401 - the fixture

STUDY = """\
name: study
results_dir: {root}/results
data: {{train: {{path: {data}}}}}
train: {{epochs: 1, lr: 1e-4}}
launcher: {{backend: debug}}
grid:
  regime.name: [prompt_masked, full]
"""


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A fresh digest cache for the test (the module keeps the loaded cache in memory)."""
    monkeypatch.setenv("HARNESS_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(fingerprint, "_cache", None)
    return tmp_path / "cache" / fingerprint.CACHE_FILE


def _old(path: Path, seconds: float = 60.0) -> None:
    """Give a file an mtime in the past (a file written long before it is hashed)."""
    t = time.time() - seconds
    os.utime(path, (t, t))


def test_fingerprint_is_the_contents_not_the_mtime_and_is_cached(tmp_path, cache):
    f = tmp_path / "data.jsonl"
    f.write_text('{"text": "a"}\n')
    _old(f)
    fp = fingerprint.fingerprint(f)
    assert fp["bytes"] == f.stat().st_size and fp["files"] == 1
    stored = json.loads(cache.read_text())
    assert stored[str(f.resolve())][:2] == [f.stat().st_size, f.stat().st_mtime_ns]  # keyed by path+size+mtime
    os.utime(f)  # touched: a new mtime, the same bytes
    assert fingerprint.fingerprint(f)["sha256"] == fp["sha256"]
    copy = tmp_path / "copy.jsonl"
    shutil.copy(f, copy)
    assert fingerprint.fingerprint(copy)["sha256"] == fp["sha256"]
    f.write_text('{"text": "b"}\n')  # same size, new contents, just now: hashed again, and not cached (racy)
    assert fingerprint.fingerprint(f)["sha256"] != fp["sha256"]
    assert json.loads(cache.read_text())[str(f.resolve())][1] != f.stat().st_mtime_ns
    assert fingerprint.fingerprint(tmp_path / "missing") is None


def test_a_model_directory_counts_its_model_files_only(tmp_path, cache):
    m = tmp_path / "model"
    m.mkdir()
    (m / "config.json").write_text("{}")
    (m / "model.safetensors").write_bytes(b"\0" * 64)
    (m / "README.md").write_text("notes")
    fp = fingerprint.fingerprint(m)
    assert fp["files"] == 2
    (m / "README.md").write_text("other notes")
    (m / ".cache").mkdir()
    (m / ".cache" / "x.json").write_text("{}")
    assert fingerprint.fingerprint(m)["sha256"] == fp["sha256"]
    (m / "model.safetensors").write_bytes(b"\1" * 64)
    assert fingerprint.fingerprint(m)["sha256"] != fp["sha256"]


def test_eval_hash_does_not_change_when_the_base_model_is_touched_or_rewritten(tmp_path, cache):
    from harness.config import ExperimentConfig, ModelConfig

    m = tmp_path / "model"
    m.mkdir()
    (m / "config.json").write_text("{}")
    (m / "model.safetensors").write_bytes(b"\0" * 64)
    cfg = ExperimentConfig(model=ModelConfig(name_or_path=str(m)))
    h = eval_hash(cfg)
    for f in m.iterdir():  # touched, and copied over itself (new inode, new mtime, same bytes)
        os.utime(f, (1, 1))
        shutil.copy(f, tmp_path / "tmp")
        shutil.move(tmp_path / "tmp", f)
    assert eval_hash(cfg) == h
    (m / "model.safetensors").write_bytes(b"\1" * 64)
    assert eval_hash(cfg) != h


def _study(tmp_path) -> tuple[Path, Path]:
    data = tmp_path / "train.jsonl"
    data.write_text('{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}\n')
    p = tmp_path / "study.yaml"
    p.write_text(STUDY.format(root=tmp_path, data=data))
    return p, data


def test_a_finished_study_whose_data_changed_is_never_done_and_never_skipped(tmp_path, cache, fake_pipeline):  # noqa: F811
    path, data = _study(tmp_path)
    exp = load_experiment(path)
    assert [r["status"] for r in launch(exp, out=lambda *_: None)["results"]] == ["done", "done"]
    rec = json.loads(exp.run_dir(exp.runs[0]).inputs.read_text())
    assert rec["inputs"]["data.train.path"]["path"] == str(data)
    assert [r["state"] for r in status_rows(exp)] == ["done", "done"]

    os.utime(data)  # touching is no change
    assert [r["state"] for r in status_rows(exp)] == ["done", "done"]
    data.write_text(data.read_text() * 2)  # cut, extended, replaced: another data set
    rows = status_rows(exp)
    assert [r["state"] for r in rows] == ["changed", "changed"]
    assert f"data.train.path {data}: sha256" in rows[0]["detail"] and "when the run read it" in rows[0]["detail"]

    out: list[str] = []
    launch(exp, dry_run=True, out=out.append)  # the plan says so, and writes nothing
    assert any("read inputs that have changed" in ln for ln in out) and any("changed" in ln for ln in out)
    with pytest.raises(HarnessError, match=r"2 run\(s\) of study read inputs that have changed") as info:
        launch(exp, out=lambda *_: None)
    assert "data.train.path" in str(info.value) and "--accept-changed-inputs" in str(info.value)
    assert len(fake_pipeline["train"]) == 2  # nothing trained again, nothing skipped as done

    out.clear()
    s = launch(exp, accept_changed_inputs=True, out=out.append)
    assert s["to_run"] == [] and sum("kept its results" in ln for ln in out) == 2
    rec = json.loads(exp.run_dir(exp.runs[0]).inputs.read_text())
    assert rec["accepted"][0]["changes"][0]["key"] == "data.train.path"
    assert rec["inputs"]["data.train.path"]["sha256"] == fingerprint.fingerprint(data)["sha256"]
    assert [r["state"] for r in status_rows(exp)] == ["done", "done"]
    assert len(fake_pipeline["train"]) == 2


def test_a_job_refuses_a_run_whose_inputs_changed_after_it_started(tmp_path, cache):
    path, data = _study(tmp_path)
    exp = load_experiment(path)
    rd = exp.run_dir(exp.runs[0])
    inputs.check_unchanged(rd, exp.runs[0].config, exp.runs[0].run_id)  # first start: recorded
    assert rd.inputs.exists()
    inputs.check_unchanged(rd, exp.runs[0].config, exp.runs[0].run_id)  # resume, same inputs: fine
    data.write_text("")
    with pytest.raises(HarnessError, match="its inputs changed since it started"):
        inputs.check_unchanged(rd, exp.runs[0].config, exp.runs[0].run_id)
    assert run_status(exp, exp.runs[0]).state == "changed"


def test_a_run_without_a_record_is_not_called_changed(tmp_path, cache):
    path, _ = _study(tmp_path)
    exp = load_experiment(path)
    assert inputs.changes(RunDir(tmp_path / "nowhere"), exp.runs[0].config) == []


# ------------------------------------------------------------------------------------------ identity


def _ids(tmp_path, text: str, name: str = "e.yaml") -> list[str]:
    p = tmp_path / name
    p.write_text("name: t\ndata: {train: {path: d.jsonl}}\n" + text)
    return [r.run_id for r in load_experiment(p).runs]


def test_regime_options_that_do_not_apply_are_no_part_of_the_run(tmp_path):
    masked = _ids(tmp_path, "regime: {name: prompt_masked}\n")
    assert _ids(tmp_path, "regime: {name: prompt_masked, prompt_weight: 0.5, template: true}\n") == masked
    assert _ids(tmp_path, "regime: {name: full, turns: last, eot: false}\n") == _ids(tmp_path, "regime: {name: full}\n")
    # options the regime takes still make another run
    assert _ids(tmp_path, "regime: {name: prompt_masked, turns: last}\n") != masked
    grid = _ids(tmp_path, "grid:\n  regime.name: [prompt_masked, prompt_weight]\n  regime.prompt_weight: [0.1, 0.5]\n")
    # prompt_masked collapses to one run, with the plain config's hash
    assert len(grid) == 3 and grid[0] == "masked-" + masked[0].rsplit("-", 1)[1]
    exp = load_experiment(tmp_path / "e.yaml")
    assert exp.runs[0].axes == {"regime.name": "prompt_masked"} and exp.runs[0].config.regime.prompt_weight == 0.0
    assert [r.axes["regime.prompt_weight"] for r in exp.runs[1:]] == [0.1, 0.5]


def test_relative_paths_resolve_against_the_experiment_file(tmp_path, monkeypatch):
    study = tmp_path / "study"
    (study / "data").mkdir(parents=True)
    (study / "data" / "train.jsonl").write_text("")
    text = ("name: s\nmodel: {name_or_path: Qwen/Qwen2.5-0.5B, init_from: 'run:x'}\n"
            "data: {train: {path: data/train.jsonl}, eval: {path: GAIR/lima}}\neval: {pretrain_text: ../bios.jsonl}\n")
    (study / "s.yaml").write_text(text)
    monkeypatch.chdir("/")
    exp = load_experiment(study / "s.yaml")
    cfg = exp.runs[0].config
    assert cfg.data.train.path == str(study / "data" / "train.jsonl")
    assert cfg.eval.pretrain_text == str(tmp_path / "bios.jsonl")
    assert exp.out_dir == study / "results" / "s"
    # hub names and runs of the experiment are no paths
    assert (cfg.model.name_or_path, cfg.data.eval.path, cfg.model.init_from) == ("Qwen/Qwen2.5-0.5B", "GAIR/lima", "run:x")
    # the id hashes the paths as written: the study folder copied elsewhere keeps its run ids
    shutil.copytree(study, tmp_path / "copy")
    assert [r.run_id for r in load_experiment(tmp_path / "copy" / "s.yaml").runs] == [r.run_id for r in exp.runs]
    assert exp.runs[0].config_hash == exp.runs[0].run_id.rsplit("-", 1)[1] != config_hash(cfg)
    # root: moves the anchor
    (study / "r.yaml").write_text(text.replace("name: s", "name: s\nroot: data"))
    assert load_experiment(study / "r.yaml").runs[0].config.data.train.path == str(study / "data" / "data" / "train.jsonl")


def test_shipped_experiments_resolve_under_the_repository_root(monkeypatch):
    root = Path(__file__).resolve().parents[1]
    monkeypatch.chdir("/")
    for p in sorted((root / "experiments").glob("*.yaml")):
        exp = load_experiment(p)
        assert exp.out_dir == root / "results" / exp.config.name, p.name
        m = exp.config.model.name_or_path
        assert m.startswith(str(root / "results")) or not m.startswith("/"), (p.name, m)


# ------------------------------------------------------------------------------------------ preflight


def test_run_refuses_to_start_runs_that_would_fail_and_names_absolute_paths(tiny, tmp_path, capsys, monkeypatch):
    from harness.cli import main

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # as make sets it: a name that is no local path must be cached
    _, exp_path = tiny
    cases = {"data.max_length=1000000": r"data.max_length 1000000 exceeds the 128 positions of the model /",
             "model.name_or_path=model-typo": rf"model.name_or_path: 'model-typo' is no local path "
                                              rf"\({exp_path.parent}/model-typo not found\) and, offline",
             "model.name_or_path=./modle": rf"model.name_or_path: {exp_path.parent}/modle not found",
             "data.train.path=nothere.jsonl": rf"data.train.path: {exp_path.parent}/nothere.jsonl not found",
             "eval.pretrain_text=/no/bios.jsonl": r"eval.pretrain_text: /no/bios.jsonl not found"}
    for override, pattern in cases.items():
        assert main(["run", str(exp_path), "-o", override]) == 2
        err = capsys.readouterr().err
        assert "harness run refuses to start tiny: these would fail its runs at start" in err
        assert re.search(pattern, err), (override, err)
        if "not found" in pattern:
            assert f"resolve against {exp_path.parent}" in err
        assert not (exp_path.parent / "results" / "tiny" / "runs").exists()  # no worker, no run directory
        assert main(["doctor", str(exp_path), "-o", override]) == 1
        assert re.search(pattern, capsys.readouterr().out)


def test_a_tokenizer_without_a_chat_template_is_refused_before_the_run(tiny, tmp_path):
    from harness.preflight import check_config

    root, exp_path = tiny
    tok = tmp_path / "tok"
    shutil.copytree(root / "model", tok)
    cfg_file = tok / "tokenizer_config.json"
    d = json.loads(cfg_file.read_text())
    d.pop("chat_template", None)
    cfg_file.write_text(json.dumps(d))
    (tok / "chat_template.jinja").unlink(missing_ok=True)
    cfg = load_experiment(exp_path, [f"model.tokenizer={tok}"]).runs[0].config
    assert any("has no chat template" in p for p in check_config(cfg))
    cfg = load_experiment(exp_path, [f"model.tokenizer={tok}", "model.chat_template=chatml"]).runs[0].config
    assert check_config(cfg) == []


def test_inspect_prompt_weight_without_its_lambda_is_a_clear_error(tiny, capsys):
    from harness.cli import main

    root, _ = tiny
    args = ["inspect", "--data", str(root / "train.jsonl"), "--tokenizer", str(root / "model"), "--n", "1"]
    assert main(args + ["--regime", "prompt_weight"]) == 2
    err = capsys.readouterr().err
    assert "regime 'prompt_weight' needs option(s) ['prompt_weight']" in err
    assert "--regime prompt_weight:prompt_weight=0.1" in err
    assert main(args + ["--regime", "prompt_weight:prompt_weight=0.1"]) == 0
    with pytest.raises(ConfigError, match="has no option"):
        from harness.inspect import parse_regime

        parse_regime("prompt_masked:prompt_weight=0.1")


def test_eval_hash_follows_contents_not_where_the_study_folder_lies(tmp_path, cache):
    study = tmp_path / "study"
    (study / "model").mkdir(parents=True)
    (study / "model" / "config.json").write_text("{}")
    (study / "tasks").mkdir()
    (study / "tasks" / "t.yaml").write_text("task: t\n")
    (study / "bios.jsonl").write_text('{"text": "a"}\n')
    (study / "s.yaml").write_text("name: s\nmodel: {name_or_path: model}\ndata: {train: {path: bios.jsonl}}\n"
                                  "eval: {pretrain_text: bios.jsonl, include_path: [tasks], kl_sft: true}\n")
    h = eval_hash(load_experiment(study / "s.yaml").runs[0].config)
    shutil.copytree(study, tmp_path / "elsewhere")
    assert eval_hash(load_experiment(tmp_path / "elsewhere" / "s.yaml").runs[0].config) == h
    for edit in ("bios.jsonl", "tasks/t.yaml", "model/config.json"):  # but every file's contents count
        f = tmp_path / "elsewhere" / edit
        f.write_text(f.read_text() + " ")
        assert eval_hash(load_experiment(tmp_path / "elsewhere" / "s.yaml").runs[0].config) != h, edit
        h = eval_hash(load_experiment(tmp_path / "elsewhere" / "s.yaml").runs[0].config)


def test_every_path_error_names_the_absolute_path(tmp_path, monkeypatch):
    from harness.data import load_conversations
    from harness.data.templates import resolve_template
    from harness.evaluation.probes import read_jsonl
    from harness.modeling import check_local

    monkeypatch.chdir(tmp_path)
    for call, name in ((lambda: load_conversations("sub/nope.jsonl"), "sub/nope.jsonl"),
                       (lambda: read_jsonl("bios.jsonl", "text"), "bios.jsonl"),
                       (lambda: resolve_template("t.jinja"), "t.jinja"),
                       (lambda: check_local("./modle"), "modle"),
                       (lambda: load_experiment("study.yaml"), "study.yaml")):
        with pytest.raises(HarnessError) as info:
            call()
        assert str(tmp_path / name) in str(info.value), str(info.value)


def test_preflight_checks_every_run_of_the_grid_and_only_the_chosen_ones(tiny, tmp_path):
    from harness.grid import match_runs
    from harness.preflight import check_experiment

    _, exp_path = tiny
    exp = load_experiment(exp_path, ["grid.data.max_length=[64, 4096]"])
    problems = check_experiment(exp)
    big = [r.run_id for r in exp.runs if r.config.data.max_length == 4096]
    assert len(problems) == 1 and "exceeds the 128 positions" in problems[0] and big[0] in problems[0]
    assert check_experiment(exp, match_runs(exp.runs, "len64")) == []


def test_a_run_started_before_records_existed_gets_a_record_that_says_so(tmp_path, cache):
    path, _ = _study(tmp_path)
    exp = load_experiment(path)
    fresh, old = exp.run_dir(exp.runs[0]), exp.run_dir(exp.runs[1])
    inputs.check_unchanged(fresh, exp.runs[0].config, exp.runs[0].run_id)
    old.path.mkdir(parents=True)
    old.metrics.write_text('{"step": 1}\n')  # trained by a harness without inputs.json
    inputs.check_unchanged(old, exp.runs[1].config, exp.runs[1].run_id)
    assert "note" not in inputs.read_record(fresh) and "unknown" in inputs.read_record(old)["note"]
