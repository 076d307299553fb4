"""SLURM: the submitit parameters of an experiment's launcher section, and the sbatch script they make."""

from __future__ import annotations

from typing import Any

from harness.grid import Experiment


def slurm_parameters(exp: Experiment, parallel: int | None) -> dict:
    lc = exp.config.launcher
    params: dict[str, Any] = {
        "name": f"harness-{exp.config.name}", "timeout_min": lc.timeout_min, "cpus_per_task": lc.cpus_per_run,
        "mem_gb": lc.mem_gb, "slurm_array_parallelism": parallel or lc.parallel or 256,
        "slurm_signal_delay_s": 120,
    }
    if lc.gpus_per_run:
        # one task per GPU: torch.distributed picks rank/world from SLURM_PROCID/SLURM_NTASKS
        params.update(gpus_per_node=lc.gpus_per_run, tasks_per_node=lc.gpus_per_run,
                      cpus_per_task=max(1, lc.cpus_per_run // lc.gpus_per_run))
    for key in ("partition", "account", "qos", "constraint"):
        val = getattr(lc, key)
        if val:
            params[f"slurm_{key}"] = val
    extra: dict[str, Any] = {}
    for line in lc.extra_sbatch:
        opt = line.strip().removeprefix("#SBATCH").strip().lstrip("-")
        k, _, v = opt.partition("=")
        extra[k.replace("-", "_")] = v or True
    if extra:
        params["slurm_additional_parameters"] = extra
    return params


def sbatch_preview(exp: Experiment, parallel: int | None, n_runs: int) -> str:
    """The sbatch script submitit would write, from the experiment's launcher section (no cluster needed)."""
    from submitit.slurm.slurm import _make_sbatch_string

    p = slurm_parameters(exp, parallel)
    kw = dict(partition=p.get("slurm_partition"), time=int(p["timeout_min"]), cpus_per_task=p["cpus_per_task"],
              mem=f"{p['mem_gb']}GB", qos=p.get("slurm_qos"), account=p.get("slurm_account"),
              constraint=p.get("slurm_constraint"), array_parallelism=p["slurm_array_parallelism"],
              signal_delay_s=p["slurm_signal_delay_s"], job_name=p["name"], map_count=n_runs,
              additional_parameters=p.get("slurm_additional_parameters"))
    if "gpus_per_node" in p:
        kw.update(gpus_per_node=p["gpus_per_node"], ntasks_per_node=p["tasks_per_node"])
    return _make_sbatch_string(command="python -u -m submitit.core._submit <folder>",
                               folder=str(exp.out_dir / "logs" / "%j"), **kw)
