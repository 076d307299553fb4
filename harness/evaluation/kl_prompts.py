"""``forgetting/kl_sft``: forward KL(base || tuned) on the fine-tuning task's prompts, for Shenfeld et al. 2025
("RL's Razor": "the degree of forgetting is determined by the distributional shift, measured as the
KL-divergence between the fine-tuned and base policy evaluated on the new task"; forward direction,
E_{x ~ new-task prompts} KL(pi_0(.|x) || pi(.|x)), pi_0 the base). Beside forgetting/kl_base (held-out text).

Definition (per prompt x, base p = pi_0, tuned q = pi):

* **prompts**: every assistant turn of the first ``eval.kl_prompt_limit`` (default ``probe_limit``)
  conversations of ``eval.kl_prompts`` (default: the training data, ``data.train`` with its format/split/name,
  *without* ``data.train.limit``, so the runs of a grid over the training-set size share one set of prompts
  from the task's distribution); the prompt is every token before the turn's first response token, from the
  run's one tokenization path (chat template, ``data.eot/boundary/system_prompt/literal_content``, the
  generation header included: the tokens training sees; over-long conversations cut on the right, as in the
  other probes). A prompt of ``data.max_length`` tokens or more has no room for a continuation and is skipped.
* **continuations** (``eval.kl_continuations``):

  - ``base`` (default, the paper's expectation over the base's outputs): one continuation y ~ p(.|x) per
    prompt, ancestral sampling at temperature 1 with no top-k/top-p/penalty (the base's own distribution, not
    its generation_config's), at most ``eval.max_new_tokens`` tokens (and ``data.max_length`` in all), ending
    at the first eos/end-of-turn token (kept: the base's probability of stopping is part of its distribution).
    Sampled **once per experiment** from the base, seeded per prompt (:data:`SEED` and the prompt's index: a
    longer prompt list keeps the earlier samples), and cached, so every checkpoint is compared on the same
    continuations and the probe is deterministic.
  - ``data``: the dataset's own responses, teacher-forced (no generation; cheaper, but the prefixes are the
    data's, which the tuned model was trained on, not the base's samples: a deviation from the paper).

* **KL**: at every position that predicts a continuation token, the next-token KL
  sum_v p(v|x,y<t) log(p(v|x,y<t) / q(v|x,y<t)), from the base's cached top-``eval.kl_top_k`` log-probs plus tail
  mass (:func:`probes._kl_topk`: exact when k >= vocabulary size, else a lower bound missing only the base's
  mass outside its top k). Under ``base``, the sum over a continuation's positions is an unbiased estimate of
  the sequence-level KL (of continuations cut at max_new_tokens), with the per-token expectation taken
  exactly instead of sampled. The metric is the **mean per continuation token**: all positions' KL summed
  over all prompts, divided by their number (nats/token), so long and short continuations weigh by length.
  One sample per prompt: its noise is shared by every checkpoint (common continuations), not resampled.

The base model's own value is 0.0 (set by the evaluator).
"""

from __future__ import annotations

import inspect
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from harness.data.tokenize import RESPONSE_SEGMENTS, Tokenized
from harness.errors import DataError
from harness.evaluation.probes import (_batches, _device, _kl_topk, _logits, batch_tokens_for, ragged, save_npz,
                                       unragged)

CONTINUATIONS = ("base", "data")
SEED = 0  # the base's continuations: prompt i is sampled with numpy's default_rng([SEED, i])
_RESPONSE = [int(s) for s in RESPONSE_SEGMENTS]


# ------------------------------------------------------------------------------------------ prompts


def response_positions(t: Tokenized) -> np.ndarray:
    """Positions whose next token is a response token (assistant content or end-of-turn): where training's
    shifted labels are the response, i.e. where the next-token distributions are compared under ``data``."""
    nxt = np.isin(t.segments[1:], _RESPONSE)
    return np.flatnonzero(nxt).astype(np.int64)


def turn_prompts(examples: Sequence[Tokenized], max_length: int) -> list[np.ndarray]:
    """One prompt per assistant turn: the tokens before that turn's first response token (every earlier turn,
    as in the data, and the generation header included). Prompts with no room left for a continuation (or
    empty) are skipped."""
    out = []
    for t in examples:
        resp = np.isin(t.segments, _RESPONSE)
        for turn in sorted(set(t.turns[resp].tolist())):
            start = int(np.flatnonzero(resp & (t.turns == turn))[0])
            if 0 < start < max_length:
                out.append(np.asarray(t.input_ids[:start], dtype=np.int64))
    return out


@dataclass
class KLPrompts:
    """What the probe runs on: token sequences and, per sequence, the positions whose next-token distributions
    are compared (base and tuned model see exactly these tokens)."""

    seqs: list[np.ndarray]
    positions: list[np.ndarray]


@torch.no_grad()
def sample_continuations(model, prompts: Sequence[np.ndarray], max_new_tokens: Sequence[int],
                         stop_ids: Sequence[int], seed: int = SEED, batch_rows: int = 64) -> list[np.ndarray]:
    """Ancestral samples y ~ model(.|prompt) at temperature 1 (inverse-CDF sampling of the softmax of the logits:
    nothing of the model's generation_config applies), at most ``max_new_tokens[i]`` tokens each, cut after the
    first token in ``stop_ids``. Prompt i draws its uniforms from ``default_rng([seed, i])``; batches hold prompts
    of equal length only (no padding), with a KV cache."""
    dev = _device(model)
    # transformers 5.2x names the KV cache `cache` (in and out), earlier versions `past_key_values`
    cache_kw = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    stop = torch.as_tensor(sorted(set(int(s) for s in stop_ids)), dtype=torch.long, device=dev)
    by_len: dict[tuple[int, int], list[int]] = defaultdict(list)
    for i, p in enumerate(prompts):
        by_len[(len(p), int(max_new_tokens[i]))].append(i)
    out: list[np.ndarray | None] = [None] * len(prompts)
    for (_, n_new), idx in sorted(by_len.items()):
        for c in range(0, len(idx), batch_rows):
            rows = idx[c:c + batch_rows]
            u = torch.as_tensor(np.stack([np.random.default_rng([seed, i]).random(n_new) for i in rows]),
                                dtype=torch.float64, device=dev)
            res = model(input_ids=torch.as_tensor(np.stack([prompts[i] for i in rows])).to(dev), use_cache=True)
            gen, done = [], torch.zeros(len(rows), dtype=torch.bool, device=dev)
            length = torch.full((len(rows),), n_new, dtype=torch.long, device=dev)
            for s in range(n_new):
                cdf = F.softmax(res.logits[:, -1].double(), -1).cumsum(-1)
                nxt = torch.searchsorted(cdf, (u[:, s] * cdf[:, -1]).unsqueeze(-1).contiguous(), right=True)
                nxt = nxt.clamp_max(cdf.shape[-1] - 1)  # [B, 1]
                gen.append(nxt)
                new = torch.isin(nxt[:, 0], stop) & ~done
                length[new] = s + 1
                done |= new
                if bool(done.all()) or s == n_new - 1:
                    break
                res = model(input_ids=nxt, use_cache=True, **{cache_kw: _cache_of(res)})
            g = torch.cat(gen, 1).cpu().numpy()
            for r, i in enumerate(rows):
                out[i] = g[r, :int(length[r])].astype(np.int64)
    return out  # type: ignore[return-value]


def _cache_of(res):
    c = getattr(res, "cache", None)
    return c if c is not None else res.past_key_values


def build_kl_prompts(examples: Sequence[Tokenized], continuations: str, max_length: int, *, base=None,
                     max_new_tokens: int = 32, stop_ids: Sequence[int] = ()) -> KLPrompts:
    """The probe's sequences: the conversations themselves with their response positions (``data``), or every
    turn's prompt followed by the base's sampled continuation, compared at the continuation's positions
    (``base``; needs the base model)."""
    if continuations == "data":
        pairs = [(np.asarray(t.input_ids, dtype=np.int64), response_positions(t)) for t in examples]
        pairs = [(s, p) for s, p in pairs if len(p)]
    elif continuations == "base":
        if base is None:
            raise ValueError("continuations='base' needs the base model")
        prompts = turn_prompts(examples, max_length)
        budget = [min(max_new_tokens, max_length - len(p)) for p in prompts]
        ys = sample_continuations(base, prompts, budget, stop_ids)
        pairs = [(np.concatenate([p, y]), np.arange(len(p) - 1, len(p) + len(y) - 1, dtype=np.int64))
                 for p, y in zip(prompts, ys)]
    else:
        raise ValueError(f"continuations must be one of {CONTINUATIONS}, got {continuations!r}")
    if not pairs:
        raise DataError("no fine-tuning prompt with a response position left for forgetting/kl_sft",
                        where="eval.kl_prompts", fix="check the prompts' file and data.max_length")
    return KLPrompts([s for s, _ in pairs], [p for _, p in pairs])


# ------------------------------------------------------------------------------------------ the base's cache


@dataclass
class KLCache:
    """The base's next-token distributions at the probe's positions (top-k log-probs + tail mass, as
    :class:`probes.BaseLogprobs`), with the sequences they were computed on (the continuations included)."""

    prompts: KLPrompts
    top_idx: np.ndarray  # int32 [P, k], P = all sequences' positions concatenated
    top_logp: np.ndarray  # float32 [P, k]
    base_nll: float  # the base's mean NLL of the tokens after those positions (its own samples under `base`)

    @property
    def k(self) -> int:
        return int(self.top_idx.shape[1])

    @property
    def tokens(self) -> int:
        return int(self.top_idx.shape[0])

    def save(self, path: Path) -> None:
        lens, flat = ragged(self.prompts.seqs)
        plens, pflat = ragged(self.prompts.positions)
        save_npz(path, lens=lens, flat=flat, pos_lens=plens, pos_flat=pflat, top_idx=self.top_idx,
                 top_logp=self.top_logp, base_nll=np.asarray(self.base_nll))

    @classmethod
    def load(cls, path: Path) -> "KLCache":
        with np.load(path) as z:
            kp = KLPrompts(unragged(z["lens"], z["flat"]), unragged(z["pos_lens"], z["pos_flat"]))
            return cls(kp, z["top_idx"], z["top_logp"], float(z["base_nll"]))


def _position_logprobs(model, tok, kp: KLPrompts, batch_tokens: int | None):
    """(sequence index, log-softmax [n_positions, V] at its positions, next tokens) for every sequence: one
    teacher-forced pass, the same code for the base and the tuned model."""
    for idx, x, att in _batches(kp.seqs, tok.pad_token_id, batch_tokens or batch_tokens_for(model)):
        logits = _logits(model, x, att)
        for r, j in enumerate(idx):
            pos = torch.as_tensor(kp.positions[j], dtype=torch.long, device=logits.device)
            nxt = torch.as_tensor(kp.seqs[j][kp.positions[j] + 1], device=logits.device)
            yield j, F.log_softmax(logits[r, pos], -1), nxt


@torch.no_grad()
def base_kl_cache(base, tok, kp: KLPrompts, top_k: int = 64, batch_tokens: int | None = None) -> KLCache:
    """Run the base once over the probe's sequences: its top-k log-probs at the probe's positions."""
    starts = np.concatenate([[0], np.cumsum([len(p) for p in kp.positions])])
    top_idx = top_logp = None
    nll_sum = 0.0
    for j, lp, nxt in _position_logprobs(base, tok, kp, batch_tokens):
        k = min(top_k, lp.shape[-1])
        if top_idx is None:
            top_idx, top_logp = np.zeros((starts[-1], k), np.int32), np.zeros((starts[-1], k), np.float32)
        v, i = lp.topk(k, dim=-1)
        top_idx[starts[j]:starts[j + 1]], top_logp[starts[j]:starts[j + 1]] = i.cpu().numpy(), v.cpu().numpy()
        nll_sum -= float(lp.gather(-1, nxt[:, None]).double().sum())
    assert top_idx is not None and top_logp is not None
    return KLCache(kp, top_idx, top_logp, nll_sum / max(1, int(starts[-1])))


@torch.no_grad()
def kl_sft_probe(model, tok, cache: KLCache, batch_tokens: int | None = None) -> tuple[dict, list[dict]]:
    """``forgetting/kl_sft``: the mean per continuation token of KL(base || model) of the next-token
    distributions, from the base's cache; and one item row per sequence (its KL sum and token count: what the
    findings' bootstrap resamples)."""
    kp = cache.prompts
    starts = np.concatenate([[0], np.cumsum([len(p) for p in kp.positions])])
    items: dict[int, dict] = {}
    for j, lp, _ in _position_logprobs(model, tok, kp, batch_tokens):
        sl = slice(int(starts[j]), int(starts[j + 1]))
        kl = _kl_topk(torch.from_numpy(cache.top_logp[sl]).to(lp.device),
                      torch.from_numpy(cache.top_idx[sl]).to(lp.device), lp)
        items[j] = {"task": "probe/kl_sft", "doc_id": int(j), "kl_sum": float(kl.sum()),
                    "kl_tokens": len(kp.positions[j])}
    total = sum(i["kl_sum"] for i in items.values())
    return {"forgetting/kl_sft": max(0.0, total / max(1, cache.tokens))}, [items[j] for j in sorted(items)]
