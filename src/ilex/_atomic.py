"""Outputs appear whole or not at all: write beside the target, then rename into place."""

from __future__ import annotations

import contextlib
import contextvars
import os
import shutil
import stat
import tempfile
import threading
import uuid
from collections.abc import Iterator

from .errors import FileProblem

# Inside `output_batch()`, finished temporaries wait here for the batch to succeed.
_pending: contextvars.ContextVar[list[tuple[str, str]] | None] = contextvars.ContextVar("_pending", default=None)


_umask_lock = threading.Lock()


def _umask() -> int:
    # The only portable way to read the umask is to set it; the lock keeps other threads of this
    # process from creating files in the instant it is 0.
    with _umask_lock:
        mask = os.umask(0o077)
        os.umask(mask)
    return mask


def _mode_of_new(path: str, base: int) -> int:
    """The permissions `open()`/`mkdir()` would give `path`: an existing file's own, or `base & ~umask`.

    Temporaries are created private (0o600/0o700); the result gets these before it is renamed
    into place, so that on a shared machine an output is never more readable than the user asked.
    """
    try:
        return stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        return base & ~_umask()


def check_parent(path: str) -> str:
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
    parent = check_parent(path)
    fd, tmp = tempfile.mkstemp(prefix=".ilex-", suffix=suffix or os.path.basename(path), dir=parent)
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, _mode_of_new(path, 0o666))
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
    _commit(pending)


def _commit(pending: list[tuple[str, str]]) -> None:
    """Rename every temporary onto its target; if one rename fails, undo the earlier ones.

    Each existing target first gets a second name (a hard link) beside it, so that a failure
    midway can put the earlier targets back as they were. Every temporary and backup is gone
    afterwards, whichever way it ends.
    """
    backups: dict[str, str] = {}
    created: list[str] = []
    try:
        for tmp, path in pending:
            if os.path.lexists(path):
                backups[path] = _backup(path)
            else:
                created.append(path)
            os.replace(tmp, path)
    except BaseException:
        for path in created:
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)
        for path, backup in backups.items():
            with contextlib.suppress(OSError):
                os.replace(backup, path)
        raise
    finally:
        for leftover in [tmp for tmp, _ in pending] + list(backups.values()):
            with contextlib.suppress(FileNotFoundError):
                os.remove(leftover)


def _backup(path: str) -> str:
    """A second name for the existing file `path`, in its directory."""
    backup = os.path.join(os.path.dirname(os.path.abspath(path)), f".ilex-old-{uuid.uuid4().hex}")
    try:
        os.link(path, backup)
    except OSError:
        # No hard links on this file system: move the target aside instead (it is then missing
        # for the instant before its rename, and put back if that rename fails).
        os.replace(path, backup)
    return backup


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike, overwrite: bool = False) -> Iterator[str]:
    """Yield a temporary directory beside `path`; it replaces `path` once the block succeeds.

    An existing non-empty `path` is refused unless `overwrite`; it is removed only after the
    new directory is complete.
    """
    path = os.path.abspath(os.fspath(path))
    parent = check_parent(path)
    if os.path.exists(path):
        if not os.path.isdir(path):
            raise FileProblem(path, "exists and is not a directory")
        if os.listdir(path) and not overwrite:
            raise FileProblem(path, "exists and is not empty; choose a new directory or pass --overwrite")
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.ilex-", dir=parent)
    try:
        yield tmp
        os.chmod(tmp, _mode_of_new(path, 0o777))
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
