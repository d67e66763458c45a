"""`ilex batch` on a Dask cluster: each worker loads the model once and keeps it warm.

    from distributed import Client, LocalCluster
    from ilex.batch import BatchSettings, read_pairs, run_batch

    cluster = LocalCluster(n_workers=2, threads_per_worker=1, resources={"MEMORY": 8e9})
    records = run_batch(read_pairs("pairs.csv"), BatchSettings(extent=192), client=Client(cluster))

Dask does the scheduling: a `WorkerPlugin` (`IlexWorker`) is registered on every worker,
including workers that join or are restarted later, and builds that worker's `Registrar` on the
first pair it gets; every pair is one task. A task declares the memory one registration needs
(`ilex.registration.memory.estimate_peak_bytes`) as the resource `MEMORY` when the workers
declare it (`dask worker ... --resources MEMORY=16e9`), so a worker never runs more pairs at
once than fit. A worker that dies has its pairs rerun elsewhere by the scheduler (up to
`distributed.scheduler.allowed-failures` times, then the pair is reported failed); outputs
land whole or not at all, so a pair killed mid-write leaves no half-written file.
"""

from __future__ import annotations

import hashlib
import threading
import warnings
from collections.abc import Iterator

from ..errors import OptionError
from ..registration.methods.base import Method
from .one_pair import run_pair
from .pairs import Pair
from .records import PairRecord, error_text, record
from .settings import BatchSettings, combination_order

try:
    from distributed import WorkerPlugin as _WorkerPlugin
except ImportError:  # the optional extra is not installed: the class below is never registered then
    _WorkerPlugin = object


def _require_distributed():
    try:
        import distributed
    except ImportError:
        raise OptionError("--scheduler: Dask is not installed; pip install 'ilex[dask]'") from None
    return distributed


class IlexWorker(_WorkerPlugin):
    """Keeps one warm `Registrar` per worker process for one batch's `settings`.

    The model is loaded by the first task on the worker, in the task's thread (loading takes
    seconds to minutes and must not block the worker's event loop and its heartbeats).
    """

    def __init__(self, settings: BatchSettings, combinations: list[tuple[str | Method | None, float, tuple]]):
        self.settings = settings
        self.combinations = list(combinations)
        digest = hashlib.sha1(repr((settings, self.combinations)).encode()).hexdigest()[:12]
        self.name = f"ilex-{digest}"

    def setup(self, worker) -> None:
        import jax

        from .._cache import enable_compilation_cache

        self.address = worker.address
        self._registrar = None
        self._lock = threading.Lock()
        if not self.settings.gpu:
            jax.config.update("jax_platforms", "cpu")
        enable_compilation_cache(enable=None if self.settings.compilation_cache else False)

    def registrar(self):
        with self._lock:
            if self._registrar is None:
                self._registrar = self.settings.prepared_registrar(self.combinations)
            return self._registrar


def register_pair_task(plugin_name: str, pair: Pair) -> dict:
    """The task: register `pair` on this worker with its warm `Registrar`; returns the record as a dict."""
    from distributed import get_worker

    worker = get_worker()
    plugin = worker.plugins[plugin_name]
    try:
        registrar = plugin.registrar()
    except Exception as e:  # noqa: BLE001 — weights that do not load here fail this worker's pairs, with the reason
        return record(pair, "failed", error=error_text(e), worker=worker.address).to_dict()
    return run_pair(registrar, pair, plugin.settings, worker=worker.address).to_dict()


def memory_capacities(client, resource: str = "MEMORY") -> list[float]:
    """The `resource` each worker declares (workers without it left out)."""
    workers = (
        client.scheduler_info(n_workers=-1)["workers"]
        if _takes_n_workers(client)
        else client.scheduler_info()["workers"]
    )
    return [float(w["resources"][resource]) for w in workers.values() if resource in (w.get("resources") or {})]


def _takes_n_workers(client) -> bool:
    import inspect

    return "n_workers" in inspect.signature(client.scheduler_info).parameters


def iter_cluster(
    client,
    pairs: list[Pair],
    settings: BatchSettings,
    *,
    memory_resource: str = "MEMORY",
    memory_bytes: float | None = None,
) -> Iterator[PairRecord]:
    """Run `pairs` on `client`'s workers; yields each pair's record as it finishes.

    `memory_bytes` is what one registration needs (default: the estimate for `settings.extent`,
    a full-width network, 256 channels, which bounds every SynthMorph model, and the affine
    detector's peak when any pair runs it). Raises
    `OptionError` when workers declare `memory_resource` but none has that much. A pair whose
    task is lost (its worker died more often than the scheduler allows) is reported failed.
    """
    distributed = _require_distributed()
    if not pairs:
        return
    need = float(memory_bytes if memory_bytes is not None else settings.memory_estimate(pairs))
    capacities = memory_capacities(client, memory_resource)
    if capacities and max(capacities) < need:
        raise OptionError(
            f"no Dask worker has room for one registration at extent {settings.extent}: it needs "
            f"{memory_resource}={need:.3g} bytes, the largest worker declares {max(capacities):.3g}"
        )
    if not capacities:
        warnings.warn(
            f"ilex batch: no Dask worker declares the resource {memory_resource}; pairs are not limited by memory "
            f"(start workers with --resources {memory_resource}=<bytes>)",
            stacklevel=2,
        )
    resources = {memory_resource: need} if capacities else None
    combinations = sorted({settings.combination(p) for p in pairs if p.problem is None}, key=combination_order)
    plugin = IlexWorker(settings, combinations)
    client.register_plugin(plugin)
    futures = {}
    for pair in pairs:
        future = client.submit(
            register_pair_task,
            plugin.name,
            pair,
            key=f"ilex-pair-{pair.index}-{plugin.name}-{id(futures)}",
            resources=resources,
            pure=False,
        )
        futures[future] = pair
    for future in distributed.as_completed(futures):
        pair = futures[future]
        try:
            yield PairRecord(**future.result())
        except Exception as e:  # noqa: BLE001 — KilledWorker, a lost connection: the pair is reported, never dropped
            yield record(pair, "failed", error=error_text(e))
        finally:
            future.release()


def dask_client(scheduler: str | None = None, local_workers: int | None = None, memory_resource: str = "MEMORY"):
    """(client, cluster): a `distributed.Client` of the scheduler at `scheduler` (cluster None),
    or of a new cluster of `local_workers` processes on this machine, one thread each, that
    share the free memory as the resource `memory_resource`. The caller closes both."""
    try:
        from distributed import Client, LocalCluster
    except ImportError:
        raise OptionError("--scheduler/--local-workers: Dask is not installed; pip install 'ilex[dask]'") from None
    if scheduler:
        return Client(scheduler), None
    from ..registration.memory import available_bytes

    # Memory is shared by the workers and limited by the MEMORY resource, not by Dask's own
    # per-worker limit (which would restart a worker in the middle of a large registration).
    per_worker = available_bytes() / local_workers
    cluster = LocalCluster(
        n_workers=local_workers,
        threads_per_worker=1,
        processes=True,
        memory_limit=0,
        resources={memory_resource: per_worker},
        dashboard_address=None,
    )
    return Client(cluster), cluster
