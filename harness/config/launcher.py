"""The ``launcher`` section: where and how runs execute (submitit local processes, SLURM, in-process)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from harness.config.checks import _choice, _pos


@dataclass(frozen=True)
class LauncherConfig:
    backend: str = "local"
    """local (submitit local processes) | slurm | debug (in-process)."""
    parallel: Optional[int] = None
    """Runs at once (local: default from cores and threads per run; slurm: array parallelism)."""
    timeout_min: int = 240
    """Per-job time limit in minutes (submitit's own local default is 2)."""
    partition: Optional[str] = None
    """SLURM partition."""
    account: Optional[str] = None
    """SLURM account."""
    qos: Optional[str] = None
    """SLURM QOS."""
    constraint: Optional[str] = None
    """SLURM constraint (e.g. a100)."""
    gpus_per_run: int = 0
    """GPUs per run (>1 starts torch.distributed)."""
    cpus_per_run: int = 2
    """CPUs per run."""
    mem_gb: int = 8
    """Memory per run in GB."""
    extra_sbatch: tuple[str, ...] = ()
    """Extra '#SBATCH' lines, e.g. '--exclude=node1'."""
    max_requeues: int = 3
    """Requeues after preemption/timeout before giving up."""

    def __post_init__(self):
        _choice("launcher.backend", self.backend, ("local", "slurm", "debug"))
        _pos("launcher.timeout_min", self.timeout_min)
        _pos("launcher.cpus_per_run", self.cpus_per_run)
        _pos("launcher.gpus_per_run", self.gpus_per_run, allow_zero=True)
