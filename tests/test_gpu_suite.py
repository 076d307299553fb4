"""The prepared GPU suite's dry run (benchmarks/gpu_suite.py --dry-run: CPU, tiny model, the same code paths as the
GPU run): every part ends with numbers or a skip reason, packed rows equal each example alone for sdpa and eager,
and train.parallel: fsdp trains on 2 gloo ranks. ~60 s on 2 cores (worker processes: correctness, ours, TRL, and
fsdp's two ranks under torchrun)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

from harness.config.schema import ATTN_IMPLEMENTATIONS

ROOT = Path(__file__).resolve().parents[1]
G_TINY_LAYERS = 2  # benchmarks/gpu_smoke.py TINY: the dry run's shape


def test_gpu_suite_shell_parses():
    subprocess.run(["bash", "-n", str(ROOT / "benchmarks" / "gpu_suite.sh")], check=True)


def test_gpu_suite_dry_run(tmp_path):
    out = tmp_path / "gpu.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_suite.py"), "--dry-run", "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    r = json.loads(out.read_text())
    assert r["dry_run"] is True and r["machine"]["versions"]["torch"] and r["machine"]["device"] == "cpu"
    assert all(s["reason"] for s in r["skips"])
    parts = r["parts"]
    assert {"correctness", "throughput", "trl", "fsdp"} <= set(parts)

    corr = parts["correctness"]
    assert list(corr["kernels"]) == list(ATTN_IMPLEMENTATIONS)
    for name, k in corr["kernels"].items():  # on CPU nothing fails: each kernel passes or says why it was skipped
        assert k["status"] == "pass" or (k["status"] == "skip" and k["reason"]), (name, k)
    for name in ("sdpa", "eager"):
        k = corr["kernels"][name]
        assert k["status"] == "pass" and k["max_abs_diff"] <= k["tol"], k
        assert k["examples"] > 1 and k["max_examples_per_row"] > 1 and len(k["micro_batches"]) > 1
        assert k["control_detects_leak"] is True  # the check would see examples attending to each other

    runs = parts["throughput"]["runs"]
    assert set(runs) == set(ATTN_IMPLEMENTATIONS) - {"eager"}
    sdpa = runs["sdpa"]
    assert sdpa["status"] == "ok" and sdpa["tokens_per_s"] > 0 and sdpa["gemm_flops"] > 0 and sdpa["mfu_vs_gemm"] > 0
    assert sdpa["optimizer"] == "AdamW(fused=True)" and sdpa["lm_head_on_supervised"]
    assert all(x["status"] == "ok" or x["reason"] for x in runs.values())

    trl, acc = parts["trl"], r["acceptance"]
    if importlib.util.find_spec("trl") is None:  # TRL is the benchmark-only extra
        assert trl["status"] == "skip" and "trl" in trl["reason"]
    else:
        res = trl["result"]
        assert trl["status"] == "ok" and trl["attn_used"] == "sdpa", trl
        assert res["tokens_per_s"] > 0 and res["optimizer"] == "AdamW(fused=True)" and res["padding_free"]
        assert 0.5 < res["tokens_per_step"] / sdpa["tokens_per_step"] < 2  # same data, same rows per step
        assert acc["ours_over_trl"] > 0 and acc["trl_attn"] == "sdpa"
    assert acc["meaningful"] is False and acc["correctness_ok"] is True and acc["best_kernel"] == "sdpa"
    assert acc["mfu_vs_989"] is None  # no bf16 peak for a CPU

    fsdp = parts["fsdp"]  # train.parallel: fsdp on 2 gloo ranks (torchrun), bf16 params, gradient checkpointing
    assert fsdp["status"] == "ok" and acc["fsdp_ok"] is True, fsdp
    assert fsdp["world"] == 2 and fsdp["fsdp_units"] == G_TINY_LAYERS + 1 and fsdp["param_dtype"] == "torch.bfloat16"
    assert fsdp["finite"] and fsdp["dcp_roundtrip_exact"] and fsdp["gathered_tied"] and fsdp["tokens_per_s"] > 0
    assert fsdp["optimizer"] == "AdamW(fused=True)" and len(fsdp["steps"]) == r["settings"]["steps"] + 1
