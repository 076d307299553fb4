"""Grid launcher on submitit: ``harness run`` turns an experiment file into finished, evaluated runs.

On a laptop (submitit local processes, with a real concurrency limit and our own timeout: submitit's local
default kills a job after 2 minutes) or a SLURM cluster (one job array), surviving preemption, crashes and
being run twice:

* runs that are done are skipped; interrupted runs resume from their newest COMPLETED checkpoint;
* each job holds an flock on its run directory, so two launchers never train the same run twice, and an
  experiment-level lock stops two `harness run` of one experiment from launching at once;
* a failing run writes its traceback to ``FAILED`` in its directory and never stops the others;
* locally, ``parallel`` long-lived worker processes each take the next unclaimed run until none is left, so
  Python, torch, transformers and lm-eval are imported once per worker, not once per run, and checkpoints of
  runs with the same evaluation config share one evaluator (tokenized probes, task manager, base log-probs);
* on SIGUSR2 (preemption, time limit) the training loop stops at the next step boundary and saves a
  checkpoint, then submitit's handler requeues the job, which resumes from that checkpoint.
"""

from __future__ import annotations

import contextlib
import os
import time
import traceback
from pathlib import Path
from typing import Any

import submitit

from harness import inputs
from harness.errors import ConfigError, HarnessError
from harness.fsio import atomic_write_json, atomic_write_text, lock_holder, now_iso, try_lock
from harness.grid import Experiment, RunSpec, check_schema, match_runs
from harness.launch.plan import write_plan
from harness.launch.jobs import LocalWorker, RunJob, base_done, evaluate_base_job, execute_run, is_complete
from harness.launch.slurm import sbatch_preview, slurm_executor, slurm_parameters
from harness.launch.status import print_plan, run_status
from harness.launch.watch import read_view, reporter
from harness.layout import FAILED, RunDir
from harness.stages import chains, waits_for

# ------------------------------------------------------------------------------------------ executors


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover
        return os.cpu_count() or 1


def run_memory_bytes(exp: Experiment) -> int:
    """What one training run needs in memory, from the base model's weight files: the weights, their gradients
    and AdamW's two moments (4 x the fp32 weights) plus a quarter for activations and the evaluator."""
    path = Path(exp.config.model.name_or_path)
    weights = sum(f.stat().st_size for f in path.glob("*.safetensors")) if path.is_dir() else 0
    return int(weights * 4 * 1.25)


def available_memory_bytes() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def resources(exp: Experiment, n_runs: int, parallel: int | None, out=None) -> tuple[int, int]:
    """(parallel runs, threads per run) for a local launch. Without --parallel or launcher.parallel: one run
    per core, but no more than fit in the available memory (a real model's AdamW state is GBs per run)."""
    lc = exp.config.launcher
    par = parallel or lc.parallel
    if not par:
        par = max(1, min(n_runs, _cores()))
        need, avail = run_memory_bytes(exp), available_memory_bytes()
        why = f"{_cores()} cores, {n_runs} runs"
        if need and avail is not None:
            why += (f"; {avail / 2**30:.1f} GiB available, ~{need / 2**30:.1f} GiB per run "
                    "(weights, gradients, AdamW state)")
            if avail // need < par:
                par = max(1, avail // need)
                why += ": memory-bound"
        if out is not None:
            out(f"parallel {par} ({why}); --parallel N overrides")
    threads = exp.config.train.threads or max(1, _cores() // par)
    return par, threads


def make_executor(exp: Experiment, backend: str, parallel: int | None, n_runs: int):
    lc = exp.config.launcher
    folder = exp.dir.job_logs
    if backend == "local":
        ex = submitit.AutoExecutor(folder=folder, cluster="local")
        ex.update_parameters(timeout_min=lc.timeout_min, name=f"harness-{exp.config.name}")
        return ex
    if backend == "slurm":
        return slurm_executor(exp, parallel)
    if backend == "debug":
        return submitit.AutoExecutor(folder=folder, cluster="debug")
    raise ConfigError(f"unknown launcher backend {backend!r}", where="launcher.backend",
                      fix="use local, slurm or debug")


def _tidy(exp: Experiment) -> None:
    """submitit leaves an empty folder named by its pattern (``logs/%j``) beside the jobs' own (a local worker's
    controller process makes it): remove it once they are done (not if it holds something: another launcher may
    be submitting through it right now)."""
    with contextlib.suppress(OSError):
        exp.dir.job_logs.rmdir()


# ------------------------------------------------------------------------------------------ launching


def _record_job(rd: RunDir, backend: str, job: Any) -> None:
    info = {"backend": backend, "job_id": str(getattr(job, "job_id", "")), "submitted": now_iso()}
    paths = getattr(job, "paths", None)
    if paths is not None:
        info.update(stdout=str(paths.stdout), stderr=str(paths.stderr))
    atomic_write_json(rd.launcher, info)


def launch(exp: Experiment, *, backend: str | None = None, parallel: int | None = None, dry_run: bool = False,
           only: str | None = None, wait: bool = True, accept_changed_inputs: bool = False, out=print,
           watch: bool = False) -> dict:
    """Expand, skip what is done, evaluate the base once, submit the rest. Returns a summary dict. Runs whose
    inputs changed since they read them (harness/inputs.py) stop the launch, unless `accept_changed_inputs`.
    `watch`: show the runs' progress while waiting for local workers (harness/launch/watch.py: a live table in a
    terminal, one line per event in a pipe)."""
    backend = backend or exp.config.launcher.backend
    runs = match_runs(exp.runs, only)
    statuses = [run_status(exp, r) for r in runs]
    changed = [s for s in statuses if s.state == "changed"]
    if changed and accept_changed_inputs and not dry_run:
        for s in changed:
            rd = RunDir(s.dir)
            inputs.accept(rd, s.run.config, list(s.changes))
            what = ("kept its results for the changed inputs" if rd.done.exists() else
                    "resumes on the changed inputs from what it trained on the old ones")
            out(f"  {s.run.run_id}: {what} (recorded in {rd.inputs})")
        statuses, changed = [run_status(exp, r) for r in runs], []
    if changed:
        lines = [f"  {s.run.run_id}: {c.describe()}" for s in changed for c in s.changes]
        msg = (f"{len(changed)} run(s) of {exp.config.name} read inputs that have changed since; their results "
               "do not describe the files as they are now:\n" + "\n".join(lines))
        if not dry_run:
            raise HarnessError(msg, where=exp.path, fix=inputs.RERUN_FIX)
        out("# " + msg.replace("\n", "\n# ") + f"\n# {inputs.RERUN_FIX}")
    todo = [s.run for s in statuses if s.state not in ("done", "running")]
    running = [s.run.run_id for s in statuses if s.state == "running"]
    par, threads = resources(exp, len(todo), parallel, out if backend == "local" else None)
    if backend == "slurm":  # the array's parallelism: the cluster's, not this machine's cores
        par = parallel or exp.config.launcher.parallel or 256
    summary = {"experiment": exp.config.name, "runs": len(runs), "done": sum(s.state == "done" for s in statuses),
               "running_elsewhere": running, "to_run": [r.run_id for r in todo], "backend": backend,
               "parallel": par, "threads_per_run": threads}
    check_schema(exp)
    lc = exp.config.launcher
    if backend != "slurm" and lc.world_size > 1:
        out(f"note: launcher.nodes / tasks_per_node / GPUs make {lc.world_size} tasks per run on slurm only; "
            f"the {backend} backend runs each run as one process (same result, up to float summation order)")
    if dry_run:
        print_plan(exp, statuses, backend, par, threads, out)
        if backend == "slurm":
            out(f"# submitit SlurmExecutor parameters (one job per run: {lc.nodes} node(s) x {lc.node_tasks} "
                f"task(s), world size {lc.world_size}):")
            for k, v in slurm_parameters(exp, par).items():
                out(f"#   {k} = {v}")
            out(f"# the sbatch script ({max(1, len(todo))} run(s)):")
            out(sbatch_preview(exp, par, len(todo)))
        return summary
    exp.out_dir.mkdir(parents=True, exist_ok=True)
    write_plan(exp)
    if not todo:
        out(f"{exp.config.name}: all {len(runs)} runs are done" +
            (f" ({len(running)} running elsewhere)" if running else "") + ". Nothing to do.")
        return summary
    with try_lock(exp.dir.launch_lock) as got:
        if not got:
            raise HarnessError(f"another `harness run` is launching {exp.config.name} "
                               f"({lock_holder(exp.dir.launch_lock)})",
                               fix="wait for it, or watch it with `harness status`")
        out(f"{exp.config.name}: {len(todo)} of {len(runs)} runs to run on {backend} "
            f"(parallel {par}, {threads} threads each); logs: {exp.dir.logs}")
        results = _submit(exp, todo, backend, par, threads, wait, out, watch)
    summary["results"] = results
    return summary


def _submit(exp: Experiment, todo: list[RunSpec], backend: str, par: int, threads: int, wait: bool, out,
            watch: bool = False) -> list:
    results: list = []
    if backend == "debug":  # in-process, one after the other: for debugging and tests
        _maybe_eval_base(exp, out)
        for spec in todo:
            try:
                results.append(execute_run(spec, exp.run_dir(spec), threads))
                out(f"  {spec.run_id}: {results[-1]['status']}" +
                    (f" ({results[-1]['reason']})" if results[-1].get("reason") else ""))
            except Exception as exc:  # a failing run never stops the others
                results.append({"run_id": spec.run_id, "status": "failed", "error": repr(exc)})
                out(f"  {spec.run_id}: FAILED ({exc!r}); traceback in {exp.run_dir(spec).failed}")
        return results
    ex = make_executor(exp, backend, par, len(todo))
    if backend == "local":
        return _run_local(exp, ex, todo, par, threads, base_done(exp.config, exp.dir), out, watch)
    base_job = None
    if not base_done(exp.config, exp.dir):  # one task, whatever a run's nodes and tasks
        base_ex = slurm_executor(exp, par, base=True) if backend == "slurm" else ex
        base_job = base_ex.submit(evaluate_base_job, exp.config, exp.dir)
    if backend == "slurm":
        jobs_by_run = {}
        groups = chains(todo)  # a run and its later stages are one job (a stage waits for its previous one)
        if len(groups) < len(todo):
            ex.update_parameters(time=exp.config.launcher.timeout_min * max(map(len, groups)))
        with ex.batch():  # one job array
            for first, *then in groups:
                jobs_by_run[first.run_id] = ex.submit(RunJob(first, exp.run_dir(first), None,
                                                             tuple((s, exp.run_dir(s)) for s in then)))
        _tidy(exp)
        for first, *then in groups:
            job = jobs_by_run[first.run_id]
            for spec in (first, *then):
                _record_job(exp.run_dir(spec), backend, job)
            out(f"  {first.run_id}: job {job.job_id}  training log {job.paths.stderr}"
                + (f" (then {', '.join(s.run_id for s in then)})" if then else ""))
        if not wait:
            return [{"run_id": r, "job_id": j.job_id} for r, j in jobs_by_run.items()]
        if watch:  # the runs' files, while the cluster runs them (then each job's result, as without)
            jobs = [*jobs_by_run.values(), *([base_job] if base_job else [])]
            _watch_jobs(exp, todo, jobs, out, base_job is not None)
        return _wait(list(jobs_by_run.items()), out) + ([] if base_job is None else _wait([("base", base_job)], out))
    raise ConfigError(f"unknown launcher backend {backend!r}", where="launcher.backend", fix="use local, slurm or debug")


def _run_local(exp: Experiment, ex, todo: list[RunSpec], par: int, threads: int, base_done: bool, out,
               watch: bool = False) -> list:
    """`par` LocalWorkers share the run list (submitit has no concurrency limit of its own; this is it). Progress
    is read from each run's launcher.json. A worker that dies (kill -9, out of memory) fails the run it held;
    the runs nobody took yet go to a new worker."""
    token = f"{os.getpid()}-{time.time_ns()}"
    rdirs = {s.run_id: exp.run_dir(s) for s in todo}
    # a worker may take every run: its time limit is the per-run limit times the runs (requeued past it)
    ex.update_parameters(timeout_min=exp.config.launcher.timeout_min * len(todo))

    def claim(spec: RunSpec) -> dict:
        info = rdirs[spec.run_id].launcher_info()
        return info if info.get("launch") == token else {}

    def start(specs: list[RunSpec], with_base: bool):
        job = ex.submit(LocalWorker(specs, [rdirs[s.run_id] for s in specs], threads, token,
                                    (exp.config, exp.dir) if with_base else None))
        out(f"  worker {job.job_id}: started ({len(specs)} runs to share{', base first' if with_base else ''}; "
            f"training log {job.paths.stderr})")
        return job

    workers = [start(todo, i == 0 and not base_done) for i in range(min(par, len(todo)))]
    results: dict[str, dict] = {}
    cancelled = False
    shown, started, seen = reporter(out) if watch else None, time.monotonic(), 0.0
    try:
        while workers:
            if shown is not None and time.monotonic() - seen >= 1.0:  # what the runs' files say, once a second
                shown.update(read_view(exp, todo, started, base=not base_done))
                seen = time.monotonic()
            for spec in todo:  # progress, as the workers record it
                info = {} if spec.run_id in results else claim(spec)
                if info.get("status"):
                    results[spec.run_id] = {"run_id": spec.run_id, "status": info["status"]}
                    out(f"  {spec.run_id}: {info['status']}" + (f" (see {rdirs[spec.run_id].failed})"
                                                                if info["status"] == "failed" else ""))
            finished = [j for j in workers if j.done()]
            replace = 0  # workers that died holding a run: the runs nobody took yet need a new one
            for job in finished:
                workers.remove(job)
                try:
                    for r in job.result():
                        cancelled |= r.get("status") == "cancelled"
                        results.setdefault(r["run_id"], r)
                except Exception as exc:  # the worker process died: fail the runs it held, not the others
                    why = (str(exc).strip().splitlines() or [repr(exc)])[-1]
                    held = [s for s in todo if claim(s).get("job_id") == str(job.job_id) and s.run_id not in results
                            and not is_complete(s, rdirs[s.run_id])]
                    for s in held:
                        if not rdirs[s.run_id].failed.exists():
                            atomic_write_text(rdirs[s.run_id].failed, f"{now_iso()} {s.run_id}\nworker {job.job_id} "
                                              f"died while running this run: {why}\nlog: {job.paths.stderr}\n")
                        results[s.run_id] = {"run_id": s.run_id, "status": "failed", "error": why}
                        out(f"  {s.run_id}: FAILED (worker {job.job_id} died; log {job.paths.stderr})")
                    replace += bool(held)
                    if not held:  # died before taking a run (e.g. an import error): do not restart it forever
                        cancelled = True
                        out(f"  worker {job.job_id}: FAILED before taking a run: {why} (log {job.paths.stderr})")
            untaken = [s for s in todo if not claim(s) and not is_complete(s, rdirs[s.run_id])] \
                if replace and not cancelled else []
            if untaken:
                workers.append(start(untaken, False))
            if workers and not finished:
                time.sleep(0.5)
        if shown is not None:  # the final state
            shown.update(read_view(exp, todo, started, base=not base_done))
    finally:
        if shown is not None:  # a live table gives the terminal back (cursor, lines) even on Ctrl-C
            shown.close()
        _tidy(exp)  # each worker's submitit controller made logs/%j while it ran
    for spec in todo:
        if spec.run_id not in results:
            done = is_complete(spec, rdirs[spec.run_id])
            results[spec.run_id] = {"run_id": spec.run_id, "status": "done" if done else "not run"}
            if not done:
                why = waits_for(spec, rdirs[spec.run_id]) or ""
                if not why.endswith("failed"):  # a stage that failed says so; else, as for any run
                    why = "cancelled" if cancelled else "taken by another launcher"
                out(f"  {spec.run_id}: not run ({why})")
    return [results[s.run_id] for s in todo]


def _watch_jobs(exp: Experiment, todo: list[RunSpec], jobs: list, out, base: bool) -> None:
    """Show the runs' progress (harness/launch/watch.py) until every job has ended."""
    shown, started = reporter(out), time.monotonic()
    try:
        while not all(j.done() for j in jobs):
            shown.update(read_view(exp, todo, started, base=base))
            time.sleep(1.0)
        shown.update(read_view(exp, todo, started, base=base))
    finally:
        shown.close()


def _wait(items: list[tuple[str, Any]], out) -> list:
    res = []
    for name, job in items:
        try:
            r = (job.task(0) if job.num_tasks > 1 else job).result()  # rank 0's: the others only train
            res.append(r)
            out(f"  {name}: {r.get('status', 'done') if isinstance(r, dict) else 'done'}")
        except Exception as exc:
            res.append({"run_id": name, "status": "failed", "error": str(exc).strip().splitlines()[-1:]})
            out(f"  {name}: FAILED (see its FAILED file / {getattr(job.paths, 'stderr', '')})")
    return res


def _maybe_eval_base(exp: Experiment, out) -> None:
    if base_done(exp.config, exp.dir):
        return
    try:
        r = evaluate_base_job(exp.config, exp.dir)
        out(f"  base: {r['status']}")
    except Exception as exc:  # the base's failure is reported, runs still train
        atomic_write_text(exp.dir.base() / FAILED, f"{now_iso()} base\n{traceback.format_exc()}")
        out(f"  base: FAILED ({exc!r}); traceback in {exp.dir.base() / FAILED}")
