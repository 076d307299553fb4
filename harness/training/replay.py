"""``data.replay``: pretraining-style text mixed into every optimizer step at a token fraction (Bethune et al.
2025, "Scaling laws for forgetting during finetuning with pretraining data injection": a small share of
pretraining data in the fine-tuning mix keeps the pretraining loss nearly flat).

The SFT plan is made first (:func:`harness.training.packing.plan_steps`; epochs and supervised-token budgets count
SFT examples only), then :func:`add_replay` gives each step replay tokens R = round(f / (1 - f) * T), T = the
step's SFT tokens, so that replay is a fraction f of the step's tokens (to within half a token). The pieces are
consecutive windows of one stream: the replay documents in a seeded order, each followed by EOS, cycled when it
runs out. A piece fills the free space at the end of the step's packed rows first, then new rows. Every replay
token is supervised with weight 1 (the full loss) except a piece's first, which nothing predicts; replay tokens
have their own segment (``Segment.REPLAY``), so the fixed-mask metrics stay the SFT data's. The result is a pure
function of the data, the plan and ``train.seed``: a resumed run sees the same pieces.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from harness.config import ExperimentConfig
from harness.data.formats import iter_rows
from harness.data.tokenize import Segment, Tokenized
from harness.errors import DataError
from harness.masking import Masked, MaskedData
from harness.training.packing import PlannedStep, Row


def replay_stream(path: str | Path, tok, seed: int, key: str = "text") -> np.ndarray:
    """Token ids of every non-empty document of `path` (.jsonl with `key`), in a seeded order, each + EOS."""
    if not str(path):
        raise DataError("data.replay is set but has no path", where="data.replay.path",
                        fix="point it at a .jsonl with 'text' (or remove data.replay)")
    p = Path(path)
    if not p.is_file():
        raise DataError("replay file not found", where=str(p.absolute()),
                        fix="set data.replay.path to a .jsonl with 'text'")
    docs = []
    for row, where in iter_rows(str(p)):  # the data files' one reader: UTF-8, JSON and object checks per line
        if not isinstance(row.get(key), str):
            raise DataError(f"row has no '{key}' string", where=where, fix=f"each row needs a '{key}' field")
        if row[key].strip():
            docs.append(row[key])
    if not docs:
        raise DataError("replay file has no non-empty document", where=str(p), fix="point data.replay.path at text")
    eos = [tok.eos_token_id] if tok.eos_token_id is not None else []
    order = np.random.default_rng([seed, 0x5E9]).permutation(len(docs))
    ids = [np.asarray(tok(docs[i], add_special_tokens=False)["input_ids"] + eos, dtype=np.int64) for i in order]
    return np.concatenate(ids)


@dataclass
class ReplayStats:
    """What replay added to the plan (provenance, ``harness inspect``)."""

    tokens: int
    supervised: int
    pieces: int
    share: float  # replay tokens / all tokens of the run
    step_share_min: float
    step_share_max: float

    def as_dict(self) -> dict:
        return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in vars(self).items()}


def _piece(ids: np.ndarray, source: str) -> tuple[Tokenized, Masked]:
    n = len(ids)
    t = Tokenized(input_ids=ids, segments=np.full(n, Segment.REPLAY, dtype=np.int8),
                  turns=np.zeros(n, dtype=np.int16), offsets=np.zeros((n, 2), dtype=np.int32), text="",
                  roles=(), source=source)
    w = np.ones(n, dtype=np.float32)
    w[0] = 0.0  # nothing predicts a piece's first token
    labels = ids.copy()
    labels[0] = -100
    return t, Masked(labels=labels, weights=w)


def add_replay(data: MaskedData, plan: list[PlannedStep], cfg: ExperimentConfig, tok,
               stream: np.ndarray | None = None) -> tuple[MaskedData, list[PlannedStep], ReplayStats | None]:
    """(`data` with the replay pieces appended, the plan with them in every step, what was added); unchanged when
    ``data.replay`` is not set."""
    rc = cfg.data.replay
    if rc is None:
        return data, plan, None
    if stream is None:
        stream = replay_stream(rc.path, tok, cfg.train.seed)
    L, f = cfg.data.max_length, rc.fraction
    packed = cfg.train.layout == "packed"
    examples, masks = list(data.examples), list(data.masks)
    lengths = [len(t) for t in examples]
    pos, total_replay, total_sup, shares, out = 0, 0, 0, [], []
    for k, st in enumerate(plan):
        sft = sum(lengths[i] for r in st.rows for i in r.examples)
        need = int(round(f / (1.0 - f) * sft))
        rows = [Row(list(r.examples), r.length) for r in st.rows]
        gaps = [(j, L - r.length) for j, r in enumerate(rows)] if packed else []
        got = 0
        while got < need:
            j, room = next(((j, g) for j, g in gaps if g >= 2), (None, L))  # a 1-token piece trains nothing
            n = min(need - got, room, L)
            if pos + n > len(stream):
                pos = 0  # the stream is cycled
            ids = stream[pos:pos + n].copy()
            pos += n
            t, m = _piece(ids, f"{rc.path}:replay@{k}")
            examples.append(t)
            masks.append(m)
            idx = len(examples) - 1
            if j is None:
                rows.append(Row([idx], n))
                if packed:
                    gaps.append((len(rows) - 1, L - n))
            else:
                rows[j].examples.append(idx)
                rows[j].length += n
                gaps = [(jj, g - n if jj == j else g) for jj, g in gaps]
            got += n
            total_sup += n - 1
        total_replay += got
        shares.append(got / (sft + got) if sft + got else 0.0)
        out.append(PlannedStep(st.epoch, rows, st.epochs_done))
    sft_total = sum(lengths[i] for st in plan for r in st.rows for i in r.examples)
    stats = ReplayStats(total_replay, total_sup, len(examples) - len(data.examples),
                        total_replay / (sft_total + total_replay) if sft_total + total_replay else 0.0,
                        min(shares), max(shares))
    return replace(data, examples=examples, masks=masks), out, stats
