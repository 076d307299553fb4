"""data.replay on the 2-layer model: every step's replay share, what the pieces supervise, SFT steps unchanged,
and a run that trains with it (resume included)."""

from __future__ import annotations

import json

import pytest

from harness.data.tokenize import Segment
from harness.errors import ConfigError, DataError
from harness.grid import load_experiment
from harness.training.loop import prepare_data, train
from harness.training.packing import plan_steps
from harness.training.replay import add_replay, replay_stream
from tests.tiny import build_tiny

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny models: one thread each (conftest)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    exp = build_tiny(root)
    docs = [{"text": f"The quick brown fox {i} jumps over the lazy dog, {i % 7} times. " * (1 + i % 3)}
            for i in range(40)]
    (root / "replay.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    return root, exp


def cfg_of(root, exp, *overrides):
    return load_experiment(exp, [f"data.replay.path={root}/replay.jsonl", *overrides]).runs[0].config


@pytest.mark.parametrize("fraction", [0.01, 0.05, 0.25])
@pytest.mark.parametrize("layout", ["packed", "bucketed"])
def test_every_step_has_the_replay_fraction(tiny, fraction, layout):
    root, exp = tiny
    cfg = cfg_of(root, exp, f"data.replay.fraction={fraction}", f"train.layout={layout}")
    tok, data = prepare_data(cfg)
    plan = plan_steps(data, cfg)
    new, mixed, stats = add_replay(data, plan, cfg, tok)
    n_sft = len(data.examples)
    assert new.examples[:n_sft] == data.examples and len(mixed) == len(plan)
    L = cfg.data.max_length
    for st, ms in zip(plan, mixed):
        sft_rows = [i for r in st.rows for i in r.examples]
        assert [i for r in ms.rows for i in r.examples if i < n_sft] == sft_rows  # SFT examples, same order
        assert all(r.length <= L and r.length == sum(len(new.examples[i]) for i in r.examples) for r in ms.rows)
        T = sum(len(data.examples[i]) for i in sft_rows)
        R = sum(len(new.examples[i]) for r in ms.rows for i in r.examples if i >= n_sft)
        share = R / (T + R)
        assert abs(share - fraction) <= 0.5 / (T + R) + 1e-12  # rounding to whole tokens, nothing more
        assert abs(share - fraction) <= 0.01  # the "within 1% of the target per step"
    assert stats.pieces == len(new.examples) - n_sft and stats.step_share_min <= fraction + 0.01
    stream = tok.decode(replay_stream(root / "replay.jsonl", tok, cfg.train.seed).tolist())
    for t, m in zip(new.examples[n_sft:], new.masks[n_sft:]):  # full loss on replay, nothing predicts token 0
        assert (t.segments == Segment.REPLAY).all() and m.weights[0] == 0 and (m.weights[1:] == 1).all()
        assert (m.labels[1:] == t.input_ids[1:]).all()
        # what is supervised, decoded, is a stretch of the replay text (never conversation text)
        assert tok.decode(m.labels[m.labels != -100].tolist()) in stream


def test_replay_is_deterministic_and_seeded(tiny):
    root, exp = tiny
    def pieces(*o):
        cfg = cfg_of(root, exp, "data.replay.fraction=0.1", *o)
        tok, data = prepare_data(cfg)
        new, _, _ = add_replay(data, plan_steps(data, cfg), cfg, tok)
        return [t.input_ids.tolist() for t in new.examples[len(data.examples):]]
    assert pieces() == pieces()
    assert pieces() != pieces("train.seed=2")


def test_replay_config_is_checked(tiny):
    root, exp = tiny
    with pytest.raises(ConfigError, match="fraction"):
        cfg_of(root, exp, "data.replay.fraction=1.0")
    cfg = load_experiment(exp, ["data.replay.fraction=0.1"]).runs[0].config
    tok, data = prepare_data(cfg)
    with pytest.raises(DataError, match="no path"):
        add_replay(data, plan_steps(data, cfg), cfg, tok)


def test_a_run_with_replay_trains_and_resumes_exactly(tiny, tmp_path):
    root, exp = tiny
    spec = load_experiment(exp, [f"data.replay.path={root}/replay.jsonl", "data.replay.fraction=0.1",
                                 "train.max_steps=4", "train.save_every_steps=2"]).runs[0]
    full = train(spec, tmp_path / "full")
    prov = json.loads((tmp_path / "full/provenance.json").read_text())
    assert abs(prov["replay"]["share"] - 0.1) < 0.01 and prov["replay"]["tokens"] > 0
    plain = train(load_experiment(exp, ["train.max_steps=4"]).runs[0], tmp_path / "plain")
    assert full["tokens"] > plain["tokens"] and full["supervised_tokens"] > plain["supervised_tokens"]
    calls = {"n": 0}

    def crash():
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("simulated kill")
        return False

    with pytest.raises(RuntimeError):
        train(spec, tmp_path / "part", should_stop=crash)
    train(spec, tmp_path / "part")
    rows = lambda p: [{k: v for k, v in json.loads(r).items() if k not in ("time", "tokens_per_s")}  # noqa: E731
                      for r in (p / "metrics.jsonl").read_text().splitlines()]
    assert rows(tmp_path / "full") == rows(tmp_path / "part")


def test_mask_audit_shows_the_replay_share(tiny, capsys):
    from harness.cli import main

    root, exp = tiny
    assert main(["inspect", str(exp), "--n", "0", "-o", f"data.replay.path={root}/replay.jsonl",
                 "-o", "data.replay.fraction=0.05"]) == 0
    out = " ".join(capsys.readouterr().out.split())  # rich wraps long lines
    assert "replay" in out and "of the run's tokens (per step" in out
