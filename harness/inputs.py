"""What a run read, and whether it has changed since: the inputs half of a run's identity.

A run id hashes the config (harness/grid.py), never file contents: an id is known without reading a 15 GB
model, is the same on every machine and for a copy of the same file, and a hub dataset has no local bytes to
hash. What the run read is recorded instead, when it starts training, in its ``inputs.json``: the content
fingerprint (harness/fingerprint.py) of every local file or directory it reads (base model, tokenizer, chat
template file, training/eval/replay data, the probe and k-shot files, lm-eval task folders). ``harness status``
and ``harness run`` compare the record with the files as they are now; a run whose inputs changed is never
reported done and never resumed or skipped silently: the user either reruns under a new experiment name (new
run directories, the old results kept as they are) or keeps the old results with ``--accept-changed-inputs``,
which the record keeps (when, which input, old and new digest).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from harness import fingerprint
from harness.config import ExperimentConfig
from harness.config.paths import TEMPLATE_SUFFIXES
from harness.errors import HarnessError
from harness.evaluation.identity import kl_prompt_source, probe_paths
from harness.fsio import atomic_write_json, is_local_path, now_iso
from harness.layout import RunDir

RECORD_VERSION = 1


def input_paths(cfg: ExperimentConfig) -> dict[str, tuple[str, tuple[str, ...] | None]]:
    """{config key: (local path, the suffixes that count in a directory)} of everything a run with `cfg`
    reads, hub names left out (a hub model is pinned by model.revision, which the run id hashes)."""
    out: dict[str, tuple[str, tuple[str, ...] | None]] = {}

    def add(key: str, path: str | None, suffixes=fingerprint.MODEL_FILES) -> None:
        if path and is_local_path(path) and path not in {p for p, _ in out.values()}:
            out[key] = (path, suffixes)

    m, d = cfg.model, cfg.data
    add("model.name_or_path", m.name_or_path)
    add("model.tokenizer", m.tokenizer)
    if m.chat_template and m.chat_template.endswith(TEMPLATE_SUFFIXES) and "{" not in m.chat_template:
        add("model.chat_template", m.chat_template)
    add("data.train.path", d.train.path)
    add("data.eval.path", d.eval.path if d.eval else None)
    add("data.replay.path", d.replay.path if d.replay else None)
    keys = {"nll": "eval.nll_data", "pretrain": "eval.pretrain_text", "raw": "eval.raw_questions"}
    for probe, path in probe_paths(cfg).items():
        add(keys[probe], path)
    if cfg.eval.kl_prompts and kl_prompt_source(cfg):
        add("eval.kl_prompts", cfg.eval.kl_prompts)
    if cfg.eval.recovery.enabled:
        add("eval.recovery.data", cfg.eval.recovery.data)
    for i, p in enumerate(cfg.eval.include_path):
        add(f"eval.include_path[{i}]", p, fingerprint.TASK_FILES)
    return out


def current_inputs(cfg: ExperimentConfig) -> dict[str, dict]:
    """{config key: {"path": absolute path, "sha256", "bytes", "files"}} as the files are now (a missing one:
    {"path", "missing": true})."""
    out = {}
    for key, (path, suffixes) in input_paths(cfg).items():
        fp = fingerprint.fingerprint(path, suffixes)
        out[key] = {"path": str(Path(path).expanduser().resolve()), **(fp or {"missing": True})}
    return out


@dataclass(frozen=True)
class Change:
    """One input whose contents differ from what the run read."""

    key: str  # the config key that names it
    path: str  # resolved absolute path now
    before: str  # digest when the run read it (16 hex digits)
    after: str  # digest now, or "missing"

    def describe(self) -> str:
        return f"{self.key} {self.path}: sha256 {self.before} when the run read it, {self.after} now"


def read_record(rd: RunDir) -> dict:
    """The run's inputs.json ({} when it has none or it does not parse)."""
    try:
        rec = json.loads(rd.inputs.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return rec if isinstance(rec, dict) else {}


def record(rd: RunDir, cfg: ExperimentConfig, late: bool = False) -> dict:
    """Write the run's ``inputs.json`` (the inputs it is about to read), keeping any acceptance history.
    `late`: the run had started before any record (a harness without inputs.json): what it read then is
    unknown, and the record says so."""
    old = read_record(rd)
    rec = {"version": RECORD_VERSION, "recorded": now_iso(), "inputs": current_inputs(cfg),
           "accepted": old.get("accepted", [])}
    if late:
        rec["note"] = ("recorded when the run was resumed or evaluated: it started before inputs were recorded, "
                       "so what it read before then is unknown")
    atomic_write_json(rd.inputs, rec)
    return rec


def changes(rd: RunDir, cfg: ExperimentConfig, now: dict[str, dict] | None = None) -> list[Change]:
    """Inputs the run read that differ now (compared by contents, never by path or mtime: a moved or touched
    file is the same input). An input the config no longer names is a config change, which the run id or the
    eval hash already tells; a run with no record (trained by a harness before inputs.json) has no changes."""
    rec = read_record(rd)
    if not isinstance(rec.get("inputs"), dict):
        return []
    now = current_inputs(cfg) if now is None else now
    out = []
    for key, was in rec["inputs"].items():
        cur = now.get(key)
        if cur is None or not isinstance(was, dict):
            continue
        before = (was.get("sha256") or "missing")[:16]
        after = (cur.get("sha256") or "missing")[:16]
        if before != after:
            out.append(Change(key, cur["path"], before, after))
    return out


def accept(rd: RunDir, cfg: ExperimentConfig, found: list[Change]) -> None:
    """``--accept-changed-inputs``: the run's results stand for the inputs as they are now; the record keeps
    what was accepted, when, and the digests before and after."""
    rec = read_record(rd)
    history = list(rec.get("accepted", [])) + [{"at": now_iso(), "changes": [c.__dict__ for c in found]}]
    atomic_write_json(rd.inputs, {"version": RECORD_VERSION, "recorded": rec.get("recorded"),
                                  "inputs": current_inputs(cfg), "accepted": history})


def check_unchanged(rd: RunDir, cfg: ExperimentConfig, run_id: str) -> None:
    """In the job, before training or evaluating: refuse a run whose inputs changed after the launcher's check
    (an edit while the grid was queued), rather than resume or evaluate it on other data; a run that has no
    record yet gets one now (marked late when it had started before)."""
    if not rd.inputs.exists():
        record(rd, cfg, late=rd.metrics.exists() or rd.done.exists() or bool(rd.completed_checkpoints()))
        return
    found = changes(rd, cfg)
    if found:
        raise HarnessError(f"run {run_id}: its inputs changed since it started: "
                           + "; ".join(c.describe() for c in found), where=str(rd.inputs),
                           fix=RERUN_FIX)


RERUN_FIX = ("to train on the new inputs, give the experiment a new name (name: or -o name=NEW): new runs, the "
             "old results kept as they are; to keep these results as they are for the new inputs: "
             "harness run EXP.yaml --accept-changed-inputs (recorded in each run's inputs.json)")
