"""FSDP2 (``train.parallel: fsdp``): parameters, gradients and optimizer state sharded across ranks.

* Sharding units: ``fully_shard`` on every decoder layer (the model's ``_no_split_modules`` classes), then on a
  small root module (:class:`_Root`) whose forward is the engine's whole micro-batch forward (decoder body +
  chunked LM head, harness/training/engine.py). The engine calls the body and the head separately, and the
  chunked head reads ``lm_head.weight`` directly, so FSDP's pre-forward all-gather must wrap both: the root
  group (embeddings, final norm, LM head; a tied embedding is one parameter of this one group) is gathered
  once per micro-batch around the body *and* every head call (the metric positions' NLL included, computed
  inside that forward: after backward the head is sharded again).
* Gradients are SUMMED across ranks, as under ddp: every rank's loss is already divided by the step's global
  denominator. FSDP2 averages by default; ``set_gradient_divide_factor(1.0)`` + ``set_force_sum_reduction_for_comms
  (True)`` on every FSDP module make the reduce-scatter a plain ``ReduceOp.SUM`` with no pre/post division
  (torch/distributed/fsdp/_fully_shard/_fsdp_collectives.py:_get_gradient_divide_factors; the factor alone
  picks ``PREMUL_SUM(1.0)``, which gloo refuses).
  ``set_reduce_scatter_unused_params(True)``: a parameter without a gradient on one rank (no supervised token
  in its micro-batch: the head gets none) still joins the reduce-scatter with zeros, so ranks never disagree.
  Every rank runs the same number of micro-batches (:meth:`Sharded.pad_micro_batches`: empty ones adding 0),
  since each forward and backward is a collective.
* Mixed precision from ``train.precision``: bf16 | auto on CUDA -> bf16 parameters for compute, fp32
  reduce-scatter and fp32 sharded master weights (the engine's autocast stays on); fp32 -> none. Activation
  checkpointing (train.gradient_checkpointing) composes; train.compile and a sparse embedding gradient do not
  (:func:`check`; auto sparse is off). One process shards over a group of one (bit-identical to ddp).
* Checkpoints (harness/training/checkpoint.py's protocol): the full state dict is gathered to rank 0
  (``get_model_state_dict(full_state_dict=True, cpu_offload=True)``) and loaded into a meta-device copy of the
  model made before sharding, which ``adapters.save`` writes as the usual HF weights (or PEFT adapter): what
  evaluation loads in its own process. Resumable checkpoints also hold ``dcp/``: the trainable parameters and
  the optimizer state, sharded, through ``torch.distributed.checkpoint`` (every rank writes its shards into
  the checkpoint's temp directory before the rename; COMPLETED is still written last, by rank 0).
* Resume on a different world size is supported: DCP reshards on load, the data plan splits each step's rows
  by rank for any world size, and the per-rank RNG states fall back to rank 0's (dropout streams then differ
  from either uninterrupted run; without dropout the result equals one within fp32 summation order).
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as tdist
from torch import nn

from harness import adapters
from harness.config import TrainConfig
from harness.errors import ConfigError
from harness.layout import SHARDED_STATE, RunDir
from harness.training.distributed import Dist
from harness.training.packing import Batch

log = logging.getLogger("harness.train")


def check(tc: TrainConfig) -> None:
    """What train.parallel: fsdp does not combine with (raised before any work)."""
    if tc.compile:
        raise ConfigError("train.compile is not supported with train.parallel: fsdp", where="train.compile",
                          fix="set train.compile: false, or train.parallel: ddp")
    if tc.sparse_embedding_grad:
        raise ConfigError("train.sparse_embedding_grad is not supported with train.parallel: fsdp (the "
                          "reduce-scatter takes dense gradients)", where="train.sparse_embedding_grad",
                          fix="leave it unset (auto: off under fsdp) or false")


def mp_policy(tc: TrainConfig, device: torch.device):
    from torch.distributed.fsdp import MixedPrecisionPolicy

    if tc.precision == "bf16" or (tc.precision == "auto" and device.type == "cuda"):
        return MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    return MixedPrecisionPolicy()


class _Root(nn.Module):
    """The root FSDP unit: holds the model and runs the engine's micro-batch forward (body + head)."""

    def __init__(self, model: nn.Module, forward: Callable):
        super().__init__()
        self.model = model
        self.__dict__["_step"] = forward  # a bound method of the engine, not a submodule

    def forward(self, *args):
        return self._step(*args)


def decoder_layers(model: nn.Module) -> list[nn.Module]:
    """The model's decoder layers (transformers' ``_no_split_modules`` classes), outermost only."""
    names = set(getattr(model, "_no_split_modules", None) or ())
    found: list[nn.Module] = []
    inside: set[int] = set()
    for m in model.modules():
        if type(m).__name__ in names and id(m) not in inside:
            found.append(m)
            inside |= {id(x) for x in m.modules()}
    return found


def _meta_copy(model: nn.Module) -> nn.Module:
    """A copy of `model` (wrappers, config, buffers) whose parameters live on the meta device: no memory;
    ties (one Parameter under two names) preserved."""
    memo = {id(p): nn.Parameter(torch.empty_like(p, device="meta"), requires_grad=p.requires_grad)
            for p in model.parameters()}
    return copy.deepcopy(model, memo)


class Sharded:
    """`inner` (the transformers model the engine steps; `outer` is what is saved: it or its PEFT wrapper)
    sharded in place; ``root(*args)`` runs ``forward(*args)`` under the root unit's all-gather."""

    def __init__(self, outer: nn.Module, inner: nn.Module, forward: Callable, tc: TrainConfig, dist: Dist):
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import FSDPModule, fully_shard

        dist.init_single()  # one process: a group of one (FSDP needs a device mesh)
        self.outer, self.inner, self.dist = outer, inner, dist
        self.adapter = adapters.is_peft(outer)  # adapters.save writes the adapter only: gather just that
        self.skeleton = _meta_copy(outer) if dist.rank == 0 else None
        mesh = init_device_mesh(dist.device.type, (dist.world,))
        mp = mp_policy(tc, dist.device)
        layers = decoder_layers(inner)
        if not layers:
            log.warning("no decoder layers found (%s._no_split_modules): one FSDP unit for the whole model",
                        type(inner).__name__)
        for layer in layers:
            fully_shard(layer, mesh=mesh, mp_policy=mp)
        self.root = _Root(inner, forward)
        fully_shard(self.root, mesh=mesh, mp_policy=mp)
        for m in self.root.modules():
            if isinstance(m, FSDPModule):  # each unit's own setting (not recursive)
                m.set_gradient_divide_factor(1.0)
                m.set_force_sum_reduction_for_comms(True)
        self.root.set_reduce_scatter_unused_params(True)
        self.units = 1 + len(layers)

    # -------------------------------------------------------------------------------------- a step

    def pad_micro_batches(self, batches: list[Batch]) -> list[Batch]:
        """`batches` + empty micro-batches up to the most any rank has this step (each forward/backward is a
        collective under FSDP). An empty one has no token in the loss or the metrics: it adds exactly 0."""
        if self.dist.world == 1:
            return batches
        n = torch.tensor([len(batches)], device=self.dist.device)
        tdist.all_reduce(n, op=tdist.ReduceOp.MAX)
        return batches + [_empty_batch(self.dist.device)] * (int(n.item()) - len(batches))

    @staticmethod
    def clip_grad_norm(params: list[nn.Parameter], max_norm: float) -> torch.Tensor:
        """Global L2 norm of the sharded gradients (before clipping), and clip them to `max_norm`."""
        from torch.distributed.tensor import DTensor

        grads = [p.grad for p in params if p.grad is not None]
        if not grads:
            return torch.zeros(())
        norm = torch.nn.utils.get_total_norm(grads, 2.0)
        if isinstance(norm, DTensor):  # partial per rank: the reduction makes it the global norm
            norm = norm.full_tensor()
        torch.nn.utils.clip_grads_with_norm_(params, max_norm, norm)
        return norm

    # -------------------------------------------------------------------------------------- checkpoints

    def gathered(self) -> nn.Module | None:
        """Every rank calls it (collective); rank 0 gets an unsharded CPU copy of `outer` to save, others None."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        opts = StateDictOptions(full_state_dict=True, cpu_offload=True, ignore_frozen_params=self.adapter)
        full = get_model_state_dict(self.outer, options=opts)
        if self.dist.rank != 0:
            return None
        model = copy.deepcopy(self.skeleton)  # meta: no memory
        canonical: dict[int, str] = {}
        alias = {n: canonical.setdefault(id(p), n) for n, p in model.named_parameters(remove_duplicate=False)}
        trainable = {n for n, p in model.named_parameters() if p.requires_grad}
        missing, unexpected = model.load_state_dict(full, strict=False, assign=True)
        missing = [k for k in missing if not self.adapter or k in trainable]  # adapter: the frozen base stays meta
        if unexpected or missing:
            raise RuntimeError(f"gathered state dict does not fit the model: missing {missing[:5]}, "
                               f"unexpected {unexpected[:5]}")
        for name, first in alias.items():  # assign=True gave each alias its own Parameter: tie them again
            if name != first:
                mod, _, leaf = name.rpartition(".")
                setattr(model.get_submodule(mod), leaf, model.get_parameter(first))
        return model

    def _state(self, opt: torch.optim.Optimizer) -> dict:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

        # frozen parameters (an adapter run's base) never change: they come from the base / HF weights
        msd, osd = get_state_dict(self.inner, opt, options=StateDictOptions(ignore_frozen_params=True))
        return {"model": msd, "optimizer": osd}

    def save_state(self, path: Path, opt: torch.optim.Optimizer) -> None:
        """Every rank writes its shards of the trainable parameters and optimizer state into `path`."""
        import torch.distributed.checkpoint as dcp

        dcp.save(self._state(opt), checkpoint_id=str(path))

    def load_state(self, path: Path, opt: torch.optim.Optimizer) -> None:
        """The sharded state written by :meth:`save_state`, on any world size (DCP reshards)."""
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

        state = self._state(opt)  # this run's sharding, filled in place
        dcp.load(state, checkpoint_id=str(path))
        set_state_dict(self.inner, opt, model_state_dict=state["model"], optim_state_dict=state["optimizer"],
                       options=StateDictOptions(ignore_frozen_params=True, strict=False))


def has_state(ckpt: Path) -> bool:
    return (Path(ckpt) / SHARDED_STATE / ".metadata").is_file()


def save_checkpoint(rd: RunDir, step: int, engine, tokenizer, state: dict, *, resumable: bool) -> Path:
    """train.parallel: fsdp's checkpoint, called on EVERY rank: rank 0 prepares the temp directory, all ranks
    gather the weights and (when `resumable`) write their DCP shards into it, then rank 0 writes the HF weights,
    the tokenizer and trainer_state.pt, renames it into place and writes COMPLETED
    (harness/training/checkpoint.py: a crash at any point leaves nothing that looks complete)."""
    from harness.training import checkpoint as C

    dist, sh = engine.dist, engine.sharded
    tmp = C.begin_checkpoint(rd, step) if dist.rank == 0 else rd.tmp_step_dir(step)
    dist.barrier()  # the temp directory exists (and no stale one is left) before any rank writes into it
    model = sh.gathered()
    if resumable:
        sh.save_state(tmp / SHARDED_STATE, engine.opt)
    if dist.rank == 0:
        C.finish_checkpoint(rd, step, model, tokenizer, state)
    return rd.step_dir(step)


def _empty_batch(device: torch.device) -> Batch:
    ids = torch.zeros((1, 2), dtype=torch.long, device=device)
    return Batch(input_ids=ids, position_ids=torch.arange(2, device=device)[None], labels=torch.full_like(ids, -100),
                 weights=torch.zeros((1, 2), device=device), segments=torch.full((1, 2), -1, dtype=torch.int8,
                 device=device), seq_ids=torch.full_like(ids, -1), attention_mask=None, n_tokens=0)


def smoke(eng, batches: Callable[[int], list[Batch]], steps: int, warmup: int, path: Path,
          sync: Callable[[], None] = lambda: None, say: Callable[[str], None] = lambda s: None) -> dict | None:
    """Self-check of train.parallel: fsdp on this machine (benchmarks/gpu_suite.py's fsdp part; every rank
    calls it, rank 0 gets the report, the others None): `steps` optimizer steps of ``eng.step(batches(i))`` (an
    Engine with train.parallel: fsdp), the gathered full state dict (tied embeddings stay tied), and a DCP save ->
    zero -> load round trip of the largest parameter's shard and its optimizer state."""
    import math
    import time

    tc, dist, rows = eng.tc, eng.dist, []
    for i in range(steps):
        b = batches(i)
        sync()
        t = time.perf_counter()
        m, gnorm = eng.step(b, step=i + 1)
        sync()
        rows.append({"loss": m.loss, "grad_norm": gnorm, "tokens": m.tokens, "seconds": time.perf_counter() - t})
        say(f"fsdp step {i + 1}: loss {m.loss:.4f} grad_norm {gnorm:.3f} ({rows[-1]['seconds']:.2f}s)")
    sh, opt = eng.sharded, eng.opt
    full = sh.gathered()
    p = max(eng.params, key=lambda q: q.numel())
    want = (p.to_local().clone(), opt.state[p]["exp_avg"].to_local().clone())
    sh.save_state(Path(path), opt)
    with torch.no_grad():  # the load must bring them back
        p.zero_()
        opt.state[p]["exp_avg"].zero_()
    sh.load_state(Path(path), opt)
    exact = torch.equal(want[0], p.to_local()) and torch.equal(want[1], opt.state[p]["exp_avg"].to_local())
    if full is None:
        return None
    timed = rows[warmup:] or rows
    emb, head = full.get_input_embeddings(), full.get_output_embeddings()
    tied = head is not None and emb.weight is head.weight
    finite = all(math.isfinite(r["loss"]) and math.isfinite(r["grad_norm"]) for r in rows)
    return {"status": "ok" if finite and exact and tied == bool(full.config.tie_word_embeddings) else "fail",
            "world": dist.world, "device": str(dist.device), "fsdp_units": sh.units, "steps": rows,
            "finite": finite, "tokens_per_s": sum(r["tokens"] for r in timed) / sum(r["seconds"] for r in timed),
            "dcp_roundtrip_exact": exact, "gathered_params": sum(q.numel() for q in full.parameters()),
            "gathered_tied": tied, "optimizer": f"{type(opt).__name__}(fused={opt.defaults.get('fused')})",
            "param_dtype": str(mp_policy(tc, dist.device).param_dtype or p.dtype),
            "gradient_checkpointing": tc.gradient_checkpointing,
            "peak_memory_gib": torch.cuda.max_memory_allocated(dist.device) / 2 ** 30 if dist.device.type == "cuda"
            else None}
