"""SLURM: the submitit parameters of an experiment's launcher section, and the sbatch script they make.

One job per run (one element of the grid's job array): ``--nodes`` x ``--ntasks-per-node`` tasks, which the
script's ``srun`` starts, one per GPU (or ``tasks_per_node`` CPU tasks, gloo); every task runs the same
:class:`~harness.launch.jobs.RunJob`, torch.distributed takes rank and world from SLURM_PROCID/SLURM_NTASKS and
the rendezvous from the node list (harness/training/distributed.py). Only rank 0 does the run's bookkeeping.
"""

from __future__ import annotations

from typing import Any

import submitit

from harness.grid import Experiment


def slurm_parameters(exp: Experiment, parallel: int | None, *, base: bool = False) -> dict:
    """The parameters of submitit's SlurmExecutor (the names of its ``_make_sbatch_string``) for one run's job;
    ``base=True``: the base model's evaluation job, one task on one node (one GPU if runs have GPUs)."""
    lc = exp.config.launcher
    nodes, tasks = (1, 1) if base else (lc.nodes, lc.node_tasks)
    cpus = lc.cpus_per_run // lc.nodes if base else lc.cpus_per_run // lc.world_size  # base: one node's share
    params: dict[str, Any] = {
        "job_name": f"harness-{exp.config.name}" + ("-base" if base else ""), "time": lc.timeout_min,
        "nodes": nodes, "ntasks_per_node": tasks, "cpus_per_task": max(1, cpus), "mem": f"{lc.mem_gb}GB",
        "array_parallelism": parallel or lc.parallel or 256, "signal_delay_s": 120,
    }
    if lc.node_gpus:
        params["gpus_per_node"] = 1 if base else lc.node_gpus
    if nodes * tasks > 1:  # a rank that fails ends the step: the others would wait in a collective forever
        params["srun_args"] = ["--kill-on-bad-exit=1"]
    for key in ("partition", "account", "qos", "constraint"):
        val = getattr(lc, key)
        if val:
            params[key] = val
    extra: dict[str, Any] = {}
    for line in lc.extra_sbatch:
        opt = line.strip().removeprefix("#SBATCH").strip().lstrip("-")
        k, _, v = opt.partition("=")
        extra[k.replace("-", "_")] = v or True
    if extra:
        params["additional_parameters"] = extra
    return params


class _Preview(submitit.SlurmExecutor):
    """A SlurmExecutor that renders scripts without SLURM installed (its constructor looks for srun)."""

    @classmethod
    def affinity(cls) -> int:
        return 2


def slurm_executor(exp: Experiment, parallel: int | None, *, base: bool = False,
                   preview: bool = False) -> submitit.SlurmExecutor:
    cls = _Preview if preview else submitit.SlurmExecutor
    ex = cls(folder=exp.dir.logs / "%j", max_num_timeout=exp.config.launcher.max_requeues)
    ex.update_parameters(**slurm_parameters(exp, parallel, base=base))
    return ex


def sbatch_script(ex: submitit.SlurmExecutor, n_jobs: int) -> str:
    """The sbatch script `ex` submits for `n_jobs` jobs: what submitit writes (an array for more than one)."""
    if n_jobs <= 1:
        return ex._make_submission_file_text(ex._submitit_command_str, "preview")
    ex.parameters["map_count"] = n_jobs  # what SlurmExecutor._internal_process_submissions does for a batch
    try:
        return ex._make_submission_file_text(ex._submitit_command_str, "preview")
    finally:
        del ex.parameters["map_count"]


def sbatch_preview(exp: Experiment, parallel: int | None, n_runs: int) -> str:
    """The sbatch script of the runs' job array, as it would be submitted (no cluster needed)."""
    return sbatch_script(slurm_executor(exp, parallel, preview=True), max(1, n_runs))
