"""The training engine on a 2-layer model in tmp_path: file set, isolation, exact resume, accumulation,
data parallelism, and faults (NaN, disk errors)."""

from __future__ import annotations

import dataclasses
import json
import os
import socket

import pytest
import torch
from safetensors.torch import load_file

from harness.attention import kernel_unavailable, needs_one_row, register
from harness.config.schema import ATTN_IMPLEMENTATIONS
from harness.errors import SupervisionError
from harness.grid import load_experiment
from harness.training.engine import TrainingError
from harness.training.loop import train
from harness.versions import EVAL_SCHEMA
from tests.tiny import spec_of, weights

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny models: one thread each (conftest)


def test_smoke_run_directory_file_set(tiny, tmp_path):
    root, exp = tiny
    rdir = tmp_path / "run"
    summary = train(spec_of(exp), rdir)
    assert summary["status"] == "done" and summary["steps"] > 0
    files = sorted(str(p.relative_to(rdir)) for p in rdir.rglob("*") if p.is_file())
    n = summary["steps"]
    ck = [f"checkpoints/step-{s:06d}/{f}" for s in (n // 2, n) for f in
          ("COMPLETED", "chat_template.jinja", "config.json", "generation_config.json", "model.safetensors",
           "tokenizer.json", "tokenizer_config.json")]  # a finished run keeps no optimizer state
    assert files == sorted(["DONE", "config.yaml", "metrics.jsonl", "progress.json", "provenance.json"] + ck)
    progress = json.loads((rdir / "progress.json").read_text())  # what `harness run` showed last: the last step
    assert (progress["phase"], progress["step"], progress["total"], progress["eta_s"]) == ("training", n, n, 0.0)
    rows = [json.loads(x) for x in (rdir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, n + 1)) and rows[-1]["epoch"] == 2.0
    assert {"lr", "loss", "loss_response", "loss_prompt", "supervised_tokens", "tokens", "tokens_per_s",
            "grad_norm"} <= set(rows[0])
    prov = json.loads((rdir / "provenance.json").read_text())
    assert prov["data"]["sha256"] and prov["mask"]["mask_hash"] and prov["packages"]["torch"]
    assert prov["git"]["commit"] and prov["git"]["dirty"] in (True, False) and prov["python"] and prov["host"]
    cfg = json.loads((rdir / f"checkpoints/step-{n:06d}/config.json").read_text())
    assert cfg["use_cache"] is True
    from transformers import AutoModelForCausalLM
    AutoModelForCausalLM.from_pretrained(rdir / f"checkpoints/step-{n:06d}")  # HF-loadable
    assert train(spec_of(exp), rdir)["status"] == "done"  # DONE: returns at once


def _tiny_data(exp, *overrides):
    from harness.training.loop import prepare_data

    spec = spec_of(exp, *overrides)
    tok, data = prepare_data(spec.config)
    return spec, tok, data


def _kernel_available(attn: str, device: str) -> str | None:
    """Why `attn` cannot run on `device` here (None: it can)."""
    why = kernel_unavailable(attn, device)
    if why and device == "cpu" and "CUDA" in why:
        why += " (test_packed_logits_equal_each_example_alone_gpu covers it: pytest -m gpu)"
    return why


def _check_packed_isolation(tiny, attn: str, device: str, dtype: torch.dtype) -> None:
    root, exp = tiny
    if (why := _kernel_available(attn, device)) is not None:
        pytest.skip(why)
    from transformers import AutoModelForCausalLM

    from harness.training.packing import Row, collate

    register()  # varlen_attention (load_model does this)
    _, tok, data = _tiny_data(exp)
    model = AutoModelForCausalLM.from_pretrained(root / "model", dtype=dtype, attn_implementation=attn).eval()
    model = model.to(device)
    groups = [[0, 5, 7, 11], [2, 3, 9]]
    rows = [Row(g, sum(len(data.examples[i]) for i in g)) for g in groups]
    micro = [[r] for r in rows] if needs_one_row(attn) else [rows]  # packing.layout_step's one_row rule
    tol = 2e-2 if dtype == torch.bfloat16 else 1e-5
    for mb in micro:
        b = collate(mb, data.examples, data.masks, tok.pad_token_id)
        assert b.attention_mask is None and b.input_ids.shape[0] == len(mb)
        with torch.no_grad():
            out = model(input_ids=b.input_ids.to(device), position_ids=b.position_ids.to(device),
                        use_cache=False).logits.float().cpu()
            for k, r in enumerate(mb):
                alone = torch.cat([model(input_ids=torch.from_numpy(data.examples[i].input_ids)[None].to(device))
                                   .logits[0].float().cpu() for i in r.examples])
                assert (out[k, :len(alone)] - alone).abs().max().item() < tol, (attn, k)
    if attn == "sdpa":
        b = collate(rows[:1], data.examples, data.masks, tok.pad_token_id)
        ids, pos = b.input_ids.to(device), b.position_ids.to(device)
        with torch.no_grad():
            alone = torch.cat([model(input_ids=torch.from_numpy(data.examples[i].input_ids)[None].to(device))
                               .logits[0].float() for i in groups[0]])
            leaky = model(input_ids=ids, attention_mask=torch.ones_like(ids), position_ids=pos).logits[0].float()
        assert (leaky - alone).abs().max() > 1e-3  # an attention mask silently breaks isolation: keep it out


# flex_attention compiles (inductor) on first use: ~40 s on 2 cores with a cold cache, ~10 s warm
_CPU_ATTN = [pytest.param(a, marks=pytest.mark.slow) if a == "flex_attention" else a for a in ATTN_IMPLEMENTATIONS]


@pytest.mark.parametrize("attn", _CPU_ATTN)
def test_packed_logits_equal_each_example_alone(tiny, attn):
    """Micro-batches as the engine lays them out for `attn` (collate: per-example position_ids, no attention
    mask; one row per micro-batch where harness.attention.needs_one_row) isolate examples, for every kernel the
    config accepts: on CPU where it runs (float32), the CUDA-only ones in the GPU variant below."""
    _check_packed_isolation(tiny, attn, "cpu", torch.float32)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("attn", ATTN_IMPLEMENTATIONS)
def test_packed_logits_equal_each_example_alone_gpu(tiny, attn):
    """The same on CUDA in bfloat16, where every kernel the config accepts runs (flash_attention_2 with flash-attn
    installed); varlen_attention here is torch's real varlen_attn."""
    _check_packed_isolation(tiny, attn, "cuda", torch.bfloat16)


def test_engine_loss_on_packed_rows_equals_examples_alone(tiny):
    """The engine's step loss (packed rows, LM head on supervised positions only) equals the weighted NLL of
    each example run alone through the full model, normalised over the whole step."""
    root, exp = tiny
    from transformers import AutoModelForCausalLM

    from harness.training.engine import Engine
    from harness.training.loss import per_token_nll
    from harness.training.packing import collate, pack_rows

    spec, tok, data = _tiny_data(exp, "model.dtype=float64")
    model = AutoModelForCausalLM.from_pretrained(root / "model", dtype=torch.float64)
    idx = list(range(12))
    rows = pack_rows([len(data.examples[i]) for i in idx], 64, idx)
    assert any(len(r.examples) > 1 for r in rows)
    batches = [collate(rows[:2], data.examples, data.masks, tok.pad_token_id),
               collate(rows[2:], data.examples, data.masks, tok.pad_token_id)]
    eng = Engine(model, spec.config.train, 10, sample_ids=batches[0].input_ids[:1, :16])
    assert eng.head is not None  # the fast path is the one under test
    with torch.no_grad():
        num = den = resp_sum = resp_n = 0.0
        for i in idx:
            t, m = data.examples[i], data.masks[i]
            ids = torch.from_numpy(t.input_ids)[None]
            nll = per_token_nll(model(input_ids=ids).logits, ids)[0]
            w = torch.from_numpy(m.weights[1:]).double()
            num, den = num + float((w * nll).sum()), den + float(w.sum())
            resp = torch.from_numpy((t.segments[1:] == 3) | (t.segments[1:] == 4))
            resp_sum, resp_n = resp_sum + float(nll[resp].sum()), resp_n + int(resp.sum())
    m, _ = eng.step(batches, metrics=True, step=1)
    assert abs(m.loss - num / den) < 1e-10
    assert abs(m.loss_response - resp_sum / resp_n) < 1e-10


def test_lm_head_on_supervised_positions_equals_full_logits(tiny, tmp_path, monkeypatch):
    root, exp = tiny
    import harness.training.engine as T

    args = ("train.max_steps=3", "model.dtype=float64", "regime.name=prompt_weight", "regime.prompt_weight=0.3")
    fast = train(spec_of(exp, *args), tmp_path / "fast")
    monkeypatch.setattr(T, "split_lm_head", lambda model, sample_ids=None: None)
    full = train(spec_of(exp, *args), tmp_path / "full")
    assert fast["steps"] == full["steps"] == 3
    ma = [json.loads(x) for x in (tmp_path / "fast/metrics.jsonl").read_text().splitlines()]
    mb = [json.loads(x) for x in (tmp_path / "full/metrics.jsonl").read_text().splitlines()]
    for ra, rb in zip(ma, mb):
        for key in ("loss", "loss_response", "loss_prompt", "grad_norm"):
            assert abs(ra[key] - rb[key]) < 1e-9, key
    a, b = weights(tmp_path / "fast/checkpoints/step-000003"), weights(tmp_path / "full/checkpoints/step-000003")
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-9


@pytest.mark.parametrize("layout", ["packed", "bucketed"])
def test_resume_is_bit_exact(tiny, tmp_path, layout):
    root, exp = tiny
    spec = spec_of(exp, "train.dropout=0.1", f"train.layout={layout}")  # dropout: the RNG state must be restored too
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


def test_should_stop_checkpoints_and_resumes(tiny, tmp_path, capfd):
    root, exp = tiny
    spec = spec_of(exp)
    rdir = tmp_path / "r"
    out = train(spec, rdir, should_stop=lambda: True)
    assert out["status"] == "interrupted" and (rdir / "checkpoints/step-000001/COMPLETED").exists()
    assert "resumed from" not in capfd.readouterr().err
    assert train(spec, rdir)["status"] == "done"
    total = json.loads((rdir / "DONE").read_text())["steps"]
    assert f"{spec.run_id}: resumed from step 1 of {total}" in capfd.readouterr().err  # in the run's log


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
    s = train(spec_of(exp, "train.normalization=sequence", "train.layout=padded", "train.max_steps=2"),
              tmp_path / "seq")
    assert s["status"] == "done"


def test_supervised_token_budget(tiny, tmp_path):
    root, exp = tiny
    s = train(spec_of(exp, "train.budget=supervised_tokens", "train.supervised_tokens=500"), tmp_path / "b")
    rows = [json.loads(x) for x in (tmp_path / "b/metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["supervised_tokens"] >= 500 and rows[-2]["supervised_tokens"] < 500
    # epochs count whole passes: the budget ends part-way through one (8 steps per epoch here)
    assert [r["epoch"] for r in rows] == [round((i + 1) / 8, 6) for i in range(len(rows))]
    assert s["steps"] == len(rows) == 13 and rows[-1]["epoch"] == 1.625
    # another regime supervises more tokens per example, so it reaches the same budget in fewer steps
    f = train(spec_of(exp, "train.budget=supervised_tokens", "train.supervised_tokens=500", "regime.name=full"),
              tmp_path / "f")
    rows_f = [json.loads(x) for x in (tmp_path / "f/metrics.jsonl").read_text().splitlines()]
    assert rows_f[-1]["supervised_tokens"] >= 500 and rows_f[-2]["supervised_tokens"] < 500
    assert f["steps"] < s["steps"]


def test_nan_loss_stops_with_step_and_keeps_last_checkpoint(tiny, tmp_path, monkeypatch):
    root, exp = tiny
    import harness.training.engine as T

    real = T.head_nll
    count = {"n": 0}

    def poisoned(hidden, head, targets):  # the loss of the third micro-batch (= optimizer step 3) becomes NaN
        count["n"] += torch.is_grad_enabled()  # the metrics' extra no-grad calls do not count
        out = real(hidden, head, targets)
        return out * float("nan") if count["n"] >= 3 else out

    monkeypatch.setattr(T, "head_nll", poisoned)
    rdir = tmp_path / "nan"
    with pytest.raises(TrainingError, match="non-finite loss .* at optimizer step 3"):
        train(spec_of(exp, "train.save_every_steps=1"), rdir)
    assert (rdir / "checkpoints/step-000002/COMPLETED").exists() and not (rdir / "DONE").exists()


def test_disk_error_mid_checkpoint_leaves_no_completed(tiny, tmp_path, monkeypatch):
    root, exp = tiny
    import harness.training.checkpoint as C

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


def _worker(rank, world, port, exp, rdir, style):
    env = (dict(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank)) if style == "torchrun" else
           dict(SLURM_PROCID=str(rank), SLURM_NTASKS=str(world), SLURM_LOCALID=str(rank)))
    os.environ.update(env, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    train(load_experiment(exp, ["train.max_steps=4"]).runs[0], rdir)


@pytest.mark.parametrize("style", ["torchrun", "slurm"])
def test_two_gloo_processes_equal_one(tiny, tmp_path, style):
    root, exp = tiny
    import torch.multiprocessing as mp

    one = tmp_path / "one"
    train(spec_of(exp, "train.max_steps=4"), one)
    two = tmp_path / "two"
    # fork: the workers inherit the imported torch/transformers (spawn re-imports them: ~10 s per test)
    mp.start_processes(_worker, args=(2, _free_port(), str(exp), str(two), style), nprocs=2, join=True,
                       start_method="fork")
    a = [json.loads(x) for x in (one / "metrics.jsonl").read_text().splitlines()]
    b = [json.loads(x) for x in (two / "metrics.jsonl").read_text().splitlines()]
    assert len(a) == len(b) == 4
    for ra, rb in zip(a, b):
        for key in ("loss", "loss_response", "loss_prompt", "grad_norm", "supervised_tokens", "tokens"):
            assert abs(ra[key] - rb[key]) < 1e-5, (key, ra[key], rb[key])
    wa, wb = weights(one / "checkpoints/step-000004"), weights(two / "checkpoints/step-000004")
    assert max((wa[k] - wb[k]).abs().max().item() for k in wa) < 1e-5
    assert sorted(p.name for p in two.iterdir()) == sorted(p.name for p in one.iterdir())  # rank 0 wrote


def test_dist_env_parsing(monkeypatch):
    from harness.training.distributed import env_ranks

    assert env_ranks({}) == (0, 1, 0)
    assert env_ranks({"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "1"}) == (3, 8, 1)
    assert env_ranks({"SLURM_PROCID": "5", "SLURM_NTASKS": "6", "SLURM_LOCALID": "2"}) == (5, 6, 2)
    # torchrun inside a SLURM allocation: torchrun's variables win
    assert env_ranks({"RANK": "1", "WORLD_SIZE": "2", "SLURM_PROCID": "0", "SLURM_NTASKS": "1"}) == (1, 2, 0)


# ------------------------------------------------------------------------------------------ options


def test_pad_token_missing_is_set_and_said(tiny, tmp_path, caplog):
    root, exp = tiny
    import shutil

    from transformers import AutoTokenizer

    tdir = tmp_path / "tok"
    shutil.copytree(root / "model", tdir)
    cfg = json.loads((tdir / "tokenizer_config.json").read_text())
    cfg.pop("pad_token", None)
    (tdir / "tokenizer_config.json").write_text(json.dumps(cfg))
    assert AutoTokenizer.from_pretrained(tdir).pad_token is None
    with caplog.at_level("WARNING"):
        out = train(spec_of(exp, f"model.tokenizer={tdir}", "train.max_steps=1"), tmp_path / "r")
    assert out["status"] == "done" and "no pad token" in caplog.text
    prov = json.loads((tmp_path / "r/provenance.json").read_text())
    assert prov["tokenizer"]["pad_token"] == "<|endoftext|>"


def test_checkpoint_schedule_and_keep_policies(tiny, tmp_path):
    root, exp = tiny
    from harness.layout import TRAINER_STATE, RunDir
    from harness.training.checkpoint import prune_checkpoints

    r = tmp_path / "r"
    rd = RunDir(r)
    train(spec_of(exp, "train.save_every_epoch=false", "train.save_every_steps=5", "train.keep=last"), r)
    # steps 5, 10, 15 and the last (16): none has an eval yet, so keep: last deletes nothing
    assert [s for s, _ in rd.completed_checkpoints()] == [5, 10, 15, 16]
    # optimizer state only where a resume would need it: nowhere, the run is DONE
    assert not [p for _, p in rd.completed_checkpoints() if (p / TRAINER_STATE).exists()]

    def evaluated(step, nll):
        rd.eval_dir.mkdir(exist_ok=True)
        rd.eval_json(step).write_text(json.dumps({"schema": EVAL_SCHEMA, "metrics": {"nll/response": nll}}))

    evaluated(5, 1.0)
    evaluated(15, 2.0)
    rd.eval_json(10).write_text('{"schema": ')  # half-written: still needs its evaluation
    assert prune_checkpoints(rd, "best", metric="nll/response", mode="min") == [rd.step_dir(15)]
    assert [s for s, _ in rd.completed_checkpoints()] == [5, 10, 16]  # best (5), unevaluated (10), newest
    prune_checkpoints(rd, "last")
    assert [s for s, _ in rd.completed_checkpoints()] == [10, 16]
    assert not rd.step_dir(5).exists() and rd.eval_json(5).exists()  # the result stays, the weights go
    # with every_checkpoint off only the newest is ever evaluated: the others are not waiting for anything
    prune_checkpoints(rd, "last", every_checkpoint=False)
    assert [s for s, _ in rd.completed_checkpoints()] == [16]
    # none: results only. The newest stays while the run could still resume; once finished and evaluated it
    # goes too, and the run is done with its results and no weights
    assert prune_checkpoints(rd, "none") == [] and [s for s, _ in rd.completed_checkpoints()] == [16]
    assert prune_checkpoints(rd, "none", finished=True) == []  # step 16 is not evaluated yet: kept
    evaluated(16, 3.0)
    assert prune_checkpoints(rd, "none", finished=True) == [rd.step_dir(16)]
    assert rd.completed_checkpoints() == [] and rd.state(True).state == "done" and rd.eval_json(16).exists()


def test_optimizer_state_only_in_the_newest_checkpoint_of_a_running_run(tiny, tmp_path):
    root, exp = tiny
    from harness.layout import TRAINER_STATE, RunDir

    r = tmp_path / "r"
    s = train(spec_of(exp, "train.max_steps=12", "train.save_every_epoch=false", "train.save_every_steps=4"),
              r, should_stop=lambda: (RunDir(r).latest_checkpoint() or (0,))[0] >= 8)
    assert s["status"] == "interrupted"
    states = {st: (p / TRAINER_STATE).exists() for st, p in RunDir(r).completed_checkpoints()}
    # stopped at the step after checkpoint 8 (a checkpoint at that step too): keep: all keeps every checkpoint's
    # weights, the optimizer state only in the newest, where the resume needs it
    assert states == {4: False, 8: False, 9: True}
    state = torch.load(RunDir(r).step_dir(9) / TRAINER_STATE, weights_only=True)  # the one resumable dict
    assert {"optimizer", "scheduler", "rng", "progress"} <= set(state) and state["progress"]["step"] == 9
    assert train(spec_of(exp, "train.max_steps=12", "train.save_every_epoch=false", "train.save_every_steps=4"),
                 r)["status"] == "done"
    assert [st for st, _ in RunDir(r).completed_checkpoints()] == [4, 8, 9, 12]
    assert json.loads((r / "provenance.json").read_text())["resumed_from"] == 9


def test_dropout_with_gradient_checkpointing_is_exact(tiny, tmp_path):
    """Non-reentrant checkpointing replays dropout's RNG: same weights with and without it."""
    root, exp = tiny
    args = ("train.max_steps=2", "train.dropout=0.2", "model.dtype=float64")
    train(spec_of(exp, *args), tmp_path / "a")
    train(spec_of(exp, *args, "train.gradient_checkpointing=true"), tmp_path / "b")
    train(spec_of(exp, "train.max_steps=2", "model.dtype=float64"), tmp_path / "c")
    a, b, c = (weights(tmp_path / f"{x}/checkpoints/step-000002") for x in "abc")
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-12
    assert max((a[k] - c[k]).abs().max().item() for k in a) > 1e-6  # dropout did act


def test_bf16_autocast_runs(tiny, tmp_path):
    root, exp = tiny
    train(spec_of(exp, "train.max_steps=2", "train.precision=bf16"), tmp_path / "r")
    rows = [json.loads(x) for x in (tmp_path / "r/metrics.jsonl").read_text().splitlines()]
    assert all(r["loss"] == r["loss"] and r["loss"] > 0 for r in rows)


def test_resume_refuses_a_changed_plan(tiny, tmp_path):
    root, exp = tiny
    from harness.errors import ConfigError

    r = tmp_path / "r"
    train(spec_of(exp), r, should_stop=lambda: True)
    with pytest.raises(ConfigError, match="other data or another plan"):
        train(spec_of(exp, "train.epochs=3"), r)


def test_cli_train_selects_run_by_prefix(tiny, tmp_path, capsys):
    root, exp = tiny
    import argparse

    from harness.errors import ConfigError
    from harness.training.loop import add_parser

    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers(dest="command"))
    grid = ["-o", "grid.regime.name=[prompt_masked, full]", "-o", "train.max_steps=1"]
    args = parser.parse_args(["train", str(exp), *grid, "--run", "full", "--out", str(tmp_path / "r")])
    assert args.func(args) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["run_id"].startswith("full-")
    assert (tmp_path / "r/DONE").exists()
    args = parser.parse_args(["train", str(exp), *grid, "--run", "nope"])
    with pytest.raises(ConfigError, match="matches no run"):
        args.func(args)


@pytest.mark.slow
def test_compile_matches_eager(tiny, tmp_path):
    """train.compile: the same losses as eager (inductor's fused kernels round differently: 1e-4)."""
    root, exp = tiny
    train(spec_of(exp, "train.max_steps=3"), tmp_path / "eager")
    train(spec_of(exp, "train.max_steps=3", "train.compile=true"), tmp_path / "compiled")
    a = [json.loads(x) for x in (tmp_path / "eager/metrics.jsonl").read_text().splitlines()]
    b = [json.loads(x) for x in (tmp_path / "compiled/metrics.jsonl").read_text().splitlines()]
    for ra, rb in zip(a, b):
        assert abs(ra["loss"] - rb["loss"]) < 1e-4 and abs(ra["loss_prompt"] - rb["loss_prompt"]) < 1e-4


def test_short_rows_keep_examples_and_order():
    from harness.training.packing import Row, short_rows

    lengths = [40, 100, 30, 70, 10, 64, 5]
    rows = [Row([0, 1, 2], 170), Row([3, 4, 5], 144), Row([6], 5)]
    out = short_rows(rows, lengths)
    assert out[0].examples[:2] == [0, 2]  # first fit, examples visited in their planned order
    assert sorted(i for r in out for i in r.examples) == list(range(7))
    assert all(r.length == sum(lengths[i] for i in r.examples) <= 128 for r in out)  # 100 -> rows of 128
    assert short_rows([Row([0, 1], 120)], [100, 20]) == [Row([0, 1], 120)]  # 128 is not shorter: kept
    assert short_rows([Row([0, 1], 500)], [300, 200]) == [Row([0], 300), Row([1], 200)]  # rows of 320
    assert short_rows([], lengths) == []


def test_short_rows_step_equals_full_rows(tiny):
    """One engine step on the max_length rows and on the same examples re-laid into short rows: the same loss
    and metrics (float64: only the summation order differs) and the same gradients."""
    root, exp = tiny
    from transformers import AutoModelForCausalLM

    from harness.training.engine import Engine
    from harness.training.packing import collate, pack_rows, short_rows

    spec, tok, data = _tiny_data(exp, "model.dtype=float64")
    idx = list(range(16))
    lengths = [len(t) for t in data.examples]
    rows = pack_rows(lengths, 256, idx)
    short = short_rows(rows, lengths, multiple=8)
    assert max(r.length for r in short) < max(r.length for r in rows)  # the test exercises a real re-layout
    res = []
    for rs in (rows, short):
        model = AutoModelForCausalLM.from_pretrained(root / "model", dtype=torch.float64)
        eng = Engine(model, spec.config.train, 10)
        b = collate(rs, data.examples, data.masks, tok.pad_token_id)
        m, gn = eng.step([b], metrics=True, step=1)
        res.append((m, gn, [p.detach().clone() for p in model.parameters()]))
    (m0, g0, p0), (m1, g1, p1) = res
    assert _metrics_close(m0, m1) and abs(g0 - g1) < 1e-10
    assert all(torch.allclose(a, b, rtol=1e-10, atol=1e-12) for a, b in zip(p0, p1))


# ------------------------------------------------------------------------------------------ bucketed layout


def test_bucket_rows_groups_by_length():
    from harness.training.packing import Row, bucket_rows, row_width

    lengths = [40, 100, 30, 70, 10, 64, 5, 33, 12, 300]
    rows = [Row([0, 1, 2], 170), Row([3, 4, 5], 144), Row([6, 7, 8], 50), Row([9], 300)]
    groups = bucket_rows(rows, lengths, budget=256, cap=512)
    flat = [r.examples for g in groups for r in g]
    assert all(len(e) == 1 for e in flat) and sorted(e[0] for e in flat) == list(range(10))  # each example once
    order = [lengths[e[0]] for e in flat]
    assert order == sorted(order)  # sorted by length, groups contiguous
    assert all(r.length == lengths[r.examples[0]] for g in groups for r in g)
    for g in groups:
        w = row_width(g, cap=512)
        assert w % 8 == 0 and w >= max(r.length for r in g)
        assert len(g) == 1 or len(g) * w <= 256  # the micro-batch token budget (a single row may exceed it)
    assert [r.examples for r in groups[-1]] == [[9]]  # the long one alone
    again = bucket_rows(list(reversed(rows)), lengths, budget=256, cap=512)
    assert [[r.length for r in g] for g in again] == [[r.length for r in g] for g in groups]
    # group cost 0: no padding at all is worth any number of micro-batches; huge: one micro-batch per budget
    assert all(len({r.length for r in g}) == 1 for g in bucket_rows(rows, lengths, 4096, multiple=1, group_cost=0))
    assert len(bucket_rows(rows, lengths, 4096, group_cost=10**9)) == 1
    assert row_width([Row([0], 61)], cap=62) == 62 and row_width([Row([0], 70)], cap=64) == 70
    assert bucket_rows([], lengths, 256) == []


def test_bucketed_logits_equal_each_example_alone_no_mask(tiny, monkeypatch):
    """Bucketed micro-batches (right-padded rows, position ids 0..W-1, no attention mask): transformers builds
    no mask, sdpa runs with is_causal=True, and every example's logits equal the example run alone."""
    root, exp = tiny
    import torch.nn.functional as F
    from transformers import AutoModelForCausalLM

    from harness.training.packing import Row, bucket_rows, collate, row_width

    _, tok, data = _tiny_data(exp)
    model = AutoModelForCausalLM.from_pretrained(root / "model", dtype=torch.float64, attn_implementation="sdpa").eval()
    idx = [0, 5, 7, 11, 13, 2]
    lengths = [len(t) for t in data.examples]
    groups = bucket_rows([Row(idx, 0)], lengths, budget=10**6, multiple=16, group_cost=10**6)
    assert len(groups) == 1 and len({lengths[i] for i in idx}) > 1  # one micro-batch with real padding
    g = groups[0]
    b = collate(g, data.examples, data.masks, tok.pad_token_id, width=row_width(g, multiple=16), causal=True)
    assert b.attention_mask is None and b.input_ids.shape == (len(idx), row_width(g, multiple=16))
    assert torch.equal(b.position_ids, torch.arange(b.input_ids.shape[1]).expand_as(b.input_ids))
    calls = []
    sdpa = F.scaled_dot_product_attention

    def spy(*args, **kw):
        calls.append((kw.get("attn_mask"), kw.get("is_causal")))
        return sdpa(*args, **kw)

    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
    with torch.no_grad():
        out = model(input_ids=b.input_ids, position_ids=b.position_ids, use_cache=False).logits
    monkeypatch.setattr(F, "scaled_dot_product_attention", sdpa)
    assert len(calls) == model.config.num_hidden_layers
    assert all(m is None and c is True for m, c in calls)  # no mask built: sdpa's own causal kernel
    with torch.no_grad():
        for row, r in enumerate(g):
            i = r.examples[0]
            alone = model(input_ids=torch.from_numpy(data.examples[i].input_ids)[None]).logits[0]
            assert (out[row, :len(alone)] - alone).abs().max().item() < 1e-10
            assert (b.labels[row, len(alone):] == -100).all() and (b.weights[row, len(alone):] == 0).all()
    assert b.n_tokens == sum(lengths[i] for i in idx)


@pytest.mark.parametrize("norm", ["token", "sequence"])
def test_bucketed_step_equals_packed(tiny, norm):
    """One engine step, the same step's rows laid out packed (short rows) and bucketed (several micro-batches of
    right-padded rows): the same loss, metrics (tokens, supervised tokens, fixed-mask NLLs), grad norm and
    weights after the step (float64: only the summation order differs)."""
    root, exp = tiny
    import dataclasses

    from transformers import AutoModelForCausalLM

    from harness.training.engine import Engine
    from harness.training.packing import layout_step, pack_rows

    spec, tok, data = _tiny_data(exp, "model.dtype=float64", f"train.normalization={norm}",
                                 "train.micro_batch_tokens=128")
    idx = list(range(24))
    lengths = [len(t) for t in data.examples]
    rows = pack_rows(lengths, 64, idx)
    res = []
    # packed one_row: one row per micro-batch (what flash_attention_2 needs to keep packed examples apart)
    for layout, one_row in (("packed", False), ("bucketed", False), ("packed", True)):
        tc = dataclasses.replace(spec.config.train, layout=layout)
        batches = layout_step(rows, data, tc, 64, tok.pad_token_id, one_row=one_row)
        if layout == "bucketed":
            assert len(batches) > 1 and all(b.attention_mask is None for b in batches)
            assert sum(b.input_ids.numel() for b in batches) > sum(b.n_tokens for b in batches)  # real padding
        if one_row:
            assert len(batches) == len(rows) > 1 and all(b.input_ids.shape[0] == 1 for b in batches)
        model = AutoModelForCausalLM.from_pretrained(root / "model", dtype=torch.float64)
        eng = Engine(model, tc, 10, sample_ids=batches[0].input_ids[:1, :8])
        assert eng.head is not None
        m, gn = eng.step(batches, metrics=True, step=1)
        res.append((m, gn, [p.detach().clone() for p in model.parameters()]))
    (m0, g0, p0) = res[0]
    for m1, g1, p1 in res[1:]:
        assert m0.tokens == m1.tokens == sum(lengths[i] for i in idx) and m0.supervised == m1.supervised
        assert _metrics_close(m0, m1) and abs(g0 - g1) < 1e-10
        assert all(torch.allclose(a, b, rtol=1e-10, atol=1e-12) for a, b in zip(p0, p1))


def test_bucketed_train_equals_packed(tiny, tmp_path):
    root, exp = tiny
    args = ("train.max_steps=3", "model.dtype=float64")
    train(spec_of(exp, *args), tmp_path / "packed")
    train(spec_of(exp, *args, "train.layout=bucketed"), tmp_path / "bucketed")
    ma = [json.loads(x) for x in (tmp_path / "packed/metrics.jsonl").read_text().splitlines()]
    mb = [json.loads(x) for x in (tmp_path / "bucketed/metrics.jsonl").read_text().splitlines()]
    assert len(ma) == len(mb) == 3
    for ra, rb in zip(ma, mb):
        assert ra["tokens"] == rb["tokens"] and ra["supervised_tokens"] == rb["supervised_tokens"]
        for key in ("loss", "loss_response", "loss_prompt", "grad_norm"):
            assert abs(ra[key] - rb[key]) < 1e-9, key
    a, b = weights(tmp_path / "packed/checkpoints/step-000003"), weights(tmp_path / "bucketed/checkpoints/step-000003")
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-9


def test_layout_is_validated():
    from harness.config import TrainConfig
    from harness.errors import ConfigError

    assert TrainConfig().layout == "packed"
    with pytest.raises(ConfigError, match="train.layout|bucket"):
        TrainConfig(layout="bucket")
    with pytest.raises(ConfigError, match="recompile"):
        TrainConfig(layout="bucketed", compile=True)


def test_compiled_layout_is_one_shape(tiny):
    """train.compile: every packed micro-batch is max_length wide (one compiled shape); the same examples and
    tokens as the eager layout, whose rows are only as wide as the step's longest example."""
    root, exp = tiny
    import dataclasses

    from harness.training.packing import layout_step, pack_rows

    spec, tok, data = _tiny_data(exp, "train.micro_batch_tokens=128")
    lengths = [len(t) for t in data.examples]
    for idx in (list(range(24)), list(range(3))):
        rows = pack_rows(lengths, 128, idx)
        eager = layout_step(rows, data, spec.config.train, 128, tok.pad_token_id)
        compiled = layout_step(rows, data, dataclasses.replace(spec.config.train, compile=True), 128,
                               tok.pad_token_id)
        assert {b.input_ids.shape[1] for b in compiled} == {128}
        assert sum(b.n_tokens for b in compiled) == sum(b.n_tokens for b in eager) == sum(lengths[i] for i in idx)
    assert max(b.input_ids.shape[1] for b in eager) <= 64  # examples <= 64 tokens: eager rows are narrower


def _metrics_close(a, b, tol: float = 1e-12) -> bool:
    """Two StepMetrics equal up to float64 rounding, field by field."""
    return all(abs(x - y) <= tol * (1 + abs(x)) for x, y in zip(dataclasses.astuple(a), dataclasses.astuple(b)))


def test_last_checkpoint_has_no_optimizer_state_and_a_crash_before_done_still_finishes(tiny, tmp_path, monkeypatch):
    """The last step's checkpoint is resumed only to write DONE: it is saved without the optimizer state (2x
    the weights), and a crash between it and DONE resumes into DONE with the same weights."""
    from harness.layout import TRAINER_STATE, RunDir
    from harness.training import loop

    root, exp = tiny
    r = tmp_path / "r"
    saved = {}
    real_save = loop.save_checkpoint

    def spy(run_dir, step, model, tok, state):
        saved[step] = set(state)
        return real_save(run_dir, step, model, tok, state)

    def crash_on_done(path, text):
        if path == RunDir(r).done:
            raise KeyboardInterrupt("killed before DONE")
        return real_write(path, text)

    real_write = loop.atomic_write_text
    monkeypatch.setattr(loop, "save_checkpoint", spy)
    monkeypatch.setattr(loop, "atomic_write_text", crash_on_done)
    spec = spec_of(exp, "train.max_steps=6", "train.save_every_epoch=false", "train.save_every_steps=3")
    with pytest.raises(KeyboardInterrupt):
        train(spec, r)
    assert saved == {3: {"optimizer", "scheduler", "rng", "progress"}, 6: {"rng", "progress"}}
    rd = RunDir(r)
    state = torch.load(rd.step_dir(6) / TRAINER_STATE, weights_only=True)
    assert state["progress"]["step"] == 6 and not rd.done.exists()
    weights = load_file(rd.step_dir(6) / "model.safetensors")
    monkeypatch.setattr(loop, "atomic_write_text", real_write)
    out = train(spec, r)
    assert out["status"] == "done" and rd.done.exists() and sorted(saved) == [3, 6]  # nothing retrained
    after = load_file(rd.step_dir(6) / "model.safetensors")
    assert all(torch.equal(weights[k], after[k]) for k in weights)


def test_resume_drops_a_torn_last_log_line_and_refuses_a_bad_one_before_it(tmp_path):
    """docs/results-schema.md: a torn last line of metrics.jsonl (a process killed mid-write) is skipped by every
    reader, and a resume drops it with the rows after its checkpoint; a bad line before the last is an error
    naming the file and line, not a silent loss of the log."""
    from harness.errors import ConfigError
    from harness.training.loop import _truncate_metrics

    log = tmp_path / "metrics.jsonl"
    rows = [json.dumps({"step": s, "loss": 1.0 / s}) for s in (1, 2, 3, 4)]
    log.write_text("\n".join(rows) + '\n{"step": 5, "lo')  # killed while writing step 5
    _truncate_metrics(log, 3)
    assert log.read_text() == "\n".join(rows[:3]) + "\n"
    log.write_text(rows[0] + "\n[1, 2]\n" + rows[1] + "\n")
    with pytest.raises(ConfigError, match=r"line 2 of the training log") as err:
        _truncate_metrics(log, 3)
    assert f"{log}:2" in str(err.value)
