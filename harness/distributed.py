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


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @classmethod
    def from_env(cls) -> "Dist":
        env = os.environ
        world = int(env.get("WORLD_SIZE", env.get("SLURM_NTASKS", "1")))
        rank = int(env.get("RANK", env.get("SLURM_PROCID", "0")))
        local = int(env.get("LOCAL_RANK", env.get("SLURM_LOCALID", "0")))
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

    def barrier(self) -> None:
        if self.world > 1:
            tdist.barrier()

    def close(self) -> None:
        if self.world > 1 and tdist.is_initialized():
            tdist.destroy_process_group()
