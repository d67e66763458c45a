"""Scaling and squaring: the exponential of a stationary velocity field (VoxelMorph `VecInt`)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jaxtyping import Float

from .._custom_types import AnyArray
from .grid import voxel_grid
from .interpolate import interpolate_clamped


def scaling_and_squaring(velocity: Float[AnyArray, "x y z 3"], steps: int) -> Float[AnyArray, "x y z 3"]:
    """Displacement `exp(v)` in voxels: `u = v / 2**steps`, then `steps` times `u += u(x + u)`.

    Sampling clamps at the border (docs/spec-deform.md §2.7). `steps == 0` returns `v` itself.
    """
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    grid = voxel_grid(velocity.shape[:3])
    u = velocity / jnp.float32(2**steps)

    def square(_, u):
        return u + interpolate_clamped(u, grid + u)

    return jax.lax.fori_loop(0, steps, square, u)
