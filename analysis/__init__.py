"""Analysis of results/ (read-only): tidy frames, figures, tables and `harness report`. See analysis/README.md."""

from analysis.load import load_runs, load_training, run_table

__all__ = ["load_runs", "load_training", "run_table", "build_report"]


def __getattr__(name):  # build_report pulls in matplotlib: import it only when asked for
    if name == "build_report":
        from analysis.report import build_report

        return build_report
    raise AttributeError(name)
