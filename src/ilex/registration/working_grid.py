"""The grid a registration method works on: its voxel size, axes and the shapes of both images' grids.

SynthMorph's networks were trained on one grid, a 1 mm LIA cube of side E (`cube_grid`), and keep it.
The optimiser has no such constraint and works at the fixed image's own resolution (`image_grid`):
an isotropic grid along the fixed image's axes that covers the fixed field of view, and a grid of the
same voxel size and axes around the moving image. A method says which grid it wants through its
`working_grid(moving, fixed, extent)` (`methods.base.Method`; the base class gives the cube).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..image.geometry import LIA
from ..image.io import Image

# Each step of the cap's search coarsens the grid by at least this factor.
_LEAST_STEP = 1.01


@dataclass(frozen=True)
class WorkingGrid:
    """Isotropic grids of `voxel_size` mm along the unit columns of `rotation` (RAS): `fixed_shape`
    voxels centred on the fixed image, `moving_shape` centred on the moving one (each image's
    centre is its voxel `shape / 2`, as FreeSurfer's). Where a method centres both on the fixed
    image, or an initial affine brings the moving image in, the moving side takes `fixed_shape`."""

    voxel_size: float
    rotation: np.ndarray
    fixed_shape: tuple[int, int, int]
    moving_shape: tuple[int, int, int]
    # Smooth an image whose voxels are finer than the grid's before sampling it (`antialiasing`);
    # SynthMorph's cube samples without, as mri_synthmorph does.
    antialias: bool = False

    @property
    def voxels(self) -> int:
        """Voxels of the larger of the two grids."""
        return max(int(np.prod(self.fixed_shape)), int(np.prod(self.moving_shape)))


def cube_grid(extent: int) -> WorkingGrid:
    """SynthMorph's network space: 1 mm LIA, `extent`^3 voxels for both images."""
    return WorkingGrid(1.0, LIA.astype(np.float64), (extent,) * 3, (extent,) * 3)


def working_voxel_size(affine: np.ndarray) -> float:
    """The isotropic voxel size (mm) that stands for an image's voxels: the middle of its three sizes.

    Isotropic voxels give their own size. For anisotropic ones the middle size keeps the in-plane
    resolution of the usual thick-slice scan (1 x 1 x 3 mm: 1 mm, the slices interpolated) without
    multiplying the grid by the square of the ratio where two axes are coarse (1 x 3 x 3 mm: 3 mm).
    """
    sizes = np.sort(np.linalg.norm(np.asarray(affine, np.float64)[:3, :3], axis=0))
    return float(sizes[1])


def _axes(affine: np.ndarray) -> np.ndarray:
    # The nearest rotation (or reflection) to the image's direction columns: the columns themselves
    # for an image without shear.
    columns = np.asarray(affine, np.float64)[:3, :3]
    columns = columns / np.linalg.norm(columns, axis=0)
    if np.allclose(columns.T @ columns, np.eye(3), atol=1e-6):
        return columns
    u, _, vt = np.linalg.svd(columns)
    return u @ vt


def _cover(image: Image, rotation: np.ndarray, voxel_size: float) -> tuple[int, int, int]:
    # Voxels along each working axis that span the image's field of view (its voxels' outer faces).
    shape = np.asarray(image.shape[:3], np.float64)
    corners = np.array(np.meshgrid(*[(-0.5, n - 0.5) for n in shape], indexing="ij")).reshape(3, -1)
    world = image.affine[:3, :3] @ corners
    along = rotation.T @ world / voxel_size
    span = along.max(axis=1) - along.min(axis=1)
    return tuple(int(n) for n in np.maximum(1, np.ceil(span - 1e-3)))


def image_grid(moving: Image, fixed: Image, extent: int) -> WorkingGrid:
    """A grid at the fixed image's resolution along its axes, covering each image's field of view.

    The voxel size is `working_voxel_size(fixed.affine)`; where either grid would hold more than
    `extent`^3 voxels (the memory of SynthMorph's cube at `-e`), the voxel size grows until both
    fit, so the whole field of view is always registered (at a coarser grid). An isotropic fixed
    image without shear gives its own voxel grid back (up to the rounding of its header). An image
    with finer voxels than the grid's is smoothed before it is sampled (`antialiasing`).
    """
    rotation = _axes(fixed.affine)
    size = working_voxel_size(fixed.affine)
    while True:  # the ceilings make a rescaling land a hair short now and then: a few steps
        grid = WorkingGrid(size, rotation, _cover(fixed, rotation, size), _cover(moving, rotation, size), True)
        if grid.voxels <= extent**3:
            return grid
        size *= max((grid.voxels / extent**3) ** (1 / 3), _LEAST_STEP)


def antialiasing(grid: WorkingGrid, affine: np.ndarray) -> np.ndarray | None:
    """Per-axis Gaussian sigma (the image's voxels) to apply before sampling an image of voxel-to-RAS
    `affine` onto `grid`, or None. For a grid `f` times coarser along an axis the variance is
    `(f^2 - 1) / 6` voxels^2: exactly that of the optimiser's binomial pyramid at f = 2, 4, 8."""
    if not grid.antialias:
        return None
    factor = grid.voxel_size / np.linalg.norm(np.asarray(affine, np.float64)[:3, :3], axis=0)
    sigma = np.sqrt(np.maximum(factor**2 - 1.0, 0.0) / 6.0)
    return sigma if (sigma > 0.05).any() else None
