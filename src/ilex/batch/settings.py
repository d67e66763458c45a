"""What every pair of a batch shares (`BatchSettings`), and what each pair runs with."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass

from ..registration.methods.base import Method
from ..registration.settings import Settings, option_items
from .pairs import Pair


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
        if rows_set_optimiser_options(method):
            options = {k: v for k, v in {**self.optimiser_options, **pair.options}.items() if v is not None}
        return (
            method,
            self.effective_hyper if pair.hyper is None else pair.hyper,
            option_items(options),
        )

    def runs_detector(self, pairs: Iterable[Pair]) -> bool:
        """Whether any of `pairs` runs the affine detector (joint, affine, rigid), whose peak
        memory is above the deformable network's. No method anywhere means the weights' own
        (`methods.default_method_name`)."""
        from ..registration.memory import runs_detector
        from ..registration.methods import default_method_name

        default = default_method_name(self.weights)
        return any(runs_detector(self.combination(p)[0] or default) for p in pairs if p.problem is None)

    def memory_estimate(self, pairs: Iterable[Pair], width: int = 256) -> float:
        """Peak memory (bytes) of one registration of this batch on CPU, the largest over `pairs`' methods."""
        from ..registration.memory import estimate_peak_bytes

        return estimate_peak_bytes(self.extent, width, detector=self.runs_detector(pairs))

    def registrar(self, pairs: Iterable[Pair] = ()):
        """A `Registrar` with the model loaded and the methods `pairs` need made; the loaded
        model is then let go (the hypernetwork is 3.5 GB; each λ's U-Net 1/33 of that)."""
        combinations = sorted({self.combination(p) for p in pairs if p.problem is None}, key=combination_order)
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
        (`manifest.MANIFEST_SUFFIX`) so that a rerun knows what made them."""
        method, hyper, options = self.combination(pair)
        weights = self.weights if isinstance(self.weights, tuple) else () if self.weights is None else (self.weights,)
        if method is not None and not isinstance(method, str):
            method = repr(method)  # a Method object (ilex template's stages): its options are in its repr
        record = {
            "moving": pair.moving,
            "fixed": pair.fixed,
            "init": pair.init,
            **({"masks": dict(sorted(pair.masks.items()))} if pair.masks else {}),
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


def combination_order(combination: tuple) -> tuple:
    """A sort key for (method, λ, options) combinations, where the method may be a name, a
    `Method` object (by its repr) or None (the default)."""
    method = combination[0]
    return ("" if method is None else method if isinstance(method, str) else repr(method), *combination[1:])


def _absolute(path: str) -> str:
    # A weights path names the same file from any directory; a hub id stays as it is.
    return os.path.abspath(path) if os.path.exists(path) else path


def rows_set_optimiser_options(method: str | Method | None) -> bool:
    """Whether rows may set the optimiser's options for `method`, a name (its class's
    `takes_optimiser_options`); a Method object carries its own, so rows set none."""
    from ..registration.methods import method_class

    try:
        return isinstance(method, str) and method_class(method).takes_optimiser_options
    except ValueError:  # an unknown method: its row fails with the resolver's message
        return False
