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

Each is a `Method` subclass that declares what it is (`base.Method`); names serve only to find the
class `-m` asks for (`method_class`), which may also be a user's own, by import path.
"""

from __future__ import annotations

import importlib

from ...errors import OptionError
from .base import Method as Method
from .base import NetworkTransform as NetworkTransform
from .optimize import OptimizeAffineMethod as OptimizeAffineMethod
from .optimize import OptimizeMethod as OptimizeMethod
from .optimize import RefineMethod as RefineMethod
from .synthmorph import SynthMorphAffineMethod as SynthMorphAffineMethod
from .synthmorph import SynthMorphDeformMethod as SynthMorphDeformMethod
from .synthmorph import SynthMorphJointMethod as SynthMorphJointMethod
from .synthmorph import SynthMorphRigidMethod as SynthMorphRigidMethod

# What `-m` chooses from, in mri_synthmorph's order, then ilex's own.
METHODS: dict[str, type[Method]] = {
    cls.name: cls
    for cls in (SynthMorphJointMethod, SynthMorphDeformMethod, SynthMorphAffineMethod, SynthMorphRigidMethod)
}
METHODS[OptimizeMethod.name] = OptimizeMethod
METHOD_NAMES = tuple(METHODS)
DEFAULT_METHOD = SynthMorphJointMethod.name  # mri_synthmorph's default
# Reached by --refine and by `ilex template`'s first round, not by -m.
_INTERNAL = {"refine": RefineMethod, OptimizeAffineMethod.name: OptimizeAffineMethod}


def _is_import_path(name: str) -> bool:
    return ":" in name or "." in name


def resolve_method_name(name: str) -> str:
    """The method that `name`, or an unambiguous start of one, names (`def` -> deform), as
    mri_synthmorph resolves `-m`; an import path (`package.module:Class`) is kept as it is once
    it names a `Method` subclass. Raises `ValueError` saying what is wrong."""
    if name in METHOD_NAMES or name in _INTERNAL:
        return name
    if _is_import_path(name):
        method_class(name)
        return name
    matches = [m for m in METHOD_NAMES if name and m.startswith(name)]
    if len(matches) != 1:
        raise ValueError(
            f"{'ambiguous' if matches else 'unknown'} model; choose one of {', '.join(METHOD_NAMES)}, "
            "or give a Method subclass by its import path (package.module:Class)"
        )
    return matches[0]


def method_class(name: str) -> type[Method]:
    """The `Method` subclass `name` names: one of `METHOD_NAMES` or an unambiguous start of one,
    "refine" (--refine), "optimize-affine", or an import path `package.module:Class` (or
    `package.module.Class`) of a user's own. Raises `ValueError` saying what is wrong."""
    if not _is_import_path(name):
        name = resolve_method_name(name)
        return METHODS[name] if name in METHODS else _INTERNAL[name]
    module, _, attribute = name.partition(":") if ":" in name else name.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), attribute)
    except (ImportError, AttributeError, ValueError) as e:
        raise ValueError(f"cannot import the method {name!r} ({type(e).__name__}: {e})") from None
    if not (isinstance(cls, type) and issubclass(cls, Method)):
        raise ValueError(f"{name!r} is not a subclass of ilex.Method")  # noqa: TRY004  a bad -m value, as above
    return cls


def method_facts(method) -> Method | type[Method]:
    """What to read a method's facts from (`yields_matrix`, `weight_files`, ...): a `Method`
    object itself, a subclass itself, or the class a name resolves to (`method_class`).
    Raises `ValueError` for a name that resolves to none, `TypeError` for anything else."""
    if isinstance(method, Method) or (isinstance(method, type) and issubclass(method, Method)):
        return method
    if isinstance(method, str):
        return method_class(method)
    raise TypeError(f"not a method name or Method: {type(method).__name__}")


def default_method_name(weights) -> str:
    """The method weights run when no method is named, known from what names them before they
    load (`ilex batch`'s `-w`): None (the defaults) or several files, `DEFAULT_METHOD`; one
    file, SynthMorph's deformable model (a detector alone is named with -m affine or rigid);
    none, the optimiser."""
    if weights is None or (isinstance(weights, (tuple, list)) and len(weights) > 1):
        return DEFAULT_METHOD
    if isinstance(weights, (tuple, list)) and not weights:
        return OptimizeMethod.name
    return SynthMorphDeformMethod.name


def unaligned_weight_files(method) -> tuple[str, ...]:
    """The weight files `method` needs for images that are not aligned yet (`ilex template`):
    those of the method giving its prior affine (`Method.prior_affine`), then its own."""
    facts = method_facts(method)
    prior = method_class(facts.prior_affine).weight_files if facts.prior_affine else ()
    return (*prior, *facts.weight_files)


def infer_method_name(model) -> str:
    """The method a model (or an (affine, deformable) pair) runs by default."""
    from ...models.synthmorph_affine import SynthMorphAffine

    if isinstance(model, (tuple, list)):
        return "joint"
    if isinstance(model, SynthMorphAffine):
        return "rigid" if model.rigid else "affine"
    return "deform"


OPTIMISER_OPTIONS = ("similarity", "levels", "iterations", "velocity_scale", "affine", "progress", "skip_finest")


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
    if method is not None and not isinstance(method, str):
        raise TypeError(f"method must be a name or an ilex.Method object, got {type(method).__name__}")
    cls = method_class(method or infer_method_name(model))
    return cls.create(
        model,
        hyper=0.5 if hyper is None else hyper,
        steps=7 if steps is None else steps,
        algorithm=algorithm,
        **options,
    )


def _check_same(method, hyper: float | None, steps: int | None, options: dict) -> None:
    # A Method object is the one way its options arrive: a second, different value is an error.
    label = type(method).__name__
    if options:
        raise TypeError(
            f"{', '.join(options)}: set {'them' if len(options) > 1 else 'it'} on the {label} itself, or pass "
            "the method by name (method='optimize', similarity=...)"
        )
    own = method.hyper
    if hyper is not None and own is not None and float(hyper) != own:
        raise OptionError(
            f"hyper={hyper:g}, but the {label} given was made for λ={own:g}: give λ once, on the "
            "method or with its name (method='optimize', hyper=...)"
        )
    own_steps = method.steps
    if steps is not None and own_steps is not None and steps != own_steps:
        raise OptionError(f"steps={steps}, but the {label} given integrates with steps={own_steps}: give it once")
