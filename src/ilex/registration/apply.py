"""Applying a RAS displacement warp to any image (what `ilex apply` and `mri_synthmorph apply` do)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from ..image.io import Image
from ..image.warp_io import Warp
from ..transforms.compose import apply_matrix
from ..transforms.grid import voxel_grid
from ..transforms.interpolate import sample_image

DTYPES = ("uint8", "uint16", "int16", "int32", "float32")


@jax.jit(static_argnames=("method",))
def _warp_image(data, disp, target_affine, world_to_image, method: str, fill):
    world = apply_matrix(target_affine, voxel_grid(disp.shape[:3])) + disp
    return sample_image(data, apply_matrix(world_to_image, world), method, fill)


def apply_warp(warp: Warp, image: Image, method: str = "linear", fill: float = 0.0, dtype: str = "float32") -> np.ndarray:
    """`image` resampled onto the warp's target grid: voxel p takes the value at world `A p + d(p)`.

    `method` is "linear" or "nearest" (label maps); integer `dtype`s round to nearest, clipped
    to the type's range.
    """
    if dtype not in DTYPES:
        raise ValueError(f"output type must be one of {', '.join(DTYPES)}, got {dtype!r}")
    out = _warp_image(
        jnp.asarray(image.data, jnp.float32),
        jnp.asarray(warp.displacement, jnp.float32),
        warp.affine.astype(np.float32),
        np.linalg.inv(image.affine).astype(np.float32),
        method,
        jnp.float32(fill),
    )
    out = np.asarray(out)
    if dtype != "float32":
        info = np.iinfo(dtype)
        out = np.clip(np.rint(out), info.min, info.max)
    return out.astype(dtype)


def apply_affine(ras_moving_to_fixed: np.ndarray, image: Image, target_affine: np.ndarray, target_shape,
                 method: str = "linear", fill: float = 0.0, dtype: str = "float32") -> np.ndarray:
    """`image` resampled onto a target grid through a world matrix (moving RAS -> fixed RAS, as an LTA
    stores it): target voxel p takes the value at world `inv(M) A p`."""
    grid = voxel_grid(tuple(int(n) for n in target_shape))
    world = apply_matrix(np.asarray(target_affine, np.float32), grid)
    disp = apply_matrix(np.linalg.inv(ras_moving_to_fixed).astype(np.float32), world) - world
    return apply_warp(Warp(np.asarray(disp), np.asarray(target_affine)), image, method, fill, dtype)
