"""Registration methods: each estimates a `NetworkTransform`; `registration.pipeline` does the rest.

| method   | module          | yields                                                               |
|----------|-----------------|----------------------------------------------------------------------|
| deform   | `synthmorph.py` | a half-resolution velocity (SynthMorph's hyper-U-Net)                 |
| affine   | `synthmorph.py` | a matrix (SynthMorph's feature detector, weighted least squares)      |
| rigid    | `synthmorph.py` | a matrix (the same, rotation and translation only)                    |
| joint    | `synthmorph.py` | a velocity in the affine's mid-space, with the matrix roots around it  |
| optimize | `optimize.py`   | an affine and a 4 mm velocity, optimised (no weights)                 |
| (optimize-affine) | `optimize.py` | a matrix: the optimiser's affine stage (`ilex template`)     |
| (refine) | `optimize.py`   | a model's velocity, optimised further (`--refine`)                    |
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from ...errors import OptionError
from .base import Method as Method
from .base import NetworkTransform as NetworkTransform
from .optimize import OptimizeAffineMethod as OptimizeAffineMethod
from .optimize import OptimizeMethod as OptimizeMethod
from .optimize import RefineMethod as RefineMethod
from .synthmorph import SynthMorphAffineMethod as SynthMorphAffineMethod
from .synthmorph import SynthMorphDeformMethod as SynthMorphDeformMethod
from .synthmorph import SynthMorphJointMethod as SynthMorphJointMethod

SYNTHMORPH_METHODS = ("joint", "deform", "affine", "rigid")
METHOD_NAMES = (*SYNTHMORPH_METHODS, "optimize")


def resolve_method_name(name: str) -> str:
    """The method that `name`, or an unambiguous start of one, names (`def` -> deform), as
    mri_synthmorph resolves `-m`. Raises `ValueError` saying what is wrong."""
    if name in METHOD_NAMES:
        return name
    matches = [m for m in METHOD_NAMES if name and m.startswith(name)]
    if len(matches) != 1:
        raise ValueError(f"{'ambiguous' if matches else 'unknown'} model; choose one of {', '.join(METHOD_NAMES)}")
    return matches[0]


@dataclass(frozen=True)
class MethodInfo:
    """What a method is, known before it runs or any weights load.

    The output writer (which transform files it can write), the memory estimate (the detector's
    peak), the registrar (whether it needs a model), the batch and the CLI (which options apply)
    read these instead of testing a method's name.
    """

    name: str
    yields_matrix: bool  # a matrix only (LTA, ITK text, -H); else a warp
    weight_files: tuple[str, ...]  # FreeSurfer's files it loads, in -w order; () for none
    runs_detector: bool  # runs SynthMorph's affine feature detector (its memory peak)
    optimiser: bool  # takes the optimiser's options (similarity, levels, iterations)
    refinable: bool  # the optimiser can start from its answer (--refine)
    centre_on_fixed: bool  # both network cubes centred on the fixed image (assumes prior alignment)
    summary: str


@functools.cache
def _infos() -> dict[str, MethodInfo]:
    from ...bundle.weights import WEIGHT_FILES

    rows = [  # name, matrix, detector, optimiser, refinable, class (for its cube centring), summary
        (
            "joint",
            False,
            True,
            False,
            False,
            SynthMorphJointMethod,
            "SynthMorph's affine, then its deformable model in the affine mid-space",
        ),
        (
            "deform",
            False,
            False,
            False,
            True,
            SynthMorphDeformMethod,
            "SynthMorph's deformable model (images already affinely aligned)",
        ),
        ("affine", True, True, False, True, SynthMorphAffineMethod, "SynthMorph's affine feature detector"),
        ("rigid", True, True, False, True, SynthMorphAffineMethod, "SynthMorph's rigid feature detector"),
        (
            "optimize",
            False,
            False,
            True,
            False,
            OptimizeMethod,
            "an affine and a diffeomorphic warp optimised directly (no weights)",
        ),
    ]
    out = {
        name: MethodInfo(name, matrix, WEIGHT_FILES[name], detector, optimiser, refinable, cls.centre_on_fixed, summary)
        for name, matrix, detector, optimiser, refinable, cls, summary in rows
    }
    # --refine: the optimiser started from a model's answer; always a warp.
    out["refine"] = MethodInfo("refine", False, (), False, True, False, False, "a model's answer optimised further")
    # The optimiser's affine stage alone (ilex template's first round without weights); a matrix.
    out["optimize-affine"] = MethodInfo(
        "optimize-affine", True, (), False, False, False, False, "an affine optimised directly (no weights)"
    )
    return out


def method_info(name) -> MethodInfo:
    """The `MethodInfo` of the method `name` names (abbreviations as `-m` takes them; "refine" for
    --refine), or of a `Method` object's `name`. Raises `ValueError` for an unknown or ambiguous name."""
    if not isinstance(name, str):
        name = getattr(name, "name", None)
        if not isinstance(name, str):
            raise TypeError(f"not a method name or Method object: {type(name).__name__}")
    infos = _infos()
    return infos[name] if name in infos else infos[resolve_method_name(name)]


def centres_on_fixed(name: str) -> bool:
    """Whether the method `name` (`--refine` included: it keeps its first method's cubes) centres
    both network cubes on the fixed image, so that the images must already overlap in world
    space, rather than each cube on its own image. Known before any model is loaded."""
    return method_info(name).centre_on_fixed


def needs_prior_affine(name: str) -> bool:
    """Whether the method `name` assumes the images are already affinely aligned (SynthMorph's
    `deform`, whose network cubes are both centred on the fixed image), so that a caller that has
    no initial affine must run an affine stage first (`ilex template`)."""
    return method_info(name).centre_on_fixed


def _unet(model, hyper: float, what: str):
    from ...models.synthmorph_deform import SynthMorphDeform, SynthMorphUNet

    if isinstance(model, SynthMorphDeform):
        model = model.at_hyper(hyper)
    if not isinstance(model, SynthMorphUNet):
        raise TypeError(f"{what} needs a SynthMorph deformable model, got {type(model).__name__}")
    return model


def _detector(model, what: str):
    from ...models.synthmorph_affine import SynthMorphAffine

    if not isinstance(model, SynthMorphAffine):
        raise TypeError(f"{what} needs a SynthMorph affine or rigid model, got {type(model).__name__}")
    return model


def infer_method_name(model) -> str:
    """The method a model (or an (affine, deformable) pair) runs by default."""
    from ...models.synthmorph_affine import SynthMorphAffine

    if isinstance(model, (tuple, list)):
        return "joint"
    if isinstance(model, SynthMorphAffine):
        return "rigid" if model.rigid else "affine"
    return "deform"


OPTIMISER_OPTIONS = ("similarity", "levels", "iterations", "velocity_scale", "affine", "progress")


def method_hyper(method) -> float | None:
    """The λ a `Method` object was made for (its own, or its U-Net's), None for one without λ."""
    for owner in (method, getattr(method, "unet", None), getattr(method, "first", None)):
        if owner is not None and getattr(owner, "hyper", None) is not None:
            return float(owner.hyper)
    return None


def as_method(
    model=None,
    method=None,
    *,
    hyper: float | None = None,
    steps: int | None = None,
    algorithm: str | None = None,
    **options,
) -> Method:
    """The `Method` that `register(..., model, method=...)` runs.

    `method` names what to do with `model` (inferred from it when None): a deformable model
    gives `deform`, an affine/rigid detector `affine` or `rigid`, a pair (detector, deformable
    model) `joint`; from such a pair, `deform` takes the deformable model and `affine`/`rigid`
    the detector. "optimize" is the optimiser alone, whatever `model` is (as `-m optimize`);
    "refine" optimises a SynthMorph deformable model's answer further (`--refine`). `hyper` is
    λ (default 0.5), `steps` the integration steps the optimiser assumes (default 7, the
    pipeline's), `options` the optimiser's (`similarity`, `levels`, `iterations`, ...: see
    `OptimizeMethod`); the SynthMorph methods take none. `algorithm` is the convolution of
    SynthMorph's networks, the U-Net's and the affine detector's ("direct", "winograd",
    "winograd4"; None: `default_algorithm()` for the U-Net, `default_detector_algorithm()` for
    the detector).

    `method` may also be a ready `Method`, which carries its own options: it is returned as it
    is, and `hyper` or `steps` that differ from its own, or any `options`, raise `OptionError`
    or `TypeError` instead of being ignored.
    """
    unknown = sorted(set(options) - set(OPTIMISER_OPTIONS))
    if unknown:
        raise TypeError(
            f"unknown method option{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}; "
            f"the optimiser takes {', '.join(OPTIMISER_OPTIONS)}"
        )
    if isinstance(method, Method):
        _check_same(method, hyper, steps, options)
        return method
    hyper = 0.5 if hyper is None else hyper
    steps = 7 if steps is None else steps
    if method == "optimize":
        return OptimizeMethod(hyper=hyper, steps=steps, **options)
    if method == "refine":
        return RefineMethod(
            first=as_method(model, "deform", hyper=hyper, algorithm=algorithm), hyper=hyper, steps=steps, **options
        )
    name = method or infer_method_name(model)
    if options:
        raise TypeError(
            f"-m {name} takes no optimiser options ({', '.join(options)}); they are for method='optimize' or 'refine'"
        )
    pair = isinstance(model, (tuple, list)) and len(model) == 2
    if name == "deform":
        return SynthMorphDeformMethod(_unet(model[1] if pair else model, hyper, "-m deform"), algorithm)
    if name in ("affine", "rigid"):
        return SynthMorphAffineMethod(
            _detector(model[0] if pair else model, f"-m {name}"), rigid=name == "rigid", algorithm=algorithm
        )
    if name == "joint":
        if not isinstance(model, (tuple, list)) or len(model) != 2:
            raise TypeError("-m joint needs a pair of models: (affine detector, deformable model)")
        return SynthMorphJointMethod(
            _detector(model[0], "-m joint (first model)"), _unet(model[1], hyper, "-m joint (second model)"), algorithm
        )
    raise ValueError(f"unknown registration method {name!r}; known: {', '.join(SYNTHMORPH_METHODS)}")


def _check_same(method, hyper: float | None, steps: int | None, options: dict) -> None:
    # A Method object is the one way its options arrive: a second, different value is an error.
    label = type(method).__name__
    if options:
        raise TypeError(
            f"{', '.join(options)}: set {'them' if len(options) > 1 else 'it'} on the {label} itself, or pass "
            "the method by name (method='optimize', similarity=...)"
        )
    own = method_hyper(method)
    if hyper is not None and own is not None and float(hyper) != own:
        raise OptionError(
            f"hyper={hyper:g}, but the {label} given was made for λ={own:g}: give λ once, on the "
            "method or with its name (method='optimize', hyper=...)"
        )
    own_steps = getattr(method, "steps", None)
    if steps is not None and own_steps is not None and steps != own_steps:
        raise OptionError(f"steps={steps}, but the {label} given integrates with steps={own_steps}: give it once")
