"""Registration methods: each estimates a `NetworkTransform`; `registration.pipeline` does the rest.

| method  | module           | yields                                                         |
|---------|------------------|----------------------------------------------------------------|
| deform  | `synthmorph.py`  | a half-resolution velocity (SynthMorph's hyper-U-Net)           |
| optimize| `optimize.py`    | an affine and a 4 mm velocity, optimised (no weights)           |
| (refine)| `optimize.py`    | a model's velocity, optimised further (`--refine`)              |
"""

from __future__ import annotations

from .base import Method as Method
from .base import NetworkTransform as NetworkTransform
from .optimize import OptimizeMethod as OptimizeMethod
from .optimize import RefineMethod as RefineMethod
from .synthmorph import SynthMorphDeformMethod as SynthMorphDeformMethod


def as_method(model=None, method=None, *, hyper: float = 0.5, algorithm: str | None = None) -> Method:
    """The `Method` that `register(..., model, method=...)` runs.

    `method` may already be a `Method`; otherwise it names what to do with `model` (or is
    inferred from it): a SynthMorph deformable model gives `deform`. "optimize" needs no model;
    with a SynthMorph deformable model it refines that model's answer (`--refine`).
    """
    if isinstance(method, Method):
        return method
    if method == "optimize":
        if model is None:
            return OptimizeMethod(hyper=hyper)
        return RefineMethod(first=as_method(model, "deform", hyper=hyper, algorithm=algorithm), hyper=hyper)
    from ...models.synthmorph_deform import SynthMorphDeform, SynthMorphUNet

    name = method or "deform"
    if name == "deform":
        if isinstance(model, SynthMorphDeform):
            model = model.at_hyper(hyper)
        if not isinstance(model, SynthMorphUNet):
            raise TypeError(f"-m deform needs a SynthMorph deformable model, got {type(model).__name__}")
        return SynthMorphDeformMethod(model, algorithm)
    raise ValueError(f"unknown registration method {name!r}")
