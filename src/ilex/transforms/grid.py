"""The voxel grid that displacement fields are added to (fields hold offsets, not positions)."""

from __future__ import annotations

import jax.numpy as jnp
from jaxtyping import Float

from .._custom_types import AnyArray
from .._programs import program


def voxel_grid(shape) -> Float[AnyArray, "x y z 3"]:
    """Voxel indices of a grid of `shape` (x, y, z), 'ij' order, float32: `grid[i, j, k] = (i, j, k)`."""
    return _voxel_grid(tuple(int(n) for n in shape))


# One program per shape: run eagerly, its aranges, meshgrid and stack were eight small programs,
# each compiled on a process's first call (0.6 s of a first `-m optimize` run, measured).
@program(static_argnums=0)
def _voxel_grid(shape: tuple[int, ...]):
    return jnp.stack(jnp.meshgrid(*[jnp.arange(s, dtype=jnp.float32) for s in shape], indexing="ij"), axis=-1)
