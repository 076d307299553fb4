"""One optimizer step, exactly as ``train()`` runs it: :class:`Engine` and the :class:`StepMetrics` it returns.

Speed (CPU and GPU): the LM head is applied only where it is needed. The decoder body runs on every token,
but logits are computed for the supervised positions (with gradient) and, on logging steps, for the other
prompt/response positions of the fixed-mask metrics (without gradient), in vocabulary chunks (lm_head.py), so
that no [positions, vocab] logits tensor is kept for backward. With a short response and a
vocabulary that is large next to the hidden size, the head is most of the FLOPs, so this is the main win
(a model whose logits are not a plain ``lm_head(hidden)``, e.g. with soft-capping, is detected at start and
falls back to full logits).

Across ranks: ``train.parallel: ddp`` all-reduces (sums) the accumulated gradients; ``fsdp`` shards the model
(harness/training/fsdp.py), runs each micro-batch's body and head as the root FSDP unit's forward, and lets the
reduce-scatter after each backward sum them. The numbers are the same either way (tests/test_fsdp.py).
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from harness.config import TrainConfig
from harness.adapters import unwrap
from harness.errors import ConfigError, HarnessError, SupervisionError
from harness.layout import SHARDED_STATE
from harness.training.distributed import Dist
from harness.training.fsdp import Sharded, check as fsdp_check, has_state as has_sharded_state
from harness.training.lm_head import head_nll
from harness.training.loss import loss_denominator, token_loss, token_weights
from harness.training.optim import lr_lambda, make_optimizer
from harness.training.packing import Batch, segment_masks

log = logging.getLogger("harness.train")


class TrainingError(HarnessError):
    """Training cannot continue (non-finite loss, ...). The last COMPLETED checkpoint is kept."""


# the step's sums, in one float64 vector so that one all-reduce covers them all (order = StepMetrics' fields)
_LOSS, _RESP, _NRESP, _PROMPT, _NPROMPT, _TOKENS, _SUP = range(7)


@dataclass(frozen=True)
class StepMetrics:
    """What one optimizer step measured, summed over its micro-batches and ranks."""

    loss: float  # the regime's loss of the step (normalised over the whole step)
    response_nll_sum: float  # fixed-mask NLL summed over response tokens (logging steps; else 0)
    response_tokens: int
    prompt_nll_sum: float  # ... and over prompt tokens
    prompt_tokens: int
    tokens: int  # real (non-pad) tokens
    supervised: int  # tokens with a non-zero loss weight

    @classmethod
    def from_vector(cls, v: torch.Tensor) -> "StepMetrics":
        x = v.tolist()
        return cls(x[_LOSS], x[_RESP], int(x[_NRESP]), x[_PROMPT], int(x[_NPROMPT]), int(x[_TOKENS]), int(x[_SUP]))

    @property
    def loss_response(self) -> float | None:
        return self.response_nll_sum / self.response_tokens if self.response_tokens else None

    @property
    def loss_prompt(self) -> float | None:
        return self.prompt_nll_sum / self.prompt_tokens if self.prompt_tokens else None


def set_dropout(model: torch.nn.Module, p: float) -> None:
    """Override every dropout probability (config fields for code that reads them, modules for the rest)."""
    for key in list(vars(model.config)):
        if "dropout" in key and isinstance(getattr(model.config, key), float):
            setattr(model.config, key, p)
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = p
        elif hasattr(m, "attention_dropout") and isinstance(m.attention_dropout, float):
            m.attention_dropout = p


def split_lm_head(model: torch.nn.Module, sample_ids: torch.Tensor | None = None):
    """(body, head) when the model's logits are exactly ``head(body(...).last_hidden_state)``, else None.

    Checked numerically on `sample_ids` (eval mode, no grad): a model that scales or soft-caps its logits
    fails the check and trains with full logits instead of silently training the wrong function."""
    head = model.get_output_embeddings()
    body = getattr(model, getattr(model, "base_model_prefix", ""), None)
    if not isinstance(head, torch.nn.Linear) or not isinstance(body, torch.nn.Module) or body is model:
        return None
    if sample_ids is not None:
        was = model.training
        model.eval()
        try:
            with torch.no_grad():
                full = model(input_ids=sample_ids, use_cache=False).logits
                mine = head(body(input_ids=sample_ids, use_cache=False).last_hidden_state)
        finally:
            model.train(was)
        if full.shape != mine.shape or not torch.allclose(full.float(), mine.float(), rtol=1e-4, atol=1e-4):
            log.info("logits are not lm_head(hidden) for %s: full logits", type(model).__name__)
            return None
    return body, head


SPARSE_EMBEDDING_MIN_VOCAB = 32768


def sparse_tied_embedding(model: torch.nn.Module, tc: TrainConfig) -> bool:
    """Apply ``train.sparse_embedding_grad``; returns whether the input embedding now yields sparse gradients.

    Only for tied embeddings: the head's dense gradient reaches the shared weight in the same backward pass,
    so the sum the optimizer sees is dense (fused AdamW takes no sparse gradient) and equals the dense path's
    up to summation order. An untied sparse embedding would hand the optimizer a sparse gradient: refused."""
    emb, head = model.get_input_embeddings(), model.get_output_embeddings()
    tied = isinstance(emb, torch.nn.Embedding) and head is not None and emb.weight is getattr(head, "weight", None)
    want = tc.sparse_embedding_grad
    if want is None:
        want = tied and not tc.compile and emb.num_embeddings >= SPARSE_EMBEDDING_MIN_VOCAB
    elif want and not tied:
        raise ConfigError("train.sparse_embedding_grad needs tied input/output embeddings (this model's are not)",
                           where="train.sparse_embedding_grad", fix="leave it unset (auto) or false")
    if tied and not emb.weight.requires_grad:  # frozen (adapter runs): no embedding gradient at all
        return False
    if tied:
        emb.sparse = bool(want)
    return bool(want)


def _autocast(precision: str, device: torch.device):
    if precision == "bf16" or (precision == "auto" and device.type == "cuda"):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


class Engine:
    """One optimizer step.

    ``step(batches)`` takes this rank's micro-batches of the step, computes the step-wide loss denominator
    (all micro-batches, all ranks), accumulates gradients, reduces them across ranks, clips, and steps the
    optimizer and schedule. Returns the step's :class:`StepMetrics`, summed over ranks."""

    def __init__(self, model: torch.nn.Module, tc: TrainConfig, total_steps: int, dist: Dist | None = None,
                 sample_ids: torch.Tensor | None = None):
        # an adapter (PEFT) wrapper is stepped through the transformers model it wraps: the adapter layers are
        # injected in place and alone require grad (harness/adapters.py)
        outer, model = model, unwrap(model)
        self.model, self.tc = model, tc
        self.dist = dist or Dist()
        self.device = next(model.parameters()).device
        self.amp = lambda: _autocast(tc.precision, self.device)
        if tc.dropout is not None:
            set_dropout(model, tc.dropout)
        if tc.gradient_checkpointing:
            # non-reentrant: works with inputs that need no grad and keeps dropout's RNG replay exact
            kw = {"use_reentrant": False}
            if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.x name
                model.activation_checkpointing_enable(activation_checkpointing_kwargs=kw)
            else:
                model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kw)
        fsdp = tc.parallel == "fsdp"
        if fsdp:
            fsdp_check(tc)  # before anything changes the model
        self.sparse_embedding = False if fsdp else sparse_tied_embedding(model, tc)
        split = split_lm_head(model, sample_ids)
        self.head = split[1] if split else None
        core = split[0] if split else model
        self.fwd = torch.compile(core) if tc.compile else core
        # fsdp: parameters become DTensor shards here (before the optimizer sees them); the micro-batch forward
        # runs as the root FSDP unit's forward, which gathers the embeddings, final norm and head around it
        self.sharded = Sharded(outer, model, self._forward, tc, self.dist) if fsdp else None
        self._call = self.sharded.root if fsdp else self._forward
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.opt = make_optimizer(model, tc)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lr_lambda(tc, total_steps))
        model.train()

    def step(self, batches: list[Batch], *, metrics: bool = True, step: int = 0) -> tuple[StepMetrics, float]:
        """Returns (the step's metrics summed over ranks, grad norm before clipping). Raises TrainingError on a
        non-finite loss or gradient, before the optimizer touches the weights."""
        norm, dev, dist = self.tc.normalization, self.device, self.dist
        # the step's denominator over every micro-batch and rank: accumulation == one big batch
        denom = sum((loss_denominator(b.labels, b.weights, norm, b.seq_ids) for b in batches),
                    torch.zeros((), device=dev)).double()
        denom = dist.all_reduce(denom)
        if float(denom) <= 0:
            raise SupervisionError(f"optimizer step {step} has zero supervised tokens", where="train",
                                   fix="check the regime and data (harness inspect)")
        m = torch.zeros(7, dtype=torch.float64, device=dev)
        if self.sharded is not None:  # the same number of micro-batches on every rank (each is a collective)
            batches = self.sharded.pad_micro_batches(batches)
        for b in batches:
            m += self._micro(b, denom, norm, metrics)
        if dist.world > 1:
            if self.sharded is None:  # fsdp: the reduce-scatter after each backward summed them already
                dist.all_reduce_grads(self.params)
            m = dist.all_reduce(m)
        max_norm = self.tc.max_grad_norm or float("inf")
        if self.sharded is not None:  # the global norm of the sharded gradients
            grad_norm = self.sharded.clip_grad_norm(self.params, max_norm)
        else:
            grad_norm = torch.nn.utils.clip_grad_norm_(self.params, max_norm) if self.params else torch.zeros(())
        finite = torch.isfinite(torch.stack([m[_LOSS], grad_norm.to(m)]))
        if not bool(finite.all()):  # same verdict on every rank: loss and grads were all-reduced
            what = "loss" if not bool(finite[0]) else "gradient norm"
            value = float(m[_LOSS] if what == "loss" else grad_norm)
            self.opt.zero_grad(set_to_none=True)
            raise TrainingError(f"non-finite {what} ({value}) at optimizer step {step}", where="train",
                                fix="lower train.lr, set train.max_grad_norm, or check the data; the last "
                                "COMPLETED checkpoint is kept and a rerun resumes from it")
        self.opt.step()
        self.sched.step()
        self.opt.zero_grad(set_to_none=True)
        return StepMetrics.from_vector(m), float(grad_norm)

    def resumable_state(self) -> dict:
        """What trainer_state.pt holds to resume the optimizer and schedule (fsdp: the schedule; the sharded
        optimizer state goes to the checkpoint's dcp/, fsdp.save_checkpoint)."""
        opt = {} if self.sharded is not None else {"optimizer": self.opt.state_dict()}
        return {**opt, "scheduler": self.sched.state_dict()}

    def load_resumable(self, saved: dict, ckpt) -> bool:
        """Restore the optimizer and schedule from a checkpoint (`saved`: its trainer_state.pt); False when it
        holds none (the last step's checkpoint)."""
        if self.sharded is not None:
            if not has_sharded_state(ckpt) or "scheduler" not in saved:
                return False
            self.sharded.load_state(Path(ckpt) / SHARDED_STATE, self.opt)
        elif "optimizer" in saved:
            self.opt.load_state_dict(saved["optimizer"])
        else:
            return False
        self.sched.load_state_dict(saved["scheduler"])
        return True

    def _forward(self, kw: dict, sup: torch.Tensor, sup_targets: torch.Tensor, targets: torch.Tensor,
                 rest: torch.Tensor | None):
        """One micro-batch's forward: (NLL at the supervised positions, NLL at every position when the head is
        not split off else None, hidden states or None, NLL at the `rest` positions (no grad) or None). Under
        fsdp this is the root unit's forward (fsdp.Sharded), so `rest` is evaluated here, while the head is
        gathered; else after backward (rest None)."""
        with self.amp():
            out = self.fwd(**kw)
        if self.head is None:
            nll_all = _nll(out.logits[:, :-1].flatten(0, 1), targets.flatten()).view(sup.shape)
            return nll_all[sup], nll_all, None, None
        hidden = out.last_hidden_state[:, :-1]  # position t predicts token t+1
        with self.amp():  # chunked over the vocabulary: no [supervised, vocab] logits kept (lm_head.py)
            nll_sup = head_nll(hidden[sup], self.head, sup_targets)
        nll_rest = None
        if rest is not None and bool(rest.any()):
            with torch.no_grad(), self.amp():
                nll_rest = head_nll(hidden.detach()[rest], self.head, targets[rest])
        return nll_sup, None, (hidden if self.sharded is None else None), nll_rest

    def _micro(self, b: Batch, denom: torch.Tensor, norm: str, metrics: bool) -> torch.Tensor:
        m = torch.zeros(7, dtype=torch.float64, device=denom.device)
        kw = dict(input_ids=b.input_ids, position_ids=b.position_ids, attention_mask=b.attention_mask,
                  use_cache=False)
        eff = token_weights(b.labels, b.weights, norm, b.seq_ids)  # [B, T-1] weight of each next-token target
        sup = eff > 0
        resp = prompt = rest = None
        if metrics:  # fixed-mask NLL (same masks for every regime), from this very forward pass
            resp, prompt = segment_masks(b)
            rest = (resp | prompt) & ~sup
        targets = b.input_ids[:, 1:]
        nll_sup, nll_all, hidden, nll_rest = self._call(kw, sup, b.labels[:, 1:][sup], targets,
                                                        rest if self.sharded is not None else None)
        # train.loss (nll | dft) shapes the trained loss only; the fixed-mask metrics below stay plain NLL
        loss = (eff[sup].to(nll_sup.dtype) * token_loss(nll_sup, self.tc.loss)).sum() / denom.to(nll_sup.dtype)
        loss.backward()
        m[_LOSS] = loss.detach().double()
        m[_TOKENS] = b.n_tokens
        m[_SUP] = sup.sum()
        if metrics:
            with torch.no_grad():
                nll = torch.zeros(sup.shape, dtype=torch.float64, device=sup.device)
                nll[sup] = nll_sup.detach().double()
                if nll_all is not None:
                    nll[rest] = nll_all.detach()[rest].double()
                elif nll_rest is not None:
                    nll[rest] = nll_rest.double()
                elif hidden is not None and bool(rest.any()):
                    with self.amp():
                        nll[rest] = head_nll(hidden.detach()[rest], self.head, targets[rest]).double()
                m[_RESP], m[_NRESP] = (nll * resp).sum(), resp.sum()
                m[_PROMPT], m[_NPROMPT] = (nll * prompt).sum(), prompt.sum()
        return m


def _nll(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    if logits.dtype in (torch.float16, torch.bfloat16):  # half-precision logits: the loss is taken in fp32
        logits = logits.float()
    return F.cross_entropy(logits, targets, reduction="none")
