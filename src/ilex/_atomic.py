"""Outputs appear whole or not at all: write beside the target, then rename into place."""

from __future__ import annotations

import contextlib
import contextvars
import os
import shutil
import tempfile
from collections.abc import Iterator

from .errors import FileProblem

# Inside `output_batch()`, finished temporaries wait here for the batch to succeed.
_pending: contextvars.ContextVar[list[tuple[str, str]] | None] = contextvars.ContextVar("_pending", default=None)


def _check_parent(path: str) -> str:
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise FileProblem(path, f"the output directory {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise FileProblem(path, f"the output directory {parent} is not writable")
    return parent


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, suffix: str = "") -> Iterator[str]:
    """Yield a temporary path in the target's directory; rename it to `path` on success.

    `suffix` keeps the extension so that writers which infer the format from it still work.
    """
    path = os.fspath(path)
    parent = _check_parent(path)
    fd, tmp = tempfile.mkstemp(prefix=".ilex-", suffix=suffix or os.path.basename(path), dir=parent)
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, 0o644)
        pending = _pending.get()
        if pending is None:
            os.replace(tmp, path)
        else:
            pending.append((tmp, path))
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise


@contextlib.contextmanager
def output_batch() -> Iterator[None]:
    """All `atomic_file` writes in this block land together when it succeeds, or none do.

    A command with several outputs (moved image, warps, QC) that fails on its third file
    leaves the first two untouched, as it found them.
    """
    pending: list[tuple[str, str]] = []
    token = _pending.set(pending)
    try:
        yield
    except BaseException:
        for tmp, _ in pending:
            with contextlib.suppress(FileNotFoundError):
                os.remove(tmp)
        raise
    finally:
        _pending.reset(token)
    for tmp, path in pending:
        os.replace(tmp, path)


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike, overwrite: bool = False) -> Iterator[str]:
    """Yield a temporary directory beside `path`; it replaces `path` once the block succeeds.

    An existing non-empty `path` is refused unless `overwrite`; it is removed only after the
    new directory is complete.
    """
    path = os.path.abspath(os.fspath(path))
    parent = _check_parent(path)
    if os.path.exists(path):
        if not os.path.isdir(path):
            raise FileProblem(path, "exists and is not a directory")
        if os.listdir(path) and not overwrite:
            raise FileProblem(path, "exists and is not empty; choose a new directory or pass --overwrite")
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.ilex-", dir=parent)
    try:
        yield tmp
        os.chmod(tmp, 0o755)
        if os.path.exists(path):
            old = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.old-", dir=parent)
            os.replace(path, os.path.join(old, "x"))
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
