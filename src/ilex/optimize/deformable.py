"""The deformable stage: a stationary velocity field grown by smoothed similarity forces.

Log-domain, as diffeomorphic demons and SyN-like methods do it, with one stationary velocity
`v` on a grid `velocity_scale` times coarser than the network grid (4 mm by default at 1 mm
network voxels; the grid's voxels are the fixed image's, `registration.working_grid`). As for
SynthMorph's half-resolution velocity, the pipeline clamps the last coarse voxel when it brings
the warp to full resolution, so the last `s - 1` slices of each axis (the far faces of the grid,
outside the head) carry up to `(s - 1) / s` voxels of extrapolated displacement per axis. Each
iteration, at image level `s` (the images `s` times coarser):

1. `d = exp(v)` by scaling and squaring on the velocity grid (cheap: 64^3 at extent 256),
   brought to the level's grid by factor-2 trilinear upsampling;
2. the moving image is sampled at `A (x + d(x))` (one trilinear gather; `A` the affine);
3. the similarity's gradient with respect to the moved image (`similarity.py`) times the moved
   image's spatial gradient is the force: the direction of steepest ascent for a small
   displacement `u` composed on the right, `exp(v) ∘ (id + u)`;
4. the force goes down to the velocity grid, is smoothed (`sigma_update`, the "fluid"
   regularisation), scaled so that the level's first update is at most `step` level voxels
   long and later ones in proportion to their force (so the steps shrink to nothing as the
   images align, rather than jittering at a fixed length as a per-iteration normalisation
   would), and passed through an optax optimiser (SGD with momentum);
5. `v <- G(v + u)` with a second smoothing (`sigma_field`, the "diffusion" regularisation):
   the first-order BCH approximation of `log(exp(v) ∘ exp(u))`.

Nothing is differentiated through the interpolation or the integration, and every array that
a level needs is an argument of the step's jits (steps 1-2, then 3-5: see `_moved`; LNCC's
3, then 4-5: see `_force`), so each level's shape compiles once.
"""

from __future__ import annotations

import functools
import sys
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
import optax

from .._programs import program
from ..transforms.compose import apply_matrix
from ..transforms.integrate import voxel_grid
from ..transforms.interpolate import interpolate_clamped
from .affine import cost_weight, level_matrix
from .convergence import Convergence, LevelTimer
from .similarity import similarity_function
from .smoothing import downsample2, gaussian_matrices, smooth, upsample2

# MI's histogram bins per image in this stage. Finer than the affine stage's 32: with linear
# Parzen windows, 64 bins gained 0.0027 Dice on the benchmark's known-affine contrast pair and
# 0.0018 on avg152 T2 -> MNI; 96 or 128 gained at most 0.0012 more, 16 lost 0.004-0.005
# (bench/similarity_trials.py, bench/results/mi_bins_2026-12-01.txt).
MI_BINS = 64


@dataclass(frozen=True)
class Level:
    """One deformable level: images `scale` times coarser than the network, at most
    `iterations` steps of at most `step` level voxels each."""

    scale: int
    iterations: int
    step: float = 0.5


def exp_velocity(v, grid, steps: int):
    """`exp(v)` as a displacement (voxels of v's grid), `grid` = `voxel_grid(v.shape[:3])` given
    as an argument so that XLA does not fold it into a constant."""
    # Carried in 4 channels, the 4th zero: XLA's CPU backend reads 4 floats a corner faster than
    # 3 (7 steps on a 45x54x45 velocity, 9.3 -> 7.4 ms; 23x27x23, 2.2 -> 1.4 ms), with the same
    # numbers bit for bit. Not in `scaling_and_squaring`, which training differentiates: there
    # the 4th channel's share of the gradient's scatter cost 6-10 % (measured).
    u4 = jnp.pad(v / jnp.float32(2**steps), ((0, 0),) * 3 + ((0, 1),))
    u4 = jax.lax.fori_loop(0, steps, lambda _, u4: u4 + interpolate_clamped(u4, grid + u4[..., :3]), u4)
    return u4[..., :3]


def spatial_gradient(image):
    """Central differences along each axis (one-sided at the faces), (x, y, z, 3)."""
    return jnp.stack(jnp.gradient(image), axis=-1)


def level_displacement(v, grid_v, factor: int, steps: int, shape=None):
    """`exp(v)` on the level's grid of `shape`, in level voxels (`factor` = velocity scale /
    level scale). The velocity grid may reach one voxel beyond the level's last one."""
    d = exp_velocity(v, grid_v, steps)
    while factor > 1:
        d, factor = 2.0 * upsample2(d), factor // 2
    shape = shape or d.shape[:3]
    return d[: shape[0], : shape[1], : shape[2]]


def to_velocity_grid(force, factor: int, shape_v):
    """A level-grid force on the velocity grid: binomial downsampling, zero beyond the level."""
    while factor > 1:
        force, factor = downsample2(force), factor // 2
    return jnp.pad(force, [(0, shape_v[d] - force.shape[d]) for d in range(3)] + [(0, 0)])


def moved_image(mov, matrix, grid, disp):
    """`mov` at `matrix (grid + disp)`, edges replicated: a fill value would put an artificial
    edge (and a spurious force) wherever the map leaves the cube by a hair."""
    return interpolate_clamped(mov, apply_matrix(matrix, grid + disp))


def _interior(shape, margin: int):
    """1 inside the cube, 0 within `margin` voxels of a face: there the clamped sampling, the
    one-sided image gradient and the truncated windows give forces that are not about the images."""
    axes = [((jnp.arange(n) >= margin) & (jnp.arange(n) < n - margin)).astype(jnp.float32) for n in shape]
    return axes[0][:, None, None] * axes[1][None, :, None] * axes[2][None, None, :]


@functools.cache
def _optimizer(momentum: float):
    return optax.sgd(1.0, momentum=momentum or None)


@program(static_argnames=("factor", "steps"))
def _moved(v, mov, matrix, grid, grid_v, fix_weight=None, mov_weight=None, *, factor, steps):
    # Its own jit, so that the moved image is materialised once: inside the step, XLA fuses the
    # trilinear sampling into each consumer of MI's histogram and recomputes it about ten times
    # (a 6x slower iteration at 2 mm, measured).
    disp = level_displacement(v, grid_v, factor, steps, grid.shape[:3])
    warped = moved_image(mov, matrix, grid, disp)
    if fix_weight is None and mov_weight is None:  # no mask: exactly the unmasked program
        return warped
    return warped, cost_weight(fix_weight, mov_weight, apply_matrix(matrix, grid + disp))


def _force_of(fix, warped, weight, similarity, radius, bins):
    # The similarity and its force on the level's grid (step 3 of the module docstring).
    if weight is None:  # no mask: exactly the unmasked program
        value, dsim = similarity_function(similarity, radius, bins)(fix, warped)
    else:  # measured only where the masks are: no force from the voxels outside them
        value, dsim = similarity_function(similarity, radius, bins, masked=True)(fix, warped, weight)
    return value, dsim[..., None] * spatial_gradient(warped) * _interior(fix.shape, radius + 1)[..., None]


def _velocity_update(v, opt_state, force, fluid, field, step, reference, factor, momentum):
    # Steps 4-5: the force on the velocity grid, smoothed, scaled, through the optimiser.
    u = smooth(to_velocity_grid(force, factor, v.shape[:3]), fluid)
    longest = jnp.sqrt(jnp.max(jnp.sum(u * u, axis=-1)))
    u = u * (step / (jnp.maximum(longest, reference) + 1e-30))
    updates, opt_state = _optimizer(momentum).update(-u, opt_state)
    return smooth(v + updates, field), opt_state, longest


@program(static_argnames=("similarity", "radius", "bins", "factor", "momentum"), donate_argnames=("v",))
def _update(
    v, opt_state, fix, warped, fluid, field, step, reference, weight=None, *, similarity, radius, bins, factor, momentum
):
    value, force = _force_of(fix, warped, weight, similarity, radius, bins)
    v, opt_state, longest = _velocity_update(v, opt_state, force, fluid, field, step, reference, factor, momentum)
    return v, opt_state, value, longest


# LNCC's force and the update as two programs: XLA's CPU backend ran them as one 1.5x slower at
# 2 mm (26 -> 18 ms an iteration on 90x108x90; the same at 45x54x45), with the same numbers bit
# for bit. MI's stays one (split, its iteration was 1.2x slower at 2 mm).
_force = program(_force_of, static_argnames=("similarity", "radius", "bins"))
_apply_force = program(_velocity_update, static_argnames=("factor", "momentum"), donate_argnames=("v",))


def _deformable_step(
    v,
    opt_state,
    fix,
    mov,
    matrix,
    grid,
    grid_v,
    fluid,
    field,
    step,
    reference,
    *,
    similarity,
    radius,
    bins,
    factor,
    steps,
    momentum,
    fix_weight=None,
    mov_weight=None,
):
    """One iteration: the moving image through the current warp, then the smoothed force's update of `v`."""
    weight = None
    if fix_weight is None and mov_weight is None:
        warped = _moved(v, mov, matrix, grid, grid_v, factor=factor, steps=steps)
    else:
        warped, weight = _moved(v, mov, matrix, grid, grid_v, fix_weight, mov_weight, factor=factor, steps=steps)
    if similarity == "lncc":
        value, force = _force(fix, warped, weight, similarity=similarity, radius=radius, bins=bins)
        v, opt_state, longest = _apply_force(
            v, opt_state, force, fluid, field, step, reference, factor=factor, momentum=momentum
        )
        return v, opt_state, value, longest
    return _update(
        v,
        opt_state,
        fix,
        warped,
        fluid,
        field,
        step,
        reference,
        weight,
        similarity=similarity,
        radius=radius,
        bins=bins,
        factor=factor,
        momentum=momentum,
    )


def optimise_velocity(
    pyramid_mov: dict[int, jax.Array],
    pyramid_fix: dict[int, jax.Array],
    matrix: np.ndarray,
    *,
    similarity: str,
    levels: tuple[Level, ...],
    velocity_scale: int,
    sigma_update: float,
    sigma_field: float,
    velocity: jax.Array | None = None,
    radius: int = 2,
    bins: int = MI_BINS,
    steps: int = 5,
    momentum: float = 0.5,
    tolerance: float = 1e-3,
    voxel_size: float = 1.0,
    progress: bool = False,
    profile: dict | None = None,
    mask_fix: dict[int, jax.Array] | None = None,
    mask_mov: dict[int, jax.Array] | None = None,
) -> jax.Array:
    """The stationary velocity (on the grid `velocity_scale` times coarser than the network, in
    its voxels) that aligns the moving image, through `matrix`, to the fixed one.

    `pyramid_*[s]` are the images `s` times coarser; `matrix` maps fixed-network voxels to
    moving-network voxels (the affine stage's answer), so the forward map is
    `x -> matrix (x + exp(v)(x))`. `sigma_update` is in level voxels, `sigma_field` in velocity
    voxels. `velocity` starts the optimisation (zero by default). `radius` is LNCC's window
    half-width and `bins` MI's histogram bins per image (`MI_BINS`). Each level stops early when
    the similarity rose by less than `tolerance` (relative) over its last iterations.
    `voxel_size` (mm, the network grid's) only labels the levels in the progress and `profile`.
    The velocity grid covers the network grid: `ceil(n / velocity_scale)` voxels along an axis of `n`.
    `mask_*[s]` (optional, weights in [0, 1] on the pyramids' grids) are cost-function masks: the
    similarity and its force are measured only where the fixed mask and the moving mask read
    through the current map are non-zero; the smoothing acts everywhere, so the velocity inside
    an excluded region follows its surroundings. Without them the computation is exactly the
    unmasked one.
    """
    from tqdm.auto import tqdm

    if velocity is None:
        shape_v = tuple(-(-n // velocity_scale) for n in pyramid_fix[1].shape)
        v = jnp.zeros((*shape_v, 3), jnp.float32)
    else:
        v = jnp.array(velocity, jnp.float32)
        shape_v = v.shape[:3]
    grid_v = voxel_grid(shape_v)
    field = gaussian_matrices(shape_v, sigma_field)
    for level in levels:
        factor = velocity_scale // level.scale
        if factor < 1 or velocity_scale % level.scale or factor & (factor - 1):
            raise ValueError(
                f"level scale {level.scale} must divide the velocity scale {velocity_scale} by a power of 2"
            )
        fix, mov = pyramid_fix[level.scale], pyramid_mov[level.scale]
        grid = voxel_grid(fix.shape)
        fluid = gaussian_matrices(shape_v, sigma_update / factor)
        lmat = level_matrix(jnp.asarray(matrix, jnp.float32), level.scale)
        step = jnp.float32(level.step / factor)
        opt_state = _optimizer(momentum).init(v)
        stop = Convergence(tolerance)
        reference = jnp.float32(0.0)
        with (
            tqdm(
                total=level.iterations,
                desc=f"deformable {level.scale * voxel_size:.3g} mm",
                file=sys.stderr,
                disable=None if progress else True,
                leave=False,
            ) as bar,
            LevelTimer(profile, f"deformable {level.scale * voxel_size:.3g} mm") as count,
        ):
            for i in range(level.iterations):
                v, opt_state, value, longest = _deformable_step(
                    v,
                    opt_state,
                    fix,
                    mov,
                    lmat,
                    grid,
                    grid_v,
                    fluid,
                    field,
                    step,
                    reference,
                    similarity=similarity,
                    radius=radius,
                    bins=bins,
                    factor=factor,
                    steps=steps,
                    momentum=momentum,
                    fix_weight=None if mask_fix is None else mask_fix[level.scale],
                    mov_weight=None if mask_mov is None else mask_mov[level.scale],
                )
                if i == 0:
                    reference = longest
                value = float(value)
                count()
                bar.update()
                bar.set_postfix({similarity: f"{value:.4f}"})
                if stop(value):
                    break
    return v
