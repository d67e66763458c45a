"""Label maps moved by a displacement (nearest neighbour), and one-hot encoding."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int

from .._custom_types import AnyArray, Field
from ..transforms.grid import voxel_grid


def warp_labels(labels: Int[AnyArray, "x y z"], displacement: Field) -> Int[Array, "x y z"]:
    """`labels` moved by `displacement`: `out[p] = labels[round(p + displacement[p])]`, 0 outside.

    `displacement` (x, y, z, 3) in voxels by array axis, pull-back, on the grid of `labels`. Rounding
    is half to even and a position outside [0, n - 1] on any axis reads the background 0, as
    VoxelMorph's `SpatialTransformer(interp_method='nearest', fill_value=0)`. Jittable, vmappable.
    """
    labels = jnp.asarray(labels)
    coords = voxel_grid(labels.shape) + displacement
    inside = jnp.ones(labels.shape, bool)
    idx = []
    for d in range(3):
        inside &= (coords[..., d] >= 0) & (coords[..., d] <= labels.shape[d] - 1)
        idx.append(jnp.clip(jnp.round(coords[..., d]), 0, labels.shape[d] - 1).astype(jnp.int32))
    return jnp.where(inside, labels[idx[0], idx[1], idx[2]], jnp.zeros((), labels.dtype))


def one_hot(labels: Int[AnyArray, "*s"], n: int) -> Float[Array, "*s k"]:
    """`labels` (values 0..n-1) as n float32 channels, last; a value outside 0..n-1 is all zeros."""
    return jax.nn.one_hot(labels, n, dtype=jnp.float32)
