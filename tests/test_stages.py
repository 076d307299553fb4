"""Sequential stages (harness/stages.py): a grid point becomes a chain of runs, each stage starting from the
previous stage's final checkpoint; chains run in order on every backend and resume after a kill."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from harness.errors import ConfigError
from harness.grid import load_experiment
from harness.launch.jobs import RunJob, execute_run
from harness.launch.submit import launch
from harness.stages import chains, init_checkpoint
from harness.training.loop import train
from tests.tiny import weights

pytestmark = pytest.mark.usefixtures("one_torch_thread")

STAGES = [{"name": "a", "set": {"train.freeze.bottom_layers": 0}},
          {"name": "b", "set": {"train.lr": 1e-3, "data.train.limit": 24}}]


def write_exp(root: Path, exp: Path, name: str, stages=STAGES, grid=None, **train) -> Path:
    raw = yaml.safe_load(exp.read_text())
    raw["name"] = name
    raw["train"].update({"epochs": 1, **train})
    raw["stages"] = stages
    raw["grid"] = grid if grid is not None else {"train.freeze.bottom_layers": [0, 1]}
    p = root / f"{name}.yaml"
    p.write_text(yaml.safe_dump(raw))
    return p


def final(rdir: Path) -> Path:
    return sorted((rdir / "checkpoints").glob("step-*"))[-1]


def test_expansion_chains_stages_and_shares_a_pinned_stage(tiny):
    root, exp = tiny
    e = load_experiment(write_exp(root, exp, "expand"))
    ids = [r.run_id for r in e.runs]
    # stage a pins the freezing axis to 0: the grid's two points share one a run; b has one run per point
    assert len(ids) == 3 and ids[0].startswith("a-frozen0-") and [i.split("-")[0] for i in ids] == ["a", "b", "b"]
    a, b0, b1 = e.runs
    assert a.config.model.init_from is None
    assert b0.config.model.init_from == b1.config.model.init_from == f"run:{a.run_id}"
    assert b0.axes == {"stage": "b", "train.freeze.bottom_layers": 0}
    assert b1.config.train.freeze.bottom_layers == 1 and b1.config.train.lr == 1e-3
    assert b0.config.data.train.limit == 24 and a.config.data.train.limit is None
    assert [r.run_id for r in load_experiment(write_exp(root, exp, "expand")).runs] == ids  # stable
    # a later stage's hash covers the previous stage's config (through its run id)
    changed = [dict(STAGES[0], set={**STAGES[0]["set"], "train.lr": 1e-2}), STAGES[1]]
    e2 = load_experiment(write_exp(root, exp, "expand", stages=changed))
    assert not set(r.run_id for r in e2.runs) & set(ids)
    assert [len(g) for g in chains(e.runs)] == [3]


@pytest.mark.parametrize("stages, match", [
    ([{"name": "a", "set": {}}], "two or more"),
    ({"a": 1}, "two or more"),
    ([{"name": "a"}, {"name": "a"}], "two stages are named 'a'"),
    ([{"name": "a"}, {"name": "b-c"}], "invalid stage name"),
    ([{"name": "a"}, {"name": "b", "set": {"train.lrr": 1}}], "train.lr"),
    ([{"name": "a"}, {"name": "b", "set": {"model.init_from": "x"}}], "previous stage decides"),
    ([{"name": "a"}, {"name": "b", "sett": {}}], "'name' and 'set' only"),
    ([{"name": "a", "set": {"train.keep": "none"}}, {"name": "b"}], "keeps no weights"),
])
def test_bad_stages_are_clear_errors(tiny, stages, match):
    root, exp = tiny
    with pytest.raises(ConfigError, match=match) as info:
        load_experiment(write_exp(root, exp, "bad", stages=stages))
    assert "bad.yaml" in str(info.value.where)  # names the file (and line)


def test_debug_chain_starts_b_from_a_and_equals_a_manual_start(tiny, tmp_path):
    root, exp = tiny
    e = load_experiment(write_exp(root, exp, "chain", grid={}, **{"dropout": 0.1}))
    a, b = e.runs
    out = launch(e, backend="debug", out=lambda *_: None)
    assert [r["status"] for r in out["results"]] == ["done", "done"]
    ra, rb = e.run_dir(a).path, e.run_dir(b).path
    prov = json.loads((rb / "provenance.json").read_text())["init_from"]
    assert prov["init_from"] == f"run:{a.run_id}" and Path(prov["checkpoint"]) == final(ra)
    # the same training started from a's final checkpoint by path gives bit-identical weights
    from harness.grid import RunSpec
    import dataclasses

    manual_cfg = dataclasses.replace(b.config, model=dataclasses.replace(b.config.model, init_from=str(final(ra))))
    train(RunSpec("manual", {}, manual_cfg), tmp_path / "manual")
    wb, wm = weights(final(rb)), weights(final(tmp_path / "manual"))
    assert all(torch.equal(wb[k], wm[k]) for k in wb)
    # and differs from the same stage started from the base
    base_cfg = dataclasses.replace(b.config, model=dataclasses.replace(b.config.model, init_from=None))
    train(RunSpec("base", {}, base_cfg), tmp_path / "base")
    wz = weights(final(tmp_path / "base"))
    assert any(not torch.equal(wb[k], wz[k]) for k in wb)
    # every stage is evaluated against the pretrained base, in one base directory
    assert (e.out_dir / "base").is_dir() and not (e.out_dir / "bases").exists()
    assert all((e.run_dir(r).path / "eval").glob("step-*.json") for r in e.runs)


def test_chain_resumes_after_a_kill_bit_exact(tiny, tmp_path):
    root, exp = tiny
    kw = dict(grid={}, dropout=0.1, save_every_steps=2)
    whole = load_experiment(write_exp(root, exp, "whole", **kw))
    launch(whole, backend="debug", out=lambda *_: None)
    killed = load_experiment(write_exp(root, exp, "killed", **kw))
    a, b = killed.runs
    assert execute_run(a, killed.run_dir(a))["status"] == "done"
    calls = {"n": 0}

    def crash_mid_b():  # checked once per step: b (4 steps) dies after its step-2 checkpoint
        calls["n"] += 1
        if calls["n"] == 4:
            raise RuntimeError("simulated kill")
        return False

    with pytest.raises(RuntimeError, match="simulated kill"):
        train(b, killed.run_dir(b).path, should_stop=crash_mid_b)
    assert not (killed.run_dir(b).path / "DONE").exists()
    out = launch(killed, backend="debug", out=lambda *_: None)  # a is done (skipped); b resumes
    assert out["to_run"] == [b.run_id] and out["results"][0]["status"] == "done"
    prov = json.loads((killed.run_dir(b).path / "provenance.json").read_text())
    assert prov["resumed_from"] == 2
    wa = weights(final(whole.run_dir(whole.runs[1]).path))
    wb = weights(final(killed.run_dir(b).path))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_a_later_stage_waits_and_is_not_run_when_its_stage_failed(tiny):
    root, exp = tiny
    e = load_experiment(write_exp(root, exp, "waits", grid={}))
    a, b = e.runs
    assert execute_run(b, e.run_dir(b))["status"] == "waiting"  # a not done: b does not start
    assert not (e.run_dir(b).path / "checkpoints").exists()
    e.run_dir(a).path.mkdir(parents=True)
    with pytest.raises(ConfigError, match="not finished"):
        init_checkpoint(b.config)
    (e.run_dir(a).path / "FAILED").write_text("boom")
    lines: list[str] = []
    out = launch(e, backend="debug", only=b.run_id, out=lines.append)
    assert out["results"][0]["status"] == "waiting" and any(f"previous stage {a.run_id} failed" in x for x in lines)


def test_init_checkpoint_errors(tiny, tmp_path):
    root, exp = tiny
    e = load_experiment(write_exp(root, exp, "errs", grid={}))
    cfg = e.runs[1].config
    import dataclasses

    def with_init(p):
        return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, init_from=str(p)))

    with pytest.raises(ConfigError, match="no such run"):
        init_checkpoint(with_init(tmp_path / "nowhere"))
    (tmp_path / "adapter").mkdir()
    (tmp_path / "adapter/adapter_config.json").write_text("{}")
    with pytest.raises(ConfigError, match="adapter checkpoint"):
        init_checkpoint(with_init(tmp_path / "adapter"))
    (tmp_path / "pruned").mkdir()
    (tmp_path / "pruned/config.json").write_text("{}")
    with pytest.raises(ConfigError, match="holds no weights"):
        init_checkpoint(with_init(tmp_path / "pruned"))


def test_slurm_job_runs_a_whole_chain_in_order(tiny):
    root, exp = tiny
    e = load_experiment(write_exp(root, exp, "job"))
    first, *then = chains(e.runs)[0]
    job = RunJob(first, e.run_dir(first), None, tuple((s, e.run_dir(s)) for s in then))
    assert job()["status"] == "done"
    assert all((e.run_dir(r).path / "DONE").exists() for r in e.runs)
    assert job.checkpoint().function.then == job.then  # a requeued job keeps its chain


def test_local_workers_run_chains_in_order(tiny):
    root, exp = tiny
    e = load_experiment(write_exp(root, exp, "local", grid={"train.seed": [1, 2]}))
    assert [r.run_id.split("-")[0] for r in e.runs] == ["a", "b", "a", "b"]
    out = launch(e, backend="local", parallel=2, out=lambda *_: None)
    assert [r["status"] for r in out["results"]] == ["done"] * 4
    for a, b in (e.runs[:2], e.runs[2:]):
        prov = json.loads((e.run_dir(b).path / "provenance.json").read_text())
        # b started from a's final weights (their hash), after a was DONE
        sha = prov["init_from"]["sha256"]["model.safetensors"]
        from harness.provenance import file_sha256

        assert sha == file_sha256(final(e.run_dir(a).path) / "model.safetensors")
        assert (e.run_dir(a).path / "DONE").stat().st_mtime <= (e.run_dir(b).path / "provenance.json").stat().st_mtime


def test_a_lora_stage_on_a_full_stage_adapts_the_previous_stage_weights(tiny):
    """Stage b trains a LoRA adapter on stage a's weights: b's checkpoints hold the adapter only, and the
    evaluated model is a's weights with it merged (not the pretrained base's)."""
    pytest.importorskip("peft")
    from harness.modeling import load_model

    root, exp = tiny
    stages = [{"name": "a"}, {"name": "b", "set": {"model.adapter.method": "lora", "model.adapter.r": 4,
                                                   "train.lr": 1e-2}}]
    e = load_experiment(write_exp(root, exp, "lora", stages=stages, grid={}))
    a, b = e.runs
    assert all(r["status"] == "done" for r in launch(e, backend="debug", out=lambda *_: None)["results"])
    ckpt = final(e.run_dir(b).path)
    assert (ckpt / "adapter_config.json").exists() and not (ckpt / "model.safetensors").exists()
    cpu = torch.device("cpu")
    tuned = load_model(b.config, ckpt, cpu, training=False)
    a_model = load_model(a.config, final(e.run_dir(a).path), cpu, training=False)
    ids = torch.tensor([[5, 17, 42, 9, 3]])
    with torch.no_grad():
        lt, la = tuned(input_ids=ids).logits, a_model(input_ids=ids).logits
    # LoRA's B starts at zero and moved a little: close to a's model, far closer than to the base
    base = load_model(b.config, b.config.model.name_or_path, cpu, training=False)
    with torch.no_grad():
        lb = base(input_ids=ids).logits
    assert 0 < (lt - la).abs().max() < (lt - lb).abs().max()
    adapter_cfg = json.loads((ckpt / "adapter_config.json").read_text())
    assert Path(adapter_cfg["base_model_name_or_path"]) == final(e.run_dir(a).path).resolve()


def test_status_says_why_a_later_stage_waits(tiny):
    from harness.launch.status import status_rows

    root, exp = tiny
    e = load_experiment(write_exp(root, exp, "status", grid={}))
    a, b = e.runs
    rows = {r["run_id"]: r for r in status_rows(e)}
    assert rows[b.run_id]["waiting"] == f"waits for its previous stage {a.run_id}" and rows[a.run_id]["waiting"] is None
    e.run_dir(a).path.mkdir(parents=True)
    (e.run_dir(a).path / "FAILED").write_text("boom")
    assert status_rows(e)[1]["waiting"] == f"its previous stage {a.run_id} failed"
