"""Errors that tell the user *where* the problem is and *how* to fix it.

Every error raised on bad input names the file and line/row (or config key), says what is
wrong, and suggests the fix. The CLI prints these without a traceback.
"""

from __future__ import annotations

import difflib
from typing import Iterable


class HarnessError(Exception):
    """Base class for errors the user can fix (bad data, bad config, missing files)."""

    def __init__(self, message: str, *, where: str | None = None, fix: str | None = None):
        self.message = message
        self.where = where
        self.fix = fix
        super().__init__(self.__str__())

    def __str__(self) -> str:  # one readable paragraph
        parts = []
        if self.where:
            parts.append(f"{self.where}: ")
        parts.append(self.message)
        if self.fix:
            parts.append(f"\n  fix: {self.fix}")
        return "".join(parts)


class ConfigError(HarnessError):
    """A problem in an experiment file or a CLI override."""


class DataError(HarnessError):
    """A problem in a data file (malformed row, unknown role, no assistant turn, ...)."""


class TemplateError(HarnessError):
    """The chat template does not render message contents verbatim, or has no boundary."""


class SupervisionError(HarnessError):
    """A batch or data set with zero supervised tokens: never train silently on nothing."""


class EvaluationError(HarnessError):
    """Evaluation cannot run (incomplete checkpoint, unavailable benchmark data, ...)."""


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """' (did you mean 'x'?)' for the closest choice, or '' when nothing is close."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""
