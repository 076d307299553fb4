"""``train.report_to: [trackio]``: one trackio run per harness run, in a local SQLite project per experiment.

trackio keeps a project as ``<TRACKIO_DIR>/<project>.db``; TRACKIO_DIR is read once, when trackio is imported, into
module constants. Unless the user set TRACKIO_DIR, the tracker points those constants at
``<experiment dir>/trackio`` while it is open and puts them back when it closes (one experiment per process at a
time, nothing left behind in the environment); browse with ``TRACKIO_DIR=results/<experiment>/trackio trackio show``.

A run is found again by its name (``resume="allow"``). trackio sends rows from a background thread every 0.5 s, so a
killed process loses its last rows, and it keeps two rows logged at one step: on opening, the tracker deletes the
run (``SQLiteStorage.delete_run``) and replays the run directory's history (:meth:`Context.history`) into a new
one of the same name, group and config, so each step is there once (trackio's internal run id changes; its
dashboard and ``resume`` go by name). Not done for a Space or server (TRACKIO_SPACE_ID, TRACKIO_SERVER_URL): those
get trackio's own behaviour.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from harness.errors import ConfigError
from harness.tracking.base import Context, missing_extra

_DIRS = {"TRACKIO_DIR": "", "MEDIA_DIR": "media", "ARTIFACTS_DIR": "artifacts"}  # trackio.utils' constants


def point_storage(root: Path):
    """Point trackio's storage constants (in every loaded trackio module that imported them) at `root`; returns
    the function that points them back. A no-op when the user set TRACKIO_DIR."""
    if os.environ.get("TRACKIO_DIR"):
        return lambda: None
    import trackio.utils as tu

    old = {n: getattr(tu, n) for n in _DIRS if hasattr(tu, n)}
    new = {n: root / sub if sub else root for n, sub in _DIRS.items() if n in old}

    def swap(src: dict, dst: dict) -> None:
        for name, mod in list(sys.modules.items()):
            if mod is not None and (name == "trackio" or name.startswith("trackio.")):
                for n, v in src.items():
                    if getattr(mod, n, None) is v:
                        setattr(mod, n, dst[n])

    swap(old, new)
    return lambda: swap(new, old)


class TrackioTracker:
    """trackio (extra ``trackio``): project = the experiment's name, run name = the run id, group = the experiment's
    name, config = ``{"axes": ..., **config}``, no system-metric threads, no dashboard, no network."""

    def __init__(self, ctx: Context):
        try:
            import trackio
            from trackio.sqlite_storage import SQLiteStorage
        except ImportError as exc:
            raise missing_extra("trackio", "trackio", exc) from None
        self.run = None
        root = ctx.exp_dir / "trackio"
        self.restore = point_storage(root.resolve())
        try:
            project = ctx.experiment
            if not os.environ.get("TRACKIO_DIR") and \
                    SQLiteStorage.get_project_db_path(project).parent != root.resolve():
                raise ConfigError(f"this trackio ({trackio.__version__}) keeps its storage elsewhere than "
                                  f"{root}", where="train.report_to", fix="set TRACKIO_DIR (it is used as is)")
            local = not (os.environ.get("TRACKIO_SPACE_ID") or os.environ.get("TRACKIO_SERVER_URL"))
            for _ in range(10):  # every earlier run of this name (a killed attempt's included)
                if not (local and ctx.run_id in SQLiteStorage.get_runs(project)
                        and SQLiteStorage.delete_run(project, ctx.run_id)):
                    break
            config = {k: v for k, v in {"axes": ctx.axes, **ctx.config}.items() if not str(k).startswith("_")}
            self.run = trackio.init(project=project, name=ctx.run_id, group=ctx.experiment, config=config,
                                    resume="allow", embed=False, auto_log_cpu=False, auto_log_gpu=False)
            for _kind, step, metrics in ctx.history():
                if metrics:
                    self.run.log(metrics, step=step)
        except BaseException:
            self.close()
            raise

    def log(self, metrics: dict[str, float], step: int) -> None:
        if metrics:
            self.run.log(metrics, step=step)

    def close(self) -> None:
        try:
            if self.run is not None:
                self.run.finish()  # joins trackio's sender thread: every row is in the database
                try:  # as trackio.finish(): not the current run any more (its exit hook finishes that one)
                    from trackio import context_vars

                    if context_vars.current_run.get() is self.run:
                        context_vars.current_run.set(None)
                except (ImportError, AttributeError):
                    pass
        finally:
            self.run = None
            self.restore()
