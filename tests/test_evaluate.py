"""Evaluation on the mini-world test size: the base and a prompt-masked SFT checkpoint end to end (trained and
evaluated through the launcher), lm-eval parity (in-memory model vs loading the directory), bad input, and
every task named in experiments/*.yaml resolving offline."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from harness.errors import DataError
from harness.grid import load_experiment

EXP = """\
name: evaltest
results_dir: {root}/results
model: {{name_or_path: {w}/model}}
data:
  train: {{path: {w}/data/sft_train.jsonl}}
  eval: {{path: {w}/data/eval_qa_heldout.jsonl, limit: 40}}
  max_length: 128
train: {{lr: 1e-3, epochs: 4, batch_tokens: 256, seed: 1, threads: 1}}
eval:
  every_checkpoint: false
  include_path: [{w}/tasks]
  tasks: [{{name: world_qa, limit: 40}}, {{name: world_qa_raw, limit: 40}}, {{name: world_facts, limit: 40}}]
  pretrain_text: {w}/data/eval_heldout_bios.jsonl
  raw_questions: {w}/data/eval_raw_questions.jsonl
  probe_limit: 40
  token_examples: 3
launcher: {{backend: debug}}
"""
KEYS = ("world_qa/exact_match", "world_qa_raw/exact_match", "world_facts/acc", "nll/response", "nll/prompt",
        "nll/template", "forgetting/pretrain_nll", "forgetting/pretrain_nll_delta", "forgetting/kl_base",
        "format/answered", "format/continued_question", "format/other", "format/unfinished")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def evaluated(test_world, tmp_path_factory):
    """Base + one prompt-masked SFT run, trained and evaluated through the launcher (debug backend)."""
    from harness.launch.submit import launch

    root = tmp_path_factory.mktemp("eval")
    p = root / "e.yaml"
    p.write_text(EXP.format(root=root, w=test_world))
    exp = load_experiment(p)
    t0 = time.perf_counter()
    launch(exp, out=lambda *a: None)
    print(f"\ntrain + evaluate (base and one checkpoint) through the launcher: {time.perf_counter() - t0:.1f} s")
    return exp


def _json(path: Path) -> dict:
    return json.loads(path.read_text())


@pytest.mark.slow
def test_base_and_sft_checkpoint_end_to_end(evaluated):
    exp = evaluated
    base = _json(exp.out_dir / "base/eval/step-000000.json")
    rdir = exp.out_dir / "runs" / exp.runs[0].run_id
    evals = sorted((rdir / "eval").glob("step-*.json"))
    assert len(evals) == 1  # every_checkpoint: false -> the last checkpoint only
    tuned = _json(evals[-1])
    b, m = base["metrics"], tuned["metrics"]
    print("\nmetric                          base     SFT")
    for key in KEYS:
        assert key in m and m[key] is not None and key in b and b[key] is not None, key
        print(f"{key:30s} {b[key]:7.3f} {m[key]:7.3f}")
    assert (base["step"], base["run_id"], tuned["run_id"]) == (0, "base", exp.runs[0].run_id)
    assert tuned["step"] == int(evals[-1].stem[-6:]) and tuned["epoch"] == 4.0
    assert tuned["eval_hash"] == base["eval_hash"]
    assert tuned["lm_eval"]["results"]["world_qa"] and tuned["lm_eval"]["versions"]["world_facts"] == 1.0
    assert m["forgetting/kl_base"] > 0 and b["forgetting/kl_base"] == 0.0
    assert m["forgetting/pretrain_nll_delta"] == pytest.approx(m["forgetting/pretrain_nll"]
                                                               - b["forgetting/pretrain_nll"], abs=1e-9)
    # The test-size base is weak (bio-format fact completion ~34%): SFT teaches the *format* (a short
    # answer instead of another question) but the answers it gives are mostly wrong, so exact-match QA
    # barely moves at this size (the demo size shows the knowledge extraction). Assert the direction only.
    assert m["nll/response"] < b["nll/response"] - 1.0
    assert b["format/continued_question"] >= 0.5  # the seed's story: a raw question continued by another
    assert m["format/continued_question"] <= b["format/continued_question"] - 0.5
    # SFT answers far more chat and raw questions about held-out people than the base (measured: chat QA
    # 0 -> 22.5%, raw QA 0 -> 32.5%, raw answered 0 -> 32.5% on 40 questions each)
    assert m["world_qa/exact_match"] >= b["world_qa/exact_match"] + 0.10
    assert m["world_qa_raw/exact_match"] >= b["world_qa_raw/exact_match"] + 0.15
    assert m["format/answered"] >= b["format/answered"] + 0.15
    import pandas as pd

    tokens = pd.read_parquet(evals[-1].with_name(evals[-1].stem + ".tokens.parquet"))
    assert list(tokens.columns) == ["example", "position", "token", "token_id", "segment", "turn", "nll"]
    assert tokens["example"].nunique() == 3 and set(tokens["segment"]) >= {"user", "assistant", "eot", "template"}


@pytest.mark.slow
def test_rerun_evaluates_nothing_and_half_written_json_is_redone(evaluated):
    from harness.evaluation.evaluate import evaluate_run

    cfg = evaluated.runs[0].config
    rdir = evaluated.out_dir / "runs" / evaluated.runs[0].run_id
    assert evaluate_run(rdir, cfg) == []
    last = sorted((rdir / "eval").glob("step-*.json"))[-1]
    before = _json(last)["metrics"]
    last.write_text('{"metrics": ')
    redone = evaluate_run(rdir, cfg)
    assert len(redone) == 1 and _json(last)["metrics"] == before  # deterministic: the same numbers


@pytest.mark.slow
def test_environment_is_described_once_per_process(evaluated, monkeypatch):
    """lm-eval's per-call environment description (pip list and other subprocesses, ~0.5 s) runs once per
    process; every result still carries it, and lm-eval's function is put back afterwards."""
    import lm_eval.evaluator as ev
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import harness.evaluation.lm_eval as E
    import harness.evaluation.lm_eval_patches as P

    calls = []
    original = ev.add_env_info

    def counting(storage):
        calls.append(1)
        original(storage)

    monkeypatch.setattr(ev, "add_env_info", counting)
    monkeypatch.setattr(P, "_ENV_INFO", {})
    cfg = evaluated.runs[0].config
    ckpt = sorted((evaluated.out_dir / "runs" / evaluated.runs[0].run_id / "checkpoints").glob("step-*"))[-1]
    model = AutoModelForCausalLM.from_pretrained(ckpt, dtype="float32")
    tok = AutoTokenizer.from_pretrained(ckpt)
    first = E.run_lm_eval(model, tok, cfg)[1]["calls"]
    second = E.run_lm_eval(model, tok, cfg)[1]["calls"]
    assert len(calls) == 1 and ev.add_env_info is counting
    infos = [c["pretty_env_info"] for c in first + second]
    assert len(infos) >= 2 and infos[0] and all(i == infos[0] for i in infos)
    assert all(c["transformers_version"] and c["lm_eval_version"] for c in first + second)


@pytest.mark.slow
def test_in_memory_hflm_equals_loading_the_directory(evaluated):
    """lm-eval on the in-memory model (what every evaluation does) == lm-eval loading the checkpoint dir."""
    import lm_eval
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from harness.evaluation.lm_eval import flatten_lm_eval, run_lm_eval, task_manager_for

    cfg = evaluated.runs[0].config
    ckpt = sorted((evaluated.out_dir / "runs" / evaluated.runs[0].run_id / "checkpoints").glob("step-*"))[-1]
    model = AutoModelForCausalLM.from_pretrained(ckpt, dtype="float32")
    tok = AutoTokenizer.from_pretrained(ckpt)
    mem, _, _ = run_lm_eval(model, tok, cfg)
    tm = task_manager_for(cfg, cfg.eval.tasks)
    disk = {}
    for t in cfg.eval.tasks:
        res = lm_eval.simple_evaluate(model="hf", model_args=f"pretrained={ckpt},dtype=float32", tasks=[t.name],
                                      limit=t.limit, task_manager=tm, batch_size=t.batch_size, device="cpu",
                                      bootstrap_iters=0)
        disk.update(flatten_lm_eval(res))
    assert {k: v for k, v in mem.items() if not k.endswith("_stderr")} == disk
    assert len(disk) == 3


def test_bad_input(evaluated, tmp_path):
    from harness.errors import EvaluationError
    from harness.evaluation.evaluate import evaluate_checkpoint
    from harness.evaluation.lm_eval import check_tasks
    from harness.evaluation.probes import read_jsonl

    cfg = evaluated.runs[0].config
    ck = tmp_path / "checkpoints" / "step-000001"
    ck.mkdir(parents=True)
    with pytest.raises(EvaluationError, match="no COMPLETED sentinel"):
        evaluate_checkpoint(ck, cfg, tmp_path / "x.json")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(DataError, match="probe corpus is empty"):
        read_jsonl(empty, "text")
    bad = load_experiment(evaluated.path, ["eval.tasks=[{name: world_qaa}]"]).runs[0].config
    problems = check_tasks(bad)
    assert len(problems) == 1 and "unknown lm-eval task 'world_qaa'" in problems[0] and "world_qa" in problems[0]


def test_shipped_experiments_name_real_tasks():
    """Every task named in experiments/*.yaml resolves offline with lm-eval's TaskManager, so a typo fails
    here and not on the cluster. Local tasks whose include_path is not built yet are skipped (reported)."""
    from harness.evaluation.lm_eval import resolve_task_names

    files = sorted(Path(__file__).resolve().parents[1].glob("experiments/*.yaml"))
    assert files
    names, skipped = set(), []
    for p in files:
        cfg = load_experiment(p).config
        chk = resolve_task_names(cfg)
        assert not chk.problems, f"{p.name}: {chk.problems}"
        skipped += [f"{p.name}: {u}" for u in chk.unverified]
        names |= {t.name for t in cfg.eval.tasks}
    assert names >= {"hellaswag", "arc_challenge", "winogrande", "mmlu"}
    if skipped:
        print("not verified (include_path not built):", *skipped, sep="\n  ")
