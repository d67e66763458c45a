"""A round's sums (the mean transform, the moved images, their similarities), added in the
pairs' order while the registrations run."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np

from .shape import MeanTransform, correlation, normalised


class RoundSum:
    """A round's sums (the mean transform, the sum of the moved images, their similarities to the
    template), added on one thread beside the registrations: each pair as soon as its files have
    landed and every pair before it is in, so that the sums are added in the pairs' order whatever
    order the pairs finish in (a resumed or distributed round gives the same bits as a local one).
    `offer` takes records as the batch reports them; `result` takes the rest (skipped pairs) and
    waits. Failed pairs are left out, and those `leave_out(pair)` says (the flagged ones, with
    --exclude-flagged; asked once the pair's files, its qc.json among them, have landed)."""

    def __init__(self, previous, mask: np.ndarray, pairs, leave_out=None):
        self.previous = previous.data
        self.mask = mask
        self.mean = MeanTransform(previous.affine, mask)
        self.total = np.zeros(previous.shape, np.float32)
        self.similarities: list[float] = []
        self._pairs = list(pairs)
        self._leave_out = leave_out
        self._status: dict[int, str] = {}
        self._next = 0
        self._added = []
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ilex-template-sum")

    def __enter__(self) -> RoundSum:  # noqa: PYI034  final class in practice
        return self

    def __exit__(self, *exc) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def offer(self, record) -> None:
        self._status.setdefault(record.index, record.status)
        while self._next < len(self._pairs) and self._pairs[self._next].index in self._status:
            pair = self._pairs[self._next]
            self._next += 1
            if self._status[pair.index] != "failed" and not (self._leave_out and self._leave_out(pair)):
                self._added.append(self._pool.submit(self._add, pair))

    def _add(self, pair) -> None:
        from ..image.io import load_image
        from ..image.warp_io import load_warp

        self.mean.add(load_warp(pair.outputs["trans"]).displacement)
        moved = normalised(load_image(pair.outputs["out_moving"], what="moved image", check_values=False).data)
        self.similarities.append(correlation(moved, self.previous, self.mask))
        self.total += moved

    def result(self, records) -> tuple[MeanTransform, np.ndarray, list[float]]:
        for record in records:
            self.offer(record)
        for added in self._added:
            added.result()
        return self.mean, self.total, self.similarities
