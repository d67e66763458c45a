"""Running a batch of pairs: the finished ones skipped, the rest on this machine (`local`) or on a
Dask cluster (`dask`), one record per pair, a failed pair never stopping the rest."""

from __future__ import annotations

import sys
from collections.abc import Callable

from .local import iter_local
from .manifest import finished
from .pairs import Pair, check_inputs
from .progress import progress_bar
from .records import PairRecord, not_run, skipped
from .settings import BatchSettings


def run_batch(
    pairs: list[Pair],
    settings: BatchSettings,
    *,
    client=None,
    overwrite: bool = False,
    progress: bool = False,
    on_record: Callable[[PairRecord], None] | None = None,
    registrar=None,
    memory_resource: str = "MEMORY",
    memory_bytes: float | None = None,
    inputs_checked: bool = False,
) -> list[PairRecord]:
    """Run every pair of `pairs` and return their records in the pairs' order.

    A pair whose outputs all exist, made with these settings (`finished`), is skipped unless
    `overwrite` (so a rerun after a crash does only what is left); one whose outputs were made
    otherwise, or not by ilex batch, is redone, and its record's `note` says why. The others'
    input files are checked first (`check_inputs`; `inputs_checked`: the caller already ran it on
    `pairs`, as `ilex batch` does before its weights load): a row that cannot run is recorded as
    failed, and passed to `on_record`, before the first registration. Locally, pairs
    run one after another with one warm model (`registrar`, or one made from `settings`); with a
    `distributed.Client`, on its workers (`ilex.batch.dask`).
    `progress` shows one bar on stderr; `on_record` is called as each pair finishes.
    Raises only for problems of the whole batch (weights that cannot be loaded, a cluster where
    no worker has room for one registration); a pair's problem is in its record.
    """
    records: dict[int, PairRecord] = {}
    todo = []
    notes = {}
    for pair in pairs:
        done, why = finished(pair, settings)
        if done and not overwrite:
            records[pair.index] = skipped(pair)
        else:
            todo.append(pair)
            if why and not overwrite:
                notes[pair.index] = why
    runnable = []
    # Every row's files before the first registration: a missing image fails its row now, not hours in.
    for pair in todo if inputs_checked else check_inputs(todo):
        if pair.problem is None:
            runnable.append(pair)
        else:
            _add(records, not_run(pair), notes, on_record)
    bar = progress_bar(len(pairs), len(records), progress)
    with bar:
        if client is None:
            results = iter_local(runnable, settings, registrar)
        else:
            from .dask import iter_cluster  # Dask's modules only for a cluster

            results = iter_cluster(
                client, runnable, settings, memory_resource=memory_resource, memory_bytes=memory_bytes
            )
        _count_failed(bar, records)
        for record in results:
            _add(records, record, notes, on_record)
            bar.update(1)
            _count_failed(bar, records)
    return [records[p.index] for p in pairs]


def run_checked(
    pairs: list[Pair],
    settings: BatchSettings,
    *,
    command: str,
    client=None,
    overwrite: bool = False,
    progress: bool = False,
    memory_check: bool = True,
    memory_resource: str = "MEMORY",
    memory_bytes: float | None = None,
) -> list[PairRecord]:
    """`run_batch` as the commands run it (`ilex batch`, `ilex bids participant`): every row still to do
    has its input files checked and a bad row is named on stderr (`command: pair will not run: why`)
    before anything loads; then, in this process (no `client`), the memory rule before the weights load
    (a run that cannot fit fails in seconds, not after 3.5 GB; `memory_check=False` skips it) and one warm
    registrar for every pair.
    """
    todo = check_inputs([p for p in pairs if overwrite or not finished(p, settings)[0]])
    checked = {p.index: p for p in todo}
    pairs = [checked.get(p.index, p) for p in pairs]
    for pair in todo:
        if pair.problem is not None:
            print(f"{command}: {pair.label} will not run: {pair.problem}", file=sys.stderr, flush=True)
    registrar = None
    if client is None and any(p.problem is None for p in todo):
        if settings.weights and not settings.gpu and memory_check:
            from ..bundle.weights import peek_width
            from ..registration.memory import check_memory

            weights = settings.weights if isinstance(settings.weights, tuple) else (settings.weights,)
            check_memory(settings.extent, max(peek_width(w) for w in weights), detector=settings.runs_detector(todo))
        registrar = settings.registrar(todo)
    return run_batch(
        pairs,
        settings,
        client=client,
        overwrite=overwrite,
        progress=progress,
        registrar=registrar,
        memory_resource=memory_resource,
        memory_bytes=memory_bytes,
        inputs_checked=True,  # above, before the weights: each header is read once
    )


def _add(records: dict[int, PairRecord], record: PairRecord, notes: dict[int, str], on_record) -> None:
    if record.index in notes:
        record.note = notes[record.index]
    records[record.index] = record
    if on_record is not None:
        on_record(record)


def _count_failed(bar, records: dict[int, PairRecord]) -> None:
    failed = sum(r.status == "failed" for r in records.values())
    if failed:
        bar.set_postfix_str(f"{failed} failed", refresh=False)
