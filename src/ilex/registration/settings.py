"""How to register, said once: the settings that `register`, `Registrar`, `ilex batch` and
`ilex template` share.

    settings = ilex.Settings(method="optimize", hyper=0.7, extent=192, options={"similarity": "mi"})
    result = ilex.register("moving.nii.gz", "fixed.nii.gz", settings=settings)
    registrar = ilex.Registrar(settings=settings)            # the same, warm, pair after pair

`BatchSettings` and `TemplateSettings` extend it with what a study adds (weights, output
format, devices), so a setting is declared, defaulted and checked in this one place.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import OptionError
from .methods.base import Method, check_hyper, check_steps

DEFAULT_HYPER = 0.5  # mri_synthmorph's -r
DEFAULT_STEPS = 7  # mri_synthmorph's -n
DEFAULT_EXTENT = 256  # mri_synthmorph's -e


def check_extent(extent: int) -> None:
    """Refuse a network cube side that is not a positive multiple of 32 (the U-Net's five levels)."""
    if extent < 32 or extent % 32:
        raise OptionError(
            "the extent must be a positive multiple of 32 (256 default, 192 to save memory)",
            argument="extent",
            value=extent,
        )


def option_items(options) -> tuple:
    """The optimiser's options (a mapping or its items) as sorted (name, value) pairs, lists as
    tuples: one hashable form, so that equal options compare, hash and key caches alike."""
    items = options.items() if isinstance(options, Mapping) else options
    return tuple(sorted((str(k), tuple(v) if isinstance(v, (list, tuple)) else v) for k, v in items))


def check_options(hyper: float, steps: int, extent: int) -> None:
    """Refuse a λ, step count or extent out of range (`OptionError` naming the argument)."""
    check_hyper(hyper)
    check_steps(steps)
    check_extent(extent)


@dataclass(frozen=True)
class Settings:
    """What a registration runs with, besides the model and the two images.

    `method`: a name as `-m` takes it ("joint", "deform", "affine", "rigid", "optimize",
    "refine"), a ready `Method` object (which carries its own λ, steps and options), or None
    for what the model runs by default. `hyper` (λ, `-r`) and `steps` (`-n`): None means the
    Method object's own, else 0.5 and 7. `extent` (`-e`): the network cube side in mm
    for SynthMorph's models; for the optimiser, which works at the fixed image's resolution, the
    cap on its grid (at most extent^3 voxels).
    `algorithm`: the networks' convolution ("direct", "winograd", "winograd4"; None picks per
    network and device). `clip_percentile`: the model card's percentile clipping (not
    FreeSurfer's). `options`: the optimiser's (`similarity`, `levels`, `iterations`, ...; see
    `OptimizeMethod`), for method "optimize" or "refine"; stored as sorted (name, value) items
    so that settings hash and compare by value (lists become tuples).

    Raises `OptionError` for λ outside [0, 1], fewer than one step, or an extent that is not a
    positive multiple of 32.
    """

    method: Any = None
    hyper: float | None = None
    steps: int | None = None
    extent: int = DEFAULT_EXTENT
    algorithm: str | None = None
    clip_percentile: float | None = None
    options: Any = ()

    def __post_init__(self):
        object.__setattr__(self, "options", option_items(self.options))
        if self.hyper is not None:
            object.__setattr__(self, "hyper", float(self.hyper))
        check_options(self.effective_hyper, self.effective_steps, self.extent)

    @classmethod
    def of(cls, settings: Settings | None = None, **changes) -> Settings:
        """`settings` (default: all defaults) with `changes`: field values, None meaning "keep",
        and any other keyword an optimiser option (as `register(..., similarity="mi")`)."""
        base = cls() if settings is None else settings
        names = {f.name for f in dataclasses.fields(base)}
        fields_ = {k: v for k, v in changes.items() if k in names and k != "options" and v is not None}
        options = {k: v for k, v in changes.items() if k not in names}
        options.update(changes.get("options") or {})
        if options:
            fields_["options"] = {**base.optimiser_options, **options}
        return dataclasses.replace(base, **fields_) if fields_ else base

    def as_record(self) -> dict:
        """Every field as JSON-ready values (what a summary or report records): the optimiser's
        options as a mapping, a Method object by its repr."""
        record = dataclasses.asdict(self)
        record["options"] = self.optimiser_options
        if self.method is not None and not isinstance(self.method, str):
            record["method"] = repr(self.method)
        return json.loads(json.dumps(record))  # tuples as lists, as they read back

    def registration_settings(self) -> Settings:
        """The plain `Settings` part of an extended one (`BatchSettings`, `TemplateSettings`)."""
        return Settings(**{f.name: getattr(self, f.name) for f in dataclasses.fields(Settings)})

    @property
    def optimiser_options(self) -> dict:
        return dict(self.options)

    @property
    def effective_hyper(self) -> float:
        """The λ a registration runs with: this one, else the Method object's own, else 0.5."""
        if self.hyper is not None:
            return self.hyper
        own = self.method.hyper if isinstance(self.method, Method) else None
        return DEFAULT_HYPER if own is None else float(own)

    @property
    def effective_steps(self) -> int:
        """The integration steps a registration runs with: these, the Method object's own, or 7."""
        if self.steps is not None:
            return self.steps
        own = self.method.steps if isinstance(self.method, Method) else None
        return DEFAULT_STEPS if own is None else int(own)

    def method_for(self, model, method=None, hyper: float | None = None, **options):
        """The `Method` these settings run with `model`, with `method`, `hyper` and optimiser
        `options` changed for this call (`ilex.registration.methods.as_method` says what it
        refuses)."""
        from .methods import as_method

        return as_method(
            model,
            self.method if method is None else method,
            hyper=self.hyper if hyper is None else hyper,
            steps=self.steps,
            algorithm=self.algorithm,
            **{**self.optimiser_options, **options},
        )

    def with_method(self, method) -> Settings:
        """These settings for a ready `Method` object: its own λ, options and (where it has them)
        integration steps replace ours."""
        steps = None if method.steps is not None else self.steps
        return dataclasses.replace(self, method=method, hyper=None, steps=steps, options=())
