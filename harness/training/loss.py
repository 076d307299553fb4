"""Weighted next-token cross-entropy with normalisation that is correct under accumulation and across ranks.

``token`` normalisation: sum over the optimizer step of weight x NLL, divided by the sum of weights over the
*whole* step (every micro-batch, every rank). Dividing each micro-batch by its own count and averaging the
micro-batches (the transformers#34191 / trl#2175 bug) over-weights tokens of micro-batches with few supervised
tokens. Pass the step's ``denominator`` (from :func:`loss_denominator`, all-reduced across ranks) to every
micro-batch's call and just sum the losses (or their gradients).

``nonzero`` normalisation (Weighted Instruction Tuning, Chatterjee et al. TACL 2025): sum of weight x NLL
divided by the *number* of targets of non-zero weight over the whole step, so a weight scales a token's share
of the loss instead of being divided out. With 0/1 weights it equals ``token``.

``sequence`` normalisation: mean NLL per example, then mean over the examples of the step. With packing,
``seq_ids`` says which example each token belongs to.

The per-token loss is the NLL (``loss="nll"``) or DFT's (``loss="dft"``, Wu et al. 2025): the NLL scaled by
the target's stop-gradient probability, see :func:`token_loss`; weights and normalisation apply on top.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from harness.errors import SupervisionError
from harness.masking import IGNORE_INDEX

NORMALIZATIONS = ("token", "sequence", "nonzero")
LOSSES = ("nll", "dft")


def _shifted(labels: torch.Tensor, weights: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    tgt = labels[..., 1:]
    if weights is None:
        w = (tgt != IGNORE_INDEX).to(torch.float32)
    else:
        w = weights[..., 1:].to(torch.float32) * (tgt != IGNORE_INDEX)
    return tgt, w


def per_token_nll(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """NLL of each next token, shape [B, T-1] (position t predicts label t+1); 0 where the label is -100."""
    tgt = labels[..., 1:]
    lg = logits[..., :-1, :]
    if lg.dtype in (torch.float16, torch.bfloat16):  # half-precision logits: the loss is taken in fp32
        lg = lg.float()
    nll = F.cross_entropy(lg.reshape(-1, lg.shape[-1]), tgt.reshape(-1), ignore_index=IGNORE_INDEX,
                          reduction="none")
    return nll.view(tgt.shape)


def token_loss(nll: torch.Tensor, kind: str = "nll") -> torch.Tensor:
    """Per-token training loss from the per-token NLL: ``nll`` itself, or DFT's ``sg(p) * nll`` with
    ``p = exp(-nll)`` the target's probability under stop-gradient (Dynamic Fine-Tuning, Wu et al. 2025, "On the
    Generalization of SFT: A Reinforcement Learning Perspective with Reward Rectification"). DFT's gradient
    w.r.t. the logits is ``p_y * (softmax - onehot_y)``: SFT's, scaled by the target's probability. Where the
    NLL is 0 (an ignored target) both give 0."""
    if kind == "nll":
        return nll
    if kind == "dft":
        return nll * torch.exp(-nll).detach()
    raise ValueError(f"loss must be one of {LOSSES}, got {kind!r}")


def _sequence_weights(w: torch.Tensor, seq_ids: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token weight w / (sum of w in its sequence) and the number of sequences with supervision."""
    if seq_ids is None:  # each row is one sequence
        per_row = w.sum(-1, keepdim=True)
        eff = torch.where(per_row > 0, w / per_row.clamp_min(1e-12), torch.zeros_like(w))
        return eff, (per_row > 0).sum()
    sid = seq_ids[..., 1:].reshape(-1).long()
    flat = w.reshape(-1)
    valid = sid >= 0
    sid_c = torch.where(valid, sid, torch.zeros_like(sid))
    n = int(sid_c.max().item()) + 1 if sid_c.numel() else 0
    totals = torch.zeros(n, dtype=flat.dtype, device=flat.device).index_add_(0, sid_c, flat * valid)
    denom = totals[sid_c]
    eff = torch.where(valid & (denom > 0), flat / denom.clamp_min(1e-12), torch.zeros_like(flat))
    return eff.view(w.shape), (totals > 0).sum()


def loss_denominator(labels: torch.Tensor, weights: torch.Tensor | None = None, normalization: str = "token",
                     seq_ids: torch.Tensor | None = None) -> torch.Tensor:
    """This micro-batch's share of the step denominator (sum of weights, number of targets of non-zero weight,
    or number of supervised sequences). Sum it over the step's micro-batches (and all-reduce over ranks) and
    pass it to :func:`sft_loss`."""
    _check_norm(normalization)
    _, w = _shifted(labels, weights)
    if normalization == "token":
        return w.sum()
    if normalization == "nonzero":
        return (w > 0).sum().to(torch.float32)
    return _sequence_weights(w, seq_ids)[1].to(torch.float32)


def token_weights(labels: torch.Tensor, weights: torch.Tensor | None = None, normalization: str = "token",
                  seq_ids: torch.Tensor | None = None) -> torch.Tensor:
    """Effective weight of each shifted target [B, T-1]: the loss is
    ``(token_weights * token_loss(nll, loss)).sum() / denominator`` (lets a trainer evaluate the NLL only where
    the weight is non-zero). ``token`` and ``nonzero`` share these weights; only the denominator differs."""
    _check_norm(normalization)
    _, w = _shifted(labels, weights)
    return _sequence_weights(w, seq_ids)[0] if normalization == "sequence" else w


def _check_norm(normalization: str) -> None:
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"normalization must be one of {NORMALIZATIONS}, got {normalization!r}")


def sft_loss(logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor | None = None,
             normalization: str = "token", *, denominator: torch.Tensor | float | None = None,
             seq_ids: torch.Tensor | None = None, loss: str = "nll") -> torch.Tensor:
    """Weighted next-token cross-entropy (or DFT's per-token loss).

    Args:
        logits: [B, T, V] model outputs (half-precision logits are upcast to float32 for the loss).
        labels: [B, T] token ids, -100 where not supervised (aligned with input ids; shifted here).
        weights: optional [B, T] float weights (e.g. lambda on prompt tokens); default 1 where labels != -100.
        normalization: "token" (sum of weighted NLL / sum of weights), "nonzero" (sum of weighted NLL /
            number of targets of non-zero weight) or "sequence" (mean per sequence, then mean over sequences).
        denominator: the whole optimizer step's denominator (see :func:`loss_denominator`); default: this
            batch's own, i.e. a plain weighted mean.
        seq_ids: [B, T] example index of each token in packed rows (-1 for padding); for "sequence".
        loss: per-token loss, "nll" or "dft" (see :func:`token_loss`).

    Raises:
        SupervisionError: when the denominator is zero (never a silent zero loss).
    """
    return _loss_from_nll(per_token_nll(logits, labels), labels, weights, normalization, denominator, seq_ids,
                          loss=loss)


def _loss_from_nll(nll: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor | None,
                   normalization: str, denominator: torch.Tensor | float | None,
                   seq_ids: torch.Tensor | None, *, loss: str = "nll") -> torch.Tensor:
    """:func:`sft_loss` from the next-token NLL [B, T-1]."""
    _check_norm(normalization)
    per_token = token_loss(nll, loss)  # checks `loss` before anything else can fail
    _, w = _shifted(labels, weights)
    w = w.to(nll.dtype)
    if normalization == "sequence":
        w, n_seq = _sequence_weights(w, seq_ids)
        local = n_seq.to(nll.dtype)
    elif normalization == "nonzero":
        local = (w > 0).sum().to(nll.dtype)
    else:
        local = w.sum()
    denom = local if denominator is None else torch.as_tensor(denominator, device=nll.device)
    denom = denom.to(nll.dtype)
    if float(denom) <= 0:
        raise SupervisionError("batch has zero supervised tokens (the loss would be a silent 0)",
                               where="sft_loss", fix="check the regime and truncation: every example in a batch "
                               "must keep at least one supervised token (harness inspect shows the mask)")
    return (w * per_token).sum() / denom
