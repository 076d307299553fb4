"""benchmarks/pretrain_floor.py counts every matrix product of a pretraining step, and only those."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from harness.world.pretrain import PretrainConfig, make_model, pretrain

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import pretrain_floor as fl  # noqa: E402


def test_recorded_gemm_flops_are_three_forward_passes_of_every_linear_layer():
    torch.set_num_threads(1)
    cfg = PretrainConfig(layers=2, hidden=32, heads=2, seq_len=16, batch=3, steps=1, threads=1)
    vocab = 50
    model = make_model(cfg, vocab, 0, 0)
    rows = torch.randint(1, vocab, (8, cfg.seq_len), generator=torch.Generator().manual_seed(0))
    rec = fl.Recorder()
    with rec:
        pretrain(model, rows, cfg, progress=False)
    linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    tokens = cfg.batch * cfg.seq_len
    # forward 2 * tokens * weights; backward twice that (input and weight gradients; the embedding needs none)
    assert sum(fl.flops(f, a) for f, a, _ in rec.calls) == 6 * tokens * linear
    attention = [f for f, _, _ in rec.calls if f in fl.ATTENTION]
    # SDPA's CPU kernel, forward and backward per layer: were it another kernel, the benchmark would count none
    assert len(attention) == 2 * cfg.layers
    # its causal-half FLOPs: 4BHS^2D/2 forward, twice that backward, per layer
    expect = 3 * cfg.layers * 2 * cfg.batch * cfg.heads * cfg.seq_len ** 2 * (cfg.hidden // cfg.heads)
    assert sum(fl.attention_flops(f, a) for f, a, _ in rec.calls) == expect
