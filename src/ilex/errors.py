"""Exceptions that ilex raises for bad files and bad options.

Every error a user can cause subclasses `IlexError`, itself a `ValueError` (as NiBabel's
`ImageFileError` is), so callers can catch one type and the CLI can turn it into one line on
stderr. Messages name the file or option first, then the problem, then what to do where known.
"""

from __future__ import annotations

import os


class IlexError(ValueError):
    """Base class of the errors caused by user input (files, options)."""


class FileProblem(IlexError):
    """A file that cannot be used: missing, unreadable, truncated or of the wrong kind."""

    def __init__(self, path: str | os.PathLike, problem: str):
        self.path = os.fspath(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class WeightsFileError(FileProblem):
    """A weights file (Keras h5) that does not hold the expected network."""


class BundleError(FileProblem):
    """An ilex bundle (config.json + model.safetensors) that cannot be loaded."""


class WeightsNotFound(BundleError):
    """Weights that are not on this machine (not in the hub cache, and the hub unreachable)."""


class ImageFileError(FileProblem):
    """An image or warp file that cannot be read or does not fit the task."""


class OptionError(IlexError):
    """An option with a value outside its domain.

    Library code names the Python argument (`OptionError("must lie in [0, 1]", argument="hyper",
    value=1.5)` reads "hyper=1.5: must lie in [0, 1]"); the command line puts its own flag in its
    place (`-r 1.5: must lie in [0, 1]`, `cli/main.py`). Without `argument` the message stands alone.
    """

    def __init__(self, problem: str, *, argument: str | None = None, value=None):
        self.problem, self.argument, self.value = problem, argument, value
        super().__init__(self.named(argument))

    def named(self, name: str | None, separator: str = "=") -> str:
        """The message with the option called `name` (its value after `separator`)."""
        if name is None:
            return self.problem
        value = (
            ""
            if self.value is None
            else f"{separator}{self.value:g}"
            if isinstance(self.value, float)
            else f"{separator}{self.value}"
        )
        return f"{name}{value}: {self.problem}"


class IlexWarning(UserWarning):
    """Something ilex did on its own that the user should know of (the CLI prints one line)."""
