"""What runs inside a job: one run trained and evaluated under its lock (:func:`execute_run`), a SLURM job for
one run (:class:`RunJob`; with several tasks every task runs it, :func:`execute_ranked`), a local worker that
takes run after run (:class:`LocalWorker`), and the SIGUSR2 handling that turns preemption into a checkpoint and
a requeue."""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import signal
import sys
import traceback
from typing import Any, Callable, Iterator

import submitit
from submitit.helpers import Checkpointable, DelayedSubmission

from harness import inputs
from harness.config import ExperimentConfig
from harness.errors import HarnessError
from harness.evaluation.identity import base_dir_for
from harness.fsio import (
    atomic_write_json,
    atomic_write_text,
    exit_without_teardown,
    is_locked,
    lock_holder,
    now_iso,
    try_lock,
)
from harness.grid import RunSpec
from harness.layout import FAILED, ExperimentDir, RunDir, base_eval_json, valid_eval
from harness.stages import parent_done, waits_for

# The launcher process itself never imports torch (``harness run`` plans and submits in well under a second):
# training and evaluation are imported inside the job, in the worker process that runs them.


def _set_threads(threads: int | None) -> None:
    if threads:
        import torch

        os.environ["OMP_NUM_THREADS"] = str(threads)
        torch.set_num_threads(threads)


def task_ranks() -> tuple[int, int]:
    """(rank, world size) of this process among the tasks srun (or torchrun) started for one run."""
    if not any(k in os.environ for k in ("WORLD_SIZE", "SLURM_NTASKS")):
        return 0, 1  # not started as one of several tasks (and no torch import for that)
    from harness.training.distributed import env_ranks

    rank, world, _ = env_ranks(os.environ)
    return rank, world


def execute_run(spec: RunSpec, rd: RunDir, threads: int | None = None,
                should_stop: Callable[[], bool] = lambda: False, on_start: Callable[[], None] | None = None) -> dict:
    """Train (resuming) and evaluate one run under its lock. Writes FAILED with the traceback on error.
    `on_start` is called once the lock is held (before that, another process may take the run). As one of
    several tasks of a run (a multi-task SLURM job): :func:`execute_ranked`."""
    if (why := waits_for(spec, rd)) is not None:  # a later stage starts once its previous stage is DONE
        return {"run_id": spec.run_id, "status": "waiting", "reason": why}
    rank, world = task_ranks()
    if world > 1:
        return execute_ranked(spec, rd, rank, world, threads, should_stop, on_start)
    rd.path.mkdir(parents=True, exist_ok=True)
    with try_lock(rd.lock) as got:
        if not got:
            return {"run_id": spec.run_id, "status": "skipped", "reason": f"locked by {lock_holder(rd.lock)}"}
        if on_start is not None:
            on_start()
        _set_threads(threads)
        rd.failed.unlink(missing_ok=True)
        try:
            from harness.evaluation.evaluate import evaluate_run
            from harness.training.checkpoint import prune_checkpoints
            from harness.training.loop import train

            inputs.check_unchanged(rd, spec.config, spec.run_id)
            result = {}
            if not rd.done.exists():
                result = train(spec, rd, should_stop=should_stop)
                if result.get("status") == "interrupted" or should_stop():
                    return {"run_id": spec.run_id, "status": "interrupted", **result}
            evaluate_run(rd, spec.config)
            tc = spec.config.train
            prune_checkpoints(rd, tc.keep, metric=tc.keep_metric, mode=tc.keep_mode,
                              every_checkpoint=spec.config.eval.every_checkpoint, finished=rd.done.exists())
            return {"run_id": spec.run_id, "status": "done", **result}
        except BaseException as exc:
            if not isinstance(exc, KeyboardInterrupt):
                atomic_write_text(rd.failed, f"{now_iso()} {spec.run_id}\n{traceback.format_exc()}")
            raise


def execute_ranked(spec: RunSpec, rd: RunDir, rank: int, world: int, threads: int | None = None,
                   should_stop: Callable[[], bool] = lambda: False,
                   on_start: Callable[[], None] | None = None) -> dict:
    """One run as task `rank` of `world` (srun starts one per GPU, each runs this): the launcher's bookkeeping
    happens once, on rank 0. Rank 0 takes the run lock and, after the rendezvous, tells the others what there is
    to do (train / only evaluate / nothing: done, or another launcher holds the run); all ranks train together
    (only rank 0 writes the run directory); then rank 0 evaluates alone while the others return. A rank that
    fails writes FAILED unless another already did (the first failure is the cause: a rank whose peer died
    fails in its next collective); before rank 0's word, the others write nothing."""
    from harness.training.distributed import Dist

    if rank == 0:
        rd.path.mkdir(parents=True, exist_ok=True)
    held = try_lock(rd.lock) if rank == 0 else contextlib.nullcontext(False)
    with held as got:
        todo = "skipped"
        if got:
            todo = "evaluate" if rd.done.exists() else "train"
            if on_start is not None:
                on_start()
            rd.failed.unlink(missing_ok=True)
        _set_threads(threads)
        owner = bool(got)  # may this rank write FAILED: rank 0 with the lock, the others once it said so
        dist = None
        try:
            dist = Dist.from_env()  # the rendezvous; train() goes on in this process group
            refused = None  # inputs changed since the run started: every rank stops, rank 0 says why
            if rank == 0 and todo != "skipped":
                try:
                    inputs.check_unchanged(rd, spec.config, spec.run_id)
                except HarnessError as exc:
                    refused, todo = exc, "refused"
            todo = dist.gather_object(todo if rank == 0 else None)[0]
            owner = owner or todo not in ("skipped", "refused")
            me = {"run_id": spec.run_id, "rank": rank, "world_size": world, "evaluated": False}
            if refused is not None:
                raise refused
            if todo in ("skipped", "refused"):
                return {**me, "status": todo, "reason": "done, locked by another launcher, or its inputs changed"}
            result = {}
            if todo == "train":
                from harness.training.loop import train

                result = train(spec, rd, should_stop=should_stop)
                if result.get("status") == "interrupted" or should_stop():
                    return {**result, **me, "status": "interrupted"}
            dist.close()  # train() closed it too; evaluation is rank 0's alone
            if rank != 0:
                return {**result, **me, "status": "done"}
            from harness.evaluation.evaluate import evaluate_run
            from harness.training.checkpoint import prune_checkpoints

            evaluate_run(rd, spec.config)
            tc = spec.config.train
            prune_checkpoints(rd, tc.keep, metric=tc.keep_metric, mode=tc.keep_mode,
                              every_checkpoint=spec.config.eval.every_checkpoint, finished=rd.done.exists())
            return {**result, **me, "status": "done", "evaluated": True}
        except BaseException as exc:
            if owner and not isinstance(exc, KeyboardInterrupt) and not rd.failed.exists():
                atomic_write_text(rd.failed, f"{now_iso()} {spec.run_id} (rank {rank} of {world})\n"
                                             f"{traceback.format_exc()}")
            raise
        finally:
            if dist is not None:
                dist.close()


@contextlib.contextmanager
def stop_on_usr2() -> Iterator[Callable[[], bool]]:
    """Yields `should_stop()`, true once SIGUSR2 arrived: the training loop then checkpoints at the next step
    boundary. On leaving (normally), the previous handler runs: submitit's, which calls the job's checkpoint(),
    requeues it and exits. Only USR2 (SLURM's --signal before preemption / time limit, submitit's requeue signal):
    SIGTERM is left to submitit, which ignores it because USR2 follows (stopping on it could exit before USR2
    arrives). Outside the main thread (debug executor) there is no preemption handling."""
    flag: dict[str, int] = {}

    def received(signum, frame) -> None:
        if "signal" not in flag:  # in the job's log: why the run stops early and resumes later
            print(f"{now_iso()} SIGUSR2 received: checkpointing at the next step, then requeueing",
                  file=sys.stderr, flush=True)
        flag.setdefault("signal", signum)

    try:
        previous = signal.signal(signal.SIGUSR2, received)
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


def interruptible() -> None:
    """Let SIGINT (`harness cancel` for a local run) raise KeyboardInterrupt in this process. A shell without
    job control starts background jobs (`harness run ... &` in a script) with SIGINT ignored, the workers
    inherit that, and Python then installs no KeyboardInterrupt handler: cancel would do nothing."""
    try:
        if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
            signal.signal(signal.SIGINT, signal.default_int_handler)
    except ValueError:  # not the main thread (debug executor): the caller's own handling applies
        pass


class RunJob(Checkpointable):
    """A submitit job for one run, and for the runs that start from it (`then`: its later stages, in order,
    so a chain never waits on another job). Checkpointable: on preemption/timeout it is requeued as itself;
    done runs are skipped and the interrupted one resumes from its newest COMPLETED checkpoint. Returns the
    first run's result (the later stages' are in their run directories)."""

    def __init__(self, spec: RunSpec, rd: RunDir, threads: int | None = None,
                 then: tuple[tuple[RunSpec, RunDir], ...] = ()):
        self.spec = spec
        self.rd = rd
        self.threads = threads
        self.then = tuple(then)

    def __call__(self) -> dict:
        interruptible()
        with stop_on_usr2() as should_stop:
            first = execute_run(self.spec, self.rd, self.threads, should_stop)
            for spec, rd in self.then:
                if should_stop() or first.get("status") == "interrupted":
                    break
                try:  # its FAILED holds the traceback; a sibling stage from the same parent still runs
                    r = execute_run(spec, rd, self.threads, should_stop)
                except Exception:
                    continue
                if r.get("status") == "interrupted":
                    first = {**first, "status": "interrupted", "stage": spec.run_id}
            return first

    def checkpoint(self, *args: Any, **kwargs: Any) -> "DelayedSubmission":
        return DelayedSubmission(RunJob(self.spec, self.rd, self.threads, self.then))


class LocalWorker(Checkpointable):
    """A local submitit job that runs many runs one after another: it walks the launch's run list and takes
    each run whose lock it gets (several workers share one list; the run lock decides who trains what). It
    marks what it takes in the run's ``launcher.json`` (its job id, its log and this launch's token), so the
    launcher can report progress and knows which runs a worker that died was holding.
    Checkpointable like :class:`RunJob`: on a time limit it is requeued with the same list; done runs are skipped
    and the interrupted one resumes from its newest COMPLETED checkpoint."""

    def __init__(self, specs: list[RunSpec], rdirs: list[RunDir], threads: int | None, token: str,
                 base: tuple[ExperimentConfig, ExperimentDir] | None = None):
        self.specs, self.rdirs, self.threads, self.token, self.base = specs, rdirs, threads, token, base

    def _claim(self, rd: RunDir, **extra: Any) -> None:
        info: dict[str, Any] = {"backend": "local", "job_id": str(os.getpid()), "launch": self.token}
        try:
            env = submitit.JobEnvironment()
            info["job_id"] = str(env.job_id)
            info.update(stdout=str(env.paths.stdout), stderr=str(env.paths.stderr))
        except Exception:  # not under submitit (called directly): the pid identifies the process
            pass
        atomic_write_json(rd.launcher, {**info, **extra})

    def __call__(self) -> list[dict]:
        results: list[dict] = []
        interruptible()
        with stop_on_usr2() as should_stop:
            _set_threads(self.threads)
            if self.base is not None:
                cfg, exp_dir = self.base
                try:
                    if not base_done(cfg, exp_dir):
                        evaluate_base_job(cfg, exp_dir)
                except Exception:  # reported; runs still train (and retry the base when they evaluate)
                    atomic_write_text(exp_dir.base() / FAILED, f"{now_iso()} base\n{traceback.format_exc()}")
            for spec, rd in zip(self.specs, self.rdirs):
                if should_stop():
                    break
                if is_complete(spec, rd) or is_locked(rd.lock) or not parent_done(spec, rd):
                    # done, or another worker / launcher has it, or its previous stage is not done yet: the
                    # worker training that stage walks the same list and comes to this run after it
                    continue
                started = now_iso()
                try:
                    r = execute_run(spec, rd, None, should_stop,
                                    on_start=lambda: self._claim(rd, started=started))
                except KeyboardInterrupt:  # `harness cancel`: stop this worker, record nothing as failed
                    self._claim(rd, started=started, finished=now_iso(), status="cancelled")
                    results.append({"run_id": spec.run_id, "status": "cancelled"})
                    say_cancelled(f"{now_iso()} cancelled: {spec.run_id} stops here and resumes from its newest "
                                  "checkpoint at the next `harness run`")
                    return results
                except Exception as exc:  # FAILED holds the traceback; the next run goes on
                    r = {"run_id": spec.run_id, "status": "failed", "error": f"{type(exc).__name__}: {exc}"}
                if r["status"] == "skipped":  # lost the race for the lock to another worker
                    continue
                self._claim(rd, started=started, finished=now_iso(), status=r["status"])
                results.append(r)
        main = getattr(sys.modules.get("__main__"), "__spec__", None)
        if os.environ.get("SUBMITIT_LOCAL_JOB_ID") and getattr(main, "name", "") == "submitit.core._submit":
            atexit.register(_exit_without_teardown)  # only in a submitit worker process, never in a caller's
        return results

    def checkpoint(self, *args: Any, **kwargs: Any) -> "DelayedSubmission":
        return DelayedSubmission(LocalWorker(self.specs, self.rdirs, self.threads, self.token, self.base))


def say_cancelled(line: str) -> None:
    """Write why this worker stops into its log, and keep submitit from ending that log with "Job completed
    successfully" (it says so for any function that returns; a cancelled worker returns its results)."""
    print(line, file=sys.stderr, flush=True)
    logging.getLogger("submitit").addFilter(_not_success)


def _not_success(record: logging.LogRecord) -> bool:
    return "success" not in record.getMessage()


def _exit_without_teardown() -> None:
    """Registered once a worker has returned (submitit then writes its result and the interpreter exits; this
    handler, registered last, runs first): tearing down torch, transformers and lm-eval module by module takes
    seconds per worker (benchmarks/NOTES.md) and frees nothing the OS does not free anyway; the launcher waits
    for it. The other atexit handlers still run (harness.fsio.exit_without_teardown), then the process exits."""
    atexit.unregister(_exit_without_teardown)
    exit_without_teardown(0)


def is_complete(spec: RunSpec, rd: RunDir) -> bool:
    """Trained and evaluated (the layout's "done", without asking whether a process holds the lock)."""
    return rd.done.exists() and not rd.missing_evals(spec.config.eval.every_checkpoint)


def base_done(config: ExperimentConfig, exp_dir: ExperimentDir) -> bool:
    """The base that runs with this config are compared with is evaluated (see base_dir_for)."""
    return valid_eval(base_eval_json(base_dir_for(exp_dir, config)))


def evaluate_base_job(config: ExperimentConfig, exp_dir: ExperimentDir) -> dict:
    if task_ranks()[0] != 0:  # submitted as one task; should it run as several, one evaluates
        return {"status": "skipped"}
    from harness.evaluation.evaluate import evaluate_base

    evaluate_base(config, exp_dir)
    return {"status": "done"}
