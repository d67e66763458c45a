"""Registration methods: each estimates a `NetworkTransform`; `registration.pipeline` does the rest.

| method  | module           | yields                                                         |
|---------|------------------|----------------------------------------------------------------|
| deform  | `synthmorph.py`  | a half-resolution velocity (SynthMorph's hyper-U-Net)           |
"""

from __future__ import annotations

from .base import Method as Method
from .base import NetworkTransform as NetworkTransform
from .synthmorph import SynthMorphDeformMethod as SynthMorphDeformMethod


def as_method(model=None, method=None, *, hyper: float = 0.5, algorithm: str | None = None) -> Method:
    """The `Method` that `register(..., model, method=...)` runs.

    `method` may already be a `Method`; otherwise it names what to do with `model` (or is
    inferred from it): a SynthMorph deformable model gives `deform`.
    """
    if isinstance(method, Method):
        return method
    from ...models.synthmorph_deform import SynthMorphDeform, SynthMorphUNet

    name = method or "deform"
    if name == "deform":
        if isinstance(model, SynthMorphDeform):
            model = model.at_hyper(hyper)
        if not isinstance(model, SynthMorphUNet):
            raise TypeError(f"-m deform needs a SynthMorph deformable model, got {type(model).__name__}")
        return SynthMorphDeformMethod(model, algorithm)
    raise ValueError(f"unknown registration method {name!r}")
