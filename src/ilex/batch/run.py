"""Running a batch of pairs: the finished ones skipped, the rest on this machine (`local`) or on a
Dask cluster (`dask`), one record per pair, a failed pair never stopping the rest."""

from __future__ import annotations

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
