"""Experiment trackers (``train.report_to``): a run's step metrics and its checkpoints' eval metrics, by name.

Why a registry of small writers rather than a trainer framework's callbacks: ``train()`` and ``evaluate_run()``
already hold every number; a tracker only mirrors them, so it can never change what a run computes (its config
key is not part of the run hash). Each tracker is an optional extra, imported only when named, and each names its
run by the run id, groups the runs of one experiment, carries the grid axes and config, and holds every step once
across a kill and resume (how differs per tracker: see each module):

=============  ==============  ================================================================================
name           extra           where (offline: no network)
=============  ==============  ================================================================================
tensorboard    ``track``       ``<run>/tracking/{train,eval}/`` events; ``tensorboard --logdir results/<exp>``
wandb          ``wandb``       ``<run>/tracking/wandb/``; offline unless WANDB_MODE or an API key says online
mlflow         ``mlflow``      ``results/<exp>/mlruns`` file store, one MLflow experiment per experiment
trackio        ``trackio``     ``results/<exp>/trackio/<exp>.db``
=============  ==============  ================================================================================
"""

from __future__ import annotations

from typing import Callable

from harness.errors import ConfigError
from harness.layout import RunDir
from harness.tracking.base import Context, Trackers, context, finite
from harness.tracking.mlflow_tracker import MlflowTracker
from harness.tracking.tensorboard_tracker import TensorBoardTracker
from harness.tracking.trackio_tracker import TrackioTracker
from harness.tracking.wandb_tracker import WandbTracker

__all__ = ["REGISTRY", "Context", "MlflowTracker", "TensorBoardTracker", "TrackioTracker", "Trackers",
           "WandbTracker", "finite", "open_trackers"]

#: tracker name -> writer class, called with a :class:`Context` (``train.report_to`` takes any subset; the
#: schema's TRACKERS lists the names)
REGISTRY: dict[str, Callable] = {"tensorboard": TensorBoardTracker, "wandb": WandbTracker,
                                 "mlflow": MlflowTracker, "trackio": TrackioTracker}


def open_trackers(names, rd: RunDir, run_id: str, axes: dict, config: dict, *, kind: str = "train",
                  purge_step: int | None = None, experiment: str | None = None) -> Trackers:
    """Writers for `names` (``train.report_to``) writing into ``rd.tracking``. `purge_step`: a resumed run's
    first step (train). Config, axes and `experiment` (the name) default to the run's ``config.yaml`` and the
    experiment's ``plan.json``, as evaluation passes none."""
    names = tuple(names or ())
    for name in names:
        if name not in REGISTRY:
            raise ConfigError(f"unknown tracker {name!r}", where="train.report_to", fix=f"use any of {sorted(REGISTRY)}")
    if not names:
        return Trackers([])
    ctx = context(rd, run_id, axes, config, kind, purge_step, experiment)
    writers = []
    try:
        for name in names:
            writers.append(REGISTRY[name](ctx))
    except BaseException:
        Trackers(writers).close()  # the ones already open (a W&B run, an MLflow run) end, not dangle
        raise
    return Trackers(writers)
