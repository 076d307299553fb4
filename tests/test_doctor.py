"""`harness doctor`: the whole grid's peak disk under train.keep, and a grid that cannot fit is refused."""

from __future__ import annotations

import shutil
from collections import namedtuple


from harness.doctor import disk_forecast, doctor
from harness.grid import load_experiment


def test_disk_forecast_follows_the_keep_policy(tiny):
    _, exp_path = tiny
    over = ["grid.regime.name=[prompt_masked, full, prompt_only]", "train.epochs=4", "launcher.parallel=2"]
    W = 1_000_000
    by_keep = {k: disk_forecast(load_experiment(exp_path, over + [f"train.keep={k}"]), W) for k in ("all", "last", "best")}
    # kept per run: 4 epoch checkpoints / 1 / 2; the peak adds two running runs' extra checkpoint and optimizer
    # states (W + 2 x 2W each)
    assert by_keep["all"] == (3 * 4 * W + 2 * 5 * W, 4 * W)
    assert by_keep["last"] == (3 * W + 2 * 5 * W, W)
    assert by_keep["best"] == (3 * 2 * W + 2 * 5 * W, 2 * W)


def test_doctor_refuses_a_grid_that_does_not_fit(tiny, monkeypatch):
    _, exp_path = tiny
    lines: list[str] = []
    assert doctor(str(exp_path), out=lines.append) == 0, "\n".join(lines)
    assert any("disk:" in ln and "ok" in ln for ln in lines)
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10**6, 10**6 - 1000, 1000))  # 1 kB free
    lines.clear()
    assert doctor(str(exp_path), out=lines.append) == 1
    fail = [ln for ln in lines if "FAIL" in ln and "disk:" in ln]
    assert fail and "train.keep: last" in fail[0]
