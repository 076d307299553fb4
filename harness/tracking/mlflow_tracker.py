"""``train.report_to: [mlflow]``: one MLflow run per harness run in a local file store per experiment.

The store is ``<experiment dir>/mlruns`` (``file:`` URI; for a run outside an experiment, ``<run>/tracking/mlruns``):
one experiment of the harness is one MLflow experiment of that name, each run found again by its tag
``harness.run_id`` (a resumed run and its evaluation continue it). MLflow writes each metric synchronously and
keeps every value logged, also two at one step, and has no call that deletes one: on opening, the tracker rewrites
the run's ``train/`` and ``eval/`` metric files of the file store to the steps the run directory holds
(:meth:`Context.history`; one line per step) and logs those it lacks, as TensorBoard's ``purge_step`` does.

MLflow >= 3.7 keeps the file store in maintenance mode behind ``MLFLOW_ALLOW_FILE_STORE``; the tracker sets it
while it builds its client only. To browse: ``MLFLOW_ALLOW_FILE_STORE=true mlflow ui --backend-store-uri
file:results/<experiment>/mlruns`` (the UI needs the full ``mlflow`` package; the extra installs
``mlflow-skinny``).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from harness.fsio import atomic_write_text, file_lock
from harness.tracking.base import KINDS, Context, env, missing_extra


def flatten(d: dict, prefix: str = "") -> dict[str, str]:
    """Nested config -> dotted keys with string values (lists and None as JSON)."""
    out: dict[str, str] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v if isinstance(v, str) else json.dumps(v, default=str)
    return out


class MlflowTracker:
    """MLflow (extra ``mlflow``: ``mlflow-skinny``): experiment = the experiment's name, run name = the run id, tag
    ``harness.run_id`` (and ``harness.experiment``, ``harness.axes`` as JSON), params = the flattened config and
    the axes (values cut to MLflow's param length), metrics with ``step=``. No network: the store is a directory."""

    def __init__(self, ctx: Context):
        try:
            from mlflow.entities import Metric, Param
            from mlflow.tracking import MlflowClient
        except ImportError as exc:
            raise missing_extra("mlflow", "mlflow", exc) from None
        try:
            from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH as max_len
        except ImportError:
            max_len = 500
        self.Metric, self.kind = Metric, ctx.kind
        self.root = (ctx.exp_dir / "mlruns").resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        with env("MLFLOW_ALLOW_FILE_STORE", "true"):  # the client builds (and caches) its store here
            self.client = MlflowClient(tracking_uri=self.root.as_uri())
        with file_lock(self.root / ".harness.lock"):  # the experiment's runs start at once: one creates it
            exp = self.client.get_experiment_by_name(ctx.experiment)
            eid = exp.experiment_id if exp else self.client.create_experiment(ctx.experiment)
        quoted = ctx.run_id.replace("'", "\\'")
        found = self.client.search_runs([eid], filter_string=f"tags.`harness.run_id` = '{quoted}'", max_results=1)
        if found:
            self.id = found[0].info.run_id
            self.client.update_run(self.id, status="RUNNING")
        else:
            tags = {"harness.run_id": ctx.run_id, "harness.experiment": ctx.experiment,
                    "harness.axes": json.dumps(ctx.axes, sort_keys=True, default=str)}
            self.id = self.client.create_run(eid, run_name=ctx.run_id, tags=tags).info.run_id
            params = {k: v[:max_len] for k, v in {**flatten(ctx.config), **flatten(ctx.axes)}.items()
                      if len(k) <= 250}
            items = [Param(k, v) for k, v in sorted(params.items())]
            for i in range(0, len(items), 100):  # MLflow's batch limit for params
                self.client.log_batch(self.id, params=items[i:i + 100])
        self._rebuild(ctx, self.root / eid / self.id / "metrics")

    def _rebuild(self, ctx: Context, metrics_dir: Path) -> None:
        """The run's train/ and eval/ metrics := the run directory's history (then the live rows follow)."""
        steps = {k: {s for kind, s, _ in ctx.history() if kind == k} for k in KINDS}
        held: dict[str, set[int]] = {}
        for kind in KINDS:
            for f in sorted((metrics_dir / kind).rglob("*")) if (metrics_dir / kind).is_dir() else ():
                if not f.is_file():
                    continue
                lines: dict[int, str] = {}  # step -> its last line ("timestamp value step")
                for line in f.read_text(encoding="utf-8").splitlines():
                    parts = line.split()
                    if len(parts) >= 3 and parts[2].lstrip("-").isdigit() and int(parts[2]) in steps[kind]:
                        lines[int(parts[2])] = line
                kept = "".join(lines[s] + "\n" for s in sorted(lines))
                if kept != f.read_text(encoding="utf-8"):
                    atomic_write_text(f, kept)
                held[f.relative_to(metrics_dir).as_posix()] = set(lines)
        now = int(time.time() * 1000)
        missing = [self.Metric(k, v, now, s) for _, s, row in ctx.history() for k, v in row.items()
                   if s not in held.get(k, ())]
        self._send(missing)

    def _send(self, metrics: list) -> None:
        for i in range(0, len(metrics), 1000):  # MLflow's batch limit for metrics
            self.client.log_batch(self.id, metrics=metrics[i:i + 1000])

    def log(self, metrics: dict[str, float], step: int) -> None:
        now = int(time.time() * 1000)
        self._send([self.Metric(k, v, now, step) for k, v in metrics.items()])

    def close(self) -> None:
        self.client.set_terminated(self.id, "FINISHED")

