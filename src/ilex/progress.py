"""Stage-by-stage progress on stderr, and the closing summary line (time per stage, peak memory)."""

from __future__ import annotations

import contextlib
import resource
import sys
import time


def peak_rss_gib() -> float:
    """Peak resident memory of this process so far, GiB (what users size cluster jobs by)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


class Stages:
    """Times named stages; prints each as it starts and ends when `verbose`."""

    def __init__(self, verbose: bool = False, stream=None):
        self.verbose = verbose
        self.stream = stream or sys.stderr
        self.times: dict[str, float] = {}
        self.memory: dict[str, float] = {}  # stage -> the process's peak resident memory (GiB) at its end

    @contextlib.contextmanager
    def __call__(self, name: str, detail: str = ""):
        if self.verbose:
            print(f"{name:<10} {detail}".rstrip() + " ...", end="", file=self.stream, flush=True)
        start = time.perf_counter()
        try:
            yield
        finally:
            elapsed = time.perf_counter() - start
            self.times[name] = self.times.get(name, 0.0) + elapsed
            self.memory[name] = peak_rss_gib()
            if self.verbose:
                print(f" {elapsed:.1f} s", file=self.stream, flush=True)

    def summary(self, extra: str = "") -> str:
        parts = ", ".join(f"{k} {v:.1f} s" for k, v in self.times.items())
        total = sum(self.times.values())
        line = f"done in {total:.1f} s ({parts}); peak memory {peak_rss_gib():.2f} GiB"
        return f"{line}; {extra}" if extra else line
