"""Warping an image through a displacement field, and composing two fields (the functional layer).

Both follow the pull-back convention of every ilex warp: a displacement `d` on a grid says that
voxel `p` of the output takes the value the input has at `p + d(p)`, in voxels of the input
(which may be another grid than the output's, for `compose_native`; here they are the same grid).
"""

from __future__ import annotations

import jax.numpy as jnp
from jaxtyping import Array, Float

from .._custom_types import AnyArray, Field, Volume
from .grid import voxel_grid
from .interpolate import interpolate_clamped, sample_image


def warp_image(
    image: Volume, displacement: Field, method: str = "linear", fill: float | Float[AnyArray, ""] = 0.0
) -> Float[Array, "x y z"]:
    """`image` moved by `displacement`: `out[p] = image(p + displacement[p])`.

    `image` (x, y, z) and `displacement` (x, y, z, 3), in voxels by array axis, on one grid.
    `method` is "linear" (trilinear) or "nearest" (label maps). A position is inside when its
    floor lies on the grid (surfa's rule for moved images, what `-o` writes); `fill` elsewhere.
    Jittable (`method` static), vmappable, and differentiable in `image` and, for "linear", in
    `displacement` (almost everywhere: trilinear weights are piecewise linear).

    Example:
        >>> import jax.numpy as jnp
        >>> from ilex.transforms import warp_image
        >>> image = jnp.arange(4.0)[:, None, None] * jnp.ones((4, 4, 4))  # value = x index
        >>> shift = jnp.zeros((4, 4, 4, 3)).at[..., 0].set(0.5)  # sample half a voxel along x
        >>> float(warp_image(image, shift)[1, 2, 2])
        1.5
    """
    return sample_image(jnp.asarray(image), voxel_grid(displacement.shape[:3]) + displacement, method, fill)


def compose_fields(outer: Field, inner: Field) -> Float[Array, "x y z 3"]:
    """The displacement of `inner` followed by `outer`: `inner(p) + outer(p + inner(p))`.

    Moving an image by the result moves it as `outer` then `inner` do one after the other:
    `warp_image(image, compose_fields(outer, inner)) ≈ warp_image(warp_image(image, outer), inner)`, with one
    interpolation of the image instead of two. `outer` is sampled trilinearly with its border
    values held outside the grid (VoxelMorph's convention for fields). Both (x, y, z, 3) in
    voxels. Jittable, vmappable and differentiable in both fields.

    Example:
        >>> import jax.numpy as jnp
        >>> from ilex.transforms import compose_fields
        >>> one = jnp.zeros((4, 4, 4, 3)).at[..., 0].set(1.0)
        >>> float(compose_fields(one, one)[0, 0, 0, 0])  # two shifts of one voxel
        2.0
    """
    return inner + interpolate_clamped(outer, voxel_grid(inner.shape[:3]) + inner)
