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
    `rigid`, a pair (detector, deformable model) `joint`. "optimize" needs no model; with a
    SynthMorph deformable model it refines that model's answer (`--refine`).
    """
    if isinstance(method, Method):
        return method
    if method == "optimize":
        if model is None:
            return OptimizeMethod(hyper=hyper)
        return RefineMethod(first=as_method(model, "deform", hyper=hyper, algorithm=algorithm), hyper=hyper)
    name = method or infer_method_name(model)
    if name == "deform":
        return SynthMorphDeformMethod(_unet(model, hyper, "-m deform"), algorithm)
    if name in ("affine", "rigid"):
        return SynthMorphAffineMethod(_detector(model, f"-m {name}"), rigid=name == "rigid")
    if name == "joint":
        if not isinstance(model, (tuple, list)) or len(model) != 2:
            raise TypeError("-m joint needs a pair of models: (affine detector, deformable model)")
        return SynthMorphJointMethod(_detector(model[0], "-m joint (first model)"), _unet(model[1], hyper, "-m joint (second model)"), algorithm)
    raise ValueError(f"unknown registration method {name!r}; known: {', '.join(SYNTHMORPH_METHODS)}")
