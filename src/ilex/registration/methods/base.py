"""The seam between registration methods and the one pipeline that runs them all.

A method looks at the two images in network space (SynthMorph's: 1 mm LIA cubes of side E,
docs/spec-deform.md §5.1; a method may choose another grid, see `Method`) and answers with a
`NetworkTransform`: where each fixed-network voxel lands in the moving network space. Matrices
and velocity fields are all a method produces; the pipeline integrates the velocity, brings it
to full resolution, to the images' own grids and to world space, and writes and checks every
output the same way for every method.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import jax
import numpy as np

from ...errors import OptionError


def check_hyper(hyper: float) -> None:
    """Refuse a λ outside the closed interval [0, 1] (mri_synthmorph: the open one); the one
    place λ's range is checked, for the pipeline and for every method."""
    if not 0.0 <= hyper <= 1.0:
        raise OptionError("the regularisation weight λ must lie in [0, 1]", argument="hyper", value=hyper)


def check_steps(steps: int) -> None:
    """Refuse fewer than one scaling-and-squaring step."""
    if steps < 1:
        raise OptionError("integration needs at least 1 step (mri_synthmorph uses 7)", argument="steps", value=steps)


def scale_matrix(factor: float) -> np.ndarray:
    """`diag(f, f, f, 1)`: index coordinates of a grid `f` times coarser to this grid's."""
    return np.diag([factor, factor, factor, 1.0])


@dataclass(frozen=True)
class NetworkTransform:
    """A method's answer, in network voxel coordinates (float64 matrices, pull-back direction).

    Without a velocity, fixed-network voxel `x` (full resolution) maps to moving-network voxel
    `matrix @ x`. With one, the velocity `v` lives on a grid `scale` times coarser than the
    network (docs/spec-deform.md §2.8: SynthMorph's U-Net runs at scale 2), and the forward map is

        x  ->  post @ exp(v)(pre @ (x / scale))

    where `pre` takes coarse fixed-network indices into the velocity's frame and `post` takes
    that frame to full-resolution moving-network indices. The inverse map is
    `inv(pre) @ exp(-v)(inv(post) @ x)` read the same way; `inverse_pre`/`inverse_post` give it
    when a method computes them separately (the reference's mid-space roots are each rounded on
    their own). SynthMorph's deformable model has `pre = I`, `post = scale(2)`; the joint model
    puts the affine's matrix square root on both sides (a symmetric mid-space).
    """

    matrix: np.ndarray | None = None
    velocity: jax.Array | None = None
    scale: int = 1
    pre: np.ndarray | None = None
    post: np.ndarray | None = None
    inverse_pre: np.ndarray | None = None
    inverse_post: np.ndarray | None = None
    # What the method found besides the map, for this pair alone (e.g. -m optimize's chosen
    # similarity and its stages' times): it travels with the answer, never on the method, which
    # threads share.
    details: dict = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self):
        if (self.matrix is None) == (self.velocity is None):
            raise ValueError("a NetworkTransform holds either a matrix or a velocity field, exactly one")
        if self.matrix is not None and np.shape(self.matrix) != (4, 4):
            raise ValueError(f"matrix must be 4x4, got shape {np.shape(self.matrix)}")
        if self.velocity is not None and (self.velocity.ndim != 4 or self.velocity.shape[-1] != 3):
            raise ValueError(f"velocity must have shape (x, y, z, 3), got {self.velocity.shape}")
        if self.scale < 1:
            raise ValueError(f"scale must be a positive integer, got {self.scale}")

    @property
    def is_matrix(self) -> bool:
        return self.velocity is None

    def forward_sides(self) -> tuple[np.ndarray | None, np.ndarray]:
        """(pre, post) of the forward map; `pre` None means the identity."""
        post = scale_matrix(self.scale) if self.post is None else self.post
        return self.pre, post

    def inverse_sides(self) -> tuple[np.ndarray | None, np.ndarray]:
        """(pre, post) of the inverse map, `x -> post @ exp(-v)(pre @ (x / scale))`."""
        pre, post = self.forward_sides()
        s = scale_matrix(self.scale)
        inv_pre = self.inverse_pre if self.inverse_pre is not None else np.linalg.inv(post) @ s
        inv_post = (
            self.inverse_post
            if self.inverse_post is not None
            else s @ (np.eye(4) if pre is None else np.linalg.inv(pre))
        )
        if pre is None and self.post is None:
            inv_pre = None  # the identity on both sides stays exact
        return inv_pre, inv_post


@runtime_checkable
class Method(Protocol):
    """A registration method: anything with these two members plugs into `register`.

    `centre_on_fixed`: whether both network spaces are centred on the fixed image (a method
    that assumes prior affine alignment, like SynthMorph's `deform`) or each on its own image.
    `estimate(mov_net, fix_net)` gets both images in network space, (E, E, E) float32 in
    [0, 1], and returns a `NetworkTransform`. `name` labels the result. A method keeps nothing
    of one pair (a `Registrar` shares it between threads): what an estimate found besides the
    map goes in the answer's `details`.

    Optionally, `working_grid(moving, fixed, extent)` returns the `WorkingGrid`
    (`registration.working_grid`) the method works on instead of SynthMorph's cube; such a
    method then gets it back as `grid=` in `estimate` and `describe`, and its network images
    have that grid's shapes (the moving one's may differ from the fixed one's).
    """

    name: str
    centre_on_fixed: bool

    def estimate(self, mov_net: jax.Array, fix_net: jax.Array) -> NetworkTransform: ...
