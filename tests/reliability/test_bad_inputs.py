"""The bad-input corpus (tests/data/bad/): every kind gives a clear error naming where and how to fix it,
or a counted, reported drop; never a bare traceback, never a silent zero-supervision example."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from harness.cli import main
from harness.data import load_conversations, tokenize_conversation
from harness.errors import ConfigError, DataError, HarnessError, TemplateError
from harness.grid import load_experiment

BAD = Path(__file__).resolve().parents[1] / "data" / "bad"

DATA_ERRORS = {
    "malformed_json.jsonl": r"malformed_json\.jsonl:2: malformed JSON",
    "wrong_field_type.jsonl": r"wrong_field_type\.jsonl:1: message 0 \(user\) content is list",
    "unknown_role.jsonl": r"unknown_role\.jsonl:1: message 0 has unknown role 'human'",
    "empty_messages.jsonl": r"empty_messages\.jsonl:1: empty conversation",
    "system_only.jsonl": r"system_only\.jsonl:1: conversation has only a system message",
    "empty_assistant.jsonl": r"empty_assistant\.jsonl:1: message 1 \(assistant\) is empty",
    "no_assistant.jsonl": r"no_assistant\.jsonl:1: conversation has no assistant turn",
    "messages_not_list.jsonl": r"messages_not_list\.jsonl:1: conversation has no assistant turn|"
                               r"messages_not_list\.jsonl:2: 'messages' is a str",
    "missing_content.jsonl": r"missing_content\.jsonl:1: message 0 has no 'content'",
    "duplicate_json_keys.jsonl": r"duplicate_json_keys\.jsonl:1: duplicate key 'messages'",
    "invalid_utf8.jsonl": r"invalid_utf8\.jsonl:1: invalid UTF-8",
    "unknown_format.jsonl": r"unknown_format\.jsonl:1: cannot detect the data format",
    "system_not_first.jsonl": r"system_not_first\.jsonl:1: system message at position 1",
}


@pytest.mark.parametrize("name", sorted(DATA_ERRORS))
def test_bad_data_files(name):
    with pytest.raises(DataError, match=DATA_ERRORS[name]) as info:
        load_conversations(str(BAD / name))
    assert "fix:" in str(info.value)


def test_bad_data_via_cli_is_a_clean_message(chatml_tok, tmp_path, capsys):
    chatml_tok.save_pretrained(tmp_path / "tok")
    rc = main(["inspect", "--data", str(BAD / "unknown_role.jsonl"), "--tokenizer", str(tmp_path / "tok")])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: ") and "Traceback" not in err


def test_too_long_examples_are_counted_not_silent(chatml_tok):
    from harness.data import ConversationTokenizer, tokenize_all
    from harness.masking import apply_all

    convs = load_conversations(str(BAD / "too_long.jsonl"))
    ct = ConversationTokenizer(chatml_tok, max_length=64, truncation="right")
    examples, drops = tokenize_all(convs, ct)
    md = apply_all(examples, "prompt_masked", {}, drops)
    st = md.stats()
    # the long prompt leaves no response: dropped and counted; the long answer is truncated and counted
    assert st["dropped"] == 1 and st["drop_reasons"] == {"zero_supervised_tokens_after_truncation": 1}
    assert md.drops.sources["zero_supervised_tokens_after_truncation"] == [f"{BAD / 'too_long.jsonl'}:2"]
    assert st["truncated_examples"] == 1 and all(m.n_supervised > 0 for m in md.masks)
    ct_drop = ConversationTokenizer(chatml_tok, max_length=64, truncation="drop")
    _, drops = tokenize_all(convs, ct_drop)
    assert drops.counts["longer_than_max_length"] == 2


def test_template_that_drops_earlier_turns(chatml_tok):
    msgs = load_conversations(str(BAD / "multi_turn.jsonl"))[0].as_list()
    with pytest.raises(TemplateError, match="does not render message 1 \\(assistant\\) verbatim"):
        tokenize_conversation(msgs, chatml_tok, chat_template=(BAD / "drops_earlier_turns.jinja").read_text())


CONFIG_ERRORS = {
    "yaml_duplicate_key.yaml": r"yaml_duplicate_key\.yaml:4: duplicate key 'train\.lr'",
    "yaml_typo.yaml": r"yaml_typo\.yaml:3 \(train\.learning_rate\): unknown key",
    "yaml_nan_lr.yaml": r"yaml_nan_lr\.yaml:3 \(train\.lr\): must be > 0, got nan",
    "yaml_negative_lr.yaml": r"yaml_negative_lr\.yaml:3 \(train\.lr\): must be > 0",
    "yaml_unknown_regime.yaml": r"unknown regime 'masked_prompt'",
}


@pytest.mark.parametrize("name", sorted(CONFIG_ERRORS))
def test_bad_configs(name):
    with pytest.raises(ConfigError, match=CONFIG_ERRORS[name]) as info:
        load_experiment(BAD / name)
    assert "fix:" in str(info.value)


def test_unknown_lm_eval_task():
    from harness.evaluation.lm_eval import check_tasks

    problems = check_tasks(load_experiment(BAD / "yaml_unknown_task.yaml").config)
    assert problems and "unknown lm-eval task 'hellaswagg'" in problems[0] and "hellaswag" in problems[0]


def test_results_from_an_older_schema_are_refused(tmp_path):
    from harness.launch.submit import launch

    exp_file = tmp_path / "e.yaml"
    exp_file.write_text(f"name: old\nresults_dir: {tmp_path}/results\ndata: {{train: {{path: x.jsonl}}}}\n")
    exp = load_experiment(exp_file)
    exp.out_dir.mkdir(parents=True)
    (exp.out_dir / "plan.json").write_text(json.dumps({"schema": 0, "runs": []}))
    before = sorted(p.name for p in exp.out_dir.rglob("*"))
    with pytest.raises(HarnessError, match="results schema version 0") as info:
        launch(exp, backend="debug", out=lambda *a: None)
    assert "move the old results away" in str(info.value)
    assert sorted(p.name for p in exp.out_dir.rglob("*")) == before  # nothing touched


def test_doctor_reports_problems(tmp_path, chatml_tok):
    from harness.doctor import doctor

    chatml_tok.save_pretrained(tmp_path / "model")
    shutil.copy(BAD / "too_long.jsonl", tmp_path / "d.jsonl")
    exp = tmp_path / "e.yaml"
    exp.write_text(f"name: doc\nresults_dir: {tmp_path}/results\nmodel: {{name_or_path: {tmp_path}/model}}\n"
                   f"data: {{train: {{path: {tmp_path}/d.jsonl}}, max_length: 32}}\n"
                   f"eval: {{raw_questions: {tmp_path}/missing.jsonl}}\n"
                   "grid: {regime.name: [prompt_masked, prompt_only]}\n")
    lines: list[str] = []
    assert doctor(str(exp), out=lines.append) == 1
    text = "\n".join(lines)
    assert "mask prompt_masked" in text and "dropped" in text
    assert "FAIL  eval.raw_questions" in text
    assert doctor(str(BAD / "yaml_typo.yaml"), out=lines.append) == 1


def test_an_empty_experiment_file_is_refused_by_every_command(capsys):
    for cmd in (["config"], ["doctor"], ["run", "--dry-run"], ["status"]):
        rc = main([cmd[0], str(BAD / "yaml_empty.yaml"), *cmd[1:]])
        out = capsys.readouterr()
        text = out.err + out.out
        assert rc in (1, 2) and "the experiment file is empty" in text and str(BAD / "yaml_empty.yaml") in text, cmd
        assert "Traceback" not in text
