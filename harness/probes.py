"""Probes computed identically for every checkpoint (and the base model), whatever regime trained it.

* fixed-mask NLL: mean NLL of held-out conversations on response, prompt and template tokens, with the
  same segment masks for every run (training losses are not comparable across regimes: different
  denominators), plus per-token losses of a fixed sample (the seed's per-token bar chart);
* forgetting: NLL on held-out pretraining-like text, and KL(base || tuned) of next-token distributions;
* format probe: raw questions (no chat template), greedy, answered / continued with another question / other.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from harness.data import ConversationTokenizer, load_conversations, tokenize_all
from harness.data.tokenize import PROMPT_SEGMENTS, RESPONSE_SEGMENTS, Segment, Tokenized
from harness.errors import DataError

SEG_NAME = {s.value: s.name.lower() for s in Segment}


def read_jsonl(path: str | Path, key: str, limit: int | None = None) -> list[dict]:
    p = Path(path)
    if not p.exists():
        raise DataError("probe file not found", where=str(p), fix="check eval.* paths (build the world first?)")
    rows = []
    for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            raise DataError("malformed JSON", where=f"{p}:{i}", fix="one JSON object per line") from None
        if key not in row:
            raise DataError(f"row has no '{key}'", where=f"{p}:{i}", fix=f"each row needs a '{key}' field")
        rows.append(row)
        if limit and len(rows) >= limit:
            break
    if not rows:
        raise DataError("probe corpus is empty", where=str(p), fix="point the probe at a non-empty .jsonl")
    return rows


def _batches(seqs: Sequence[np.ndarray], pad: int, bs: int):
    for i in range(0, len(seqs), bs):
        chunk = seqs[i:i + bs]
        T = max(len(s) for s in chunk)
        ids = torch.full((len(chunk), T), pad, dtype=torch.long)
        att = torch.zeros((len(chunk), T), dtype=torch.long)
        for r, s in enumerate(chunk):
            ids[r, :len(s)] = torch.as_tensor(s)
            att[r, :len(s)] = 1
        yield i, ids, att


@torch.no_grad()
def token_nll(model, seqs: Sequence[np.ndarray], pad: int, bs: int = 16) -> list[np.ndarray]:
    """NLL of every token given its prefix (NaN at position 0), per sequence."""
    device = next(model.parameters()).device
    out: list[np.ndarray] = []
    for _, ids, att in _batches(seqs, pad, bs):
        logits = model(input_ids=ids.to(device), attention_mask=att.to(device), use_cache=False).logits.float()
        nll = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1).to(device),
                              reduction="none").view(ids.shape[0], -1).cpu().numpy()
        for r in range(ids.shape[0]):
            n = int(att[r].sum())
            out.append(np.concatenate([[np.nan], nll[r, : n - 1]]))
    return out


def tokenize_eval_conversations(path: str, tok, max_length: int, limit: int | None) -> list[Tokenized]:
    convs = load_conversations(path, limit=limit)
    ct = ConversationTokenizer(tok, max_length=max_length, truncation="right")
    examples, _ = tokenize_all(convs, ct)
    return examples


def fixed_mask_nll(model, tok, examples: Sequence[Tokenized], token_examples: int = 8) -> tuple[dict, list[dict]]:
    """Mean NLL on response / prompt / template tokens, and per-token rows for the first examples."""
    nlls = token_nll(model, [t.input_ids for t in examples], tok.pad_token_id)
    sums = {"response": [0.0, 0], "prompt": [0.0, 0], "template": [0.0, 0]}
    groups = {"response": [int(s) for s in RESPONSE_SEGMENTS], "prompt": [int(s) for s in PROMPT_SEGMENTS],
              "template": [int(Segment.TEMPLATE)]}
    rows: list[dict] = []
    for k, (t, nll) in enumerate(zip(examples, nlls)):
        valid = ~np.isnan(nll)
        for g, segs in groups.items():
            m = np.isin(t.segments, segs) & valid
            sums[g][0] += float(nll[m].sum())
            sums[g][1] += int(m.sum())
        if k < token_examples:
            for j in range(len(t)):
                s, e = t.offsets[j]
                rows.append({"example": k, "position": j, "token": t.text[s:e], "token_id": int(t.input_ids[j]),
                             "segment": SEG_NAME[int(t.segments[j])], "turn": int(t.turns[j]),
                             "nll": float(nll[j])})
    metrics = {f"nll/{g}": (v[0] / v[1] if v[1] else None) for g, v in sums.items()}
    return metrics, rows


def text_ids(tok, texts: Sequence[str], max_length: int) -> list[np.ndarray]:
    return [np.asarray(tok(t, add_special_tokens=False)["input_ids"][:max_length], dtype=np.int64) for t in texts]


def text_nll(model, tok, ids: Sequence[np.ndarray]) -> float:
    nlls = token_nll(model, ids, tok.pad_token_id)
    tot = sum(float(np.nansum(n)) for n in nlls)
    cnt = sum(int((~np.isnan(n)).sum()) for n in nlls)
    return tot / max(1, cnt)


@torch.no_grad()
def kl_to_base(base, tuned, tok, ids: Sequence[np.ndarray], bs: int = 16) -> float:
    """Mean over positions of KL(base || tuned) of the next-token distribution."""
    device = next(tuned.parameters()).device
    tot, cnt = 0.0, 0
    for _, x, att in _batches(ids, tok.pad_token_id, bs):
        x, att = x.to(device), att.to(device)
        lp_b = F.log_softmax(base(input_ids=x, attention_mask=att, use_cache=False).logits.float(), -1)
        lp_t = F.log_softmax(tuned(input_ids=x, attention_mask=att, use_cache=False).logits.float(), -1)
        kl = (lp_b.exp() * (lp_b - lp_t)).sum(-1)
        tot += float((kl * att).sum())
        cnt += int(att.sum())
    return tot / max(1, cnt)
