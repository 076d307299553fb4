"""Adapters (model.adapter: LoRA, DoRA through PEFT) on the 2-layer model in tmp_path: the grid axis and its
collapse, what is trained and saved, PEFT-loadability, evaluation on the merged model, export, exact resume."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from harness import adapters
from harness.cli import main
from harness.config import ExperimentConfig
from harness.config.schema import AdapterConfig
from harness.errors import ConfigError
from harness.grid import load_experiment
from harness.modeling import load_model
from harness.training.loop import train
from tests.tiny import spec_of, weights

peft = pytest.importorskip("peft", reason="model.adapter needs the peft extra")

LORA = ["model.adapter.method=lora", "model.adapter.r=4", "model.adapter.alpha=8"]

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny models: one thread each (conftest)


def test_grid_over_rank_without_adapter_is_one_run(tiny, tmp_path):
    root, exp = tiny
    text = exp.read_text() + "grid:\n  model.adapter.method: [none, lora]\n  model.adapter.r: [8, 64]\n"
    (tmp_path / "g.yaml").write_text(text)
    runs = load_experiment(tmp_path / "g.yaml").runs
    assert [r.axes for r in runs] == [{"model.adapter.method": "none"},
                                      {"model.adapter.method": "lora", "model.adapter.r": 8},
                                      {"model.adapter.method": "lora", "model.adapter.r": 64}]
    plain = load_experiment(exp).runs[0]
    assert runs[0].config == plain.config and runs[0].config_hash == plain.config_hash  # none == never set
    assert runs[1].run_id.startswith("lora-r8-") and runs[2].run_id.startswith("lora-r64-")


def test_adapter_config_is_checked():
    with pytest.raises(ConfigError, match="model.adapter.method"):
        AdapterConfig(method="qlora")
    with pytest.raises(ConfigError, match="model.adapter.r"):
        AdapterConfig(method="lora", r=0)
    with pytest.raises(ConfigError, match="target_modules"):
        AdapterConfig(method="lora", target_modules=())
    assert ExperimentConfig().model.adapter == AdapterConfig() and not AdapterConfig().enabled


def test_missing_target_module_is_a_clear_error(tiny, tmp_path):
    root, exp = tiny
    with pytest.raises(ConfigError, match="target_modules"):
        train(spec_of(exp, *LORA, "model.adapter.target_modules=[no_such_proj]"), tmp_path / "r")


@pytest.mark.parametrize("method", ["lora", "dora"])
def test_adapter_run_trains_only_the_adapter_and_saves_a_peft_directory(tiny, tmp_path, method):
    root, exp = tiny
    spec = spec_of(exp, *LORA, f"model.adapter.method={method}")
    before = weights(root / "model")
    rdir = tmp_path / "run"
    summary = train(spec, rdir)
    n = summary["steps"]
    ck = rdir / f"checkpoints/step-{n:06d}"
    names = {p.name for p in ck.iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "COMPLETED"} <= names
    assert "model.safetensors" not in names  # the base is not copied into every checkpoint
    acfg = json.loads((ck / "adapter_config.json").read_text())
    assert acfg["r"] == 4 and acfg["lora_alpha"] == 8 and acfg["use_dora"] == (method == "dora")
    assert acfg["base_model_name_or_path"] == str((root / "model").resolve())
    saved = load_file(str(ck / "adapter_model.safetensors"))
    assert saved and all("lora_" in k for k in saved)
    if method == "dora":
        assert any("lora_magnitude_vector" in k for k in saved)
    # trainable = the adapter's parameters, counted in provenance and the summary
    prov = json.loads((rdir / "provenance.json").read_text())
    assert prov["params"] == summary["params"]
    assert prov["params"]["trainable"] == sum(t.numel() for t in saved.values())
    assert 0 < prov["params"]["trainable"] < prov["params"]["total"]
    assert prov["adapter"]["method"] == method
    # the adapter learned something: B starts at zero
    assert any(k.endswith("lora_B.weight") and t.abs().max() > 0 for k, t in saved.items())

    # PEFT loads the checkpoint as it is (from any working directory: an absolute base path)
    auto = peft.AutoPeftModelForCausalLM.from_pretrained(str(ck)).eval()
    ids = torch.tensor([[5, 17, 42, 9, 3, 77, 12]])
    with torch.no_grad():
        want = auto(input_ids=ids).logits
        base = load_model(spec.config, root / "model", torch.device("cpu"), training=False)
        got = load_model(spec.config, ck, torch.device("cpu"), training=False)  # evaluation: merged
        assert not adapters.is_peft(got)
        assert (got(input_ids=ids).logits - want).abs().max() < 1e-5
        assert (base(input_ids=ids).logits - want).abs().max() > 1e-4  # and it is not the base
    # the base's weights on disk were never touched, and the merged model differs from them only where adapted
    after = weights(root / "model")
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    sd = got.state_dict()
    assert torch.equal(sd["model.embed_tokens.weight"], before["model.embed_tokens.weight"])
    assert not torch.equal(sd["model.layers.0.self_attn.q_proj.weight"], before["model.layers.0.self_attn.q_proj.weight"])


def test_fresh_adapter_is_the_base_and_seeded(tiny):
    root, exp = tiny
    cfg = spec_of(exp, *LORA).config
    ids = torch.tensor([[5, 17, 42, 9]])
    torch.manual_seed(123)
    m1 = load_model(cfg, root / "model", torch.device("cpu"), training=True)
    after = torch.rand(1)
    torch.manual_seed(123)
    base = load_model(spec_of(exp).config, root / "model", torch.device("cpu"), training=False)
    assert torch.equal(torch.rand(1), after)  # attaching draws its init from its own seed, not the stream
    m2 = load_model(cfg, root / "model", torch.device("cpu"), training=True)
    a1 = {k: v for k, v in m1.state_dict().items() if "lora_" in k}
    a2 = {k: v for k, v in m2.state_dict().items() if "lora_" in k}
    assert a1 and all(torch.equal(a1[k], a2[k]) for k in a1)  # same seed, same adapter
    m1.eval()
    with torch.no_grad():
        assert torch.equal(m1(input_ids=ids).logits, base(input_ids=ids).logits)  # B = 0: exactly the base


@pytest.mark.parametrize("method", ["lora", "dora"])
def test_resume_with_adapter_is_bit_exact(tiny, tmp_path, method):
    root, exp = tiny
    spec = spec_of(exp, *LORA, f"model.adapter.method={method}", "model.adapter.dropout=0.1", "train.dropout=0.1")
    full = tmp_path / "full"
    n = train(spec, full)["steps"]
    calls = {"n": 0}

    def crash_after_epoch_1():
        calls["n"] += 1
        if calls["n"] == n // 2 + 2:
            raise RuntimeError("simulated kill")
        return False

    part = tmp_path / "part"
    with pytest.raises(RuntimeError, match="simulated kill"):
        train(spec, part, should_stop=crash_after_epoch_1)
    assert train(spec, part)["status"] == "done"
    a = load_file(str(full / f"checkpoints/step-{n:06d}/adapter_model.safetensors"))
    b = load_file(str(part / f"checkpoints/step-{n:06d}/adapter_model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    strip = lambda p: [{k: v for k, v in json.loads(r).items() if k not in ("time", "tokens_per_s")}  # noqa: E731
                       for r in (p / "metrics.jsonl").read_text().splitlines()]
    assert strip(full) == strip(part)


def test_export_adapter_and_merged(tiny, tmp_path):
    root, exp = tiny
    spec = spec_of(exp, *LORA, "train.max_steps=2")
    rdir = tmp_path / "run"
    train(spec, rdir)
    assert main(["export", str(rdir), "--out", str(tmp_path / "adapter")]) == 0
    assert main(["export", str(rdir), "--merged", "--out", str(tmp_path / "merged")]) == 0
    assert main(["export", str(rdir), "--merged", "--out", str(tmp_path / "merged")]) == 2  # never overwrites
    assert (tmp_path / "adapter/adapter_config.json").exists()
    assert not (tmp_path / "adapter/trainer_state.pt").exists() and not (tmp_path / "adapter/COMPLETED").exists()
    from transformers import AutoModelForCausalLM

    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
    auto = peft.AutoPeftModelForCausalLM.from_pretrained(str(tmp_path / "adapter")).eval()
    ids = torch.tensor([[5, 17, 42, 9, 3]])
    with torch.no_grad():
        assert (merged(input_ids=ids).logits - auto(input_ids=ids).logits).abs().max() < 1e-5
    assert not any("lora" in k for k in load_file(str(tmp_path / "merged/model.safetensors")))


@pytest.mark.parametrize("overrides", [["regime.name=full", "train.layout=bucketed"],
                                       ["regime.name=prompt_weight", "regime.prompt_weight=0.1",
                                        "train.normalization=sequence", "train.layout=padded"],
                                       ["train.gradient_checkpointing=true", "train.micro_batch_tokens=64"]])
def test_adapter_composes_with_regimes_layouts_and_checkpointing(tiny, tmp_path, overrides):
    """An adapter run is the plain run's loss on fewer trainable weights: at step 1 (B = 0, so the adapted model
    is exactly the base) its loss equals the full fine-tuning run's, for every regime, layout and normalisation."""
    root, exp = tiny
    plain = train(spec_of(exp, "train.max_steps=1", *overrides), tmp_path / "plain")
    lora = train(spec_of(exp, "train.max_steps=1", *LORA, *overrides), tmp_path / "lora")
    assert plain["supervised_tokens"] == lora["supervised_tokens"] and plain["tokens"] == lora["tokens"]
    row = lambda p: json.loads((p / "metrics.jsonl").read_text().splitlines()[0])  # noqa: E731
    a, b = row(tmp_path / "plain"), row(tmp_path / "lora")
    assert abs(a["loss"] - b["loss"]) < 1e-6 and abs(a["loss_response"] - b["loss_response"]) < 1e-6
    assert a["grad_norm"] != b["grad_norm"]  # different trainable parameters, so different gradients
