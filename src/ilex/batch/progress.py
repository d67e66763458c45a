"""The batch's one progress line on stderr: a bar on a terminal, a line per pair in a log file."""

from __future__ import annotations

import contextlib
import sys


def progress_bar(total: int, done: int, show: bool):
    """A bar of `total` pairs, `done` of them already (skipped); a silent one unless `show`.
    Each has `update(n)` and `set_postfix_str(text)`, as tqdm's, and is a context manager."""
    from tqdm import tqdm

    if not show:
        return _NoBar()
    if not sys.stderr.isatty():  # a log file gets one line per pair, not a bar's frames
        return _LineBar(total, done)
    return tqdm(total=total, initial=done, unit="pair", desc="ilex batch", dynamic_ncols=True)


class _LineBar(contextlib.nullcontext):
    def __init__(self, total: int, done: int):
        super().__init__()
        self.total, self.n, self.postfix = total, done, ""

    def update(self, n: int = 1) -> None:
        self.n += n
        print(f"ilex batch: {self.n}/{self.total} pairs{self.postfix}", file=sys.stderr, flush=True)

    def set_postfix_str(self, text: str, refresh: bool = True) -> None:
        self.postfix = f" ({text})"


class _NoBar(contextlib.nullcontext):
    def update(self, n: int = 1) -> None:
        pass

    def set_postfix_str(self, text: str, refresh: bool = True) -> None:
        pass
