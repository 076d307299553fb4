"""Grid launcher on submitit: `harness run`, `harness status`, `harness cancel`.

One command turns an experiment file into finished, evaluated runs, on a laptop (submitit local processes,
with a real concurrency limit and our own timeout: submitit's local default kills a job after 2 minutes) or a
SLURM cluster (one job array), and survives preemption, crashes and being run twice:

* runs that are done are skipped; interrupted runs resume from their newest COMPLETED checkpoint;
* each job holds an flock on its run directory, so two launchers never train the same run twice, and an
  experiment-level lock stops two `harness run` of one experiment from launching at once;
* a failing run writes its traceback to ``FAILED`` in its directory and never stops the others;
* locally, ``parallel`` long-lived worker processes each take the next unclaimed run until none is left, so
  Python, torch, transformers and lm-eval are imported once per worker, not once per run, and checkpoints of
  runs with the same evaluation config share one evaluator (tokenized probes, task manager, base log-probs);
* on SIGUSR2/SIGTERM (preemption, time limit) the training loop stops at the next step boundary and saves a
  checkpoint, then submitit's handler requeues the job, which resumes from that checkpoint.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import fnmatch
import inspect
import json
import os
import signal
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Iterator

from harness.config import Experiment, ExperimentConfig, RunSpec, load_experiment
from harness.errors import ConfigError, HarnessError
from harness.runs import (
    atomic_write_json,
    atomic_write_text,
    exit_without_teardown,
    is_locked,
    lock_holder,
    now_iso,
    run_dir,
    run_status,
    try_lock,
    write_plan,
)

try:  # submitit is a dependency; keep import errors readable
    import submitit
    from submitit.helpers import Checkpointable, DelayedSubmission
except ImportError:  # pragma: no cover
    submitit = None
    Checkpointable = object  # type: ignore[misc,assignment]


def _set_threads(threads: int | None) -> None:
    if threads:
        import torch

        os.environ["OMP_NUM_THREADS"] = str(threads)
        torch.set_num_threads(threads)


def _call_train(spec: RunSpec, rdir: Path, should_stop: Callable[[], bool]) -> dict:
    from harness.train import train

    kwargs: dict[str, Any] = {}
    if "should_stop" in inspect.signature(train).parameters:
        kwargs["should_stop"] = should_stop
    return train(spec, rdir, **kwargs) or {}


def _call_evaluate(spec: RunSpec, rdir: Path) -> None:
    try:
        from harness.evaluate import evaluate_run
    except ImportError:
        return  # evaluation not installed in this build: training results stand alone
    evaluate_run(rdir, spec.config)


def execute_run(spec: RunSpec, rdir: Path, threads: int | None = None,
                should_stop: Callable[[], bool] = lambda: False, on_start: Callable[[], None] | None = None) -> dict:
    """Train (resuming) and evaluate one run under its lock. Writes FAILED with the traceback on error.
    `on_start` is called once the lock is held (before that, another process may take the run)."""
    rdir = Path(rdir)
    rdir.mkdir(parents=True, exist_ok=True)
    with try_lock(rdir / ".lock") as got:
        if not got:
            return {"run_id": spec.run_id, "status": "skipped", "reason": f"locked by {lock_holder(rdir / '.lock')}"}
        if on_start is not None:
            on_start()
        _set_threads(threads)
        (rdir / "FAILED").unlink(missing_ok=True)
        try:
            result = {}
            if not (rdir / "DONE").exists():
                result = _call_train(spec, rdir, should_stop)
                if result.get("status") == "interrupted" or should_stop():
                    return {"run_id": spec.run_id, "status": "interrupted", **result}
            _call_evaluate(spec, rdir)
            return {"run_id": spec.run_id, "status": "done", **result}
        except BaseException as exc:
            if not isinstance(exc, KeyboardInterrupt):
                atomic_write_text(rdir / "FAILED", f"{now_iso()} {spec.run_id}\n{traceback.format_exc()}")
            raise


@contextlib.contextmanager
def stop_on_usr2() -> Iterator[Callable[[], bool]]:
    """Yields `should_stop()`, true once SIGUSR2 arrived: the training loop then checkpoints at the next step
    boundary. On leaving (normally), the previous handler runs: submitit's, which calls the job's checkpoint(),
    requeues it and exits. Only USR2 (SLURM's --signal before preemption / time limit, submitit's requeue signal):
    SIGTERM is left to submitit, which ignores it because USR2 follows (stopping on it could exit before USR2
    arrives). Outside the main thread (debug executor) there is no preemption handling."""
    flag: dict[str, int] = {}
    try:
        previous = signal.signal(signal.SIGUSR2, lambda signum, frame: flag.setdefault("signal", signum))
        installed = True
    except ValueError:
        previous, installed = None, False
    try:
        yield lambda: "signal" in flag
    finally:
        if installed:
            signal.signal(signal.SIGUSR2, previous)
    if "signal" in flag and callable(previous):
        previous(flag["signal"], None)


class RunJob(Checkpointable):
    """A submitit job for one run. Checkpointable: on preemption/timeout it is requeued as itself and the
    run resumes from its newest COMPLETED checkpoint."""

    def __init__(self, spec: RunSpec, rdir: str, threads: int | None = None):
        self.spec = spec
        self.rdir = str(rdir)
        self.threads = threads

    def __call__(self) -> dict:
        with stop_on_usr2() as should_stop:
            return execute_run(self.spec, Path(self.rdir), self.threads, should_stop)

    def checkpoint(self, *args: Any, **kwargs: Any) -> "DelayedSubmission":
        return DelayedSubmission(RunJob(self.spec, self.rdir, self.threads))


class LocalWorker(Checkpointable):
    """A local submitit job that runs many runs one after another: it walks the launch's run list and takes
    each run whose lock it gets (several workers share one list; the run lock decides who trains what). It
    marks what it takes in the run's ``launcher.json`` (its job id, its log and this launch's token), so the
    launcher can report progress and knows which runs a worker that died was holding.
    Checkpointable like :class:`RunJob`: on a time limit it is requeued with the same list; done runs are skipped
    and the interrupted one resumes from its newest COMPLETED checkpoint."""

    def __init__(self, specs: list[RunSpec], rdirs: list[str], threads: int | None, token: str,
                 base: tuple[ExperimentConfig, str] | None = None):
        self.specs, self.rdirs, self.threads, self.token, self.base = specs, rdirs, threads, token, base

    def _claim(self, rdir: Path, **extra: Any) -> None:
        info: dict[str, Any] = {"backend": "local", "job_id": str(os.getpid()), "launch": self.token}
        try:
            env = submitit.JobEnvironment()
            info["job_id"] = str(env.job_id)
            info.update(stdout=str(env.paths.stdout), stderr=str(env.paths.stderr))
        except Exception:  # not under submitit (called directly): the pid identifies the process
            pass
        atomic_write_json(rdir / "launcher.json", {**info, **extra})

    def __call__(self) -> list[dict]:
        results: list[dict] = []
        with stop_on_usr2() as should_stop:
            _set_threads(self.threads)
            if self.base is not None:
                cfg, exp_dir = self.base
                try:
                    if not _base_done_for(cfg, Path(exp_dir)):
                        evaluate_base_job(cfg, exp_dir)
                except Exception:  # reported; runs still train (and retry the base when they evaluate)
                    atomic_write_text(Path(exp_dir) / "base" / "FAILED", f"{now_iso()} base\n{traceback.format_exc()}")
            for spec, rdir in zip(self.specs, map(Path, self.rdirs)):
                if should_stop():
                    break
                if _is_complete(spec, rdir) or is_locked(rdir / ".lock"):
                    continue  # done, or another worker / launcher has it
                started = now_iso()
                try:
                    r = execute_run(spec, rdir, None, should_stop,
                                    on_start=lambda: self._claim(rdir, started=started))
                except KeyboardInterrupt:  # `harness cancel`: stop this worker, record nothing as failed
                    self._claim(rdir, started=started, finished=now_iso(), status="cancelled")
                    results.append({"run_id": spec.run_id, "status": "cancelled"})
                    return results
                except Exception as exc:  # FAILED holds the traceback; the next run goes on
                    r = {"run_id": spec.run_id, "status": "failed", "error": f"{type(exc).__name__}: {exc}"}
                if r["status"] == "skipped":  # lost the race for the lock to another worker
                    continue
                self._claim(rdir, started=started, finished=now_iso(), status=r["status"])
                results.append(r)
        main = getattr(sys.modules.get("__main__"), "__spec__", None)
        if os.environ.get("SUBMITIT_LOCAL_JOB_ID") and getattr(main, "name", "") == "submitit.core._submit":
            atexit.register(_exit_without_teardown)  # only in a submitit worker process, never in a caller's
        return results

    def checkpoint(self, *args: Any, **kwargs: Any) -> "DelayedSubmission":
        return DelayedSubmission(LocalWorker(self.specs, self.rdirs, self.threads, self.token, self.base))


def _exit_without_teardown() -> None:
    """Registered once a worker has returned (submitit then writes its result and the interpreter exits; this
    handler, registered last, runs first): tearing down torch, transformers and lm-eval module by module takes
    about a second per worker on this machine and frees nothing the OS does not free anyway; the launcher waits
    for it. The other atexit handlers still run (harness.runs.exit_without_teardown), then the process exits."""
    atexit.unregister(_exit_without_teardown)
    exit_without_teardown(0)


def _is_complete(spec: RunSpec, rdir: Path) -> bool:
    from harness.runs import missing_evals

    return (rdir / "DONE").exists() and not missing_evals(rdir, spec.config.eval.every_checkpoint)


def evaluate_base_job(config: ExperimentConfig, exp_dir: str) -> dict:
    try:
        from harness.evaluate import evaluate_base
    except ImportError:
        return {"status": "skipped", "reason": "evaluation not available"}
    evaluate_base(config, Path(exp_dir))
    return {"status": "done"}


# ------------------------------------------------------------------------------------------ executors


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover
        return os.cpu_count() or 1


def resources(exp: Experiment, n_runs: int, parallel: int | None) -> tuple[int, int]:
    """(parallel runs, threads per run) for a local launch."""
    lc = exp.config.launcher
    par = parallel or lc.parallel or max(1, min(n_runs, _cores()))
    threads = exp.config.train.threads or max(1, _cores() // par)
    return par, threads


def make_executor(exp: Experiment, backend: str, parallel: int | None, n_runs: int):
    if submitit is None:
        raise HarnessError("submitit is not installed", fix="pip install submitit")
    lc = exp.config.launcher
    folder = exp.out_dir / "logs" / "%j"
    if backend == "local":
        ex = submitit.AutoExecutor(folder=folder, cluster="local")
        ex.update_parameters(timeout_min=lc.timeout_min, name=f"harness-{exp.config.name}")
        return ex
    if backend == "slurm":
        ex = submitit.AutoExecutor(folder=folder, cluster="slurm")
        ex.update_parameters(**slurm_parameters(exp, parallel))
        return ex
    if backend == "debug":
        return submitit.AutoExecutor(folder=folder, cluster="debug")
    raise ConfigError(f"unknown launcher backend {backend!r}", where="launcher.backend",
                      fix="use local, slurm or debug")


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


# ------------------------------------------------------------------------------------------ launching


def select_runs(exp: Experiment, only: str | None) -> list[RunSpec]:
    if not only:
        return list(exp.runs)
    pat = only if any(c in only for c in "*?[") else f"*{only}*"
    runs = [r for r in exp.runs if fnmatch.fnmatch(r.run_id, pat)]
    if not runs:
        raise ConfigError(f"--only {only!r} matches no run", where=exp.path,
                          fix="harness status EXP.yaml lists the run ids")
    return runs


def _check_schema(exp: Experiment) -> None:
    """Refuse to mix results of an older schema into this experiment's directory."""
    import json

    from harness.config import SCHEMA_VERSION

    plan = exp.out_dir / "plan.json"
    if not plan.exists():
        return
    try:
        schema = json.loads(plan.read_text()).get("schema")
    except ValueError:
        schema = None
    if schema != SCHEMA_VERSION:
        raise HarnessError(f"{plan} was written by results schema version {schema}; this harness writes "
                           f"version {SCHEMA_VERSION}", where=str(exp.out_dir),
                           fix="move the old results away (they are kept as they are) or rename the experiment")


def _record_job(rdir: Path, backend: str, job: Any) -> None:
    info = {"backend": backend, "job_id": str(getattr(job, "job_id", "")), "submitted": now_iso()}
    paths = getattr(job, "paths", None)
    if paths is not None:
        info.update(stdout=str(paths.stdout), stderr=str(paths.stderr))
    atomic_write_json(rdir / "launcher.json", info)


def launch(exp: Experiment, *, backend: str | None = None, parallel: int | None = None, dry_run: bool = False,
           only: str | None = None, wait: bool = True, out=print) -> dict:
    """Expand, skip what is done, evaluate the base once, submit the rest. Returns a summary dict."""
    backend = backend or exp.config.launcher.backend
    runs = select_runs(exp, only)
    statuses = [run_status(exp, r) for r in runs]
    todo = [s.run for s in statuses if s.state not in ("done", "running")]
    running = [s.run.run_id for s in statuses if s.state == "running"]
    par, threads = resources(exp, len(todo), parallel)
    summary = {"experiment": exp.config.name, "runs": len(runs), "done": sum(s.state == "done" for s in statuses),
               "running_elsewhere": running, "to_run": [r.run_id for r in todo], "backend": backend,
               "parallel": par, "threads_per_run": threads}
    _check_schema(exp)
    if dry_run:
        _print_plan(exp, statuses, backend, par, threads, out)
        if backend == "slurm":
            out("# sbatch parameters:")
            for k, v in slurm_parameters(exp, parallel).items():
                out(f"#   {k} = {v}")
            out(sbatch_preview(exp, parallel, len(todo)))
        return summary
    exp.out_dir.mkdir(parents=True, exist_ok=True)
    write_plan(exp)
    if not todo:
        out(f"{exp.config.name}: all {len(runs)} runs are done" +
            (f" ({len(running)} running elsewhere)" if running else "") + ". Nothing to do.")
        return summary
    with try_lock(exp.out_dir / ".launch.lock") as got:
        if not got:
            raise HarnessError(f"another `harness run` is launching {exp.config.name} "
                               f"({lock_holder(exp.out_dir / '.launch.lock')})",
                               fix="wait for it, or watch it with `harness status`")
        out(f"{exp.config.name}: {len(todo)} of {len(runs)} runs to run on {backend} "
            f"(parallel {par}, {threads} threads each); logs: {exp.out_dir / 'logs'}")
        results = _submit(exp, todo, backend, par, threads, wait, out)
    summary["results"] = results
    return summary


def _submit(exp: Experiment, todo: list[RunSpec], backend: str, par: int, threads: int, wait: bool, out) -> list:
    results: list = []
    if backend == "debug":  # in-process, one after the other: for debugging and tests
        _maybe_eval_base(exp, out)
        for spec in todo:
            try:
                results.append(execute_run(spec, run_dir(exp, spec), threads))
                out(f"  {spec.run_id}: {results[-1]['status']}")
            except Exception as exc:  # a failing run never stops the others
                results.append({"run_id": spec.run_id, "status": "failed", "error": repr(exc)})
                out(f"  {spec.run_id}: FAILED ({exc!r}); traceback in {run_dir(exp, spec) / 'FAILED'}")
        return results
    ex = make_executor(exp, backend, par, len(todo))
    if backend == "local":
        return _run_local(exp, ex, todo, par, threads, _base_done(exp), out)
    base_job = None
    if not _base_done(exp):
        base_job = ex.submit(evaluate_base_job, exp.config, str(exp.out_dir))
    if backend == "slurm":
        jobs_by_run = {}
        with ex.batch():  # one job array
            for spec in todo:
                jobs_by_run[spec.run_id] = ex.submit(RunJob(spec, str(run_dir(exp, spec)), None))
        for spec in todo:
            job = jobs_by_run[spec.run_id]
            _record_job(run_dir(exp, spec), backend, job)
            out(f"  {spec.run_id}: job {job.job_id}  log {job.paths.stdout}")
        if not wait:
            return [{"run_id": r, "job_id": j.job_id} for r, j in jobs_by_run.items()]
        return _wait(list(jobs_by_run.items()), out) + ([] if base_job is None else _wait([("base", base_job)], out))
    raise ConfigError(f"unknown launcher backend {backend!r}", where="launcher.backend", fix="use local, slurm or debug")


def _run_local(exp: Experiment, ex, todo: list[RunSpec], par: int, threads: int, base_done: bool, out) -> list:
    """`par` LocalWorkers share the run list (submitit has no concurrency limit of its own; this is it). Progress
    is read from each run's launcher.json. A worker that dies (kill -9, out of memory) fails the run it held;
    the runs nobody took yet go to a new worker."""
    token = f"{os.getpid()}-{time.time_ns()}"
    rdirs = {s.run_id: run_dir(exp, s) for s in todo}
    # a worker may take every run: its time limit is the per-run limit times the runs (requeued past it)
    ex.update_parameters(timeout_min=exp.config.launcher.timeout_min * len(todo))

    def claim(spec: RunSpec) -> dict:
        try:
            info = json.loads((rdirs[spec.run_id] / "launcher.json").read_text())
        except (OSError, ValueError):
            return {}
        return info if info.get("launch") == token else {}

    def start(specs: list[RunSpec], with_base: bool):
        job = ex.submit(LocalWorker(specs, [str(rdirs[s.run_id]) for s in specs], threads, token,
                                    (exp.config, str(exp.out_dir)) if with_base else None))
        out(f"  worker {job.job_id}: started ({len(specs)} runs to share{', base first' if with_base else ''}; "
            f"log {job.paths.stdout})")
        return job

    workers = [start(todo, i == 0 and not base_done) for i in range(min(par, len(todo)))]
    results: dict[str, dict] = {}
    cancelled = False
    while workers:
        for spec in todo:  # progress, as the workers record it
            info = {} if spec.run_id in results else claim(spec)
            if info.get("status"):
                results[spec.run_id] = {"run_id": spec.run_id, "status": info["status"]}
                out(f"  {spec.run_id}: {info['status']}" + (f" (see {rdirs[spec.run_id] / 'FAILED'})"
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
                        and not _is_complete(s, rdirs[s.run_id])]
                for s in held:
                    if not (rdirs[s.run_id] / "FAILED").exists():
                        atomic_write_text(rdirs[s.run_id] / "FAILED", f"{now_iso()} {s.run_id}\nworker {job.job_id} "
                                          f"died while running this run: {why}\nlog: {job.paths.stderr}\n")
                    results[s.run_id] = {"run_id": s.run_id, "status": "failed", "error": why}
                    out(f"  {s.run_id}: FAILED (worker {job.job_id} died; log {job.paths.stderr})")
                replace += bool(held)
                if not held:  # died before taking a run (e.g. an import error): do not restart it forever
                    cancelled = True
                    out(f"  worker {job.job_id}: FAILED before taking a run: {why} (log {job.paths.stderr})")
        untaken = [s for s in todo if not claim(s) and not _is_complete(s, rdirs[s.run_id])] \
            if replace and not cancelled else []
        if untaken:
            workers.append(start(untaken, False))
        if workers and not finished:
            time.sleep(0.5)
    for spec in todo:
        if spec.run_id not in results:
            done = _is_complete(spec, rdirs[spec.run_id])
            results[spec.run_id] = {"run_id": spec.run_id, "status": "done" if done else "not run"}
            if not done:
                out(f"  {spec.run_id}: not run ({'cancelled' if cancelled else 'taken by another launcher'})")
    return [results[s.run_id] for s in todo]


def _wait(items: list[tuple[str, Any]], out) -> list:
    res = []
    for name, job in items:
        try:
            r = job.result()
            res.append(r)
            out(f"  {name}: {r.get('status', 'done') if isinstance(r, dict) else 'done'}")
        except Exception as exc:
            res.append({"run_id": name, "status": "failed", "error": str(exc).strip().splitlines()[-1:]})
            out(f"  {name}: FAILED (see its FAILED file / {getattr(job.paths, 'stderr', '')})")
    return res


def _base_done(exp: Experiment) -> bool:
    """The experiment's own base is evaluated (runs with another base evaluate theirs, see base_dir_for)."""
    return _base_done_for(exp.config, exp.out_dir)


def _base_done_for(config: ExperimentConfig, exp_dir: Path) -> bool:
    from harness.evalid import base_dir_for
    from harness.runs import valid_json

    return valid_json(base_dir_for(exp_dir, config) / "eval" / "step-000000.json")


def _maybe_eval_base(exp: Experiment, out) -> None:
    if _base_done(exp):
        return
    try:
        r = evaluate_base_job(exp.config, str(exp.out_dir))
        out(f"  base: {r['status']}")
    except Exception as exc:  # the base's failure is reported, runs still train
        atomic_write_text(exp.out_dir / "base" / "FAILED", f"{now_iso()} base\n{traceback.format_exc()}")
        out(f"  base: FAILED ({exc!r}); traceback in {exp.out_dir / 'base' / 'FAILED'}")


def _print_plan(exp: Experiment, statuses, backend: str, par: int, threads: int, out) -> None:
    out(f"# plan for {exp.config.name} ({exp.path}): {len(statuses)} runs, backend {backend}, "
        f"parallel {par}, {threads} threads/run, results in {exp.out_dir}")
    for s in statuses:
        axes = " ".join(f"{k}={v}" for k, v in s.run.axes.items())
        out(f"  {s.run.run_id:40s} {s.state:8s} {axes}")
    lc = exp.config.launcher
    out(f"# resources per run: {lc.gpus_per_run} GPU, {lc.cpus_per_run} CPU, {lc.mem_gb} GB, "
        f"time limit {lc.timeout_min} min")


# ------------------------------------------------------------------------------------------ status, cancel


def status_rows(exp: Experiment) -> list[dict]:
    rows = []
    for r in exp.runs:
        s = run_status(exp, r)
        last = s.last or {}
        rows.append({"run_id": r.run_id, "axes": r.axes, "state": s.state,
                     "progress": None if s.progress is None else round(100 * s.progress),
                     "step": s.step, "loss": last.get("loss"), "loss_response": last.get("loss_response"),
                     "job_id": (s.job or {}).get("job_id"), "log": (s.job or {}).get("stdout"),
                     "error": s.error})
    return rows


def print_status(exp: Experiment, console=None) -> dict:
    from collections import Counter

    from rich.console import Console
    from rich.table import Table

    console = console or Console(width=None if sys.stdout.isatty() else 200)
    rows = status_rows(exp)
    table = Table(title=f"{exp.config.name}: {exp.out_dir}")
    for col in ("run id", "axes", "state", "progress", "step", "loss", "job", "log / error"):
        table.add_column(col)
    colours = {"done": "green", "failed": "red", "running": "cyan", "partial": "yellow", "pending": "white"}
    for r in rows:
        table.add_row(r["run_id"], " ".join(f"{k.split('.')[-1]}={v}" for k, v in r["axes"].items()),
                      f"[{colours[r['state']]}]{r['state']}[/]",
                      "" if r["progress"] is None else f"{r['progress']}%", str(r["step"] or ""),
                      "" if r["loss"] is None else f"{r['loss']:.4f}", r["job_id"] or "",
                      r["error"] or r["log"] or "")
    console.print(table)
    counts = Counter(r["state"] for r in rows)
    console.print(" · ".join(f"{n} {s}" for s, n in counts.items()) + f" · {len(rows)} runs")
    return dict(counts)


def cancel(exp: Experiment, out=print) -> int:
    """Stop the experiment's running jobs: scancel on SLURM, SIGINT to local training processes."""
    n = 0
    for r in exp.runs:
        s = run_status(exp, r)
        if s.state != "running":
            continue
        job = s.job or {}
        if job.get("backend") == "slurm" and job.get("job_id"):
            import subprocess

            subprocess.run(["scancel", str(job["job_id"])], check=False)
        else:
            holder = lock_holder(s.dir / ".lock").split()
            if holder and holder[0].isdigit():
                try:  # SIGINT: the run stops (no FAILED file) and resumes from its checkpoint next time
                    os.kill(int(holder[0]), signal.SIGINT)
                except ProcessLookupError:
                    pass
        out(f"  cancelled {r.run_id}")
        n += 1
    out(f"{n} run(s) cancelled")
    return n


# ------------------------------------------------------------------------------------------ CLI


def _run_cmd(args: argparse.Namespace) -> int:
    exp = load_experiment(args.experiment, args.override)
    summary = launch(exp, backend=args.launcher, parallel=args.parallel, dry_run=args.dry_run, only=args.only,
                     wait=not args.no_wait)
    failed = [r for r in summary.get("results", []) if isinstance(r, dict) and r.get("status") == "failed"]
    if not args.dry_run:
        print_status(exp)
    return 1 if failed else 0


def _status_cmd(args: argparse.Namespace) -> int:
    exp = load_experiment(args.experiment, args.override)
    if not args.watch:
        print_status(exp)
        return 0
    try:
        while True:
            os.system("clear" if sys.stdout.isatty() else "true")
            counts = print_status(exp)
            if set(counts) <= {"done", "failed"}:
                return 0
            time.sleep(args.interval)
    except KeyboardInterrupt:
        return 0


def _cancel_cmd(args: argparse.Namespace) -> int:
    cancel(load_experiment(args.experiment, args.override))
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="run an experiment's grid (skips done runs, resumes partial ones)")
    p.add_argument("experiment")
    p.add_argument("-o", "--override", action="append", help="dotted override, e.g. train.lr=1e-5")
    p.add_argument("--launcher", choices=("local", "slurm", "debug"), help="default: launcher.backend")
    p.add_argument("--parallel", type=int, help="runs at once (default: from cores and threads per run)")
    p.add_argument("--dry-run", action="store_true", help="print the plan (and sbatch parameters), run nothing")
    p.add_argument("--only", help="run ids matching this glob / substring")
    p.add_argument("--no-wait", action="store_true", help="slurm: submit and return")
    p.set_defaults(func=_run_cmd)
    s = sub.add_parser("status", help="table of an experiment's runs")
    s.add_argument("experiment")
    s.add_argument("-o", "--override", action="append")
    s.add_argument("--watch", action="store_true", help="refresh until every run is done or failed")
    s.add_argument("--interval", type=float, default=5.0)
    s.set_defaults(func=_status_cmd)
    c = sub.add_parser("cancel", help="stop an experiment's running jobs")
    c.add_argument("experiment")
    c.add_argument("-o", "--override", action="append")
    c.set_defaults(func=_cancel_cmd)
