"""Writing evaluation results: side files first, the JSON last and atomically (its presence means the rest is
there; a half-written one is not a result and is redone). The schema is docs/results-schema.md."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pandas as pd

from harness.evaluation.lm_eval import jsonable
from harness.fsio import atomic_write_text, atomic_write_with, fault_point
from harness.layout import eval_side_file
from harness.versions import EVAL_SCHEMA


def write_eval(out_json: Path, payload: dict, samples: list, token_rows: list) -> None:
    """samples.jsonl.gz and tokens.parquet first, the JSON last (its presence means the rest is there)."""
    out_json = Path(out_json)
    out_json.parent.mkdir(parents=True, exist_ok=True)

    def _samples(tmp: Path) -> None:
        with gzip.open(tmp, "wt", encoding="utf-8") as fh:
            for s in samples:
                fh.write(json.dumps(jsonable(s), ensure_ascii=False) + "\n")

    def _tokens(tmp: Path) -> None:
        df = pd.DataFrame(token_rows, columns=["example", "position", "token", "token_id", "segment", "turn", "nll"])
        df = df.astype({"example": "int64", "position": "int64", "token_id": "int64", "turn": "int64",
                        "nll": "float64", "token": "string", "segment": "string"})
        df.to_parquet(tmp, index=False)

    atomic_write_with(eval_side_file(out_json, "samples"), _samples)
    if token_rows:
        atomic_write_with(eval_side_file(out_json, "tokens"), _tokens)
    fault_point("eval_write")  # reliability suite: killed with the side files written, the JSON not yet
    atomic_write_text(out_json, json.dumps(jsonable(payload), indent=1, allow_nan=False) + "\n")


def payload(res, *, run_id, step, epoch, checkpoint, seconds, hash_) -> dict:
    """The eval JSON of an :class:`~harness.evaluation.evaluator.EvalResult`."""
    return {"schema": EVAL_SCHEMA, "run_id": run_id, "step": step, "epoch": epoch, "checkpoint": checkpoint,
            "seconds": round(seconds, 2), "eval_hash": hash_, "metrics": res.metrics, "probes": res.probes,
            "lm_eval": res.lm_eval}

