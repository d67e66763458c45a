"""One record per pair (a line of the summary), and what fills it: times, peak memory, the error."""

from __future__ import annotations

import datetime
import socket
import threading
import time
from dataclasses import asdict, dataclass, field

from ..errors import IlexError
from .pairs import Pair

STATUSES = ("done", "skipped", "failed")


@dataclass
class PairRecord:
    """One line of the summary. `seconds` is the pair's wall time (registration, QC and writing);
    `peak_memory_gib` the highest resident memory of the process while it ran (sampled every
    0.1 s; with several pairs in one process at once, theirs together); `folding_percent` the
    share of fixed voxels where the forward warp's Jacobian determinant is ≤ 0; `worker` the
    host (or Dask worker address) that ran it; `started`/`finished` UTC times (ISO 8601);
    `note` why a pair whose outputs existed was redone."""

    pair: str
    index: int
    moving: str
    fixed: str
    status: str
    seconds: float | None = None
    peak_memory_gib: float | None = None
    folding_percent: float | None = None
    error: str = ""
    worker: str = ""
    started: str | None = None
    finished: str | None = None
    note: str = ""
    outputs: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def record(pair: Pair, status: str, **kwargs) -> PairRecord:
    """`pair`'s record with `status` and the other fields as keywords; `started`/`finished` may
    be Unix times (float), written as UTC times."""
    for key in ("started", "finished"):  # Unix times in, readable UTC times out
        if isinstance(kwargs.get(key), float):
            kwargs[key] = datetime.datetime.fromtimestamp(kwargs[key], datetime.UTC).isoformat(timespec="milliseconds")
    return PairRecord(pair.label, pair.index, pair.moving, pair.fixed, status, outputs=dict(pair.outputs), **kwargs)


def not_run(pair: Pair, worker: str = "") -> PairRecord:
    """The record of a pair that cannot run (`Pair.problem`): failed at once, in no time."""
    now = time.time()
    worker = worker or socket.gethostname()
    return record(pair, "failed", error=pair.problem, seconds=0.0, worker=worker, started=now, finished=now)


def skipped(pair: Pair) -> PairRecord:
    return record(pair, "skipped", note="all outputs exist, made with these settings (pass --overwrite to redo)")


def error_text(error: BaseException) -> str:
    """One line for the summary: the message of an ilex error, else the exception's class and message."""
    if isinstance(error, IlexError):
        return str(error)
    if isinstance(error, MemoryError):
        return "out of memory; try a smaller extent, e.g. -e 192"
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}".rstrip(": ")


class PeakMemory:
    """The highest memory in use (GiB) by this process while the `with` block runs (or from
    `start()` to `stop()`, which may be called on another thread): resident memory less what its
    malloc holds free for its next arrays (ilex's batch and template commands keep freed memory, `ilex._allocator`,
    so resident memory alone would carry an earlier pair's peak into every later one)."""

    def __init__(self, interval: float = 0.1):
        self.interval = interval
        self.peak = 0.0
        self._stop = threading.Event()

    def _sample(self) -> None:
        import psutil

        from .._allocator import free_heap_bytes

        process = psutil.Process()
        while True:
            self.peak = max(self.peak, (process.memory_info().rss - free_heap_bytes()) / 2**30)
            if self._stop.wait(self.interval):
                return

    def start(self) -> PeakMemory:
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def __enter__(self) -> PeakMemory:  # noqa: PYI034  final class in practice
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
