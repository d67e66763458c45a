"""A warm registration session: load the model once, register pair after pair without recompiling.

    import ilex
    reg = ilex.Registrar.from_weights("synthmorph.deform.3.h5", extent=256)
    for moving, fixed in pairs:
        result = reg.register(moving, fixed)          # paths, nibabel images or ilex Images
        ilex.write_outputs(result, {"out_moving": ..., "trans": ...})

What stays warm: the loaded model; each λ's generated U-Net (`model.at_hyper(λ)`, made once per
λ and method); and the compiled programs, which live in the module-level jits of the pipeline
and the methods, keyed by argument shapes. So for a fixed extent, steps and model:

* the network (both U-Net passes and scaling and squaring of ±v) compiles once, for the first
  pair, and never again: its inputs are (E, E, E) cubes whatever the images' shapes;
* each new λ traces and compiles the network once more, because the U-Net carries λ as a
  static field (with the persistent cache on, that compilation is a disk hit: the program is
  the same);
* the steps whose arrays have the images' own shapes (resampling into network space, composing
  the warps onto each native grid, RAS conversion, moved images, the QC Jacobian) compile once
  per distinct image shape. Those take well under a second each; a study whose scans share a
  shape compiles them once. `CompileCounter` shows what compiled.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable

import numpy as np

from ..errors import OptionError
from ..image.io import Image, from_nibabel, load_image
from .pipeline import Registration, check_options, register

_TRACE_EVENT = "/jax/core/compile/jaxpr_trace_duration"
_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"


def as_image(image, what: str = "image") -> Image:
    """`image` as an ilex `Image`: an `Image` itself, a nibabel image, or a path (loaded, checked)."""
    if isinstance(image, Image):
        return image
    if hasattr(image, "dataobj") and hasattr(image, "affine"):
        return from_nibabel(image, what=what)
    if isinstance(image, (str, os.PathLike)):
        return load_image(image, what=what)
    raise TypeError(f"{what}: expected a path, a nibabel image or an ilex Image, got {type(image).__name__}")


class Registrar:
    """Registers pair after pair with one model, keeping its per-λ U-Nets and compiled programs.

    `model` is what `register` takes (`ilex.load(...)`); `method`, `hyper`, `steps`, `extent`,
    `algorithm` and `clip_percentile` are the defaults of every `register` call (see
    `ilex.registration.pipeline.register`); `method` and `hyper` can change per call. A new
    extent or steps value compiles the network again: make one `Registrar` per extent.
    Thread-safe: calls may come from several threads (they then share the CPU).
    """

    def __init__(self, model=None, *, method=None, hyper: float = 0.5, steps: int = 7, extent: int = 256,
                 algorithm: str | None = None, clip_percentile: float | None = None):
        check_options(hyper, steps, extent)
        self.model = model
        self.method = method
        self.hyper = float(hyper)
        self.steps = steps
        self.extent = extent
        self.algorithm = algorithm
        self.clip_percentile = clip_percentile
        self._methods: dict[tuple, object] = {}
        self._failed: dict[tuple, Exception] = {}  # what `prepare` could not make, raised again when asked for
        self._lock = threading.Lock()

    @classmethod
    def from_weights(cls, weights=None, *, prepare: Iterable[tuple[str | None, float]] | None = None,
                     **kwargs) -> Registrar:
        """Load `weights` (bundle directory, Hugging Face repo id, or FreeSurfer .h5; a list of
        them for methods that take several models; default as `ilex register`:
        $FREESURFER_HOME's synthmorph.deform.3.h5, else the hub bundle).

        With `prepare`, (method, λ) pairs (method None: the default), the methods and their
        U-Nets are made now and the loaded model (the 3.5 GB hypernetwork) is let go: later
        calls must use one of them. Other keyword arguments are the constructor's. Raises
        `BundleError` when the weights cannot be loaded, and the first error of `prepare`.
        """
        registrar = cls(load_weights(weights), **kwargs)
        if prepare is not None:
            failed = registrar.prepare(prepare)
            if failed:
                raise next(iter(failed.values()))
            registrar.model = None
        return registrar

    def prepare(self, combinations: Iterable[tuple[str | None, float]]) -> dict[tuple, Exception]:
        """Make the method (and U-Net) for every (method, λ) in `combinations` now; returns the
        error of each that could not be made (e.g. a method the model does not provide)."""
        failed = {}
        for method, hyper in combinations:
            try:
                self.method_for(method, hyper)
            except (ValueError, TypeError) as e:
                # Kept under the key `method_for` looks up: None means the default method.
                failed[(method, hyper)] = self._failed[(self.method if method is None else method, float(hyper))] = e
        return failed

    def method_for(self, method=None, hyper: float | None = None):
        """The `Method` for `method` (a name, a `Method`, or None for the default) at λ=`hyper`,
        made once and kept. Raises `OptionError` for a λ that was not prepared once the model
        has been let go (`from_weights(..., prepare=...)`)."""
        from .methods import Method, as_method

        method = self.method if method is None else method
        if isinstance(method, Method):
            return method
        hyper = self.hyper if hyper is None else float(hyper)
        check_options(hyper, self.steps, self.extent)
        key = (method, hyper)
        if key in self._failed:
            raise self._failed[key]
        with self._lock:
            if key not in self._methods:
                if self.model is None and method != "optimize":  # the optimiser needs no model
                    ready = ", ".join(f"{m or 'default'} at λ={h:g}" for m, h in self._methods) or "none"
                    raise OptionError(f"-r {hyper:g}: no model loaded for method {method or 'default'} at this λ "
                                      f"(prepared: {ready})")
                self._methods[key] = as_method(self.model, method, hyper=hyper, algorithm=self.algorithm)
            return self._methods[key]

    def register(self, moving, fixed, *, method=None, hyper: float | None = None, init=None,
                 stages=None) -> Registration:
        """Register `moving` onto `fixed` (paths, nibabel images or `Image`s); nothing is written.

        `init` is an initial affine, moving to fixed: a file (LTA, ITK .txt/.tfm, .mat) or a 4x4
        moving-voxel to fixed-voxel matrix. Returns the `Registration` that `register` returns.
        Raises what `register` raises.
        """
        from .affine_init import read_initial_affine

        moving = as_image(moving, "moving image")
        fixed = as_image(fixed, "fixed image")
        if init is not None and not isinstance(init, np.ndarray):
            init = read_initial_affine(os.fspath(init), moving.affine, fixed.affine, moving_shape=moving.shape,
                                       fixed_shape=fixed.shape)
        return register(moving, fixed, None, method=self.method_for(method, hyper), hyper=self.hyper if hyper is None else hyper,
                        steps=self.steps, extent=self.extent, init_vox=init, clip_percentile=self.clip_percentile,
                        stages=stages)

    def network_width(self) -> int:
        """The widest layer (channels) of the prepared U-Nets and the loaded model; 256 if unknown."""
        nets = [m.unet for m in self._methods.values() if hasattr(m, "unet")] + [self.model]
        widths = [max(n.enc_nf + n.dec_nf + n.add_nf) for n in nets if hasattr(n, "enc_nf")]
        return max(widths, default=256)

    def memory_estimate(self) -> float:
        """Estimated peak resident memory (bytes) of one registration on CPU with any prepared
        method, the affine detector's peak included where one runs it
        (`ilex.registration.memory.estimate_peak_bytes`)."""
        from .memory import estimate_peak_bytes, runs_detector

        detector = any(runs_detector(m.name) for m in self._methods.values())
        return estimate_peak_bytes(self.extent, self.network_width(), detector=detector)


def load_weights(weights=None):
    """The model `weights` names (see `Registrar.from_weights`); a list gives a tuple of models,
    an empty one None (no model: `-m optimize`)."""
    from ..cli import register as register_cli

    if isinstance(weights, (list, tuple)):
        if not weights:  # a method that needs no weights (-m optimize)
            return None
        return tuple(load_weights(w) for w in weights) if len(weights) != 1 else load_weights(weights[0])
    path = os.fspath(weights) if weights is not None else register_cli.default_weights()
    # `ilex register`'s loader explains where to get the default weights when they are missing.
    loader = getattr(register_cli, "_load_weights", None)
    if loader is not None:
        return loader(path, explicit=weights is not None)
    from ..bundle import load

    return load(path)


class CompileCounter:
    """Counts JAX traces and XLA compilations inside a `with` block, by function name.

    `traces` and `compiles` map function name -> count. A backend compilation served from the
    persistent cache still counts as a compilation here (JAX reports both the same way);
    `cache_hits` counts those.
    """

    def __init__(self):
        self.traces: dict[str, int] = {}
        self.compiles: dict[str, int] = {}
        self.cache_hits = 0

    def _duration(self, event: str, duration: float, **kwargs) -> None:
        table = self.traces if event == _TRACE_EVENT else self.compiles if event == _COMPILE_EVENT else None
        if table is not None:
            name = str(kwargs.get("fun_name", "?"))
            table[name] = table.get(name, 0) + 1

    def _event(self, event: str, **kwargs) -> None:
        if event == "/jax/compilation_cache/cache_hits":
            self.cache_hits += 1

    def __enter__(self) -> CompileCounter:  # noqa: PYI034  final class in practice
        import jax.monitoring

        jax.monitoring.register_event_duration_secs_listener(self._duration)
        jax.monitoring.register_event_listener(self._event)
        return self

    def __exit__(self, *exc) -> None:
        import jax.monitoring

        jax.monitoring.unregister_event_duration_listener(self._duration)
        jax.monitoring.unregister_event_listener(self._event)
