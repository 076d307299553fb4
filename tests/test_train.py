"""The training engine on a 2-layer model in tmp_path: file set, isolation, exact resume, accumulation,
data parallelism, and faults (NaN, disk errors)."""

from __future__ import annotations

import json
import os
import socket

import pytest
import torch
from safetensors.torch import load_file

from harness.config import load_experiment
from harness.data import tokenize_conversation
from harness.errors import SupervisionError
from harness.train import TrainingError, train
from tests.tiny import build_tiny, conversations


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    return root, build_tiny(root)


def spec_of(exp_path, *overrides):
    return load_experiment(exp_path, list(overrides)).runs[0]


def weights(ckpt):
    return load_file(str(ckpt / "model.safetensors"))


def test_smoke_run_directory_file_set(tiny, tmp_path):
    root, exp = tiny
    rdir = tmp_path / "run"
    summary = train(spec_of(exp), rdir)
    assert summary["status"] == "done" and summary["steps"] > 0
    files = sorted(str(p.relative_to(rdir)) for p in rdir.rglob("*") if p.is_file())
    n = summary["steps"]
    ck = [f"checkpoints/step-{s:06d}/{f}" for s in (n // 2, n) for f in
          ("COMPLETED", "chat_template.jinja", "config.json", "generation_config.json", "model.safetensors",
           "tokenizer.json", "tokenizer_config.json", "trainer_state.pt")]
    assert files == sorted(["DONE", "config.yaml", "metrics.jsonl", "provenance.json"] + ck)
    rows = [json.loads(x) for x in (rdir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, n + 1)) and rows[-1]["epoch"] == 2.0
    assert {"lr", "loss", "loss_response", "loss_prompt", "supervised_tokens", "tokens", "tokens_per_s",
            "grad_norm"} <= set(rows[0])
    prov = json.loads((rdir / "provenance.json").read_text())
    assert prov["data"]["sha256"] and prov["mask"]["mask_hash"] and prov["packages"]["torch"]
    cfg = json.loads((rdir / f"checkpoints/step-{n:06d}/config.json").read_text())
    assert cfg["use_cache"] is True
    from transformers import AutoModelForCausalLM
    AutoModelForCausalLM.from_pretrained(rdir / f"checkpoints/step-{n:06d}")  # HF-loadable
    assert train(spec_of(exp), rdir)["status"] == "done"  # DONE: returns at once


def test_packed_logits_equal_each_example_alone(tiny):
    root, exp = tiny
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(root / "model")
    model = AutoModelForCausalLM.from_pretrained(root / "model", dtype=torch.float32, attn_implementation="sdpa").eval()
    exs = [tokenize_conversation(c["messages"], tok) for c in conversations(3, 7)]
    ids = torch.cat([torch.from_numpy(t.input_ids) for t in exs])[None]
    pos = torch.cat([torch.arange(len(t)) for t in exs])[None]
    with torch.no_grad():
        packed = model(input_ids=ids, position_ids=pos, use_cache=False).logits[0]
        alone = torch.cat([model(input_ids=torch.from_numpy(t.input_ids)[None]).logits[0] for t in exs])
        leaky = model(input_ids=ids, attention_mask=torch.ones_like(ids), position_ids=pos).logits[0]
    assert torch.allclose(packed, alone, atol=1e-5, rtol=0)
    assert (leaky - alone).abs().max() > 1e-3  # an attention mask silently breaks isolation: keep it out


def test_resume_is_bit_exact(tiny, tmp_path):
    root, exp = tiny
    spec = spec_of(exp)
    full = tmp_path / "full"
    n = train(spec, full)["steps"]
    calls = {"n": 0}

    def crash_after_epoch_1():  # checked once per step; the epoch-1 checkpoint is written at step n/2
        calls["n"] += 1
        if calls["n"] == n // 2 + 2:
            raise RuntimeError("simulated kill")
        return False

    part = tmp_path / "part"
    with pytest.raises(RuntimeError, match="simulated kill"):
        train(spec, part, should_stop=crash_after_epoch_1)
    assert not (part / "DONE").exists()
    assert train(spec, part)["status"] == "done"
    a, b = weights(full / f"checkpoints/step-{n:06d}"), weights(part / f"checkpoints/step-{n:06d}")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    la = (full / "metrics.jsonl").read_text().splitlines()
    lb = (part / "metrics.jsonl").read_text().splitlines()
    strip = lambda rows: [{k: v for k, v in json.loads(r).items() if k not in ("time", "tokens_per_s")} for r in rows]
    assert strip(la) == strip(lb)


def test_should_stop_checkpoints_and_resumes(tiny, tmp_path):
    root, exp = tiny
    spec = spec_of(exp)
    rdir = tmp_path / "r"
    out = train(spec, rdir, should_stop=lambda: True)
    assert out["status"] == "interrupted" and (rdir / "checkpoints/step-000001/COMPLETED").exists()
    assert train(spec, rdir)["status"] == "done"


def test_gradient_accumulation_equals_one_batch(tiny, tmp_path):
    root, exp = tiny
    # float64 so that AdamW's first step (about lr * sign(g)) does not amplify fp32 summation-order noise
    one = train(spec_of(exp, "train.max_steps=2", "model.dtype=float64"), tmp_path / "one")
    acc = train(spec_of(exp, "train.max_steps=2", "model.dtype=float64", "train.micro_batch_tokens=64"),
                tmp_path / "acc")
    assert one["steps"] == acc["steps"] == 2
    ma = [json.loads(x) for x in (tmp_path / "one/metrics.jsonl").read_text().splitlines()]
    mb = [json.loads(x) for x in (tmp_path / "acc/metrics.jsonl").read_text().splitlines()]
    for ra, rb in zip(ma, mb):
        assert abs(ra["loss"] - rb["loss"]) < 1e-9 and abs(ra["grad_norm"] - rb["grad_norm"]) < 1e-9
    a, b = weights(tmp_path / "one/checkpoints/step-000002"), weights(tmp_path / "acc/checkpoints/step-000002")
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-6


def test_sequence_normalisation_and_padding_run(tiny, tmp_path):
    root, exp = tiny
    s = train(spec_of(exp, "train.normalization=sequence", "train.packing=false", "train.max_steps=2"),
              tmp_path / "seq")
    assert s["status"] == "done"


def test_supervised_token_budget(tiny, tmp_path):
    root, exp = tiny
    s = train(spec_of(exp, "train.budget=supervised_tokens", "train.supervised_tokens=500"), tmp_path / "b")
    rows = [json.loads(x) for x in (tmp_path / "b/metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["supervised_tokens"] >= 500 and rows[-2]["supervised_tokens"] < 500


def test_nan_loss_stops_with_step_and_keeps_last_checkpoint(tiny, tmp_path, monkeypatch):
    root, exp = tiny
    import harness.train as T

    real = T.per_token_nll
    count = {"n": 0}

    def poisoned(logits, labels):
        count["n"] += 1
        out = real(logits, labels)
        return out * float("nan") if count["n"] >= 3 else out

    monkeypatch.setattr(T, "per_token_nll", poisoned)
    rdir = tmp_path / "nan"
    with pytest.raises(TrainingError, match="non-finite loss .* at optimizer step 3"):
        train(spec_of(exp, "train.save_every_steps=1"), rdir)
    assert (rdir / "checkpoints/step-000002/COMPLETED").exists() and not (rdir / "DONE").exists()


def test_disk_error_mid_checkpoint_leaves_no_completed(tiny, tmp_path, monkeypatch):
    root, exp = tiny
    import harness.checkpoint as C

    rdir = tmp_path / "disk"
    real_save = C.torch.save
    calls = {"n": 0}

    def failing_save(obj, path, *a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError(28, "No space left on device")
        return real_save(obj, path, *a, **k)

    monkeypatch.setattr(C.torch, "save", failing_save)
    with pytest.raises(OSError, match="No space left"):
        train(spec_of(exp), rdir)
    ck = sorted(p.name for p in (rdir / "checkpoints").iterdir())
    assert (rdir / "checkpoints/step-000008/COMPLETED").exists()
    assert not (rdir / "checkpoints/step-000016").exists() and ".tmp-step-000016" in ck
    monkeypatch.setattr(C.torch, "save", real_save)
    assert train(spec_of(exp), rdir)["status"] == "done"  # resumes from step 8, replaces the partial dir
    assert (rdir / "checkpoints/step-000016/COMPLETED").exists()


def test_bad_inputs(tiny, tmp_path):
    root, exp = tiny
    from harness.errors import ConfigError

    with pytest.raises(ConfigError, match="model path not found"):
        train(spec_of(exp, f"model.name_or_path={tmp_path}/nope"), tmp_path / "x")
    with pytest.raises(ConfigError, match="exceeds the model's 128 positions"):
        train(spec_of(exp, "data.max_length=512"), tmp_path / "y")
    with pytest.raises(SupervisionError, match="every one of the 48 examples was dropped"):
        train(spec_of(exp, "data.max_length=8"), tmp_path / "z")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank, world, port, exp, rdir):
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    train(load_experiment(exp, ["train.max_steps=4"]).runs[0], rdir)


def test_two_gloo_processes_equal_one(tiny, tmp_path):
    root, exp = tiny
    import torch.multiprocessing as mp

    one = tmp_path / "one"
    train(spec_of(exp, "train.max_steps=4"), one)
    two = tmp_path / "two"
    mp.spawn(_worker, args=(2, _free_port(), str(exp), str(two)), nprocs=2, join=True)
    a = [json.loads(x) for x in (one / "metrics.jsonl").read_text().splitlines()]
    b = [json.loads(x) for x in (two / "metrics.jsonl").read_text().splitlines()]
    assert len(a) == len(b) == 4
    for ra, rb in zip(a, b):
        for key in ("loss", "loss_response", "grad_norm", "supervised_tokens", "tokens"):
            assert abs(ra[key] - rb[key]) < 1e-5, (key, ra[key], rb[key])
    wa, wb = weights(one / "checkpoints/step-000004"), weights(two / "checkpoints/step-000004")
    assert max((wa[k] - wb[k]).abs().max().item() for k in wa) < 1e-5
