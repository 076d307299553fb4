"""Probes computed identically for every checkpoint (and the base model), whatever regime trained it.

* **fixed-mask NLL**: mean NLL of held-out conversations on response (assistant + end-of-turn), prompt
  (system/user/tool) and template tokens. The masks come from the segments of one tokenization, never from
  the run's regime, so the numbers are comparable across regimes (training losses are not: different
  denominators). Plus per-token losses of a fixed sample (the seed's per-token bar chart).
* **forgetting**: NLL on held-out pretraining-like text, and KL(base || tuned) of next-token distributions
  on the same text. The base model's log-probs are computed once per experiment and cached on disk
  (:class:`BaseLogprobs`: the top-k log-probs of every position plus the tail mass), so a checkpoint's
  evaluation only runs the tuned model. The same KL on the fine-tuning prompts' continuations
  (forgetting/kl_sft, off by default) is in harness/evaluation/kl_prompts.py.
* **format** (harness/evaluation/generate.py): raw questions (no chat template), greedy, bounded by
  ``max_new_tokens``; classified answer-first as answered / continued with another question / other, and
  generations that never stop are counted as unfinished.

Models are any HF causal LM; tokenizers any fast HF tokenizer with a pad token.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from harness.data import ConversationTokenizer, load_conversations, tokenize_all
from harness.data.formats import iter_rows
from harness.data.tokenize import PROMPT_SEGMENTS, RESPONSE_SEGMENTS, Segment, Tokenized
from harness.errors import DataError

SEG_NAME = {int(s): s.name.lower() for s in Segment}
GROUPS = {"response": [int(s) for s in RESPONSE_SEGMENTS], "prompt": [int(s) for s in PROMPT_SEGMENTS],
          "template": [int(Segment.TEMPLATE)]}


# ------------------------------------------------------------------------------------------ probe files


def read_jsonl(path: str | Path, key: str, limit: int | None = None) -> list[dict]:
    """Rows of a probe .jsonl that have a non-empty `key` (the first `limit`). Empty corpus: DataError."""
    p = Path(path)
    if not p.is_file():
        raise DataError("probe file not found", where=str(p),
                        fix="check the eval.* probe paths (build the mini-world first: harness world build)")
    rows = []
    for row, where in iter_rows(str(p)):  # the data files' one reader: UTF-8, JSON and object checks per line
        if key not in row:
            raise DataError(f"row has no '{key}' field", where=where, fix=f"each row needs a '{key}' field")
        if not str(row[key]).strip():
            continue
        rows.append(row)
        if limit and len(rows) >= limit:
            break
    if not rows:
        raise DataError(f"probe corpus is empty (no row with a non-empty '{key}')", where=str(p),
                        fix="point the probe at a non-empty .jsonl, or unset it")
    return rows


# ------------------------------------------------------------------------------------------ forward passes


def _device(model) -> torch.device:
    return next(model.parameters()).device


def batch_tokens_for(model) -> int:
    """Tokens per forward pass in the probes: as many as keep the fp32 logits (and their log-softmax) near
    512 MB, between 256 and 16384 (a 2k-vocabulary toy model: 16k tokens; a 150k-vocabulary LLM: ~900)."""
    vocab = int(getattr(getattr(model, "config", None), "vocab_size", 0) or 32000)
    return max(256, min(16384, (1 << 27) // vocab))


def _batches(seqs: Sequence[np.ndarray], pad: int, batch_tokens: int):
    """Right-padded batches of sequences of similar length, at most `batch_tokens` (padded) tokens each;
    yields (original indices, ids, attention)."""
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    i = 0
    while i < len(order):
        j = i + 1
        while j < len(order) and (j + 1 - i) * len(seqs[order[j]]) <= batch_tokens:
            j += 1
        idx = order[i:j]
        i = j
        T = max(len(seqs[k]) for k in idx)
        ids = torch.full((len(idx), T), pad, dtype=torch.long)
        att = torch.zeros((len(idx), T), dtype=torch.long)
        for r, k in enumerate(idx):
            ids[r, :len(seqs[k])] = torch.as_tensor(seqs[k], dtype=torch.long)
            att[r, :len(seqs[k])] = 1
        yield idx, ids, att


def _logits(model, ids: torch.Tensor, att: torch.Tensor) -> torch.Tensor:
    dev = _device(model)
    return model(input_ids=ids.to(dev), attention_mask=att.to(dev), use_cache=False).logits.float()


@torch.no_grad()
def token_nll(model, seqs: Sequence[np.ndarray], pad: int, batch_tokens: int | None = None) -> list[np.ndarray]:
    """NLL of every token given its prefix (NaN at position 0), one float64 array per sequence."""
    out: list[np.ndarray | None] = [None] * len(seqs)
    for idx, ids, att in _batches(seqs, pad, batch_tokens or batch_tokens_for(model)):
        logits = _logits(model, ids, att)
        nll = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1).to(logits.device),
                              reduction="none").view(ids.shape[0], -1).double().cpu().numpy()
        for r, j in enumerate(idx):
            out[j] = np.concatenate([[np.nan], nll[r, : len(seqs[j]) - 1]])
    return out  # type: ignore[return-value]


# ------------------------------------------------------------------------------------------ fixed-mask NLL


def tokenize_eval_conversations(path: str, tok, *, max_length: int | None = None, limit: int | None = None,
                                fmt: str = "auto", split: str = "train", name: str | None = None,
                                eot: str | None = None, boundary: str = "split",
                                system_prompt: str | None = None, literal_content: bool = True,
                                tools: str | None = None) -> list[Tokenized]:
    """Held-out conversations through the harness's one tokenization path (segments per token). Over-long
    conversations are cut on the right, never dropped, so every run sees the same examples."""
    convs = load_conversations(path, fmt=fmt, split=split, name=name, limit=limit, system_prompt=system_prompt,
                               tools=tools)
    ct = ConversationTokenizer(tok, eot=eot, boundary=boundary, max_length=max_length, truncation="right",
                               literal_content=literal_content)
    examples, _ = tokenize_all(convs, ct)
    if not examples:
        raise DataError("no held-out conversation left after tokenization", where=path,
                        fix="check the file and data.max_length")
    return examples


def fixed_mask_nll(model, tok, examples: Sequence[Tokenized], token_examples: int = 8,
                   batch_tokens: int | None = None) -> tuple[dict, list[dict], list[dict]]:
    """Mean NLL over response / prompt / template tokens of all `examples` (token-weighted), per-token rows
    (docs/results-schema.md, tokens.parquet) for the first `token_examples` of them, and one item row per
    example (its NLL sum and token count per group: the unit the findings' bootstrap resamples)."""
    nlls = token_nll(model, [t.input_ids for t in examples], tok.pad_token_id, batch_tokens)
    sums = {g: [0.0, 0] for g in GROUPS}
    rows: list[dict] = []
    items: list[dict] = []
    for k, (t, nll) in enumerate(zip(examples, nlls)):
        valid = ~np.isnan(nll)
        item = {"task": "probe/nll", "doc_id": k}
        for g, segs in GROUPS.items():
            m = np.isin(t.segments, segs) & valid
            item[f"{g}_sum"], item[f"{g}_tokens"] = float(nll[m].sum()), int(m.sum())
            sums[g][0] += item[f"{g}_sum"]
            sums[g][1] += item[f"{g}_tokens"]
        items.append(item)
        if k < token_examples:
            for j in range(len(t)):
                s, e = t.offsets[j]
                rows.append({"example": k, "position": j, "token": t.text[s:e], "token_id": int(t.input_ids[j]),
                             "segment": SEG_NAME[int(t.segments[j])], "turn": int(t.turns[j]),
                             "nll": float(nll[j])})
    metrics = {f"nll/{g}": (v[0] / v[1] if v[1] else None) for g, v in sums.items()}
    return metrics, rows, items


# ------------------------------------------------------------------------------------------ forgetting


def text_ids(tok, texts: Sequence[str], max_length: int) -> list[np.ndarray]:
    """Token ids of plain texts (the tokenizer's own special tokens, e.g. BOS, included), cut at max_length.
    Texts of fewer than two tokens carry no next-token prediction and are skipped."""
    ids = [np.asarray(tok(t)["input_ids"][:max_length], dtype=np.int64) for t in texts]
    return [x for x in ids if len(x) >= 2]


def ragged(arrays: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """A list of 1-d int arrays as (lengths, concatenation), for .npz files; :func:`unragged` inverts it."""
    lens = np.asarray([len(x) for x in arrays], dtype=np.int64)
    return lens, (np.concatenate(arrays).astype(np.int64) if len(arrays) else np.zeros(0, np.int64))


def unragged(lens: np.ndarray, flat: np.ndarray) -> list[np.ndarray]:
    return list(np.split(flat, np.cumsum(lens)[:-1])) if len(lens) else []


def save_npz(path: Path, **arrays) -> None:
    """np.savez, atomically (a temporary file in the same directory, renamed): a reader never sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp.npz")
    os.close(fd)
    try:
        np.savez(tmp, **arrays)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@dataclass
class BaseLogprobs:
    """The base model's next-token distributions on the probe texts, compressed to the top-k log-probs of
    every position plus the remaining (tail) mass. KL(base || tuned) from it is exact when k >= vocabulary
    size, otherwise the KL of the two distributions coarse-grained to {top-k tokens of the base, rest}: a
    lower bound of the full KL that misses only what the base puts outside its top k."""

    ids: list[np.ndarray]  # the probe token ids (checked against the tuned model's inputs)
    top_idx: np.ndarray  # int32 [P, k], P = positions of all sequences concatenated
    top_logp: np.ndarray  # float32 [P, k]
    pretrain_nll: float  # the base's mean NLL on the same texts (for the delta)

    @property
    def k(self) -> int:
        return int(self.top_idx.shape[1])

    def save(self, path: Path) -> None:
        lens, flat = ragged(self.ids)
        save_npz(path, lens=lens, flat=flat, top_idx=self.top_idx, top_logp=self.top_logp,
                 pretrain_nll=np.asarray(self.pretrain_nll))

    @classmethod
    def load(cls, path: Path) -> "BaseLogprobs":
        with np.load(path) as z:
            return cls(unragged(z["lens"], z["flat"]), z["top_idx"], z["top_logp"], float(z["pretrain_nll"]))


@torch.no_grad()
def base_logprobs(base, tok, ids: Sequence[np.ndarray], top_k: int = 64, batch_tokens: int | None = None
                  ) -> BaseLogprobs:
    """Run the base model once over the probe texts: its mean NLL and top-k log-probs per position."""
    n_pos = sum(len(x) for x in ids)
    starts = np.concatenate([[0], np.cumsum([len(x) for x in ids])])
    top_idx = top_logp = None
    nll_sum, nll_cnt = 0.0, 0
    for idx, x, att in _batches(ids, tok.pad_token_id, batch_tokens or batch_tokens_for(base)):
        lp = F.log_softmax(_logits(base, x, att), -1)
        k = min(top_k, lp.shape[-1])
        if top_idx is None:
            top_idx = np.zeros((n_pos, k), np.int32)
            top_logp = np.zeros((n_pos, k), np.float32)
        v, i = lp.topk(k, dim=-1)
        tgt = x[:, 1:].to(lp.device)
        nll = -lp[:, :-1].gather(-1, tgt.unsqueeze(-1)).squeeze(-1)
        for r, j in enumerate(idx):
            n = len(ids[j])
            top_idx[starts[j]:starts[j] + n] = i[r, :n].cpu().numpy()
            top_logp[starts[j]:starts[j] + n] = v[r, :n].cpu().numpy()
            nll_sum += float(nll[r, : n - 1].double().sum())
            nll_cnt += n - 1
    assert top_idx is not None and top_logp is not None
    return BaseLogprobs([np.asarray(x) for x in ids], top_idx, top_logp, nll_sum / max(1, nll_cnt))


def _kl_topk(top_logp_b: torch.Tensor, top_idx_b: torch.Tensor, lp_t: torch.Tensor) -> torch.Tensor:
    """Per-position KL(base || tuned) over {top-k of the base, tail}; shapes [N, k], [N, k], [N, V]."""
    lb = top_logp_b.double()
    lt = lp_t.gather(-1, top_idx_b.long()).double()  # gather first: [N, V] in float64 would be 2x the logits
    kl = (lb.exp() * (lb - lt)).sum(-1)
    if top_idx_b.shape[-1] < lp_t.shape[-1]:
        tail_b = (1 - lb.exp().sum(-1)).clamp_min(0)
        tail_t = (1 - lt.exp().sum(-1)).clamp_min(1e-12)
        kl = kl + torch.where(tail_b > 0, tail_b * (tail_b.clamp_min(1e-12).log() - tail_t.log()),
                              torch.zeros_like(tail_b))
    return kl


@torch.no_grad()
def pretrain_probe(model, tok, ids: Sequence[np.ndarray], base: BaseLogprobs | None = None,
                   batch_tokens: int | None = None) -> tuple[dict, list[dict]]:
    """Mean NLL of `model` on the probe texts and, given the base's cached log-probs, the mean over all
    positions of KL(base || model) of the next-token distribution (one forward pass for both); and one item
    row per text (its NLL and KL sums and token counts: what the findings' bootstrap resamples)."""
    if base is not None:
        if len(base.ids) != len(ids) or any(not np.array_equal(a, b) for a, b in zip(base.ids, ids)):
            raise DataError("the cached base log-probs were computed on other probe tokens", where="base cache",
                            fix="delete <experiment>/base/eval/base_logprobs-*.npz (it is recomputed)")
    starts = np.concatenate([[0], np.cumsum([len(x) for x in ids])])
    nll_sum, nll_cnt, kl_sum, kl_cnt = 0.0, 0, 0.0, 0
    items: dict[int, dict] = {}
    for idx, x, att in _batches(ids, tok.pad_token_id, batch_tokens or batch_tokens_for(model)):
        lp = F.log_softmax(_logits(model, x, att), -1)
        tgt = x[:, 1:].to(lp.device)
        nll = -lp[:, :-1].gather(-1, tgt.unsqueeze(-1)).squeeze(-1)
        for r, j in enumerate(idx):
            n = len(ids[j])
            item = items[j] = {"task": "probe/pretrain", "doc_id": int(j),
                               "nll_sum": float(nll[r, : n - 1].double().sum()), "nll_tokens": n - 1}
            nll_sum += item["nll_sum"]
            nll_cnt += n - 1
            if base is not None:
                sl = slice(int(starts[j]), int(starts[j]) + n)
                kl = _kl_topk(torch.from_numpy(base.top_logp[sl]).to(lp.device),
                              torch.from_numpy(base.top_idx[sl]).to(lp.device), lp[r, :n])
                item["kl_sum"], item["kl_tokens"] = float(kl.sum()), n
                kl_sum += item["kl_sum"]
                kl_cnt += n
    out = {"forgetting/pretrain_nll": nll_sum / max(1, nll_cnt)}
    if base is not None:
        out["forgetting/pretrain_nll_delta"] = out["forgetting/pretrain_nll"] - base.pretrain_nll
        out["forgetting/kl_base"] = max(0.0, kl_sum / max(1, kl_cnt))
    return out, [items[j] for j in sorted(items)]
