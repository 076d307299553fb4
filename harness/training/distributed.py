"""Data parallelism with plain torch.distributed (gloo on CPU, nccl on GPU).

Rank and world size come from torchrun (RANK/WORLD_SIZE/LOCAL_RANK) or SLURM (SLURM_PROCID/SLURM_NTASKS/
SLURM_LOCALID). Gradients are summed across ranks after accumulation: every rank's loss is already divided by
the *global* denominator (all-reduced), so the sum is exactly the gradient of one big batch.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as tdist


def env_ranks(env) -> tuple[int, int, int]:
    """(rank, world size, local rank) from torchrun's variables, else SLURM's (srun), else a single process."""
    if "RANK" in env and "WORLD_SIZE" in env:
        return int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", "0"))
    if "SLURM_PROCID" in env and "SLURM_NTASKS" in env:
        return int(env["SLURM_PROCID"]), int(env["SLURM_NTASKS"]), int(env.get("SLURM_LOCALID", "0"))
    return 0, 1, 0


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @classmethod
    def from_env(cls) -> "Dist":
        env = os.environ
        rank, world, local = env_ranks(env)
        cuda = torch.cuda.is_available()
        device = torch.device(f"cuda:{local}") if cuda else torch.device("cpu")
        if cuda:
            torch.cuda.set_device(device)
        if world > 1 and not tdist.is_initialized():
            env.setdefault("MASTER_ADDR", env.get("SLURM_LAUNCH_NODE_IPADDR", "127.0.0.1"))
            env.setdefault("MASTER_PORT", str(29500 + int(env.get("SLURM_JOB_ID", "0")) % 1000))
            tdist.init_process_group("nccl" if cuda else "gloo", rank=rank, world_size=world)
        return cls(rank, world, local, device)

    def all_reduce(self, t: torch.Tensor) -> torch.Tensor:
        if self.world > 1:
            t = t.clone()
            tdist.all_reduce(t, op=tdist.ReduceOp.SUM)
        return t

    def all_reduce_grads(self, params: list[torch.nn.Parameter]) -> None:
        for p in params:  # a rank with no rows this step still joins the reduction
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        grads = [p.grad for p in params]
        flat = torch.cat([g.flatten() for g in grads])
        tdist.all_reduce(flat, op=tdist.ReduceOp.SUM)
        off = 0
        for g in grads:
            g.copy_(flat[off:off + g.numel()].view_as(g))
            off += g.numel()

    def gather_object(self, obj) -> list:
        """`obj` of every rank, in rank order, on every rank (e.g. the per-rank RNG states for a checkpoint)."""
        if self.world == 1:
            return [obj]
        out: list = [None] * self.world
        tdist.all_gather_object(out, obj)
        return out

    def any(self, flag: bool) -> bool:
        """True on every rank when `flag` is true on any (a stop request seen by one rank stops all together,
        so no rank waits forever in a collective the others left)."""
        if self.world == 1:
            return flag
        t = torch.tensor([1.0 if flag else 0.0], device=self.device)
        tdist.all_reduce(t, op=tdist.ReduceOp.MAX)
        return bool(t.item() > 0)

    def barrier(self) -> None:
        if self.world > 1:
            tdist.barrier()

    def close(self) -> None:
        if self.world > 1 and tdist.is_initialized():
            tdist.destroy_process_group()
