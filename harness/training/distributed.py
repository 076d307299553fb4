"""Data parallelism with plain torch.distributed (gloo on CPU, nccl on GPU).

Rank and world size come from torchrun (RANK/WORLD_SIZE/LOCAL_RANK) or SLURM (SLURM_PROCID/SLURM_NTASKS/
SLURM_LOCALID). Gradients are summed across ranks after accumulation: every rank's loss is already divided by
the *global* denominator (all-reduced), so the sum is exactly the gradient of one big batch (train.parallel:
ddp, here; fsdp's reduce-scatter sums the same way: harness/training/fsdp.py).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as tdist


def env_ranks(env) -> tuple[int, int, int]:
    """(rank, world size, local rank) from torchrun's variables, else SLURM's (srun), else a single process.
    SLURM's count only inside a job step: a batch script or salloc shell (SLURM_JOB_ID without a step id) is one
    process, though its SLURM_NTASKS counts every task of the allocation."""
    if "RANK" in env and "WORLD_SIZE" in env:
        return int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", "0"))
    in_step = "SLURM_JOB_ID" not in env or "SLURM_STEP_ID" in env or "SLURM_STEPID" in env
    if "SLURM_PROCID" in env and "SLURM_NTASKS" in env and in_step:
        return int(env["SLURM_PROCID"]), int(env["SLURM_NTASKS"]), int(env.get("SLURM_LOCALID", "0"))
    return 0, 1, 0


def expand_nodelist(nodelist: str) -> list[str]:
    """SLURM's compressed host list as host names, in order: ``node[01-03,07],gpu-[1-2]x`` -> node01, node02,
    node03, node07, gpu-1x, gpu-2x (what ``scontrol show hostnames`` prints, without needing SLURM)."""
    hosts: list[str] = []
    i, n = 0, len(nodelist)
    while i < n:
        names = [""]
        while i < n and nodelist[i] != ",":
            if nodelist[i] == "[":
                j = nodelist.find("]", i)
                if j < 0:
                    raise ValueError(f"unbalanced '[' in SLURM node list {nodelist!r}")
                ids: list[str] = []
                for part in nodelist[i + 1:j].split(","):
                    lo, _, hi = part.partition("-")
                    ids += [f"{k:0{len(lo)}d}" for k in range(int(lo), int(hi) + 1)] if hi else [part]
                names = [a + b for a in names for b in ids]
                i = j + 1
            else:
                names = [a + nodelist[i] for a in names]
                i += 1
        hosts += [h for h in names if h]
        i += 1
    return hosts


def first_host(nodelist: str) -> str:
    """The first host of a SLURM node list: ``scontrol show hostnames`` when it is there, else our parser."""
    import subprocess

    try:
        out = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True,
                             timeout=30)
        if out.returncode == 0 and out.stdout.split():
            return out.stdout.split()[0]
    except (OSError, subprocess.SubprocessError):
        pass
    return expand_nodelist(nodelist)[0]


def rendezvous(env) -> tuple[str, str]:
    """(MASTER_ADDR, MASTER_PORT) for init_process_group: the user's / torchrun's when set; under SLURM the first
    host of the step's node list (rank 0 runs there) and a port from the job id, so that concurrent jobs on one
    node do not collide (10000-29999, below Linux's ephemeral ports); else 127.0.0.1:29500."""
    addr, port = env.get("MASTER_ADDR"), env.get("MASTER_PORT")
    if not addr:
        nodelist = next((env[k] for k in ("SLURM_STEP_NODELIST", "SLURM_JOB_NODELIST", "SLURM_NODELIST")
                         if env.get(k)), "")
        addr = first_host(nodelist) if nodelist else env.get("SLURM_LAUNCH_NODE_IPADDR", "127.0.0.1")
    if not port:
        job = str(env.get("SLURM_JOB_ID", ""))
        port = str(10000 + int(job) % 20000) if job.isdigit() else "29500"
    return addr, port


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    own_group: bool = False  # a one-process group made by init_single (released by close)

    @classmethod
    def from_env(cls) -> "Dist":
        env = os.environ
        rank, world, local = env_ranks(env)
        cuda = torch.cuda.is_available()
        device = torch.device(f"cuda:{local}") if cuda else torch.device("cpu")
        if cuda:
            torch.cuda.set_device(device)
        if world > 1 and not tdist.is_initialized():
            env["MASTER_ADDR"], env["MASTER_PORT"] = rendezvous(env)
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

    def init_single(self) -> None:
        """A process group of this one process (an in-process store: no port), for what needs one even alone
        (train.parallel: fsdp's device mesh). Nothing to do with several ranks (from_env made theirs)."""
        if self.world == 1 and not tdist.is_initialized():
            tdist.init_process_group("nccl" if self.device.type == "cuda" else "gloo", store=tdist.HashStore(),
                                     rank=0, world_size=1)
            self.own_group = True

    def close(self) -> None:
        if (self.world > 1 or self.own_group) and tdist.is_initialized():
            tdist.destroy_process_group()
        self.own_group = False
