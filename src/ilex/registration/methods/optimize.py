"""`-m optimize`: registration by direct optimisation, no trained weights (`ilex.optimize`).

`OptimizeMethod` works at the fixed image's resolution (`working_grid.image_grid`): it runs the
affine stage and the deformable stage on both network images, each grid centred on its own
image, and answers with the velocity and the affine around it:
`forward(x) = A (x + exp(v)(x))`, i.e. `NetworkTransform(velocity=v, scale=s, post=A @ scale(s))`.
Its levels and velocity grid are counted in voxels of that grid (`default_levels`).
`RefineMethod` starts the deformable stage from another method's answer (`--refine`), on that
method's grid.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from ..._programs import program
from ...errors import OptionError
from ...optimize.affine import level_matrix, moments_matrix, optimise_affine
from ...optimize.deformable import Level, moved_image, optimise_velocity
from ...optimize.similarity import SIMILARITIES, same_contrast
from ...optimize.smoothing import pyramid
from ...transforms.integrate import voxel_grid
from ..working_grid import WorkingGrid, image_grid
from .base import Method, NetworkTransform, check_hyper, check_steps, scale_matrix

SIMILARITY_CHOICES = ("auto", *SIMILARITIES)


def regularisation(hyper: float) -> tuple[float, float]:
    """`-r` λ in [0, 1] as (sigma_update in level voxels, sigma_field in velocity voxels).

    The update's Gaussian ("fluid") grows from 1 to 5 voxels and the field's ("diffusion") from
    0 to 1.5 velocity voxels; λ = 0.5 gives 3 voxels, ANTs SyN's default update smoothing.
    Higher λ: smoother, less local warps, as for SynthMorph's hypernetwork.
    """
    return 1.0 + 4.0 * hyper, 1.5 * hyper


# Default iterations of the two default levels; a grid coarser than this (mm) gets its finest
# level at 1 voxel rather than 2, so that the finest level is never coarser than today's 2 mm by
# more than the images themselves are.
DEFAULT_ITERATIONS = (50, 20)
COARSE_VOXEL_MM = 1.5


def default_levels(voxel_size: float) -> tuple[tuple[int, int], int]:
    """(levels, velocity scale) in voxels of a working grid of `voxel_size` mm, by default.

    The finest level is 2 voxels (a 2 mm level on 1 mm grids, 1 mm on 0.5 mm ones), or 1 voxel
    on grids of `COARSE_VOXEL_MM` or coarser (2 mm images are registered at 2 mm, as ANTs does,
    not halved to 4 mm); the other level and the velocity grid are twice as coarse.
    """
    finest = 1 if voxel_size >= COARSE_VOXEL_MM else 2
    return (2 * finest, finest), 2 * finest


def _check(hyper: float, steps: int, similarity: str, levels, iterations, velocity_scale) -> None:
    # `levels`, `iterations` and `velocity_scale` may be None (by the grid's voxel size).
    check_hyper(hyper)
    check_steps(steps)
    if similarity not in SIMILARITY_CHOICES:
        raise OptionError(f"choose one of {', '.join(SIMILARITY_CHOICES)}", argument="similarity", value=similarity)
    if velocity_scale is not None and velocity_scale not in (1, 2, 4, 8):
        raise OptionError(f"velocity scale {velocity_scale}: choose 1, 2, 4 or 8 (voxels of the working grid)")
    n_levels = len(DEFAULT_ITERATIONS) if levels is None else len(levels)
    if (levels is not None and not levels) or n_levels != len(DEFAULT_ITERATIONS if iterations is None else iterations):
        raise OptionError(f"levels {levels} and iterations {iterations}: give one iteration count per level")
    for s in levels or ():
        if s not in (1, 2, 4, 8) or (velocity_scale is not None and velocity_scale % s):
            raise OptionError(
                f"level {s}: levels are 1, 2, 4 or 8 voxels of the working grid and must divide the "
                f"velocity grid's {velocity_scale} voxels"
            )
    for n in iterations or ():
        if n < 0:
            raise OptionError(f"{n} iterations at a level; the count must be >= 0")


def _affine_scales(shape) -> tuple[int, ...]:
    # The coarse copies the affine stage runs on: between 16 and 64 voxels along the grid's
    # longest axis, coarse to fine.
    longest = shape if isinstance(shape, int) else max(shape)
    return tuple(s for s in (16, 8, 4, 2) if 16 <= longest // s <= 64)


def _choose_similarity(choice: str, pyr_mov, pyr_fix, matrix: np.ndarray, scale: int) -> str:
    if choice != "auto":
        return choice
    fix = pyr_fix[scale]
    moved = _affine_moved(pyr_mov[scale], jnp.asarray(matrix, jnp.float32), shape=tuple(fix.shape), scale=scale)
    return "lncc" if same_contrast(fix, moved) else "mi"


@program(static_argnames=("shape", "scale"))
def _affine_moved(mov, matrix, *, shape, scale):
    # One program: run eagerly, the sampling was some thirty small ones, each compiled on a
    # process's first call (about 0.5 s of a first run, measured).
    return moved_image(mov, level_matrix(matrix, scale), voxel_grid(shape), jnp.zeros((*shape, 3), jnp.float32))


def _mask_pyramids(masks, scales) -> tuple[dict | None, dict | None]:
    # Each mask at the images' pyramid levels: a coarse voxel is in it only if all the fine voxels
    # its binomial smoothing draws on are, so no coarse intensity carries anything from outside.
    if masks is None:
        return None, None
    return tuple(
        None if m is None else _coarse_masks(jnp.asarray(m, jnp.float32), tuple(sorted(scales))) for m in masks
    )


@program(static_argnames=("scales",))
def _coarse_masks(mask, scales):
    return {s: (p >= 1.0 - 1e-6).astype(jnp.float32) for s, p in pyramid(mask, scales).items()}


def _check_images(mov_net, fix_net) -> None:
    for net, what in ((mov_net, "moving"), (fix_net, "fixed")):
        a = np.asarray(net)
        if not np.isfinite(a).all() or a.max() - a.min() <= 0:
            raise OptionError(
                f"-m optimize: the {what} image is flat in network space, so there is nothing to register"
            )


@dataclass
class OptimizeMethod(Method):
    """Affine, then a diffeomorphic stationary velocity, by optimisation (no weights needed).

    `hyper` (`-r`, λ in [0, 1]): smoothness, see `regularisation`. `similarity`: "lncc" (local
    normalised cross-correlation, 5^3-voxel windows at each level: same contrast), "mi" (any
    contrasts: mutual information from a Parzen joint histogram, 64 bins per image; the affine
    stage's has 32) or "auto" (LNCC when the affinely aligned images' intensities correlate
    positively inside both heads, else MI).
    The method works on `working_grid.image_grid` (the fixed image's resolution; `extent` caps
    it at extent^3 voxels). `levels` are the deformable levels' voxel sizes (coarse to fine) with
    at most `iterations` each, and the velocity lives on a grid of `velocity_scale`, all in
    voxels of that grid; None (the default) takes `default_levels` and `DEFAULT_ITERATIONS`
    (4 and 2 voxels on 1 mm images, 50 and 20 iterations). `steps` is the
    scaling-and-squaring step count of exp(v), the pipeline's (`-n`), so that the warp written
    is the one optimised. `affine=False` skips the affine stage (centres of mass only).
    `skip_finest` leaves out the finest deformable level (the velocity grid then no finer than
    the level left) and the affine stage's finest level, its polish: what `ilex template`'s
    rounds before the last run (`intermediate_round_options`).
    `progress` shows a bar per level (on a terminal). The answer's `details` hold what "auto"
    chose (`similarity`) and each stage's seconds and iterations (`profile`).
    `estimate`'s `masks` (fixed, moving), each None or a 0/1 array on its network grid, are
    cost-function masks, as ANTs' `-x`: both stages measure the similarity and its gradient only
    where they are non-zero (at the coarse levels, where the mask's share of a voxel is; the
    moving mask read through the current map); the smoothing of the warp acts everywhere.
    """

    hyper: float = 0.5
    steps: int = 7
    similarity: str = "auto"
    levels: tuple[int, ...] | None = None
    iterations: tuple[int, ...] | None = None
    velocity_scale: int | None = None
    affine: bool = True
    progress: bool = False
    skip_finest: bool = False
    name: ClassVar[str] = "optimize"
    summary: ClassVar[str] = "an affine and a diffeomorphic warp optimised directly (no weights)"
    takes_optimiser_options: ClassVar[bool] = True
    takes_masks: ClassVar[bool] = True
    # A template's rounds before the last register toward a template that will still change (and
    # is blurred by the images' disagreement): the finest level's detail is not worth its time there.
    intermediate_round_options: ClassVar[tuple] = (("skip_finest", True),)

    @classmethod
    def create(cls, model=None, *, hyper: float, steps: int, algorithm: str | None = None, **options):
        """The optimiser alone, whatever `model` is (as `-m optimize`)."""
        return cls(hyper=hyper, steps=steps, **options)

    # The batch keys its prepared methods by (method, λ, options): a configured method must hash.
    # On its settings (equal methods hash alike); `first`, a network, is left out.
    def __hash__(self):
        own = (
            self.hyper,
            self.steps,
            self.similarity,
            self.levels,
            self.iterations,
            self.velocity_scale,
            self.affine,
            self.skip_finest,
        )
        return hash((type(self), *own))

    def __post_init__(self):
        self.levels = None if self.levels is None else tuple(self.levels)
        self.iterations = None if self.iterations is None else tuple(self.iterations)
        _check(self.hyper, self.steps, self.similarity, self.levels, self.iterations, self.velocity_scale)

    def plan(self, voxel_size: float = 1.0) -> tuple[tuple[int, ...], tuple[int, ...], int]:
        """(levels, iterations, velocity scale) in voxels of a working grid of `voxel_size` mm:
        the method's own, or the defaults for that voxel size."""
        levels, velocity_scale = default_levels(voxel_size)
        if self.levels is not None:
            levels = self.levels
            velocity_scale = max(velocity_scale, *levels)  # powers of two: every level divides it
        iterations, velocity_scale = self.iterations or DEFAULT_ITERATIONS, self.velocity_scale or velocity_scale
        if self.skip_finest and len(levels) > 1:
            levels, iterations = levels[:-1], iterations[:-1]
            velocity_scale = max(velocity_scale, levels[-1])
        return levels, iterations, velocity_scale

    def working_grid(self, moving, fixed, extent: int) -> WorkingGrid:
        """The fixed image's resolution, at most `extent`^3 voxels (`working_grid.image_grid`)."""
        return image_grid(moving, fixed, extent)

    def describe(self, extent: int, steps: int, grid: WorkingGrid | None = None) -> str:
        size = 1.0 if grid is None else grid.voxel_size
        levels, _, velocity_scale = self.plan(size)
        mm = " -> ".join(f"{s * size:.3g} mm" for s in levels)
        return f"affine, then a {velocity_scale * size:.3g} mm velocity over {mm}, λ {self.hyper:g}"

    def estimate(
        self, mov_net: jax.Array, fix_net: jax.Array, grid: WorkingGrid | None = None, masks=None
    ) -> NetworkTransform:
        size = 1.0 if grid is None else grid.voxel_size
        levels, iterations, velocity_scale = self.plan(size)
        profile = {}  # this pair's own: the method may serve several threads at once
        pyr_mov, pyr_fix, matrix, pyr_masks = self._affine_stage(mov_net, fix_net, size, {*levels}, profile, masks)
        return self._deformable(
            pyr_mov, pyr_fix, matrix, None, velocity_scale, levels, iterations, size, profile, pyr_masks
        )

    def _affine_stage(self, mov_net, fix_net, size: float, scales: set, profile: dict, masks=None):
        """(pyramids of both images at `scales` and the affine stage's levels, the affine matrix,
        the masks' pyramids (fixed, moving; each None where not given))."""
        _check_images(mov_net, fix_net)
        shape = tuple(fix_net.shape)
        start = time.perf_counter()
        scales = {*_affine_scales(shape), *scales, 4}
        pyr_mov, pyr_fix = pyramid(jnp.asarray(mov_net), scales), pyramid(jnp.asarray(fix_net), scales)
        pyr_masks = _mask_pyramids(masks, scales)
        matrix = moments_matrix(pyr_mov[4], pyr_fix[4], 4)
        profile["pyramid and moments"] = {"seconds": time.perf_counter() - start}
        if self.affine:
            matrix = optimise_affine(
                pyr_mov,
                pyr_fix,
                matrix,
                shape,
                scales=self._affine_levels(shape),
                voxel_size=size,
                progress=self.progress,
                profile=profile,
                mask_fix=pyr_masks[0],
                mask_mov=pyr_masks[1],
            )
        return pyr_mov, pyr_fix, matrix, pyr_masks

    def _affine_levels(self, shape) -> tuple[int, ...]:
        # The affine stage's levels, coarse to fine; `skip_finest` leaves out the polish.
        scales = _affine_scales(shape)
        return scales[:-1] if self.skip_finest and len(scales) > 1 else scales

    def _deformable(
        self,
        pyr_mov,
        pyr_fix,
        matrix,
        velocity,
        velocity_scale,
        levels,
        iterations,
        size,
        profile: dict,
        pyr_masks=(None, None),
    ) -> NetworkTransform:
        similarity = _choose_similarity(self.similarity, pyr_mov, pyr_fix, matrix, max(levels))
        sigma_update, sigma_field = regularisation(self.hyper)
        levels = tuple(Level(s, n) for s, n in zip(levels, iterations, strict=True) if n > 0 and s <= velocity_scale)
        v = optimise_velocity(
            pyr_mov,
            pyr_fix,
            matrix,
            similarity=similarity,
            levels=levels,
            velocity_scale=velocity_scale,
            sigma_update=sigma_update,
            sigma_field=sigma_field,
            velocity=velocity,
            steps=self.steps,
            voxel_size=size,
            progress=self.progress,
            profile=profile,
            mask_fix=pyr_masks[0],
            mask_mov=pyr_masks[1],
        )
        return NetworkTransform(
            velocity=v,
            scale=velocity_scale,
            post=matrix @ scale_matrix(velocity_scale),
            details={
                "similarity": similarity,
                "voxel_size": size,
                "levels": [lv.scale for lv in levels],
                "iterations": [lv.iterations for lv in levels],
                "profile": profile,
            },
        )


@dataclass(eq=False)
class OptimizeAffineMethod(OptimizeMethod):
    """The optimiser's affine stage alone, answered as a matrix (so written as an LTA or ITK text,
    not a warp): what `ilex template`'s first round aligns the images with when there are no
    weights. Of `OptimizeMethod`'s options it takes `hyper` (recorded only) and `progress`."""

    name: ClassVar[str] = "optimize-affine"
    summary: ClassVar[str] = "an affine optimised directly (no weights)"
    yields_matrix: ClassVar[bool] = True
    takes_optimiser_options: ClassVar[bool] = False
    intermediate_round_options: ClassVar[tuple] = ()

    @classmethod
    def create(cls, model=None, *, hyper: float, steps: int, algorithm: str | None = None, **options):
        return cls(hyper=hyper, **options)

    # The batch keys its prepared methods by (method, λ): a configured method must hash.
    def __hash__(self):
        return hash((self.name, self.hyper, self.affine))

    def __eq__(self, other):
        return type(other) is type(self) and (other.hyper, other.affine) == (self.hyper, self.affine)

    def describe(self, extent: int, steps: int, grid: WorkingGrid | None = None) -> str:
        return "affine, optimised"

    def estimate(
        self, mov_net: jax.Array, fix_net: jax.Array, grid: WorkingGrid | None = None, masks=None
    ) -> NetworkTransform:
        size = 1.0 if grid is None else grid.voxel_size
        profile = {}
        _, _, matrix, _ = self._affine_stage(mov_net, fix_net, size, set(), profile, masks)
        return NetworkTransform(matrix=np.asarray(matrix, np.float64), details={"voxel_size": size, "profile": profile})


@dataclass
class RefineMethod(OptimizeMethod):
    """`--refine`: `first`'s answer (a SynthMorph model's velocity, or a matrix) is the start of
    the deformable stage, on `first`'s grid (SynthMorph's 1 mm cube) and at its velocity grid;
    its levels are those of `levels` no coarser than that grid (by default the 2 mm level only,
    20 iterations)."""

    first: Method | None = None
    levels: tuple[int, ...] = (2,)
    iterations: tuple[int, ...] = (20,)
    # Made from `first` (below); the class's own say what any refined answer is before one exists.
    name: str = "refine"
    centre_on_fixed: bool = False
    runs_detector: bool = False
    summary: ClassVar[str] = "a model's answer optimised further"
    refinable: ClassVar[bool] = False
    intermediate_round_options: ClassVar[tuple] = ()  # its levels are its own (`estimate`), not `plan`'s
    __hash__ = OptimizeMethod.__hash__  # a dataclass with eq sets it to None unless given here

    @classmethod
    def create(cls, model=None, *, hyper: float, steps: int, algorithm: str | None = None, **options):
        """SynthMorph's deformable model's answer (from `model`), optimised further (`--refine`)."""
        from . import as_method

        first = as_method(model, "deform", hyper=hyper, algorithm=algorithm)
        return cls(first=first, hyper=hyper, steps=steps, **options)

    def __post_init__(self):
        super().__post_init__()
        if not isinstance(self.first, Method):
            raise OptionError("needs a first method to refine (a SynthMorph model, deform)", argument="refine")
        self.centre_on_fixed = self.first.centre_on_fixed
        self.runs_detector = self.first.runs_detector  # its memory peak comes with it
        self.name = f"{self.first.name}+refine"

    def networks(self) -> tuple:
        return self.first.networks()

    def working_grid(self, moving, fixed, extent: int) -> WorkingGrid:
        """`first`'s grid: its answer is read there."""
        return self.first.working_grid(moving, fixed, extent)

    def describe(self, extent: int, steps: int, grid: WorkingGrid | None = None) -> str:
        first = self.first.describe(extent, steps, grid)
        size = 1.0 if grid is None else grid.voxel_size
        return f"{first}; refined over {' -> '.join(f'{s * size:.3g} mm' for s in self.levels)}"

    def estimate(
        self, mov_net: jax.Array, fix_net: jax.Array, grid: WorkingGrid | None = None, masks=None
    ) -> NetworkTransform:
        _check_images(mov_net, fix_net)
        size = 1.0 if grid is None else grid.voxel_size
        start = time.perf_counter()
        first = self.first.estimate(mov_net, fix_net, grid)
        profile = {self.first.name: {"seconds": time.perf_counter() - start}}
        if first.is_matrix:
            matrix, velocity, velocity_scale = np.asarray(first.matrix, np.float64), None, self.plan(size)[2]
        else:
            pre, post = first.forward_sides()
            if pre is not None and not np.allclose(pre, np.eye(4)):
                raise OptionError(
                    f"{self.first.name} gives a mid-space velocity, which cannot be refined; use deform",
                    argument="refine",
                )
            matrix = np.asarray(post, np.float64) @ np.linalg.inv(scale_matrix(first.scale))
            velocity, velocity_scale = first.velocity, first.scale
        scales = {*self.levels, velocity_scale}
        pyr_mov, pyr_fix = pyramid(jnp.asarray(mov_net), scales), pyramid(jnp.asarray(fix_net), scales)
        return self._deformable(
            pyr_mov,
            pyr_fix,
            matrix,
            velocity,
            velocity_scale,
            self.levels,
            self.iterations,
            size,
            profile,
            _mask_pyramids(masks, scales),
        )
