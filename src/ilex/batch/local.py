"""Running pairs in this process, one after another with one warm model (`ilex batch` without Dask)."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

from .one_pair import finish_pair, register_pair
from .pairs import Pair
from .records import PairRecord
from .settings import BatchSettings


def iter_local(pairs: list[Pair], settings: BatchSettings, registrar=None) -> Iterator[PairRecord]:
    """Run `pairs` one after another in this process (pairs already done are not passed here).
    `registrar` defaults to `settings.registrar(pairs)`, made before the first pair.

    Each pair's outputs (QC, moved image, warps: a few seconds of work that leaves cores idle,
    gzip and disk) are written on a second thread while the next pair registers, so a warm
    pair costs little more than its network. Records come in the pairs' order, each once its
    files have landed.
    """
    if not pairs:
        return
    registrar = registrar or settings.registrar(pairs)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="ilex-outputs") as writer:
        pending = None
        for pair in pairs:
            outcome = register_pair(registrar, pair, settings)
            if pending is not None:
                yield pending.result()
            pending = writer.submit(finish_pair, outcome)
            del outcome  # the writer holds the result now, and lets it go once written
        yield pending.result()
