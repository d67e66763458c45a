"""Registration methods: each estimates a `NetworkTransform`; `registration.pipeline` does the rest.

| method   | module          | yields                                                               |
|----------|-----------------|----------------------------------------------------------------------|
| deform   | `synthmorph.py` | a half-resolution velocity (SynthMorph's hyper-U-Net)                 |
| affine   | `synthmorph.py` | a matrix (SynthMorph's feature detector, weighted least squares)      |
| rigid    | `synthmorph.py` | a matrix (the same, rotation and translation only)                    |
| joint    | `synthmorph.py` | a velocity in the affine's mid-space, with the matrix roots around it  |
| optimize | `optimize.py`   | an affine and a 4 mm velocity, optimised (no weights)                 |
| (refine) | `optimize.py`   | a model's velocity, optimised further (`--refine`)                    |
"""

from __future__ import annotations

from .base import Method as Method
from .base import NetworkTransform as NetworkTransform
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


def needs_prior_affine(name: str) -> bool:
    """Whether the method `name` assumes the images are already affinely aligned (SynthMorph's
    `deform`, whose network cubes are both centred on the fixed image), so that a caller that has
    no initial affine must run an affine stage first (`ilex template`)."""
    return resolve_method_name(name) == "deform"


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


def as_method(model=None, method=None, *, hyper: float = 0.5, algorithm: str | None = None) -> Method:
    """The `Method` that `register(..., model, method=...)` runs.

    `method` may already be a `Method`; otherwise it names what to do with `model` (inferred
    from it when None): a deformable model gives `deform`, an affine/rigid detector `affine` or
    `rigid`, a pair (detector, deformable model) `joint`; from such a pair, `deform` takes the
    deformable model and `affine`/`rigid` the detector. "optimize" is the optimiser alone,
    whatever `model` is (as `-m optimize`); "refine" optimises a SynthMorph deformable model's
    answer further (`--refine`).
    """
    if isinstance(method, Method):
        return method
    if method == "optimize":
        return OptimizeMethod(hyper=hyper)
    if method == "refine":
        return RefineMethod(first=as_method(model, "deform", hyper=hyper, algorithm=algorithm), hyper=hyper)
    name = method or infer_method_name(model)
    pair = isinstance(model, (tuple, list)) and len(model) == 2
    if name == "deform":
        return SynthMorphDeformMethod(_unet(model[1] if pair else model, hyper, "-m deform"), algorithm)
    if name in ("affine", "rigid"):
        return SynthMorphAffineMethod(_detector(model[0] if pair else model, f"-m {name}"), rigid=name == "rigid")
    if name == "joint":
        if not isinstance(model, (tuple, list)) or len(model) != 2:
            raise TypeError("-m joint needs a pair of models: (affine detector, deformable model)")
        return SynthMorphJointMethod(_detector(model[0], "-m joint (first model)"), _unet(model[1], hyper, "-m joint (second model)"), algorithm)
    raise ValueError(f"unknown registration method {name!r}; known: {', '.join(SYNTHMORPH_METHODS)}")
