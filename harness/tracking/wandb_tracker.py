"""``train.report_to: [wandb]``: one W&B run per harness run, in a project and group named for the experiment.

Measured with wandb 0.31 (tests/test_tracking.py reads the offline files back):

* offline, every process (a training attempt, an evaluation) writes its own ``offline-run-<time>-<id>``
  directory; ``wandb sync`` uploads the directories of one id as one run, in order of start time. A process
  killed like ``kill -9`` leaves its directory empty or missing its last rows (wandb-core buffers the
  transaction log), so each opening replaces the earlier directories of the run with one that replays the run
  directory's history (:meth:`Context.history`): one directory holds every step once, the values of the attempt
  that finished.
* online, a resumed run continues the same W&B run; W&B's history cannot be edited (its ``resume_from`` rewind
  is a private preview), so steps W&B already holds are not sent again: the rows a killed attempt sent past its
  checkpoint keep that attempt's values, and rows it had logged but not sent are replayed.
* W&B's own ``_step`` must only grow (a lower one is dropped or renumbered), and evaluation logs checkpoint steps
  after training logged later ones: ``train/*`` and ``eval/*`` are therefore plotted against their own step
  metrics ``train/step`` and ``eval/step`` (``define_metric``), and ``_step`` only counts rows.
* ``run.finish()`` can return before wandb-core has written the transaction log (a loaded CI machine read a
  finished run's ``.wandb`` file back with no records after its header), and a process that ends without its
  atexit hooks (a multiprocessing child) would leave it so: closing the last harness run of a process therefore
  calls ``wandb.teardown()``, which waits for wandb-core to exit (~1 s to start it again for the next run).
"""

from __future__ import annotations

import hashlib
import netrc
import os
import re
import shutil
from urllib.parse import urlparse

from harness.tracking.base import KINDS, Context, missing_extra

_OPEN = 0  # harness W&B runs open in this process: the last to close tears wandb-core down


def wandb_id(run_id: str) -> str:
    """A stable W&B run id for a harness run id: itself when it is valid (<= 64 of [A-Za-z0-9_-]), else a slug
    and a hash of it (two run ids never share one)."""
    slug = re.sub(r"[^A-Za-z0-9_-]", "-", run_id)
    if slug == run_id and len(run_id) <= 64:
        return run_id
    return f"{slug[:47]}-{hashlib.sha256(run_id.encode()).hexdigest()[:16]}"


def has_api_key() -> bool:
    """An API key is configured without asking anyone or anything: WANDB_API_KEY, an identity token file, or a
    netrc entry for the W&B host (what ``wandb login`` writes)."""
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai").hostname or ""
    try:
        return netrc.netrc(os.environ.get("NETRC")).authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def wandb_mode() -> str:
    """WANDB_MODE when set (online, offline, disabled), else online only with an API key configured."""
    return os.environ.get("WANDB_MODE") or ("online" if has_api_key() else "offline")


class WandbTracker:
    """W&B (extra ``wandb``): project and group = the experiment's name, run name = the run id, run id = a stable
    id from it (:func:`wandb_id`; ``resume="allow"``, so a resumed run and its evaluation continue the same run),
    config = ``{"axes": ..., **config}``, tags ``train.lr=0.0001`` per axis, files under ``RunDir.tracking``
    (``wandb/``).

    Never blocks on a login or the network by itself: the mode is WANDB_MODE when set, else offline unless an API
    key is already configured (:func:`has_api_key`); then it is online, and a machine with a key but no network
    needs ``WANDB_MODE=offline``. Offline runs upload later with ``wandb sync <run>/tracking/wandb/offline-run-*``.
    """

    def __init__(self, ctx: Context):
        try:
            import wandb
        except ImportError as exc:
            raise missing_extra("wandb", "wandb", exc) from None
        self.kind, self._wandb = ctx.kind, wandb
        mode = wandb_mode()
        offline = mode in ("offline", "dryrun")
        online = not offline and mode != "disabled"
        wid = wandb_id(ctx.run_id)
        ctx.logdir.mkdir(parents=True, exist_ok=True)
        # wandb names a run's directory offline-run-<second>-<id>, with -1, -2 ... when an opening in the same
        # second already took that name (a fast resume)
        w = ctx.logdir / "wandb"
        earlier = sorted({*w.glob(f"offline-run-*-{wid}"), *w.glob(f"offline-run-*-{wid}-[0-9]*")}) if offline else []
        self.run = wandb.init(
            project=re.sub(r"[/\\#?%:]", "-", ctx.experiment)[:128], group=ctx.experiment, name=ctx.run_id, id=wid,
            resume="allow", dir=str(ctx.logdir), mode=mode, reinit="create_new",
            config={"axes": ctx.axes, **ctx.config}, tags=[f"{k}={v}"[:64] for k, v in ctx.axes.items()],
            settings=wandb.Settings(console="off", quiet=True))
        global _OPEN
        _OPEN += 1
        for kind in KINDS:
            self.run.define_metric(f"{kind}/step")
            self.run.define_metric(f"{kind}/*", step_metric=f"{kind}/step")
        # the newest step of each kind the W&B run already holds: none offline (its directories are replaced)
        self.held = {k: -1 for k in KINDS}
        if online:
            for k in KINDS:
                last = self.run.summary.get(f"{k}/step")
                self.held[k] = int(last) if isinstance(last, (int, float)) else -1
        for kind, step, metrics in ctx.history():
            self._log(kind, metrics, step)
        for d in earlier:  # after the replay: a kill during it leaves them to the next opening to replace
            shutil.rmtree(d, ignore_errors=True)

    def _log(self, kind: str, metrics: dict[str, float], step: int) -> None:
        if step > self.held[kind] and metrics:
            self.run.log({**metrics, f"{kind}/step": step})

    def log(self, metrics: dict[str, float], step: int) -> None:
        self._log(self.kind, metrics, step)

    def close(self) -> None:
        global _OPEN
        self.run.finish()
        _OPEN -= 1
        if _OPEN == 0:
            self._wandb.teardown()  # the files are complete once wandb-core has exited (see the module doc)
