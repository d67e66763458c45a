"""Cost-function masks (`--mask-fixed`, `--mask-moving`): read, checked against their image, and
brought onto the method's working grid.

A mask has ANTs' `-x` meaning: the similarity and its gradient are measured only where it is
non-zero; what lies outside it (a lesion cut out of a head mask) takes no part, and the warp goes
smoothly through it. A mask may be on any grid (NIfTI or MGZ); it is resampled nearest-neighbour
onto its image's grid for the checks and onto the working grid for the method. Refused, before
any registration, with `ImageFileError` naming the mask's file: unreadable files; NaN or Inf
voxels; values other than 0 and 1 without a threshold; an empty mask; a mask that covers less
than `MIN_HEAD_COVERED` of its image's head (its foreground, as `overlap.py` counts it).
"""

from __future__ import annotations

import os

import jax.numpy as jnp
import numpy as np

from .._programs import program
from ..errors import ImageFileError, OptionError
from ..image.io import Image, from_nibabel, load_image
from ..transforms.compose import apply_matrix
from ..transforms.grid import voxel_grid
from ..transforms.interpolate import sample_image
from .overlap import _MAX_POINTS

# A cost-function mask keeps the head and leaves out a lesion; one that keeps less than a tenth of
# the head is most likely the lesion itself (inverted) or belongs to another image.
MIN_HEAD_COVERED = 0.1


def read_mask(mask, image: Image, *, what: str, threshold: float | None = None) -> Image:
    """`mask` (a path, a nibabel image or an `Image`) as a 0/1 float32 `Image` on its own grid,
    checked against `image` (the image it masks; `what` names it in messages: "fixed mask").

    Without `threshold`, every voxel must be 0 or 1; with it, the voxels above `threshold` are
    the mask. Raises `ImageFileError` naming the mask's file (see the module docstring).
    """
    m = _as_image(mask, what)
    path = m.path or what
    data = m.data
    if not np.isfinite(data).all():
        raise ImageFileError(path, f"the {what} has NaN or Inf voxels; a mask holds 0 (leave out) and 1 (use)")
    if threshold is None:
        if not ((data == 0) | (data == 1)).all():
            raise ImageFileError(
                path,
                f"the {what} is not binary (values from {float(data.min()):g} to {float(data.max()):g}, not only 0 "
                "and 1); give a threshold (--mask-threshold T, mask_threshold=T: the voxels above T are the mask)",
            )
        binary = data == 1
    else:
        binary = data > threshold
    if not binary.any():
        above = "" if threshold is None else f" above the threshold {threshold:g}"
        raise ImageFileError(path, f"the {what} is empty (no voxel{above}); it would leave nothing to measure")
    covered = head_covered(binary, m.affine, image)
    if covered < MIN_HEAD_COVERED:
        label = image.path or what.replace("mask", "image")
        raise ImageFileError(
            path,
            f"the {what} covers {100 * covered:.1f} % of the head in {label} (at least "
            f"{100 * MIN_HEAD_COVERED:.0f} % needed): a cost-function mask marks the voxels to use; is it "
            "inverted (a lesion rather than the head without it), or another image's?",
        )
    return Image(binary.astype(np.float32), m.affine, m.path)


def _as_image(mask, what: str) -> Image:
    if isinstance(mask, Image):
        return mask
    if hasattr(mask, "dataobj") and hasattr(mask, "affine"):
        return from_nibabel(mask, what=what, check_values=False)
    if isinstance(mask, (str, os.PathLike)):
        return load_image(mask, what=what, check_values=False)
    raise TypeError(f"{what}: expected a path, a nibabel image or an ilex Image, got {type(mask).__name__}")


def head_covered(binary: np.ndarray, mask_affine: np.ndarray, image: Image) -> float:
    """The fraction of `image`'s head (voxels above a tenth of its range, as `overlap.py` counts;
    subsampled on large images) that the mask `binary` (on the grid of `mask_affine`) covers."""
    stride = max(1, int(np.ceil((np.prod(image.shape) / _MAX_POINTS) ** (1 / 3))))
    data = image.data[::stride, ::stride, ::stride]
    lo, hi = float(data.min()), float(np.percentile(data, 99))
    head = data > lo + 0.1 * (hi - lo)
    if not head.any():
        return 0.0
    sub = image.affine @ np.diag([stride, stride, stride, 1.0])
    on_image = np.asarray(_nearest(jnp.asarray(binary, jnp.float32), np.linalg.inv(mask_affine) @ sub, head.shape))
    return float((on_image[head] > 0).mean())


def mask_on_grid(mask: Image, net_to_image: np.ndarray, image: Image, shape) -> np.ndarray:
    """The 0/1 `mask` (on its own grid) on the network grid of `shape`, whose voxels map to
    `image`'s by `net_to_image`: nearest neighbour, 0 outside the mask's field of view."""
    matrix = np.linalg.inv(mask.affine) @ image.affine @ np.asarray(net_to_image, np.float64)
    return np.asarray(_nearest(jnp.asarray(mask.data, jnp.float32), matrix, tuple(int(n) for n in shape)))


def network_masks(masks: dict, space, moving: Image, fixed: Image) -> tuple:
    """(fixed, moving) masks of `masks` ({"fixed": Image, "moving": Image}, either may be absent)
    on the network grids of `space`, each None where not given. Raises `OptionError` for a mask
    that leaves no voxel of the working grid (it lies outside the part of its image registered)."""
    out = []
    for which, image, net_to, shape in (
        ("fixed", fixed, space.net_to_fix, space.shape),
        ("moving", moving, space.net_to_mov, space.moving_shape),
    ):
        mask = masks.get(which)
        if mask is None:
            out.append(None)
            continue
        on_grid = mask_on_grid(mask, net_to, image, shape)
        if not on_grid.any():
            raise ImageFileError(
                mask.path or f"{which} mask",
                f"the {which} mask has no voxel on the working grid (it lies outside the part of the image registered)",
            )
        out.append(on_grid)
    return tuple(out)


def check_mask_options(takes_masks: bool, method: str, masks: dict, threshold: float | None) -> None:
    """Refuse masks for a method that cannot use them (`method` names it: "method joint"), and a
    threshold without a mask (`OptionError`)."""
    given = [k for k, v in masks.items() if v is not None]
    if threshold is not None and not given:
        raise OptionError("a threshold applies to a mask: give mask_fixed or mask_moving", argument="mask_threshold")
    if given and not takes_masks:
        raise OptionError(
            f"{method} cannot use a cost-function mask (its networks see the whole images); masks "
            "are for the optimiser: method optimize, or refine",
            argument=f"mask_{given[0]}",
        )


@program(static_argnames=("shape",))
def _nearest(data, matrix, shape):
    return sample_image(data, apply_matrix(jnp.asarray(matrix, jnp.float32), voxel_grid(shape)), "nearest", 0.0)
