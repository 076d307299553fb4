"""Evaluation pipeline on a tiny random model (no mini-world): result files and schema, base once, run
evaluation that skips valid results and redoes broken ones, task grouping, CLI, and bad input."""

from __future__ import annotations

import argparse
import gzip
import json
import shutil
from pathlib import Path

import pytest
import torch

from harness.errors import ConfigError, DataError
from harness.grid import load_experiment
from tests.tiny import build_tiny

QA_TASK = """task: tiny_qa
dataset_path: json
dataset_kwargs:
  data_files: {{test: "{data}"}}
test_split: test
output_type: generate_until
doc_to_text: "<|im_start|>user\\n{{{{question}}}}<|im_end|>\\n<|im_start|>assistant\\n"
doc_to_target: "{{{{answer}}}}"
generation_kwargs: {{until: ["<|im_end|>", "\\n"], do_sample: false, max_gen_toks: 4}}
metric_list: [{{metric: exact_match, aggregation: mean, higher_is_better: true}}]
metadata: {{version: 1.0}}
"""
MC_TASK = """task: tiny_mc
dataset_path: json
dataset_kwargs:
  data_files: {{test: "{data}"}}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{prompt}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{label}}}}"
target_delimiter: ""
metric_list: [{{metric: acc, aggregation: mean, higher_is_better: true}}]
metadata: {{version: 1.0}}
"""
EVAL = """\
eval:
  include_path: [{root}/tasks]
  tasks: [{{name: tiny_qa, limit: 6}}, {{name: tiny_mc, limit: 8, batch_size: 4}}]
  pretrain_text: {root}/bios.jsonl
  raw_questions: {root}/raw.jsonl
  probe_limit: 6
  token_examples: 2
  max_new_tokens: 6
"""


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def write_tiny_tasks(root: Path) -> list[tuple[int, int]]:
    """Two local lm-eval tasks over the sums a+b (a < 4, b < 3) in root/tasks: tiny_qa (generate the answer)
    and tiny_mc (pick it of two). Returns the sums."""
    sums = [(a, b) for a in range(4) for b in range(3)]
    _jsonl(root / "qa.jsonl", [{"question": f"What is {a}+{b}?", "answer": str(a + b)} for a, b in sums])
    _jsonl(root / "mc.jsonl", [{"prompt": f"{a}+{b}=", "choices": [f" {a + b}", f" {a + b + 1}"], "label": 0}
                               for a, b in sums])
    (root / "tasks").mkdir()
    (root / "tasks" / "tiny_qa.yaml").write_text(QA_TASK.format(data=root / "qa.jsonl"))
    (root / "tasks" / "tiny_mc.yaml").write_text(MC_TASK.format(data=root / "mc.jsonl"))
    return sums


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny model + experiment whose eval section has two local lm-eval tasks and every probe."""
    root = tmp_path_factory.mktemp("tinyeval")
    exp_path = build_tiny(root)
    sums = write_tiny_tasks(root)
    _jsonl(root / "bios.jsonl", [{"text": f"the quick brown fox jumps over the lazy dog {i}. 2+2=4."}
                                 for i in range(8)])
    _jsonl(root / "raw.jsonl", [{"prompt": f"What is {a}+{b}?\n", "answer": str(a + b)} for a, b in sums])
    exp_path.write_text(exp_path.read_text() + EVAL.format(root=root))
    return load_experiment(exp_path)


def _checkpoint(model_dir: Path, dest: Path, noise: float = 0.05, completed: bool = True) -> Path:
    """A 'trained' checkpoint: the base weights plus noise, saved like the trainer does."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(noise * torch.randn_like(p))
    model.save_pretrained(dest)
    AutoTokenizer.from_pretrained(model_dir).save_pretrained(dest)
    if completed:
        (dest / "COMPLETED").write_text("x\n")
    return dest


def test_checkpoint_and_base_results_follow_the_schema(tiny):
    import pandas as pd

    from harness.evaluation.evaluate import evaluate_base, evaluate_checkpoint

    cfg = tiny.config
    base = evaluate_base(cfg, tiny.out_dir)
    rdir = tiny.out_dir / "runs" / "r1"
    ck = _checkpoint(Path(cfg.model.name_or_path), rdir / "checkpoints" / "step-000003")
    out = rdir / "eval" / "step-000003.json"
    r = evaluate_checkpoint(ck, cfg, out, run_id="r1", epoch=1.0)
    on_disk = json.loads(out.read_text())
    assert on_disk == json.loads(json.dumps(r))
    assert {"schema", "run_id", "step", "epoch", "checkpoint", "seconds", "metrics", "lm_eval"} <= set(on_disk)
    assert (on_disk["schema"], on_disk["run_id"], on_disk["step"], on_disk["epoch"]) == (1, "r1", 3, 1.0)
    assert on_disk["checkpoint"] == "checkpoints/step-000003"
    m, b = on_disk["metrics"], base["metrics"]
    expected = {"tiny_qa/exact_match", "tiny_mc/acc", "nll/response", "nll/prompt", "nll/template",
                "forgetting/pretrain_nll", "forgetting/pretrain_nll_delta", "forgetting/kl_base",
                "format/answered", "format/continued_question", "format/other", "format/unfinished"}
    assert expected <= set(m) and expected <= set(b)
    assert all(m[k] is not None for k in expected)
    assert b["forgetting/kl_base"] == 0.0 and b["forgetting/pretrain_nll_delta"] == 0.0
    assert m["forgetting/kl_base"] > 0
    assert m["forgetting/pretrain_nll_delta"] == pytest.approx(m["forgetting/pretrain_nll"]
                                                               - b["forgetting/pretrain_nll"], abs=1e-9)
    assert sum(m[f"format/{c}"] for c in ("answered", "continued_question", "other")) == pytest.approx(1.0)
    assert on_disk["eval_hash"] == base["eval_hash"]  # same evaluation: comparable rows
    # the whole lm-eval results dict (JSON-safe), one call per set of options
    le = on_disk["lm_eval"]
    assert set(le["results"]) == {"tiny_qa", "tiny_mc"} and le["versions"]["tiny_mc"] == 1.0
    assert le["n-shot"] == {"tiny_qa": 0, "tiny_mc": 0} and "tiny_qa" in le["configs"]
    assert [c["tasks"] for c in le["calls"]] == [["tiny_qa"], ["tiny_mc"]]  # different batch sizes
    assert le["n-samples"]["tiny_mc"]["effective"] == 8
    # samples: lm-eval's and the format probe's
    with gzip.open(out.with_name("step-000003.samples.jsonl.gz"), "rt") as fh:
        samples = [json.loads(x) for x in fh]
    tasks = [s["task"] for s in samples]
    assert tasks.count("tiny_qa") == 6 and tasks.count("tiny_mc") == 8 and tasks.count("probe/format") == 6
    # per-token losses: schema columns and dtypes
    tok = pd.read_parquet(out.with_name("step-000003.tokens.parquet"))
    assert list(tok.columns) == ["example", "position", "token", "token_id", "segment", "turn", "nll"]
    assert sorted(tok["example"].unique()) == [0, 1] and tok["nll"].isna().sum() == 2
    assert str(tok["token_id"].dtype) == "int64" and str(tok["nll"].dtype) == "float64"
    assert set(tok["segment"]) <= {"template", "system", "user", "assistant", "eot", "tool"}
    # nothing half-written left behind; the base's log-probs cached once for the experiment
    assert not [p for p in (rdir / "eval").iterdir() if p.name.startswith(".")]
    assert len(list((tiny.out_dir / "base" / "eval").glob("base_logprobs-*.npz"))) == 1


def test_base_is_evaluated_once(tiny, monkeypatch):
    import harness.evaluation.evaluate as E

    first = E.evaluate_base(tiny.config, tiny.out_dir)
    monkeypatch.setattr(E, "load_model", lambda *a, **k: pytest.fail("the base was evaluated again"))
    assert E.evaluate_base(tiny.config, tiny.out_dir) == first


def test_evaluate_run_does_completed_checkpoints_lacking_a_valid_result(tiny, tmp_path):
    from harness.evaluation.evaluate import evaluate_run

    cfg = tiny.config
    rdir = tmp_path / "exp" / "runs" / "r2"
    model_dir = Path(cfg.model.name_or_path)
    _checkpoint(model_dir, rdir / "checkpoints" / "step-000002")
    _checkpoint(model_dir, rdir / "checkpoints" / "step-000004")
    _checkpoint(model_dir, rdir / "checkpoints" / "step-000006", completed=False)  # crashed while saving
    (rdir / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "epoch": s / 4}) + "\n" for s in (1, 2, 3, 4)))
    done = evaluate_run(rdir, cfg)
    assert [(r["step"], r["epoch"], r["run_id"]) for r in done] == [(2, 0.5, "r2"), (4, 1.0, "r2")]
    assert (tmp_path / "exp" / "base" / "eval").is_dir()  # the base's log-probs live with the experiment
    assert evaluate_run(rdir, cfg) == []
    (rdir / "eval" / "step-000002.json").write_text('{"metrics": ')  # half-written
    (rdir / "eval" / "step-000004.json").write_text('{"schema": 1}')  # valid JSON, not a result
    assert [r["step"] for r in evaluate_run(rdir, cfg)] == [2, 4]
    assert json.loads((rdir / "eval" / "step-000002.json").read_text())["metrics"]


def test_refuses_a_checkpoint_without_completed(tiny, tmp_path):
    from harness.errors import EvaluationError
    from harness.evaluation.evaluate import evaluate_checkpoint

    ck = _checkpoint(Path(tiny.config.model.name_or_path), tmp_path / "checkpoints" / "step-000001",
                     completed=False)
    with pytest.raises(EvaluationError, match="no COMPLETED sentinel") as exc:
        evaluate_checkpoint(ck, tiny.config, tmp_path / "eval" / "step-000001.json")
    assert str(ck) in str(exc.value)
    assert not (tmp_path / "eval").exists()


def test_missing_task_data_file_is_named(tiny, tmp_path):
    from harness.evaluation.evaluate import evaluate_base
    from harness.evaluation.lm_eval import check_tasks

    tasks = tmp_path / "tasks"
    tasks.mkdir()
    missing = tmp_path / "gone" / "qa.jsonl"
    (tasks / "tiny_qa.yaml").write_text(QA_TASK.format(data=missing))
    cfg = load_experiment(tiny.path, [f"eval.include_path=[{tasks}]", "eval.tasks=[{name: tiny_qa}]"]).config
    problems = check_tasks(cfg)
    assert len(problems) == 1 and str(missing) in problems[0] and "tiny_qa" in problems[0]
    with pytest.raises(DataError, match="data file") as exc:
        evaluate_base(cfg, tmp_path / "exp")
    assert str(missing) in str(exc.value)


def test_unknown_task_lists_close_matches(tiny):
    from harness.evaluation.evaluator import Evaluator
    from harness.evaluation.lm_eval import check_tasks

    cfg = load_experiment(tiny.path, ["eval.tasks=[{name: tiny_qaa}, {name: hellaswg}]"]).config
    problems = check_tasks(cfg)
    assert len(problems) == 2
    assert "unknown lm-eval task 'tiny_qaa'" in problems[0] and "tiny_qa" in problems[0]
    assert "unknown lm-eval task 'hellaswg'" in problems[1] and "hellaswag" in problems[1]
    with pytest.raises(ConfigError, match="close matches"):
        Evaluator(cfg, base_dir=None)


def test_missing_include_path_is_reported(tiny, tmp_path):
    from harness.evaluation.lm_eval import check_tasks, resolve_task_names

    cfg = load_experiment(tiny.path, [f"eval.include_path=[{tmp_path}/not-built]"]).config
    chk = resolve_task_names(cfg)
    assert not chk.problems and any("not-built" in u for u in chk.unverified)
    assert any("directory not found" in p for p in check_tasks(cfg))


def test_empty_probe_corpus(tiny, tmp_path):
    from harness.evaluation.evaluator import Evaluator

    (tmp_path / "empty.jsonl").write_text("")
    cfg = load_experiment(tiny.path, [f"eval.pretrain_text={tmp_path}/empty.jsonl", "eval.tasks=[]"]).config
    with pytest.raises(DataError, match="probe corpus is empty"):
        Evaluator(cfg, base_dir=tmp_path)


def test_cli_run_dir_checkpoint_and_adhoc_tasks(tiny, tmp_path, capsys):
    import yaml

    from harness.config import to_dict
    from harness.evaluation.cli import add_parser

    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers(dest="command"))
    rdir = tmp_path / "exp" / "runs" / "r3"
    rdir.mkdir(parents=True)
    (rdir / "config.yaml").write_text(yaml.safe_dump(to_dict(tiny.config)))
    ck = _checkpoint(Path(tiny.config.model.name_or_path), rdir / "checkpoints" / "step-000005")
    args = parser.parse_args(["eval", str(rdir)])
    assert args.func(args) == 0
    assert json.loads((rdir / "eval" / "step-000005.json").read_text())["step"] == 5
    assert "evaluated 1 checkpoint" in capsys.readouterr().out
    args = parser.parse_args(["eval", str(ck)])
    assert args.func(args) == 0 and "up to date" in capsys.readouterr().out
    args = parser.parse_args(["eval", str(ck), "--tasks", "tiny_mc"])
    assert args.func(args) == 0
    adhoc = json.loads((rdir / "eval" / "adhoc" / "step-000005.json").read_text())
    assert set(adhoc["lm_eval"]["results"]) == {"tiny_mc"}
    assert adhoc["lm_eval"]["calls"][0]["batch_size"] == 4  # the config's options for that task are kept
    assert set(json.loads((rdir / "eval" / "step-000005.json").read_text())["lm_eval"]["results"]) == \
        {"tiny_qa", "tiny_mc"}  # the run's own row is untouched
    args = parser.parse_args(["eval", str(tiny.path)])  # an experiment file: its base model
    assert args.func(args) == 0 and "base of tiny" in capsys.readouterr().out
    assert (tiny.out_dir / "base" / "eval" / "step-000000.json").exists()


def test_eval_hash_changes_with_what_the_evaluation_depends_on(tiny, tmp_path):
    from harness.evaluation.identity import eval_hash

    h = eval_hash(tiny.config)
    assert h == eval_hash(load_experiment(tiny.path, ["train.lr=1e-1", "regime.name=full"]).config)
    assert h != eval_hash(load_experiment(tiny.path, ["eval.probe_limit=5"]).config)
    assert h != eval_hash(load_experiment(tiny.path, ["data.max_length=32"]).config)
    copy = tmp_path / "bios.jsonl"
    shutil.copy(tiny.config.eval.pretrain_text, copy)
    cfg = load_experiment(tiny.path, [f"eval.pretrain_text={copy}"]).config
    before = eval_hash(cfg)
    copy.write_text(copy.read_text() + '{"text": "one more held-out text"}\n')  # same path, new content
    assert eval_hash(cfg) != before


def test_small_models_are_evaluated_on_one_thread_and_threads_are_restored(tiny):
    from harness.evaluation.evaluator import _eval_threads
    from harness.modeling import load_model

    model = load_model(tiny.config, tiny.config.model.name_or_path, torch.device("cpu"), training=False)
    torch.set_num_threads(2)
    with _eval_threads(model, None):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == 2
    with _eval_threads(model, 2):
        assert torch.get_num_threads() == 2


def test_runs_with_another_base_model_get_their_own_base_dir(tiny, tmp_path):
    """A grid over model.name_or_path: the experiment's base in base/, every other base in bases/<eval_hash>/
    (plan.json names the experiment's), so no run's KL or deltas are against another run's base."""
    from dataclasses import replace

    from harness.evaluation.identity import base_dir_for, eval_hash
    from harness.launch.plan import write_plan

    exp = tmp_path / "exp"
    assert base_dir_for(exp, tiny.config) == exp / "base"  # no plan yet: the one base
    shutil.copytree(Path(tiny.config.model.name_or_path), tmp_path / "other")
    # another base model: other contents (a copy of the same files would be the same base, wherever it lies)
    cfg_file = tmp_path / "other" / "config.json"
    cfg_file.write_text(json.dumps({**json.loads(cfg_file.read_text()), "rms_norm_eps": 1e-5}))
    other = replace(tiny.config, model=replace(tiny.config.model, name_or_path=str(tmp_path / "other")))
    ghost = type(tiny)(tiny.config, tiny.path, tiny.runs)
    object.__setattr__(ghost, "config", replace(tiny.config, results_dir=str(tmp_path), name="exp"))
    write_plan(ghost)
    plan = json.loads((exp / "plan.json").read_text())
    assert plan["base_eval_hash"] == eval_hash(tiny.config) and all(r["eval_hash"] for r in plan["runs"])
    assert base_dir_for(exp, tiny.config) == exp / "base"
    assert base_dir_for(exp, other) == exp / "bases" / eval_hash(other) != exp / "base"


def test_lm_eval_git_hash_is_the_harness_commit_and_quiet_outside_a_checkout(tmp_path, monkeypatch, capfd):
    """lm-eval asks `git describe` in the current directory: outside a checkout that printed "fatal: not a git
    repository" into every evaluation's log. Within our lm-eval call it is the harness's commit, asked quietly."""
    import lm_eval.evaluator as ev

    from harness.evaluation.lm_eval_patches import env_info_once
    from harness.provenance import git_info

    monkeypatch.chdir(tmp_path)  # not a git checkout
    original = ev.get_git_commit_hash
    with env_info_once():
        got = ev.get_git_commit_hash()
    assert got == git_info()["commit"]
    assert ev.get_git_commit_hash is original  # restored
    assert "fatal" not in capfd.readouterr().err


def test_lm_eval_templates_are_compiled_once_and_render_the_same_text():
    """compiled_templates: lm-eval's apply_template compiled its Jinja template per document; the cached one
    renders identical text (a value that looks like Jinja stays text), and the original is restored."""
    import lm_eval.utils as u

    from harness.evaluation.lm_eval_patches import _template, compiled_templates

    docs = [{"q": "Where was Anna Maria Lopez born?", "a": "Lyon"}, {"q": "x {{ y }} {% if %}", "a": ""}]
    tmpl = "Question: {{q}}\nAnswer:{% if a %} {{a}}{% endif %}"
    want = [u.apply_template(tmpl, d) for d in docs]
    original = u.apply_template
    _template.cache_clear()
    with compiled_templates():
        got = [u.apply_template(tmpl, d) for d in docs]
        assert (_template.cache_info().misses, _template.cache_info().hits) == (1, 1)
    assert got == want and want[1] == "Question: x {{ y }} {% if %}\nAnswer:" and u.apply_template is original
