"""Image similarities and a smoothness penalty, in JAX: the terms of a registration objective.

`lncc` and `mutual_information` are similarities (higher is better; minimise their negative),
`mse` and `smoothness` are penalties (lower is better). All take arrays on one grid, return a
scalar, and are jittable, vmappable and differentiable. Images are expected in [0, 1] (ilex's
network-space normalisation), which the epsilon of `lncc` and the bins of `mutual_information`
assume.

Example, a loss for one pair and a velocity field (all in voxels of one grid):

    >>> import jax, jax.numpy as jnp
    >>> from ilex import losses, transforms
    >>> def loss(velocity, moving, fixed, lam=0.1):
    ...     moved = transforms.warp_image(moving, transforms.integrate_velocity(velocity, steps=5))
    ...     return -losses.lncc(fixed, moved) + lam * losses.smoothness(velocity)
    >>> moving = fixed = jnp.ones((8, 8, 8)).at[2:6, 2:6, 2:6].set(0.5)
    >>> grad = jax.grad(loss)(jnp.zeros((8, 8, 8, 3)), moving, fixed)
    >>> grad.shape
    (8, 8, 8, 3)
"""

from __future__ import annotations

import jax.numpy as jnp
from jaxtyping import Array, Float

from ._custom_types import Field, Volume
from .optimize.similarity import lncc, mutual_information

__all__ = ["lncc", "mse", "mutual_information", "smoothness"]


def mse(fixed: Volume, moved: Volume) -> Float[Array, ""]:
    """Mean squared intensity difference `mean((fixed - moved)²)`: one contrast, same scaling."""
    return jnp.mean(jnp.square(jnp.asarray(fixed) - jnp.asarray(moved)))


def smoothness(field: Field) -> Float[Array, ""]:
    """Diffusion regulariser: the mean squared forward difference of `field` along each axis,
    summed over the axes, `Σ_axes mean(|f(p + e) - f(p)|²)`.

    Three times VoxelMorph's `Grad('l2')`, which averages the axes instead (voxelmorph@ca28315
    `voxelmorph/tf/losses.py`, `Grad.loss`). `ilex.train.smoothness` is that average, the term
    `ilex train` uses; this public function keeps the sum its callers' weights were chosen for.

    `field` (x, y, z, 3), a displacement or velocity in voxels. 0 for a constant field.
    """
    field = jnp.asarray(field)
    return sum(jnp.mean(jnp.square(jnp.diff(field, axis=axis))) for axis in range(3))
