"""A round's reduction: each image's share (`partial.py`) computed where its registration ran and
summed into one `Partial` while the registrations run; only partial sums travel.

On this machine (no Dask client) the shares are computed and added on one thread beside the
registrations. On a Dask cluster each share is a task placed on the worker that registered the
image (`workers=[...]`, `allow_other_workers=True`: the files it reads are in that worker's page
cache, and Dask may still move it). As shares land, `distributed.as_completed` hands them back,
and two partial sums held by the same worker are added by a task on that worker, so each worker
holds about one running sum; once every share is in, the workers' sums are added pairwise, a
binary tree of tasks, and only the last one comes to the client. Sums are exact (fixed point),
so the grouping, the number of workers and the order in which pairs finish leave the bits alone.
A worker lost mid-round takes its sums with it; Dask recomputes them from their tasks (which read
the round's files, kept until the round is committed).
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

from .partial import Partial, add_partials


class RoundSum:
    """The sum of a round's shares: `add(fn, *args, worker=...)` queues one image's share
    (`fn(*args)` returns a `Partial`; `worker` is where its registration ran, on a cluster), and
    `result()` waits for them all and returns their sum. With a Dask `client`, the shares and
    sums are tasks that declare `share_resources` and `sum_resources` (e.g. {"MEMORY": bytes},
    or None). `waited` is the time `result` spent waiting (seconds)."""

    def __init__(self, client=None, share_resources: dict | None = None, sum_resources: dict | None = None):
        self.waited = 0.0
        self._impl = (
            _LocalSum() if client is None else _ClusterSum(client, share_resources or None, sum_resources or None)
        )

    def __enter__(self) -> RoundSum:  # noqa: PYI034  final class in practice
        return self

    def __exit__(self, *exc) -> None:
        self._impl.close()

    def add(self, fn, *args, worker: str | None = None) -> None:
        self._impl.add(fn, args, worker or None)

    def result(self) -> Partial:
        start = time.perf_counter()
        try:
            return self._impl.result()
        finally:
            self.waited += time.perf_counter() - start


class _LocalSum:
    def __init__(self):
        self._sum = Partial()
        self._queued = []
        # One thread: each share's arrays are freed once added, so memory stays that of the sum and one share.
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ilex-template-sum")

    def add(self, fn, args, worker) -> None:
        self._queued.append(self._pool.submit(self._one, fn, args))

    def _one(self, fn, args) -> None:
        self._sum.add_into(fn(*args))  # in place: the running sum's arrays are made once

    def result(self) -> Partial:
        for queued in self._queued:
            queued.result()
        return self._sum

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


class _ClusterSum:
    def __init__(self, client, share_resources, sum_resources):
        from distributed import as_completed

        self.client = client
        self.share_resources = share_resources
        self.sum_resources = sum_resources
        self._landing = as_completed()
        self._where: dict[str, str | None] = {}  # a future's key -> the worker asked to run it
        self._held: dict[str | None, object] = {}  # a worker -> the one sum it holds, not yet added to another

    def _submit(self, fn, args, worker, resources):
        where = {"workers": [worker], "allow_other_workers": True} if worker else {}
        future = self.client.submit(fn, *args, resources=resources, pure=False, **where)
        self._where[future.key] = worker
        self._landing.add(future)

    def add(self, fn, args, worker) -> None:
        self._submit(fn, args, worker, self.share_resources)
        if self._landing.has_ready():
            for future in self._landing.next_batch(block=False):
                self._landed(future)

    def _landed(self, future) -> None:
        if future.status == "error":
            future.result()  # raises the task's exception here
        worker = self._where.pop(future.key)
        other = self._held.pop(worker, None)
        if other is None:
            self._held[worker] = future
        else:
            self._submit(add_partials, (other, future), worker, self.sum_resources)

    def result(self) -> Partial:
        for future in self._landing:  # sums submitted while iterating are waited for too
            self._landed(future)
        level = list(self._held.values())
        self._held.clear()
        while len(level) > 1:  # the workers' sums, pairwise: a binary tree of tasks
            level = [
                self.client.submit(add_partials, level[k], level[k + 1], resources=self.sum_resources, pure=False)
                for k in range(0, len(level) - 1, 2)
            ] + level[len(level) // 2 * 2 :]
        return level[0].result() if level else Partial()

    def close(self) -> None:
        self._held.clear()
        self._landing.clear()
