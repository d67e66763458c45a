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
    """A command-line or API option with a value outside its domain."""


class IlexWarning(UserWarning):
    """Something ilex did on its own that the user should know of (the CLI prints one line)."""
