"""What harness swaps in lm-eval for the duration of one ``simple_evaluate`` call (lm-eval has no option for
any of it), restored after: its logging and progress bars (:func:`quiet`), its environment description and git
hash (:func:`env_info_once`) and its per-document template compilation (:func:`compiled_templates`)."""

from __future__ import annotations

import contextlib
import functools
import io
import logging
import sys
from typing import Any, Iterator

from harness.provenance import git_info


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """lm-eval and datasets log every request batch and draw progress bars: keep a job's log readable
    (loggers at ERROR; when stderr is not a terminal, progress bars, which write to it, are dropped)."""
    loggers = [logging.getLogger(n) for n in ("lm_eval", "lm-eval", "datasets", "transformers", "accelerate")]
    levels = [lg.level for lg in loggers]
    try:
        import datasets

        datasets.disable_progress_bars()
    except ImportError:  # pragma: no cover
        pass
    try:
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        tty = hasattr(sys.stderr, "isatty") and sys.stderr.isatty()
        with contextlib.redirect_stderr(sys.stderr if tty else io.StringIO()):
            yield
    finally:
        for lg, lv in zip(loggers, levels):
            lg.setLevel(lv)


_ENV_INFO: dict[str, Any] = {}


@contextlib.contextmanager
def env_info_once() -> Iterator[None]:
    """lm-eval's simple_evaluate ends by describing the environment (torch.utils.collect_env: `pip list`,
    lscpu, conda and driver probes in subprocesses), a sizeable share of a small checkpoint's evaluation
    (benchmarks/NOTES.md). It cannot change within a process: describe it once, copy it into every result
    (the same keys as lm-eval writes). Its git hash is the harness's own commit (harness.provenance, quietly):
    lm-eval asks `git describe` in the current directory, which prints "fatal: not a git repository" into every
    evaluation's log outside a checkout. lm-eval has no option for either, so its functions are swapped for the
    duration of the call and restored after."""
    import lm_eval.evaluator as ev

    original, original_git = ev.add_env_info, ev.get_git_commit_hash

    def cached(storage: dict) -> None:
        if not _ENV_INFO:
            original(_ENV_INFO)
        storage.update(_ENV_INFO)

    ev.add_env_info, ev.get_git_commit_hash = cached, lambda: git_info()["commit"]
    try:
        yield
    finally:
        ev.add_env_info, ev.get_git_commit_hash = original, original_git


@functools.lru_cache(maxsize=512)
def _template(text: str):
    import lm_eval.utils

    return lm_eval.utils.env.from_string(text)


@contextlib.contextmanager
def compiled_templates() -> Iterator[None]:
    """lm-eval's ``apply_template`` compiles its Jinja template again for every document and field (Jinja's
    ``from_string`` caches nothing): 1.3 s of a demo checkpoint's 3 s evaluation (benchmarks/NOTES.md). A
    compiled template renders the same text every time, so each is compiled once per process; swapped for the
    call and restored after, like ``env_info_once``."""
    import lm_eval.utils

    original = lm_eval.utils.apply_template
    lm_eval.utils.apply_template = lambda template, doc: _template(template).render(**doc)
    try:
        yield
    finally:
        lm_eval.utils.apply_template = original
