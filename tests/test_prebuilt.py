"""Shipped world weights (harness/world/prebuilt.py): used only when the world key, the tokenizer and the weights
file all agree with the index; anything else pretrains here, saying why; the demo world's entry matches what the
generator builds today."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from harness.fsio import sha256_file
from harness.world import build as B
from harness.world import generator as G
from harness.world import prebuilt


@pytest.fixture
def shelf(tmp_path, monkeypatch):
    """An empty prebuilt directory of this test's own."""
    monkeypatch.setattr(prebuilt, "DIR", tmp_path / "shelf")
    monkeypatch.setattr(prebuilt, "INDEX", tmp_path / "shelf" / "index.json")
    return tmp_path / "shelf"


@pytest.fixture
def no_pretraining(monkeypatch):
    """Records pretraining calls instead of running them (the routing is under test, not the loop)."""
    import harness.world.pretrain as P

    calls = []
    monkeypatch.setattr(P, "pretrain", lambda model, rows, cfg, **kw: calls.append(cfg) or [])
    return calls


def _measured(world: Path) -> dict:
    m = json.loads((world / "measurements.json").read_text())
    return {k: v for k, v in m.items() if not k.endswith("_seconds")}


def test_shipped_weights_are_used_when_every_hash_agrees(test_world, shelf, tmp_path, no_pretraining):
    entry = prebuilt.add(test_world)
    assert (shelf / entry["file"]).read_bytes() == (test_world / "model" / "model.safetensors").read_bytes()
    logs: list[str] = []
    again = B.build_world("test", tmp_path / "again", seed=0, progress=False, log=logs.append)
    assert not no_pretraining and any("shipped with harness" in line for line in logs)
    assert (again / "model" / "model.safetensors").read_bytes() == (test_world / "model" / "model.safetensors").read_bytes()
    weights = json.loads((again / "world.json").read_text())["weights"]
    assert weights["source"] == "prebuilt" and weights["sha256"] == weights["model_sha256"] == entry["sha256"]
    assert _measured(again) == _measured(test_world)  # measured on every build, shipped weights or not

    # --pretrain replaces a world built from shipped weights with one pretrained here
    B.build_world("test", again, seed=0, progress=False, log=logs.append, pretrain_here=True)
    assert len(no_pretraining) == 1
    assert json.loads((again / "world.json").read_text())["weights"]["source"] == "pretrained here"
    with pytest.raises(SystemExit, match="--pretrain"):  # and only a world pretrained here can be shipped
        prebuilt.add(B.build_world("test", tmp_path / "third", seed=0, progress=False, log=logs.append))


def test_a_tampered_or_foreign_file_is_never_used(test_world, shelf, tmp_path, no_pretraining):
    entry = prebuilt.add(test_world)
    tok = test_world / "tokenizer" / "tokenizer.json"
    key = json.loads((test_world / "world.json").read_text())["model_key"]
    assert prebuilt.find(key, tok)[0] == shelf / entry["file"]
    assert prebuilt.find("0000000000000000", tok) == (None, "no shipped weights for world key 0000000000000000")
    other_tok = tmp_path / "tokenizer.json"
    other_tok.write_text(tok.read_text() + " ")  # any other tokenizer file
    assert "tokenizer" in prebuilt.find(key, other_tok)[1]
    weights = shelf / entry["file"]
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    logs: list[str] = []
    B.build_world("test", tmp_path / "again", seed=0, progress=False, log=logs.append)
    assert len(no_pretraining) == 1  # pretrained here instead, and the log says why
    assert any("does not match its recorded sha256" in line for line in logs)
    weights.unlink()
    assert "missing" in prebuilt.find(key, tok)[1]


def test_the_shipped_demo_weights_match_the_demo_world_built_today(tmp_path):
    """The key of the demo world the generator writes today is in the index, with a file of that sha256: an edit
    to the generator, the corpus or the pretraining config that would silently make `make demo` pretrain again
    (3 min here, 13 on a slow machine) fails here instead."""
    spec = B._spec("demo")
    world = G.World(0, G.make_people(spec["people"], 0), True)
    hashes = B.make_data(world, spec, 0, tmp_path)
    key = B.model_key(replace(spec["pretrain"], seed=0), spec["vocab"], hashes)
    index = json.loads(prebuilt.INDEX.read_text())
    assert key in index, ("the demo world changed: rebuild and ship its weights: harness world build --size demo "
                          "--pretrain && harness world ship results/world/demo-seed0")
    assert sha256_file(prebuilt.DIR / index[key]["file"]) == index[key]["sha256"]
