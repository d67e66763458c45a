"""Running a batch of pairs: one warm `Registrar`, one record per pair, a failed pair never stops the rest."""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field

from ..errors import IlexError, OptionError
from ..registration.methods.base import Method
from ..registration.outputs import check_outputs, check_transform_outputs, output_files, outputs_complete, write_outputs
from ..registration.settings import Settings, option_items
from .pairs import Pair

STATUSES = ("done", "skipped", "failed")


@dataclass(frozen=True)
class BatchSettings(Settings):
    """What every pair of a batch shares: `ilex.Settings` (method, λ, steps, extent, ...: the
    defaults of rows that leave them empty; `options`: the optimiser's, for rows whose method is
    optimize) and what a study adds.

    `weights`: what `-w` names (a path or hub id, or a tuple of them; None for the default
    weights of the default method, joint's two, as `ilex batch`; () for none: `-m optimize`).
    Rows may pick any method the weights serve: with joint's two files, also deform, affine,
    rigid; optimize always. `warp_format`, `gpu`, `compilation_cache`: `ilex batch`'s
    `--warp-format`, `--gpu` and `--no-compilation-cache`.
    """

    weights: str | tuple[str, ...] | None = None
    warp_format: str = "freesurfer"
    gpu: bool = False
    compilation_cache: bool = True

    def combination(self, pair: Pair) -> tuple[str | Method | None, float, tuple]:
        """(method, λ, the optimiser's options as sorted items) that `pair` runs with."""
        method = pair.method or self.method
        options = {}
        if _takes_optimiser_options(method):
            options = {k: v for k, v in {**self.optimiser_options, **pair.options}.items() if v is not None}
        return (
            method,
            self.effective_hyper if pair.hyper is None else pair.hyper,
            option_items(options),
        )

    def runs_detector(self, pairs: Iterable[Pair]) -> bool:
        """Whether any of `pairs` runs the affine detector (joint, affine, rigid), whose peak
        memory is above the deformable network's. No method anywhere means the weights' own:
        joint for several weight files or the defaults, deform for one."""
        from ..registration.memory import runs_detector

        default = "joint" if self.weights is None or isinstance(self.weights, tuple) else "deform"
        return any(runs_detector(self.combination(p)[0] or default) for p in pairs if p.problem is None)

    def memory_estimate(self, pairs: Iterable[Pair], width: int = 256) -> float:
        """Peak memory (bytes) of one registration of this batch on CPU, the largest over `pairs`' methods."""
        from ..registration.memory import estimate_peak_bytes

        return estimate_peak_bytes(self.extent, width, detector=self.runs_detector(pairs))

    def registrar(self, pairs: Iterable[Pair] = ()):
        """A `Registrar` with the model loaded and the methods `pairs` need made; the loaded
        model is then let go (the hypernetwork is 3.5 GB; each λ's U-Net 1/33 of that)."""
        combinations = sorted({self.combination(p) for p in pairs if p.problem is None}, key=_order)
        return self.prepared_registrar(combinations)

    def prepared_registrar(self, combinations: list[tuple]):
        """`Registrar.from_weights` for these settings with `combinations` prepared (a failed one
        fails only its own pairs), the model let go; with none, the model is kept."""
        from ..registration.session import Registrar

        return Registrar.from_weights(
            self.weights,
            settings=self.registration_settings(),
            prepare=list(combinations) or None,
            strict=False,
        )

    def pair_settings(self, pair: Pair) -> dict:
        """Everything that decides `pair`'s outputs, as JSON values: recorded beside them
        (`MANIFEST_SUFFIX`) so that a rerun knows what made them."""
        method, hyper, options = self.combination(pair)
        weights = self.weights if isinstance(self.weights, tuple) else () if self.weights is None else (self.weights,)
        if method is not None and not isinstance(method, str):
            method = repr(method)  # a Method object (ilex template's stages): its options are in its repr
        record = {
            "moving": pair.moving,
            "fixed": pair.fixed,
            "init": pair.init,
            "method": method,
            "hyper": hyper,
            "options": dict(options),
            "steps": self.effective_steps,
            "extent": self.extent,
            "weights": None if self.weights is None else [_absolute(w) for w in weights],
            "algorithm": self.algorithm,
            "clip_percentile": self.clip_percentile,
            "warp_format": self.warp_format,
            "outputs": dict(sorted(pair.outputs.items())),
        }
        return json.loads(json.dumps(record))  # tuples as lists, as they read back


def _order(combination: tuple) -> tuple:
    return (combination[0] or "", *combination[1:])


def _absolute(path: str) -> str:
    # A weights path names the same file from any directory; a hub id stays as it is.
    return os.path.abspath(path) if os.path.exists(path) else path


# Beside each pair's first output: the settings that made its outputs (`finished`).
MANIFEST_SUFFIX = ".ilex-batch.json"


def manifest_path(outputs) -> str | None:
    files = output_files(outputs)
    return files[0][1] + MANIFEST_SUFFIX if files else None


def finished(pair: Pair, settings: BatchSettings) -> tuple[bool, str]:
    """(True, "") when every output of `pair` exists and its manifest says that these settings
    made them; else (False, why a rerun redoes it: "" when outputs are missing)."""
    if pair.problem is not None or not outputs_complete(pair.outputs):
        return False, ""
    try:
        with open(manifest_path(pair.outputs), encoding="utf-8") as f:
            made = json.load(f)["settings"]
    except (OSError, ValueError, KeyError, TypeError):
        return False, "redone: its outputs exist but no record says ilex batch made them"
    wanted = settings.pair_settings(pair)
    changed = [f"{k} {made.get(k)!r} -> {v!r}" for k, v in wanted.items() if made.get(k) != v]
    if changed:
        return False, f"redone: its outputs were made with other settings ({'; '.join(changed)})"
    return True, ""


def _write_manifest(pair: Pair, settings: BatchSettings) -> None:
    from .. import __version__
    from .._atomic import atomic_file

    with atomic_file(manifest_path(pair.outputs), suffix=".json") as tmp, open(tmp, "w", encoding="utf-8") as f:
        json.dump({"ilex_version": __version__, "settings": settings.pair_settings(pair)}, f, indent=2)
        f.write("\n")


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


class PeakMemory:
    """The highest resident memory (GiB) of this process while the `with` block runs (or from
    `start()` to `stop()`, which may be called on another thread)."""

    def __init__(self, interval: float = 0.1):
        self.interval = interval
        self.peak = 0.0
        self._stop = threading.Event()

    def _sample(self) -> None:
        import psutil

        process = psutil.Process()
        while True:
            self.peak = max(self.peak, process.memory_info().rss / 2**30)
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


def error_text(error: BaseException) -> str:
    """One line for the summary: the message of an ilex error, else the exception's class and message."""
    if isinstance(error, IlexError):
        return str(error)
    if isinstance(error, MemoryError):
        return "out of memory; try a smaller extent, e.g. -e 192"
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}".rstrip(": ")


def _record(pair: Pair, status: str, **kwargs) -> PairRecord:
    for key in ("started", "finished"):  # Unix times in, readable UTC times out
        if isinstance(kwargs.get(key), float):
            kwargs[key] = datetime.datetime.fromtimestamp(kwargs[key], datetime.UTC).isoformat(timespec="milliseconds")
    return PairRecord(pair.label, pair.index, pair.moving, pair.fixed, status, outputs=dict(pair.outputs), **kwargs)


@dataclass
class _Registered:
    """A pair between its registration and its outputs (`register_pair` -> `finish_pair`)."""

    pair: Pair
    result: object  # Registration
    hyper: float
    settings: BatchSettings
    memory: PeakMemory
    start: float
    started: float
    worker: str


def register_pair(registrar, pair: Pair, settings: BatchSettings, worker: str = "") -> PairRecord | _Registered:
    """The registration half of `run_pair`: a failed record, or what `finish_pair` writes out."""
    start, started = time.perf_counter(), time.time()
    worker = worker or socket.gethostname()
    if pair.problem:
        return _record(
            pair, "failed", error=pair.problem, seconds=0.0, worker=worker, started=started, finished=started
        )
    method, hyper, options = settings.combination(pair)
    memory = PeakMemory().start()
    try:
        if pair.options and not _takes_optimiser_options(method):
            raise OptionError(
                f"{', '.join(pair.options)}: the optimiser's options, for method optimize (this row runs "
                f"{method or 'the default method'})"
            )
        check_outputs(pair.outputs, {"moving": pair.moving, "fixed": pair.fixed})
        # Names the method cannot write (an LTA from a warp method) fail now, not after the network.
        chosen = registrar.method_for(method, hyper, **dict(options))
        check_transform_outputs(pair.outputs, chosen.name, warp_format=settings.warp_format)
        result = registrar.register(
            pair.moving,
            pair.fixed,
            method=method,
            hyper=hyper,
            init=pair.init,
            keep_inputs="out_dir" in pair.outputs,
            **dict(options),
        )
    except Exception as e:  # noqa: BLE001 — one bad pair must not stop the batch; its error goes to the summary
        memory.stop()
        return _record(
            pair,
            "failed",
            seconds=time.perf_counter() - start,
            peak_memory_gib=memory.peak,
            error=error_text(e),
            worker=worker,
            started=started,
            finished=time.time(),
        )
    return _Registered(pair, result, hyper, settings, memory, start, started, worker)


def finish_pair(outcome: PairRecord | _Registered) -> PairRecord:
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
        _write_manifest(r.pair, r.settings)
    except Exception as e:  # noqa: BLE001 — as in register_pair
        return _record(
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
        return _record(
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


def skipped(pair: Pair) -> PairRecord:
    return _record(pair, "skipped", note="all outputs exist, made with these settings (pass --overwrite to redo)")


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
) -> list[PairRecord]:
    """Run every pair of `pairs` and return their records in the pairs' order.

    A pair whose outputs all exist, made with these settings (`finished`), is skipped unless
    `overwrite` (so a rerun after a crash does only what is left); one whose outputs were made
    otherwise, or not by ilex batch, is redone, and its record's `note` says why. Locally, pairs
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
    bar = _progress_bar(len(pairs), len(records), progress)
    with bar:
        if client is None:
            results = iter_local(todo, settings, registrar)
        else:
            from .dask import iter_cluster

            results = iter_cluster(client, todo, settings, memory_resource=memory_resource, memory_bytes=memory_bytes)
        for record in results:
            if record.index in notes:
                record.note = notes[record.index]
            records[record.index] = record
            if on_record is not None:
                on_record(record)
            bar.update(1)
            failed = sum(r.status == "failed" for r in records.values())
            if failed:
                bar.set_postfix_str(f"{failed} failed", refresh=False)
    return [records[p.index] for p in pairs]


def _progress_bar(total: int, done: int, show: bool):
    import sys

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
        import sys

        self.n += n
        print(f"ilex batch: {self.n}/{self.total} pairs{self.postfix}", file=sys.stderr, flush=True)

    def set_postfix_str(self, text: str, refresh: bool = True) -> None:
        self.postfix = f" ({text})"


class _NoBar(contextlib.nullcontext):
    def update(self, n: int = 1) -> None:
        pass

    def set_postfix_str(self, text: str, refresh: bool = True) -> None:
        pass


def write_summary(
    records: list[PairRecord], prefix: str | os.PathLike, settings: BatchSettings | None = None
) -> tuple[str, str]:
    """Write PREFIX.csv and PREFIX.json (atomically); returns both paths.

    CSV columns: pair, index, moving, fixed, status, seconds, peak_memory_gib, folding_percent,
    error, worker, started, finished. The JSON holds the same records (with their outputs), the totals per status
    and the settings.
    """
    import csv

    from .._atomic import atomic_file

    prefix = os.fspath(prefix)
    columns = [c for c in PairRecord.__dataclass_fields__ if c != "outputs"]
    csv_path, json_path = f"{prefix}.csv", f"{prefix}.json"
    with atomic_file(csv_path, suffix=".csv") as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, columns, extrasaction="ignore")
        writer.writeheader()
        for record in records:
            writer.writerow(
                {
                    k: ("" if v is None else round(v, 4) if isinstance(v, float) else v)
                    for k, v in record.to_dict().items()
                }
            )
    totals = {status: sum(r.status == status for r in records) for status in STATUSES}
    document = {
        "totals": totals,
        "settings": settings.as_record() if settings else None,
        "pairs": [r.to_dict() for r in records],
    }
    with atomic_file(json_path, suffix=".json") as tmp, open(tmp, "w", encoding="utf-8") as f:
        json.dump(document, f, indent=2)
        f.write("\n")
    return csv_path, json_path


def _takes_optimiser_options(method: str | Method | None) -> bool:
    """Whether rows may set the optimiser's options for `method` (a Method object carries its own)."""
    from ..registration.methods import method_info

    try:
        return isinstance(method, str) and method_info(method).optimiser
    except ValueError:  # an unknown method: its row fails with the resolver's message
        return False
