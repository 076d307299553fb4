"""The k-shot recovery probe (eval.recovery, harness/evaluation/recovery.py): config checks, the input model and
every RNG left as they were, k = 0 is the checkpoint's own numbers, determinism, a real fine-tuning on exactly
the response tokens (one full-batch step whatever the micro-batch split), clear data errors, the eval hash
unchanged without the probe, and the evaluator writing recovery/k*/... on the base and the final checkpoint
(every checkpoint with eval.recovery.every_checkpoint)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from harness.config import EvalConfig, ExperimentConfig, TaskConfig, build
from harness.config.evaluation import RecoveryConfig
from harness.data.tokenize import Segment
from harness.errors import ConfigError, DataError
from harness.evaluation import probes as P
from harness.evaluation import recovery as R
from harness.grid import load_experiment
from tests.test_eval_unit import _checkpoint, _jsonl, write_tiny_tasks
from tests.tiny import build_tiny, conversations

pytestmark = pytest.mark.usefixtures("one_torch_thread")
RESPONSE = (int(Segment.ASSISTANT), int(Segment.EOT))

EVAL = """\
eval:
  include_path: [{root}/tasks]
  tasks: [{{name: tiny_qa, limit: 4}}, {{name: tiny_mc, limit: 4, batch_size: 4}}]
  max_new_tokens: 4
"""
RECOVERY = ["eval.recovery.data={root}/kshot.jsonl", "eval.recovery.k=[0,2,6]", "eval.recovery.steps=3"]


@pytest.fixture(scope="module")
def rec(tmp_path_factory):
    """A tiny model + experiment with two local lm-eval tasks and a file of k-shot conversations."""
    root = tmp_path_factory.mktemp("recovery")
    exp_path = build_tiny(root)
    write_tiny_tasks(root)
    _jsonl(root / "kshot.jsonl", conversations(10, seed=2))
    exp_path.write_text(exp_path.read_text() + EVAL.format(root=root))
    return root, exp_path


def _on(rec, *extra):
    root, path = rec
    return load_experiment(path, [o.format(root=root) for o in RECOVERY] + list(extra)).config


@pytest.fixture(scope="module")
def model_and_examples(rec):
    from harness.modeling import load_model, tokenizer_for

    cfg = _on(rec)
    model = load_model(cfg, cfg.model.name_or_path, torch.device("cpu"), training=False)
    tok = tokenizer_for(cfg)
    ex = P.tokenize_eval_conversations(cfg.eval.recovery.data, tok, max_length=cfg.data.max_length)
    return model, tok, ex, cfg.eval.recovery.data


def fake_tasks(held_out):
    """A stand-in for lm-eval: a deterministic function of the weights (NLL on other conversations) that
    also reseeds every global RNG, as lm-eval's simple_evaluate does."""
    labels = R.kshot_labels(held_out)
    batches = R._micro_batches(held_out, labels, 0, 4096)
    n = R.supervised_tokens(labels)

    def evaluate(model) -> dict:
        torch.manual_seed(1234)
        random.seed(0)
        np.random.seed(1234)
        return {"fake/nll": R.mean_nll(model, batches, n)}

    return evaluate


# ------------------------------------------------------------------------------------------ config


def test_config_checks(rec):
    import dataclasses

    from harness.config import explain, field_docs

    assert not RecoveryConfig().enabled and not EvalConfig().recovery.enabled  # off by default
    docs = field_docs(RecoveryConfig)
    assert all(docs.get(f.name) for f in dataclasses.fields(RecoveryConfig))
    assert {f"eval.recovery.{f.name}" for f in dataclasses.fields(RecoveryConfig)} <= {r[0] for r in explain()}
    for kwargs, where, msg in ((dict(k=(4, 0)), "eval.recovery.k", "strictly increasing"),
                               (dict(k=(0, 4, 4)), "eval.recovery.k", "strictly increasing"),
                               (dict(k=(-1, 4)), "eval.recovery.k", ">= 0"),
                               (dict(k=()), "eval.recovery.k", "empty"),
                               (dict(steps=0), "eval.recovery.steps", "> 0"),
                               (dict(lr=0.0), "eval.recovery.lr", "> 0")):
        with pytest.raises(ConfigError, match=msg) as exc:
            RecoveryConfig(data="a.jsonl", **kwargs)
        assert exc.value.where == where
    with pytest.raises(ConfigError, match="eval.recovery.data is not") as exc:  # options of a probe that is off
        RecoveryConfig(steps=5)
    assert exc.value.where == "eval.recovery.steps"
    tasks = (TaskConfig("tiny_qa"), TaskConfig("tiny_mc"))
    with pytest.raises(ConfigError, match="'tiny_qaa' is not in eval.tasks") as exc:
        EvalConfig(tasks=tasks, recovery=RecoveryConfig(data="a.jsonl", tasks=("tiny_qaa",)))
    assert exc.value.where == "eval.recovery.tasks[0]" and "['tiny_qa', 'tiny_mc']" in str(exc.value)
    with pytest.raises(ConfigError, match="eval.tasks is empty"):
        EvalConfig(recovery=RecoveryConfig(data="a.jsonl"))
    # through the loader: the file's line and the item's key
    root, path = rec
    with pytest.raises(ConfigError, match="valid names") as exc:
        load_experiment(path, [f"eval.recovery.data={root}/kshot.jsonl", "eval.recovery.tasks=[tiny_qa,nope]"])
    assert "eval.recovery.tasks[1]" in str(exc.value)
    with pytest.raises(ConfigError, match="strictly increasing") as exc:
        load_experiment(path, [f"eval.recovery.data={root}/kshot.jsonl", "eval.recovery.k=[16,4]"])
    assert "eval.recovery.k" in str(exc.value)
    cfg = _on(rec, "eval.recovery.tasks=[tiny_mc]")
    assert cfg.eval.recovery.k == (0, 2, 6) and cfg.eval.recovery.tasks == ("tiny_mc",)


# ------------------------------------------------------------------------------------------ the probe


def test_probe_leaves_the_model_and_every_rng_as_they_were(model_and_examples):
    model, tok, ex, path = model_and_examples
    rc = RecoveryConfig(data=path, k=(0, 2, 6), steps=3)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    flags = [p.requires_grad for p in model.parameters()]
    torch.manual_seed(77)
    random.seed(5)
    np.random.seed(9)
    rng = (torch.get_rng_state(), random.getstate(), np.random.get_state()[1].copy())
    m, _ = R.recovery_probe(model, ex[:6], rc, fake_tasks(ex[6:]), pad=tok.pad_token_id, where=path)
    assert set(m) == {"recovery/k0/fake/nll", "recovery/k2/fake/nll", "recovery/k6/fake/nll",
                      "recovery/k2/train_nll", "recovery/k6/train_nll"}
    after = model.state_dict()
    assert all(torch.equal(state[k], after[k]) for k in state)
    assert [p.requires_grad for p in model.parameters()] == flags and not model.training
    assert all(p.grad is None for p in model.parameters())
    assert torch.equal(torch.get_rng_state(), rng[0]) and random.getstate() == rng[1]
    assert np.array_equal(np.random.get_state()[1], rng[2])


def test_k0_is_the_model_itself_and_two_runs_agree(model_and_examples):
    model, tok, ex, path = model_and_examples
    rc = RecoveryConfig(data=path, k=(0, 2, 6), steps=3, lr=1e-3)  # a random tiny model: a large step shows
    evaluate = fake_tasks(ex[6:])
    own = evaluate(model)
    m1, i1 = R.recovery_probe(model, ex[:6], rc, evaluate, pad=tok.pad_token_id, where=path)
    m2, i2 = R.recovery_probe(model, ex[:6], rc, evaluate, pad=tok.pad_token_id, where=path)
    assert m1["recovery/k0/fake/nll"] == own["fake/nll"]  # exactly
    assert m1 == m2 and i1 == i2  # deterministic
    # metrics the caller measured already are reused for k = 0, not measured again
    m3, _ = R.recovery_probe(model, ex[:6], rc, evaluate, pad=tok.pad_token_id, where=path, k0={"fake/nll": 0.5})
    assert m3["recovery/k0/fake/nll"] == 0.5 and m3["recovery/k6/fake/nll"] == m1["recovery/k6/fake/nll"]
    # the k-shot fine-tuning moves the held-out task (a real effect: the k examples are of its kind)
    assert m1["recovery/k6/fake/nll"] < own["fake/nll"] - 0.1


def test_the_fine_tuning_lowers_the_nll_of_exactly_the_response_tokens(model_and_examples):
    model, tok, ex, path = model_and_examples
    rc = RecoveryConfig(data=path, k=(2, 6), steps=10, lr=1e-2)
    m, info = R.recovery_probe(model, ex, rc, lambda mdl: {}, pad=tok.pad_token_id, where=path)
    for k in rc.k:
        # supervised: the response (assistant content + end-of-turn) tokens, counted independently
        assert info["supervised_tokens"][k] == sum(int(np.isin(t.segments, RESPONSE).sum()) for t in ex[:k])
        # the NLL before fine-tuning, padded and batched, is the unpadded per-example response NLL
        tot = 0.0
        for t in ex[:k]:
            x = torch.as_tensor(t.input_ids)[None]
            with torch.no_grad():
                nll = F.cross_entropy(model(input_ids=x).logits[0, :-1].float(), x[0, 1:], reduction="none")
            tot += float(nll[torch.as_tensor(np.isin(t.segments[1:], RESPONSE))].sum())
        assert info["nll_before"][k] == pytest.approx(tot / info["supervised_tokens"][k], rel=1e-5)
        assert m[f"recovery/k{k}/train_nll"] < 0.7 * info["nll_before"][k]
    # one full-batch step whatever the micro-batch split (it only bounds memory)
    split, _ = R.recovery_probe(model, ex, rc, lambda mdl: {}, pad=tok.pad_token_id, where=path, batch_tokens=40)
    assert split["recovery/k6/train_nll"] == pytest.approx(m["recovery/k6/train_nll"], rel=1e-4)


def test_too_few_or_unsupervised_examples_are_data_errors(model_and_examples, tmp_path):
    model, tok, ex, path = model_and_examples
    with pytest.raises(DataError, match=r"asks for 64 examples, but the file gives 10") as exc:
        R.recovery_probe(model, ex, RecoveryConfig(data=path), lambda mdl: {}, pad=tok.pad_token_id, where=path)
    assert path in str(exc.value)
    long = tmp_path / "long.jsonl"
    _jsonl(long, [{"messages": [{"role": "user", "content": "the quick brown fox jumps over the lazy dog " * 8},
                                {"role": "assistant", "content": "4."}]}] * 3)
    cut = P.tokenize_eval_conversations(str(long), tok, max_length=24)  # the response is cut away
    assert all(not np.isin(t.segments, RESPONSE).any() for t in cut)
    with pytest.raises(DataError, match="no supervised") as exc:
        R.check_examples(cut, RecoveryConfig(data=str(long), k=(0, 2)), str(long))
    assert str(long) in str(exc.value)


# ------------------------------------------------------------------------------------------ eval hash


def _hash_config(**eval_extra) -> ExperimentConfig:
    d = {"name": "h", "model": {"name_or_path": "/nonexistent/model"},
         "data": {"train": {"path": "/nonexistent/train.jsonl"}, "eval": {"path": "/nonexistent/eval.jsonl"},
                  "max_length": 64},
         "eval": {"tasks": [{"name": "world_qa", "limit": 40}, {"name": "world_facts", "final_only": True}],
                  "pretrain_text": "/nonexistent/bios.jsonl", "probe_limit": 40, "every_checkpoint": False,
                  **eval_extra}}
    return build(ExperimentConfig, d)


def test_eval_hash_without_recovery_is_unchanged_and_with_it_differs(tmp_path, monkeypatch):
    from harness.evaluation.identity import eval_hash

    # the default config's relative paths (results/world/test-seed0/model) resolve against the working directory:
    # in tmp_path they name nothing, whatever `harness world build` left in the checkout's results/
    monkeypatch.chdir(tmp_path)
    # computed by the code before eval.recovery existed (no local files: no fingerprint of theirs);
    # a bump of harness.versions.EVAL_VERSION changes all three, on purpose
    assert eval_hash(ExperimentConfig()) == "9941a60fbcfa"
    assert eval_hash(_hash_config()) == "8ab4279bf1b6"
    assert eval_hash(_hash_config(kl_sft=True)) == "099fd9d0db1e"
    assert eval_hash(_hash_config(recovery={"data": None})) == "8ab4279bf1b6"  # off, written out
    data = tmp_path / "kshot.jsonl"
    _jsonl(data, conversations(4))
    on = eval_hash(_hash_config(recovery={"data": str(data)}))
    assert on != "8ab4279bf1b6"
    assert eval_hash(_hash_config(recovery={"data": str(data), "every_checkpoint": True})) == on  # which, not what
    assert eval_hash(_hash_config(recovery={"data": str(data), "k": [0, 4]})) != on
    assert eval_hash(_hash_config(recovery={"data": str(data), "tasks": ["world_qa"]})) != on
    data.write_text(data.read_text() + data.read_text().splitlines()[0] + "\n")  # same path, new contents
    assert eval_hash(_hash_config(recovery={"data": str(data)})) != on


# ------------------------------------------------------------------------------------------ the evaluator


def test_evaluator_writes_recovery_metrics(rec, tmp_path):
    from harness.evaluation.evaluator import Evaluator
    from harness.modeling import load_model

    cfg = _on(rec)
    ev = Evaluator(cfg, tmp_path / "base")
    model = load_model(cfg, cfg.model.name_or_path, ev.device, training=False)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    r = ev.evaluate(model, is_base=True)
    m = r.metrics
    for k in (0, 2, 6):
        assert {f"recovery/k{k}/tiny_qa/exact_match", f"recovery/k{k}/tiny_mc/acc"} <= set(m)
    assert "recovery/k0/train_nll" not in m and m["recovery/k6/train_nll"] > 0
    assert m["recovery/k0/tiny_qa/exact_match"] == m["tiny_qa/exact_match"]
    assert m["recovery/k0/tiny_mc/acc"] == m["tiny_mc/acc"]
    info = r.probes["recovery"]
    assert (info["path"], info["k"], info["steps"], info["lr"]) == (cfg.eval.recovery.data, [0, 2, 6], 3, 1e-4)
    assert info["tasks"] == ["tiny_qa", "tiny_mc"] and info["examples"] == 6
    assert "recovery" in r.probes["seconds"] and json.loads(json.dumps(r.probes))
    # per-item rows of every k's re-measurement (slim: doc id and scores), whose mean is the k's metric
    for k in (0, 2, 6):
        rows = [s for s in r.samples if s["task"] == f"recovery/k{k}/tiny_qa"]
        assert rows and all(set(x) <= {"task", "doc_id", "exact_match", "exact_match_stderr"} | set(
            n for n, v in x.items() if isinstance(v, float)) and "doc" not in x for x in rows)
        assert abs(sum(x["exact_match"] for x in rows) / len(rows) - m[f"recovery/k{k}/tiny_qa/exact_match"]) < 1e-9
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
    # a subset of the tasks: measured again for k = 0 (the same numbers), the others not at all
    sub = Evaluator(_on(rec, "eval.recovery.tasks=[tiny_mc]", "eval.recovery.k=[0,2]"), tmp_path / "base2")
    ms = sub.evaluate(model, is_base=True).metrics
    assert {k for k in ms if k.startswith("recovery/")} >= {"recovery/k0/tiny_mc/acc", "recovery/k2/tiny_mc/acc"}
    assert not any(k.startswith("recovery/") and "tiny_qa" in k for k in ms)
    assert ms["recovery/k0/tiny_mc/acc"] == m["tiny_mc/acc"]
    # too few conversations for the largest k: refused before any model is evaluated, naming the file
    with pytest.raises(DataError, match="file gives 10") as exc:
        Evaluator(_on(rec, "eval.recovery.k=[0,16]"), tmp_path / "base3")
    assert cfg.eval.recovery.data in str(exc.value)


@pytest.mark.parametrize("every", [False, True])
def test_which_checkpoints_get_the_probe(rec, tmp_path, monkeypatch, every):
    """The base and the final checkpoint of a DONE run; every checkpoint with eval.recovery.every_checkpoint."""
    from harness.evaluation.evaluate import evaluate_run

    calls = []

    def spy(model, examples, rc, evaluate, **kw):
        calls.append(len(examples))
        return {"recovery/k0/spy": 1.0}, {"supervised_tokens": {}}

    monkeypatch.setattr(R, "recovery_probe", spy)
    cfg = _on(rec, f"eval.recovery.every_checkpoint={str(every).lower()}", "eval.tasks=[{name: tiny_mc, limit: 2}]")
    rdir = tmp_path / "exp" / "runs" / "r"
    for step in (2, 4):
        _checkpoint(Path(cfg.model.name_or_path), rdir / "checkpoints" / f"step-00000{step}")
    (rdir / "DONE").write_text("{}\n")
    out = {r["step"]: r for r in evaluate_run(rdir, cfg)}
    base = json.loads((tmp_path / "exp" / "base" / "eval" / "step-000000.json").read_text())
    assert base["metrics"]["recovery/k0/spy"] == 1.0
    assert out[4]["metrics"]["recovery/k0/spy"] == 1.0 and "recovery" in out[4]["probes"]
    assert ("recovery/k0/spy" in out[2]["metrics"]) is every and ("recovery" in out[2]["probes"]) is every
    assert len(calls) == (3 if every else 2) and set(calls) == {6}


def test_adhoc_tasks_keep_only_the_recovery_tasks_still_evaluated(rec):
    """`harness eval --tasks X`: the probe re-measures those of its tasks that are still among the tasks; none
    of them left, the probe is off (instead of a ConfigError for naming a task that is not evaluated)."""
    from harness.evaluation.cli import _with_tasks

    cfg = _on(rec, "eval.recovery.tasks=[tiny_mc]")
    assert _with_tasks(cfg, ["tiny_mc", "tiny_qa"]).eval.recovery.tasks == ("tiny_mc",)
    off = _with_tasks(cfg, ["tiny_qa"]).eval.recovery
    assert not off.enabled


def test_two_stages_with_recovery_end_to_end_report_draws_the_recovery_curves(rec, tmp_path):
    """The real pipeline in two stages on the tiny model: every checkpoint of both stages is evaluated, the
    probe runs on the base and each stage's final checkpoint, and the report draws the recovery curves."""
    import yaml

    from analysis.report import build_report
    from harness.launch.submit import launch

    root, path = rec
    raw = yaml.safe_load(path.read_text())
    raw.update(name="stages_rec", results_dir=str(tmp_path / "results"))
    raw["train"].update(epochs=1)
    raw["stages"] = [{"name": "a"}, {"name": "b", "set": {"train.lr": 1e-2, "train.save_every_steps": 2,
                                                          "data.train.limit": 16}}]
    raw["grid"] = {"train.seed": [1, 2]}
    p = tmp_path / "stages_rec.yaml"
    p.write_text(yaml.safe_dump(raw))
    exp = load_experiment(p, [o.format(root=root) for o in RECOVERY])
    out = launch(exp, backend="debug", out=lambda *_: None)
    assert [r["status"] for r in out["results"]] == ["done"] * 4
    for r in exp.runs:
        evals = sorted((exp.run_dir(r).path / "eval").glob("step-*.json"))
        assert len(evals) >= (2 if r.axes["stage"] == "b" else 1)  # b: a checkpoint every 2 steps
        last = json.loads(evals[-1].read_text())["metrics"]
        assert "recovery/k6/tiny_qa/exact_match" in last and "tiny_mc/acc" in last  # both tasks, every stage
        # the probe runs on the final checkpoint only (eval.recovery.every_checkpoint: false)
        assert all(not any(k.startswith("recovery/") for k in json.loads(e.read_text())["metrics"]) for e in evals[:-1])
    rep = build_report(exp.out_dir, tmp_path / "report", formats=("png",), experiment=exp)
    drawn = {f.name: f for f in rep.figures}
    assert "recovery_curves" in drawn and drawn["recovery_curves"].skipped is None, drawn.get("recovery_curves")


def test_the_kshot_batches_supervise_exactly_the_assistant_text(model_and_examples):
    """What the probe's loss sees, decoded from the padded batches it trains on: each of the first k
    conversations' assistant contents, each followed by its end of turn, and nothing else."""
    from tests.test_masking import expected_response

    model, tok, ex, path = model_and_examples
    rows = [json.loads(line) for line in Path(path).read_text().splitlines()]
    labels = R.kshot_labels(ex[:6])
    batches = R._micro_batches(ex[:6], labels, tok.pad_token_id, 40)  # several micro-batches, right-padded
    got = {}
    for idx, (ids, att, lab) in zip((i for i, _, _ in P._batches([t.input_ids for t in ex[:6]],
                                                               tok.pad_token_id, 40)), batches):
        for r, j in enumerate(idx):
            keep = lab[r] != R.IGNORE_INDEX
            got[j] = tok.decode(ids[r][keep].tolist(), skip_special_tokens=False, clean_up_tokenization_spaces=False)
    assert sorted(got) == list(range(6))
    for j in range(6):
        assert got[j] == expected_response(tok, rows[j]["messages"]), j
