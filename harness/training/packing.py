"""How a run's examples become optimizer steps, rows and micro-batches: the plan, packing and collation.

Per-row packing: several examples share a row of at most ``max_length`` tokens, each with ``position_ids``
restarting at 0. Attention stays isolated between them only when the model gets ``position_ids``,
``use_cache=False`` and **no** ``attention_mask`` (HF then derives the block-diagonal causal mask from the
position resets; with an attention mask it silently attends across examples). Position 0 of every example
has weight 0 (harness.masking), so no example is ever "predicted" from the previous one.

The order is a pure function of (seed, epoch): a run resumed mid-epoch sees exactly the rows it would have.

Three layouts of an optimizer step's examples (``train.layout``; the step's examples, tokens and loss
normalisation are the same in all, only the order of floating-point sums differs):

* ``packed`` (default): the planned rows, re-laid by :func:`short_rows` into rows only as long as the step's
  longest example needs. sdpa gets the block-diagonal mask HF derives from the position resets and computes the
  full R x R score block of every row, although only the within-example causal part is used.
* ``padded``: one example per right-padded row, in data order (no packing; an attention mask hides the pads).
* ``bucketed``: :func:`bucket_rows` sorts the step's examples by length and groups them into micro-batches of
  right-padded rows, one example per row, each micro-batch as wide as its longest example (rounded up to a
  multiple of 8). ``collate(..., causal=True)`` gives every row position ids 0..W-1 (pads included) and no
  attention mask: HF sees one sequence per row, builds no mask at all and sdpa runs with ``is_causal=True``.
  Right padding keeps pads after every real token, so causal attention never lets a real token see a pad; pads
  have label -100 and weight 0 (never in the loss, and the LM head runs only on supervised positions). Attention
  work per example drops from ~R x R per row to ~W x W per example, at the price of a little padding and
  more, smaller micro-batches. The grouping is a pure function of the step's examples (resume stays exact).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple, Sequence

import numpy as np
import torch

from harness.config import ExperimentConfig, TrainConfig
from harness.data.tokenize import PROMPT_SEGMENTS, RESPONSE_SEGMENTS, Tokenized
from harness.errors import ConfigError
from harness.masking import IGNORE_INDEX, Masked, MaskedData

PAD_SEGMENT = -1


@dataclass
class Row:
    """Indices of the examples packed into one row (in order)."""

    examples: list[int]
    length: int


def pack_rows(lengths: Sequence[int], max_length: int, order: Sequence[int], packing: bool = True) -> list[Row]:
    """First-fit packing of examples (visited in `order`) into rows of at most `max_length` tokens."""
    if not packing:
        return [Row([i], int(lengths[i])) for i in order]
    rows: list[Row] = []
    open_rows: list[Row] = []  # rows with room left; first fit keeps rows full without sorting the data
    for i in order:
        n = int(lengths[i])
        for r in open_rows:
            if r.length + n <= max_length:
                r.examples.append(i)
                r.length += n
                break
        else:
            r = Row([i], n)
            rows.append(r)
            open_rows.append(r)
        open_rows = [r for r in open_rows if max_length - r.length >= 8][-64:]  # bound the search
    return rows


def short_rows(rows: Sequence[Row], lengths: Sequence[int], multiple: int = 64) -> list[Row]:
    """The same examples, in the same order, first-fit into rows of R tokens: R is the smallest multiple of
    `multiple` that holds the longest example (never more than the longest given row).

    Attention computes every row's full R x R score block (the block-diagonal mask only hides the cross-example
    part), so rows as short as the examples allow cut that cost roughly by max_length / R. The step's tokens,
    examples and loss are unchanged (each example stays whole, in its own block of position ids); only the
    order of floating-point sums differs."""
    if not rows:
        return []
    longest_row = max(r.length for r in rows)
    longest = max(int(lengths[i]) for r in rows for i in r.examples)
    R = min(-(-longest // multiple) * multiple, longest_row)
    if R >= longest_row:
        return list(rows)
    out: list[Row] = []
    for r in rows:
        for i in r.examples:
            n = int(lengths[i])
            for o in out:
                if o.length + n <= R:
                    o.examples.append(i)
                    o.length += n
                    break
            else:
                out.append(Row([i], n))
    return out


BUCKET_MULTIPLE = 8  # row widths of bucketed micro-batches are multiples of this (vectorised kernels like it)
BUCKET_GROUP_COST = 64  # a micro-batch's fixed cost in pad tokens: one more micro-batch only to save fewer pads
                        # than this is not worth it (its hundreds of extra kernel launches; benchmarks/NOTES.md)


def bucket_rows(rows: Sequence[Row], lengths: Sequence[int], budget: int, multiple: int = BUCKET_MULTIPLE,
                cap: int | None = None, group_cost: int = BUCKET_GROUP_COST) -> list[list[Row]]:
    """The step's examples (those of `rows`), one per row, in micro-batches of similar length.

    The examples are sorted by length (ties: their planned order) and cut into contiguous groups; a group of k
    examples whose longest has n tokens becomes k rows of W = n rounded up to `multiple` (never above `cap`,
    e.g. data.max_length, when n <= cap). The cut is optimal (dynamic programming over the sorted lengths) for
    cost = sum of k * W (real + pad tokens) + `group_cost` per micro-batch, subject to k * W <= `budget`
    (a single row may exceed it). Every returned Row's ``length`` is its example's length; the width is
    ``collate``'s business (pass it as `width`)."""
    items = sorted(((int(lengths[i]), k, i) for k, i in enumerate(i for r in rows for i in r.examples)))
    n = len(items)
    if not n:
        return []

    best = [0.0] + [float("inf")] * n  # best[j]: cheapest layout of the j shortest examples
    cut = [0] * (n + 1)
    for j in range(1, n + 1):
        w = _width(items[j - 1][0], multiple, cap)
        for i in range(j - 1, -1, -1):  # group items[i:j]
            k = j - i
            if k > 1 and k * w > budget:
                break
            c = best[i] + k * w + group_cost
            if c < best[j]:
                best[j], cut[j] = c, i
    groups: list[list[Row]] = []
    j = n
    while j > 0:
        i = cut[j]
        groups.append([Row([idx], m) for m, _, idx in items[i:j]])
        j = i
    return groups[::-1]


def row_width(rows: Sequence[Row], multiple: int = BUCKET_MULTIPLE, cap: int | None = None) -> int:
    """Width of a bucketed micro-batch: its longest row rounded up to `multiple` (not above `cap`)."""
    return _width(max(r.length for r in rows), multiple, cap)


def _width(m: int, multiple: int, cap: int | None) -> int:
    w = -(-m // multiple) * multiple
    return max(m, min(w, cap)) if cap is not None else w


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    g = torch.Generator().manual_seed(int(seed) * 1_000_003 + int(epoch))
    return torch.randperm(n, generator=g).tolist()


@dataclass
class Batch:
    """One micro-batch, ready for the model."""

    input_ids: torch.Tensor  # [B, T]
    position_ids: torch.Tensor  # [B, T]
    labels: torch.Tensor  # [B, T], -100 outside the loss
    weights: torch.Tensor  # [B, T] float
    segments: torch.Tensor  # [B, T] int8, -1 on padding
    seq_ids: torch.Tensor  # [B, T] example index within the micro-batch, -1 on padding
    attention_mask: torch.Tensor | None  # only for padded (non-packed) batches
    n_tokens: int  # real (non-pad) tokens

    def to(self, device) -> "Batch":
        mv = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in self.__dict__.items()}
        return Batch(**mv)


def collate(rows: Sequence[Row], examples: Sequence[Tokenized], masks: Sequence[Masked], pad_id: int,
            packing: bool = True, *, width: int | None = None, causal: bool = False) -> Batch:
    """Rows -> one micro-batch of `width` columns (default: the longest row).

    ``causal=True`` (the bucketed layout: one example per row, right-padded): position ids 0..width-1 on every
    row, pads included, and no attention mask, so the model sees plain causal rows (no packed-sequence mask)."""
    T = max(r.length for r in rows) if width is None else width
    if causal and any(len(r.examples) != 1 for r in rows):
        raise ValueError("causal rows hold exactly one example each")
    B = len(rows)
    ids = torch.full((B, T), pad_id, dtype=torch.long)
    pos = torch.zeros((B, T), dtype=torch.long)
    lab = torch.full((B, T), IGNORE_INDEX, dtype=torch.long)
    w = torch.zeros((B, T), dtype=torch.float32)
    seg = torch.full((B, T), PAD_SEGMENT, dtype=torch.int8)
    sid = torch.full((B, T), -1, dtype=torch.long)
    att = torch.zeros((B, T), dtype=torch.long)
    k = 0
    for b, r in enumerate(rows):
        off = 0
        for i in r.examples:
            t, m = examples[i], masks[i]
            n = len(t)
            ids[b, off:off + n] = torch.from_numpy(t.input_ids)
            pos[b, off:off + n] = torch.arange(n)
            lab[b, off:off + n] = torch.from_numpy(m.labels)
            w[b, off:off + n] = torch.from_numpy(m.weights)
            seg[b, off:off + n] = torch.from_numpy(t.segments.astype(np.int8))
            sid[b, off:off + n] = k
            att[b, off:off + n] = 1
            off += n
            k += 1
    n_tokens = int(att.sum())
    if causal:
        pos[:] = torch.arange(T)
        return Batch(ids, pos, lab, w, seg, sid, None, n_tokens)
    return Batch(ids, pos, lab, w, seg, sid, None if packing else att, n_tokens)


def segment_masks(batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """Fixed response / prompt masks of the *predicted* tokens (shifted), comparable across regimes."""
    seg = batch.segments[:, 1:]
    first = batch.position_ids[:, 1:] == 0  # an example's first token is never predicted
    resp = torch.zeros_like(seg, dtype=torch.bool)
    for s in RESPONSE_SEGMENTS:
        resp |= seg == int(s)
    prompt = torch.zeros_like(seg, dtype=torch.bool)
    for s in PROMPT_SEGMENTS:
        prompt |= seg == int(s)
    return resp & ~first, prompt & ~first


# ------------------------------------------------------------------------------------------ a run's steps


class PlannedStep(NamedTuple):
    epoch: int  # 0-based epoch the step belongs to
    rows: list  # packed rows (harness.packing.Row) of the whole step, all ranks
    epochs_done: float  # epochs completed after this step, e.g. 1.5 halfway through the second


def plan_steps(data: MaskedData, cfg: ExperimentConfig) -> list[PlannedStep]:
    """Every optimizer step of the run: a pure function of the data, seed and budget, so a resumed run needs
    only its step number to continue with exactly the rows it would have seen."""
    tc, L = cfg.train, cfg.data.max_length
    lengths = [len(t) for t in data.examples]
    sup = [m.n_supervised for m in data.masks]
    rows_per_step = max(1, tc.batch_tokens // L)
    plan: list[PlannedStep] = []
    seen, epoch = 0, 0
    while True:
        rows = pack_rows(lengths, L, epoch_order(len(lengths), tc.seed, epoch), tc.layout != "padded")
        steps = [rows[i:i + rows_per_step] for i in range(0, len(rows), rows_per_step)]
        n = len(steps)
        if tc.budget == "epochs":
            remaining = tc.epochs - epoch
            take = n if remaining >= 1 else max(1, math.ceil(remaining * n))
            plan += [PlannedStep(epoch, s, round(epoch + (k + 1) / n, 6)) for k, s in enumerate(steps[:take])]
            if remaining <= 1:
                break
        else:  # stop at the first step that reaches the budget: every regime sees the same supervised tokens
            for k, s in enumerate(steps):
                plan.append(PlannedStep(epoch, s, round(epoch + (k + 1) / n, 6)))
                seen += sum(sup[i] for r in s for i in r.examples)
                if seen >= tc.supervised_tokens:
                    break
            if seen >= tc.supervised_tokens:
                break
            if epoch > 10_000:
                raise ConfigError("supervised-token budget needs more than 10,000 epochs",
                                  where="train.supervised_tokens", fix="lower the budget")
        epoch += 1
    if tc.max_steps:
        plan = plan[: tc.max_steps]
    return plan




def layout_step(mine: list, data: MaskedData, tc: TrainConfig, max_length: int, pad: int,
                lengths: list[int] | None = None, rows_per_micro: int | None = None,
                one_row: bool = False) -> list[Batch]:
    """This rank's rows of one step -> its micro-batches (CPU tensors), per ``train.layout``.

    A pure function of the step's rows: resumed runs see the same batches. Both layouts hold the same examples
    and tokens (harness.packing explains the two). `one_row`: every packed micro-batch is a single row, for
    attention kernels that isolate packed examples only then (harness.attention.needs_one_row: transformers
    detects packed sequences from position_ids for flash_attention_2 only in a batch of one row; with several
    rows examples would attend to each other, silently). The step's gradient is the same: micro-batches are
    accumulated."""
    if lengths is None:
        lengths = [len(t) for t in data.examples]
    budget = tc.micro_batch_tokens or tc.batch_tokens
    if tc.layout == "bucketed":
        return [collate(g, data.examples, data.masks, pad, width=row_width(g, cap=max_length), causal=True)
                for g in bucket_rows(mine, lengths, budget, cap=max_length)]
    packed = tc.layout == "packed"
    per_micro = rows_per_micro or max(1, budget // max_length)
    if packed and mine and not tc.compile:  # the same examples in rows only as long as they need
        mine = short_rows(mine, lengths)    # (cheaper attention)
        longest = max(r.length for r in mine)
        per_micro = max(1, tc.micro_batch_tokens // longest) if tc.micro_batch_tokens else len(mine)
    if packed and one_row:
        per_micro = 1
    # compiled: every packed micro-batch max_length wide, so the graph sees one shape (a new width recompiles)
    width = max_length if (tc.compile and packed) else None
    return [collate(mine[i:i + per_micro], data.examples, data.masks, pad, packed, width=width)
            for i in range(0, len(mine), per_micro)]
