"""One pair of a batch: its registration, then its outputs, and its record; a problem of the pair
is recorded, never raised. Both executors (`local`, `dask`) run pairs through here."""

from __future__ import annotations

import contextlib
import os
import socket
import time
from dataclasses import dataclass

from ..errors import OptionError
from ..registration.outputs import check_outputs, check_transform_outputs, write_outputs
from .manifest import manifest_path, write_manifest
from .pairs import Pair
from .records import PairRecord, PeakMemory, error_text, not_run, record
from .settings import BatchSettings, rows_set_optimiser_options


@dataclass
class Registered:
    """A pair between its registration and its outputs (`register_pair` -> `finish_pair`)."""

    pair: Pair
    result: object  # Registration
    hyper: float
    settings: BatchSettings
    memory: PeakMemory
    start: float
    started: float
    worker: str


def register_pair(registrar, pair: Pair, settings: BatchSettings, worker: str = "") -> PairRecord | Registered:
    """The registration half of `run_pair`: a failed record, or what `finish_pair` writes out."""
    if pair.problem:
        return not_run(pair, worker)
    start, started = time.perf_counter(), time.time()
    worker = worker or socket.gethostname()
    method, hyper, options = settings.combination(pair)
    memory = PeakMemory().start()
    try:
        if pair.options and not rows_set_optimiser_options(method):
            raise OptionError(
                f"{', '.join(pair.options)}: the optimiser's options, for method optimize (this row runs "
                f"{method or 'the default method'})"
            )
        masks = {f"{k[5:]} mask": p for k, p in pair.masks.items() if k in ("mask_fixed", "mask_moving")}
        check_outputs(pair.outputs, {"moving": pair.moving, "fixed": pair.fixed, **masks})
        # Names the method cannot write (an LTA from a warp method) fail now, not after the network.
        chosen = registrar.method_for(method, hyper, **dict(options))
        check_transform_outputs(pair.outputs, chosen, warp_format=settings.warp_format)
        result = registrar.register(
            pair.moving,
            pair.fixed,
            method=method,
            hyper=hyper,
            init=pair.init,
            keep_inputs="out_dir" in pair.outputs,
            **pair.masks,
            **dict(options),
        )
    except Exception as e:  # noqa: BLE001 — one bad pair must not stop the batch; its error goes to the summary
        memory.stop()
        return record(
            pair,
            "failed",
            seconds=time.perf_counter() - start,
            peak_memory_gib=memory.peak,
            error=error_text(e),
            worker=worker,
            started=started,
            finished=time.time(),
        )
    return Registered(pair, result, hyper, settings, memory, start, started, worker)


def finish_pair(outcome: PairRecord | Registered) -> PairRecord:
    """The outputs half of `run_pair`: QC (folding %) and every file, written atomically, all
    together. A record (the pair already failed) is returned as it is."""
    from ..qc import quality_report

    if isinstance(outcome, PairRecord):
        return outcome
    r = outcome
    try:
        report = quality_report(r.result)
        # The old record goes first: outputs without one are redone, never taken for these settings'.
        with contextlib.suppress(FileNotFoundError):
            os.remove(manifest_path(r.pair.outputs))
        write_outputs(
            r.result,
            r.pair.outputs,
            warp_format=r.settings.warp_format,
            report=report,
            settings={
                "model": r.result.method,
                "hyper": r.hyper,
                "steps": r.settings.effective_steps,
                "extent": r.settings.extent,
            },
        )
        write_manifest(r.pair, r.settings)
    except Exception as e:  # noqa: BLE001 — as in register_pair
        return record(
            r.pair,
            "failed",
            seconds=time.perf_counter() - r.start,
            peak_memory_gib=r.memory.peak,
            error=error_text(e),
            worker=r.worker,
            started=r.started,
            finished=time.time(),
        )
    else:
        return record(
            r.pair,
            "done",
            seconds=time.perf_counter() - r.start,
            peak_memory_gib=r.memory.peak,
            folding_percent=100.0 * report.folding_fraction,
            worker=r.worker,
            started=r.started,
            finished=time.time(),
        )
    finally:
        r.memory.stop()


def run_pair(registrar, pair: Pair, settings: BatchSettings, worker: str = "") -> PairRecord:
    """Register `pair` with `registrar`, write its outputs (atomically, all together) and return
    its record. Never raises for a problem of this pair: it is recorded as failed."""
    return finish_pair(register_pair(registrar, pair, settings, worker))
