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


class Method:
    """A registration method: subclass this, implement `estimate`, and declare what the method is.

    `estimate(mov_net, fix_net, grid)` gets both images in network space, float32 in [0, 1], of
    `grid`'s shapes (SynthMorph's cube: (E, E, E)), and returns a `NetworkTransform`. A method
    keeps nothing of one pair (a `Registrar` shares it between threads): what an estimate found
    besides the map goes in the answer's `details`.

    What a method is, the CLI, the batch, the template, the output checks and the memory estimate
    read from its class attributes below, known before any weights load; so `-m NAME` resolves to
    a class (`methods.method_class`), and nothing outside `registration/methods/` compares names.
    A subclass overrides the ones that differ from these defaults (an instance may too, where a
    fact depends on how it was made, as `RefineMethod`'s centring follows its first method's).
    """

    name: str = "method"  # labels the result; `-m` resolves it
    summary: str = ""  # one line for messages and `--help`
    yields_matrix: bool = False  # a matrix only (LTA, ITK text, -H); else a warp
    weight_files: tuple[str, ...] = ()  # FreeSurfer's files it loads, in -w order
    weight_roles: tuple[str, ...] = ()  # what each file must hold: "detector" or "deformable"
    runs_detector: bool = False  # runs SynthMorph's affine feature detector (its memory peak)
    takes_optimiser_options: bool = False  # similarity, levels, iterations, ... apply
    # Takes cost-function masks: `estimate(..., masks=(fixed, moving))`, each None or a 0/1 array
    # on its network grid, measuring the similarity only where they are non-zero (ANTs' -x).
    takes_masks: bool = False
    refinable: bool = False  # the optimiser can start from its answer (--refine)
    centre_on_fixed: bool = False  # both network grids centred on the fixed image (assumes prior alignment)
    # Where the affine comes from when the images are not aligned yet (`ilex template`'s first
    # round): None, the method finds it itself; else the name of the method that gives it first.
    prior_affine: str | None = None
    # Optimiser options that `ilex template`'s rounds before the last add (a cheaper registration
    # toward a template that will still change); (): every round runs the method as it is.
    intermediate_round_options: tuple[tuple[str, object], ...] = ()  # (name, value) pairs
    hyper: float | None = None  # the λ it was made for, None for a method without one
    steps: int | None = None  # its own integration steps, None for the pipeline's

    @classmethod
    def create(cls, model=None, *, hyper: float, steps: int, algorithm: str | None = None, **options) -> Method:
        """The method `-m NAME` makes: from `model` (the loaded networks, or None), λ, the
        integration steps, the networks' convolution and the optimiser's `options`. The default
        makes `cls(**options)`; a method that needs the others overrides it."""
        return cls(**options)

    def networks(self) -> tuple:
        """The networks it runs (their widths size the memory estimate)."""
        return ()

    def working_grid(self, moving, fixed, extent: int):
        """The `WorkingGrid` (`registration.working_grid`) it works on; by default SynthMorph's
        1 mm LIA cube of side `extent`."""
        from ..working_grid import cube_grid

        return cube_grid(extent)

    def describe(self, extent: int, steps: int, grid=None) -> str:
        """What it does, for the progress line of its stage."""
        return self.name

    def __repr__(self) -> str:
        # Stable across runs (no memory address): the batch records it beside a pair's outputs,
        # and a rerun skips the pair only if it reads the same. Dataclass methods write their own.
        own = ", ".join(f"{k}={v!r}" for k, v in sorted(vars(self).items()))
        return f"{type(self).__module__}.{type(self).__qualname__}({own})"

    def estimate(self, mov_net: jax.Array, fix_net: jax.Array, grid=None) -> NetworkTransform:
        raise NotImplementedError(f"{type(self).__name__} must implement estimate(mov_net, fix_net, grid)")
