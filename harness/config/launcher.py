"""The ``launcher`` section: where and how runs execute (submitit local processes, SLURM, in-process)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from harness.config.checks import _choice, _pos
from harness.errors import ConfigError


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
    """GPUs per run, all nodes together (>1 starts torch.distributed; default: nodes x gpus_per_node)."""
    nodes: int = 1
    """Nodes per run (slurm only): one SLURM job per run on this many nodes, srun starting its tasks on each."""
    gpus_per_node: Optional[int] = None
    """GPUs per node of a run (default: gpus_per_run / nodes, i.e. gpus_per_run on one node)."""
    tasks_per_node: Optional[int] = None
    """Processes (ranks) per node (slurm only; default: one per GPU, else 1); >1 without GPUs: gloo on CPU."""
    cpus_per_run: int = 2
    """CPUs per run (split across its tasks: --cpus-per-task is cpus_per_run / tasks, at least 1)."""
    mem_gb: int = 8
    """Memory per run in GB (SLURM's --mem: per node when a run spans nodes)."""
    extra_sbatch: tuple[str, ...] = ()
    """Extra '#SBATCH' lines, e.g. '--exclude=node1'."""
    max_requeues: int = 3
    """Requeues after preemption/timeout before giving up."""

    def __post_init__(self):
        _choice("launcher.backend", self.backend, ("local", "slurm", "debug"))
        _pos("launcher.timeout_min", self.timeout_min)
        _pos("launcher.cpus_per_run", self.cpus_per_run)
        _pos("launcher.gpus_per_run", self.gpus_per_run, allow_zero=True)
        _pos("launcher.nodes", self.nodes)
        if self.gpus_per_node is not None:
            _pos("launcher.gpus_per_node", self.gpus_per_node, allow_zero=True)
        if self.tasks_per_node is not None:
            _pos("launcher.tasks_per_node", self.tasks_per_node)
        for key in ("nodes", "tasks_per_node"):
            if (getattr(self, key) or 1) > 1 and self.backend != "slurm":
                raise ConfigError(f"{key}={getattr(self, key)} needs the slurm backend (backend is "
                                  f"{self.backend!r}: one process per run)", where=f"launcher.{key}",
                                  fix=f"set launcher.backend=slurm, or drop launcher.{key}")
        if self.gpus_per_node is not None and self.gpus_per_run and \
                self.gpus_per_run != self.nodes * self.gpus_per_node:
            raise ConfigError(f"gpus_per_run={self.gpus_per_run} is not nodes x gpus_per_node = {self.nodes} x "
                              f"{self.gpus_per_node}", where="launcher.gpus_per_run",
                              fix="set one of them (the other follows), or make them agree")
        if self.gpus_per_node is None and self.gpus_per_run % self.nodes:
            raise ConfigError(f"gpus_per_run={self.gpus_per_run} does not split evenly over {self.nodes} nodes",
                              where="launcher.gpus_per_run", fix="set launcher.gpus_per_node (GPUs on each node)")
        if self.tasks_per_node is not None and self.node_gpus and self.tasks_per_node != self.node_gpus:
            raise ConfigError(f"tasks_per_node={self.tasks_per_node} with {self.node_gpus} GPUs per node: with "
                              "GPUs a run has one task per GPU", where="launcher.tasks_per_node",
                              fix="drop launcher.tasks_per_node (it follows the GPUs)")

    @property
    def node_gpus(self) -> int:
        """GPUs on each node of a run."""
        return self.gpus_per_node if self.gpus_per_node is not None else self.gpus_per_run // self.nodes

    @property
    def node_tasks(self) -> int:
        """Tasks (ranks) on each node of a run: one per GPU, or tasks_per_node, or 1."""
        return self.tasks_per_node or self.node_gpus or 1

    @property
    def world_size(self) -> int:
        """torch.distributed ranks of one run on SLURM (nodes x tasks per node)."""
        return self.nodes * self.node_tasks
