"""When to stop an optimisation level: the similarity has stopped rising."""

from __future__ import annotations

import time


class Convergence:
    """Call with each iteration's similarity (higher is better); returns True to stop.

    Stops when the best value of the last `window` iterations exceeds the best before them by
    less than `tolerance` times its magnitude (after at least `2 window` iterations): a plateau,
    robust to the small oscillations of a fixed-step optimiser.
    """

    def __init__(self, tolerance: float, window: int = 10):
        self.tolerance, self.window, self.values = tolerance, window, []

    def __call__(self, value: float) -> bool:
        self.values.append(value)
        if len(self.values) < 2 * self.window:
            return False
        before = max(self.values[: -self.window])
        recent = max(self.values[-self.window :])
        return recent - before <= self.tolerance * abs(before)


class LevelTimer:
    """Adds wall time and iteration count of a block to `profile[name]` (when a dict is given)."""

    def __init__(self, profile: dict | None, name: str):
        self.profile, self.name, self.n = profile, name, 0

    def __enter__(self):
        self.t0 = time.perf_counter()

        def count():
            self.n += 1

        return count

    def __exit__(self, *exc):
        if self.profile is not None:
            self.profile[self.name] = {"seconds": time.perf_counter() - self.t0, "iterations": self.n}
