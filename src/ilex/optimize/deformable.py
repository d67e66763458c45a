"""The deformable stage: a stationary velocity field grown by smoothed similarity forces.

Log-domain, as diffeomorphic demons and SyN-like methods do it, with one stationary velocity
`v` on a grid `velocity_scale` times coarser than the network (4 mm by default at 1 mm
network voxels). Each iteration, at image level `s` (the images `s` times coarser):

1. `d = exp(v)` by scaling and squaring on the velocity grid (cheap: 64^3 at extent 256),
   brought to the level's grid by factor-2 trilinear upsampling;
2. the moving image is sampled at `A (x + d(x))` (one trilinear gather; `A` the affine);
3. the similarity's gradient with respect to the moved image (`similarity.py`) times the moved
   image's spatial gradient is the force: the direction of steepest ascent for a small
   displacement `u` composed on the right, `exp(v) ∘ (id + u)`;
4. the force goes down to the velocity grid, is smoothed (`sigma_update`, the "fluid"
   regularisation), scaled to a maximum length of `step` level voxels and passed through an
   optax optimiser (SGD with momentum);
5. `v <- G(v + u)` with a second smoothing (`sigma_field`, the "diffusion" regularisation):
   the first-order BCH approximation of `log(exp(v) ∘ exp(u))`.

Nothing is differentiated through the interpolation or the integration, and every array that
a level needs is an argument of one jitted step, so each level's shape compiles once.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ..transforms.compose import apply_matrix
from ..transforms.integrate import voxel_grid
from ..transforms.interpolate import interpolate_clamped
from .affine import level_matrix
from .convergence import Convergence, LevelTimer
from .similarity import similarity_function
from .smoothing import downsample2, gaussian_matrices, smooth, upsample2


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
    u = v / jnp.float32(2**steps)
    return jax.lax.fori_loop(0, steps, lambda _, u: u + interpolate_clamped(u, grid + u), u)


def spatial_gradient(image):
    """Central differences along each axis (one-sided at the faces), (x, y, z, 3)."""
    return jnp.stack(jnp.gradient(image), axis=-1)


def level_displacement(v, grid_v, factor: int, steps: int):
    """`exp(v)` on the level's grid, in level voxels (`factor` = velocity scale / level scale)."""
    d = exp_velocity(v, grid_v, steps)
    while factor > 1:
        d, factor = 2.0 * upsample2(d), factor // 2
    return d


def moved_image(mov, matrix, grid, disp):
    return interpolate_clamped(mov, apply_matrix(matrix, grid + disp), fill=0.0)


@functools.lru_cache(maxsize=None)
def _optimizer(momentum: float):
    return optax.sgd(1.0, momentum=momentum or None)


@functools.partial(jax.jit, static_argnames=("similarity", "radius", "factor", "steps", "momentum"),
                   donate_argnames=("v",))
def _deformable_step(v, opt_state, fix, mov, matrix, grid, grid_v, fluid, field, step, *,
                     similarity, radius, factor, steps, momentum):
    disp = level_displacement(v, grid_v, factor, steps)
    warped = moved_image(mov, matrix, grid, disp)
    value, dsim = similarity_function(similarity, radius)(fix, warped)
    force = dsim[..., None] * spatial_gradient(warped)
    while factor > 1:
        force, factor = downsample2(force), factor // 2
    u = smooth(force, fluid)
    u = u * (step / (jnp.sqrt(jnp.max(jnp.sum(u * u, axis=-1))) + 1e-12))
    updates, opt_state = _optimizer(momentum).update(-u, opt_state)
    return smooth(v + updates, field), opt_state, value


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
    steps: int = 5,
    momentum: float = 0.5,
    tolerance: float = 1e-3,
    progress: bool = False,
    profile: dict | None = None,
) -> jax.Array:
    """The stationary velocity (on the grid `velocity_scale` times coarser than the network, in
    its voxels) that aligns the moving image, through `matrix`, to the fixed one.

    `pyramid_*[s]` are the images `s` times coarser; `matrix` maps fixed-network voxels to
    moving-network voxels (the affine stage's answer), so the forward map is
    `x -> matrix (x + exp(v)(x))`. `sigma_update` is in level voxels, `sigma_field` in velocity
    voxels. `velocity` starts the optimisation (zero by default). Each level stops early when
    the similarity rose by less than `tolerance` (relative) over its last iterations.
    """
    from tqdm.auto import tqdm

    shape_v = tuple(n // velocity_scale for n in pyramid_fix[1].shape)
    v = jnp.zeros((*shape_v, 3), jnp.float32) if velocity is None else jnp.array(velocity, jnp.float32)
    grid_v = voxel_grid(shape_v)
    field = gaussian_matrices(shape_v, sigma_field)
    for level in levels:
        factor = velocity_scale // level.scale
        if factor < 1 or velocity_scale % level.scale or factor & (factor - 1):
            raise ValueError(f"level scale {level.scale} must divide the velocity scale {velocity_scale} by a power of 2")
        fix, mov = pyramid_fix[level.scale], pyramid_mov[level.scale]
        grid = voxel_grid(fix.shape)
        fluid = gaussian_matrices(shape_v, sigma_update / factor)
        lmat = level_matrix(jnp.asarray(matrix, jnp.float32), level.scale)
        step = jnp.float32(level.step / factor)
        opt_state = _optimizer(momentum).init(v)
        stop = Convergence(tolerance)
        with tqdm(total=level.iterations, desc=f"deformable {level.scale} mm", disable=not progress, leave=False) as bar, \
                LevelTimer(profile, f"deformable {level.scale} mm") as count:
            for _ in range(level.iterations):
                v, opt_state, value = _deformable_step(v, opt_state, fix, mov, lmat, grid, grid_v, fluid, field, step,
                                                       similarity=similarity, radius=radius, factor=factor,
                                                       steps=steps, momentum=momentum)
                value = float(value)
                count()
                bar.update()
                bar.set_postfix({similarity: f"{value:.4f}"})
                if stop(value):
                    break
    return v
