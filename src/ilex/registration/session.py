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
from .methods import method_facts
from .methods.base import check_hyper
from .pipeline import Registration, register
from .settings import DEFAULT_HYPER, Settings, option_items

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

    `model` is what `register` takes (`ilex.load(...)`); `settings` (`ilex.Settings`), or its
    fields and the optimiser's options as keywords, are the defaults of every `register` call;
    `method`, `hyper` and the optimiser's options can change per call. A new extent or steps
    value compiles the network again: make one `Registrar` per extent.
    Thread-safe: calls may come from several threads (they then share the CPU; each call's
    result, the optimiser's chosen similarity included, is its own).
    """

    def __init__(self, model=None, *, settings: Settings | None = None, **kwargs):
        self.model = model
        self.settings = Settings.of(settings, **kwargs)
        self._methods: dict[tuple, object] = {}
        self._failed: dict[tuple, Exception] = {}  # what `prepare` could not make, raised again when asked for
        self._lock = threading.Lock()
        self._last_fixed: tuple[tuple, Image] | None = None  # `_fixed_image`'s

    @property
    def extent(self) -> int:  # the attribute it was before the settings became one object
        return self.settings.extent

    @classmethod
    def from_weights(
        cls, weights=None, *, prepare: Iterable[tuple] | None = None, strict: bool = True, **kwargs
    ) -> Registrar:
        """Load `weights` (bundle directory, Hugging Face repo id, or FreeSurfer .h5; a list of
        them for methods that take several models; default as `ilex register`'s default,
        `-m joint`: synthmorph.affine.2.h5 and synthmorph.deform.3.h5 from $FREESURFER_HOME,
        else their hub bundles).

        With `prepare`, (method, λ) or (method, λ, options) combinations (method None: the
        default), the methods and their U-Nets are made now and the loaded model (the 3.5 GB
        hypernetwork) is let go: later calls must use one of them. A combination that cannot be
        made raises at once (`strict`), or, with `strict=False` (a batch, where it fails only its
        own pairs), each time it is asked for. Other keyword arguments are the constructor's.
        Raises `BundleError` when the weights cannot be loaded. This is the one place a warm
        registrar is built: `register`, `ilex batch`, its Dask workers and `ilex template` all
        come here.
        """
        from ..bundle.weights import load_weights  # here: equinox only for the networks

        registrar = cls(load_weights(weights), **kwargs)
        if prepare is not None:
            failed = registrar.prepare(prepare)
            if failed and strict:
                raise next(iter(failed.values()))
            registrar.model = None
        return registrar

    def prepare(self, combinations: Iterable[tuple]) -> dict[tuple, Exception]:
        """Make the method (and U-Net) for every (method, λ) or (method, λ, options) in
        `combinations` now (`options`: a dict or its items); returns the error of each that could
        not be made (e.g. a method the model does not provide), by the combination as given."""
        failed = {}
        for combination in combinations:
            method, hyper, options = (*combination, {})[:3]
            try:
                self.method_for(method, hyper, **dict(options))
            except (ValueError, TypeError) as e:
                failed[tuple(combination)] = e
                # Kept under the key `method_for` looks up, where None means the default method.
                self._failed[self._key(method, hyper, dict(options))] = e
        return failed

    def _key(self, method, hyper, options: dict) -> tuple:
        s = self.settings
        method = s.method if method is None else method
        hyper = s.hyper if hyper is None else float(hyper)
        return method, DEFAULT_HYPER if hyper is None else hyper, option_items({**s.optimiser_options, **options})

    def method_for(self, method=None, hyper: float | None = None, **options):
        """The `Method` for `method` (a name, a `Method`, or None for the default) at λ=`hyper`
        with the optimiser's `options` (added to the settings'), made once and kept. Raises
        `OptionError` for a λ that was not prepared once the model has been let go
        (`from_weights(..., prepare=...)`), and what `as_method` raises for a `Method` given
        with a different λ or with options."""
        from .methods import Method

        chosen = self.settings.method if method is None else method
        if isinstance(chosen, Method):
            return self.settings.method_for(None, chosen, hyper, **options)
        key = self._key(method, hyper, options)
        method, hyper = key[0], key[1]
        check_hyper(hyper)
        if key in self._failed:
            raise self._failed[key]
        with self._lock:
            if key not in self._methods:
                if self.model is None and (method is None or method_facts(method).weight_files):  # needs a model
                    ready = ", ".join(f"{m or 'default'} at λ={h:g}" for m, h, _ in self._methods) or "none"
                    raise OptionError(
                        f"no model loaded for method {method or 'default'} at this λ (prepared: {ready})",
                        argument="hyper",
                        value=hyper,
                    )
                self._methods[key] = self.settings.method_for(self.model, method, hyper, **dict(key[2]))
            return self._methods[key]

    def register(
        self,
        moving,
        fixed,
        *,
        method=None,
        hyper: float | None = None,
        init=None,
        stages=None,
        keep_inputs: bool = False,
        mask_fixed=None,
        mask_moving=None,
        mask_threshold: float | None = None,
        **options,
    ) -> Registration:
        """Register `moving` onto `fixed` (paths, nibabel images or `Image`s); nothing is written.

        `init` is an initial affine, moving to fixed: a file (LTA, ITK .txt/.tfm, .mat) or a 4x4
        moving-voxel to fixed-voxel matrix. `options` are the optimiser's for this call (added
        to the constructor's). Returns the `Registration` that `register` returns (with the
        network inputs when `keep_inputs`, as `-d` needs). `mask_fixed`, `mask_moving` and
        `mask_threshold` are cost-function masks, as `register` takes them. Raises what `register` raises.
        """
        from .affine_init import read_initial_affine

        moving = as_image(moving, "moving image")
        fixed = self._fixed_image(fixed)
        if init is not None and not isinstance(init, np.ndarray):
            init = read_initial_affine(
                os.fspath(init), moving.affine, fixed.affine, moving_shape=moving.shape, fixed_shape=fixed.shape
            )
        chosen = self.method_for(method, hyper, **options)
        return register(
            moving,
            fixed,
            settings=self.settings.with_method(chosen),
            init_vox=init,
            stages=stages,
            keep_inputs=keep_inputs,
            mask_fixed=mask_fixed,
            mask_moving=mask_moving,
            mask_threshold=mask_threshold,
        )

    def _fixed_image(self, fixed) -> Image:
        """`as_image(fixed)`, the last fixed file's voxels kept: a batch to one atlas or a template
        round registers every image to the same file, which was read again for each (a 1 mm head:
        0.1 s a pair). Kept while the file's path, device, inode, size and modification and status
        change times stay the same (a file replaced by a copy that keeps its modification time has a
        new status change time)."""
        if not isinstance(fixed, (str, os.PathLike)):
            return as_image(fixed, "fixed image")
        try:
            st = os.stat(fixed)
        except OSError:
            return as_image(fixed, "fixed image")  # its error, as before
        key = (os.fspath(fixed), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        with self._lock:
            if self._last_fixed is not None and self._last_fixed[0] == key:
                return self._last_fixed[1]
        image = as_image(fixed, "fixed image")
        with self._lock:
            self._last_fixed = (key, image)
        return image

    def network_width(self) -> int:
        """The widest layer (channels) of the prepared U-Nets and the loaded model; 256 if unknown."""
        from ..models.synthmorph_deform import SynthMorphDeform, SynthMorphUNet

        nets = [n for m in self._methods.values() for n in m.networks()] + [self.model]
        unets = [n for n in nets if isinstance(n, (SynthMorphUNet, SynthMorphDeform))]  # the detector peaks lower
        widths = [max(n.enc_nf + n.dec_nf + n.add_nf) for n in unets]
        return max(widths, default=256)

    def memory_estimate(self) -> float:
        """Estimated peak resident memory (bytes) of one registration on CPU with any prepared
        method, the affine detector's peak included where one runs it
        (`ilex.registration.memory.estimate_peak_bytes`)."""
        from .memory import estimate_peak_bytes

        detector = any(m.runs_detector for m in self._methods.values())
        return estimate_peak_bytes(self.settings.extent, self.network_width(), detector=detector)


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
