"""Refuse image pairs that do not overlap before the network runs (the reference divides 0 by 0).

The deformable network corrects local misalignment of a few millimetres to centimetres; it
cannot find a brain that sits outside the other image's field of view. Without affine
alignment (`-i`) such pairs give meaningless warps, so they are stopped here with advice.
"""

from __future__ import annotations

import numpy as np

from ..errors import ImageFileError
from ..image.io import Image

# Below this, neither image has even a fifth of its content inside the other's field of view.
# Whole heads off by ~130 mm on every axis (scanner vs. corner origins) share about 12 %, and
# slabs inside a whole-brain image share ~100 %, so the limit separates the two.
MIN_SHARED_CONTENT = 0.2
# A strided subsample of this many voxels at most: the fractions are only compared with 0.2, and
# 250k points give them within 0.01 of 2 M points' (pairs shifted 40-120 mm, 1 and 2 mm grids)
# at 6 ms instead of 80 ms a 2 mm pair.
_MAX_POINTS = 250_000


def _foreground_voxels(image: Image) -> np.ndarray:
    """Homogeneous voxel coordinates (4, n) of a subsample of the image's above-background voxels."""
    stride = max(1, int(np.ceil((np.prod(image.shape) / _MAX_POINTS) ** (1 / 3))))
    data = image.data[::stride, ::stride, ::stride]
    lo, hi = float(data.min()), float(np.percentile(data, 99))
    idx = np.nonzero(data > lo + 0.1 * (hi - lo))
    points = np.stack([*(np.asarray(i, np.float64) * stride for i in idx), np.ones(idx[0].size)])
    return points


def shared_content(image: Image, to_other_vox: np.ndarray, other_shape) -> float:
    """Fraction of `image`'s foreground that lands inside the other image's voxel grid.

    `to_other_vox` maps this image's voxels to the other's (4x4, including any initial affine).
    """
    points = _foreground_voxels(image)
    if points.shape[1] == 0:
        return 0.0
    mapped = (to_other_vox @ points)[:3]
    upper = np.asarray(other_shape, np.float64)[:, None] - 0.5
    inside = np.all((mapped >= -0.5) & (mapped <= upper), axis=0)
    return float(inside.mean())


def check_overlap(
    moving: Image, fixed: Image, mov_to_fix_vox: np.ndarray, *, centred: bool = False
) -> tuple[float, float]:
    """Raise `ImageFileError` when moving and fixed barely share any content; else return both fractions.

    `mov_to_fix_vox` is where the method starts from: world space, or, for methods that centre
    each image's cube on that image (`centred`), the centres laid on each other; the advice
    then names `-i` alone, since an affine method would start from the same place.
    """
    moving_in_fixed = shared_content(moving, mov_to_fix_vox, fixed.shape)
    fixed_in_moving = shared_content(fixed, np.linalg.inv(mov_to_fix_vox), moving.shape)
    if max(moving_in_fixed, fixed_in_moving) < MIN_SHARED_CONTENT:
        verb = "do not overlap" if max(moving_in_fixed, fixed_in_moving) == 0 else "barely overlap"
        raise ImageFileError(
            moving.path or "moving image",
            f"the moving and fixed ({fixed.path or 'fixed image'}) images {verb} "
            f"{'even with each centred on its own field of view' if centred else 'in world space'}: "
            f"{moving_in_fixed:.0%} of the moving image's content lies inside the fixed field of view and "
            f"{fixed_in_moving:.0%} of the fixed image's inside the moving one "
            f"(at least {MIN_SHARED_CONTENT:.0%} needed); "
            + (
                "pass an initial affine with -i"
                if centred
                else "align them affinely first (e.g. -m affine, which centres each image on itself) and pass the "
                "transform with -i"
            ),
        )
    return moving_in_fixed, fixed_in_moving
