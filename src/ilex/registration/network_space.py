"""Images into a method's network space (its `WorkingGrid`), trilinear with zero fill, normalised.

For SynthMorph's models that is the 1 mm LIA cube of side E; for the optimiser, grids at the
fixed image's resolution (`working_grid.py`).
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from .._programs import program
from ..image.geometry import world_centre
from ..image.io import Image
from ..optimize.smoothing import gaussian_matrix, smooth
from ..transforms.compose import affine_displacement
from ..transforms.grid import voxel_grid
from ..transforms.interpolate import interpolate_clamped
from .working_grid import WorkingGrid, cube_grid


@dataclass(frozen=True)
class NetworkSpace:
    """The network grids and the voxel-to-voxel matrices between them and both images (float64).

    `shape` is the fixed network grid's, `moving_shape` the moving one's, both of `voxel_size`
    mm; `affine` is the fixed grid's voxel-to-RAS matrix. `start` maps fixed-network voxels to
    moving-network voxels where a method starts from: the identity where both grids are one
    (SynthMorph's cube, a method centred on the fixed image, an initial affine), else the shift
    that lays the two grids' centres on each other.
    """

    shape: tuple[int, int, int]
    moving_shape: tuple[int, int, int]
    voxel_size: float
    affine: np.ndarray
    net_to_mov: np.ndarray
    net_to_fix: np.ndarray
    mov_to_net: np.ndarray
    fix_to_net: np.ndarray
    start: np.ndarray

    @property
    def extent(self) -> int:
        """The largest side of the fixed network grid, in voxels (the cube's side E)."""
        return max(self.shape)


def grid_affine(grid: WorkingGrid, shape, centre: np.ndarray) -> np.ndarray:
    """vox2world of a grid of `grid`'s voxel size and axes, `shape` voxels, voxel `shape / 2` at
    `centre`; for `cube_grid(E)` exactly `image.geometry.network_affine(E, centre)`."""
    affine = np.eye(4)
    affine[:3, :3] = grid.rotation * grid.voxel_size
    affine[:3, 3] = np.asarray(centre, float) - affine[:3, :3] @ (np.asarray(shape, float) / 2)
    return affine


def network_space(
    moving: Image,
    fixed: Image,
    extent: int,
    init_vox: np.ndarray | None = None,
    *,
    centre_on_fixed: bool = True,
    mid_space: bool = False,
    grid: WorkingGrid | None = None,
) -> NetworkSpace:
    """Both images' network spaces (docs/mri_synthmorph.md, *Network space*).

    `grid` is the method's working grid (`Method.working_grid`); by default SynthMorph's 1 mm
    LIA cube of side `extent`.

    With `centre_on_fixed` (`-m deform`, which assumes prior affine alignment) both cubes are
    centred on the fixed image; otherwise each on its own image (`affine`, `rigid`, `joint`).

    `init_vox`, an initial affine mapping moving voxels to fixed voxels, is folded into the
    moving side so that the moving image enters the network already aligned. With `mid_space`
    (`-M`) it is split instead: its principal matrix square root S (taken between the two
    network grids) moves the fixed side forward and the moving side back, so that both images
    meet half way, as mri_synthmorph's `-M` does. Raises `ValueError` when S is not real.
    """
    grid = grid or cube_grid(extent)
    shape = tuple(grid.fixed_shape)
    # One grid for both where the moving image enters on the fixed one's (centred on it, or aligned).
    moving_shape = shape if centre_on_fixed or init_vox is not None else tuple(grid.moving_shape)
    affine = grid_affine(grid, shape, world_centre(fixed.affine, fixed.shape))
    mov_affine = (
        affine if centre_on_fixed else grid_affine(grid, moving_shape, world_centre(moving.affine, moving.shape))
    )
    start = np.eye(4)
    start[:3, 3] = (np.asarray(moving_shape, float) - np.asarray(shape, float)) / 2
    net_to_mov = np.linalg.inv(moving.affine) @ mov_affine
    net_to_fix = np.linalg.inv(fixed.affine) @ affine
    fix_to_net = np.linalg.inv(net_to_fix)
    if init_vox is not None:
        init_net = fix_to_net @ init_vox @ net_to_mov
        if mid_space:
            init_net = matrix_square_root(init_net)
            net_to_fix = net_to_fix @ init_net
            fix_to_net = np.linalg.inv(net_to_fix)
        net_to_mov = net_to_mov @ np.linalg.inv(init_net)
    elif mid_space:
        raise ValueError("mid_space splits the initial affine between the images: it needs init_vox")
    return NetworkSpace(
        shape,
        moving_shape,
        float(grid.voxel_size),
        affine,
        net_to_mov,
        net_to_fix,
        np.linalg.inv(net_to_mov),
        fix_to_net,
        start,
    )


def matrix_square_root(matrix: np.ndarray) -> np.ndarray:
    """The principal square root S of a 4x4 affine (S @ S = matrix), itself affine.

    Raises `ValueError` when it is not real (a reflection, or a rotation by 180 degrees).
    """
    import scipy.linalg

    root = scipy.linalg.sqrtm(np.asarray(matrix, np.float64))
    if not np.isrealobj(root):
        if np.abs(root.imag).max() > 1e-9 * max(1.0, np.abs(root.real).max()):
            raise ValueError("the initial affine has no real matrix square root (a reflection or a half turn)")
        root = root.real
    if not np.isfinite(root).all() or not np.allclose(root @ root, matrix, atol=1e-6 * max(1.0, np.abs(matrix).max())):
        raise ValueError("the initial affine has no real matrix square root (a reflection or a half turn)")
    root[3] = (0.0, 0.0, 0.0, 1.0)  # exact, against round-off in the last row
    return root


@program(static_argnames=("shape", "clip_percentile"))
def _resample_normalised(data, matrix, shape: tuple[int, int, int], clip_percentile: float | None, mats=None):
    if mats is not None:
        data = smooth(data, mats)
    grid = voxel_grid(shape)
    out = interpolate_clamped(data, grid + affine_displacement(matrix, grid), fill=0.0)
    if clip_percentile is not None:
        out = jnp.minimum(out, jnp.percentile(out, clip_percentile))
    out = out - out.min()
    return out / out.max()


def to_network(
    image: Image,
    net_to_vox: np.ndarray,
    shape: int | tuple[int, int, int],
    clip_percentile: float | None = None,
    sigma=None,
) -> jax.Array:
    """`image` resampled onto the network grid of `shape` (an int: the cube of that side), min-max
    normalised to [0, 1] (docs/spec-deform.md §5.2).

    `clip_percentile` (e.g. 99) first clips at that percentile: the model card's variant, not
    what any FreeSurfer release does. An image with no signal in the network field of view
    gives 0/0 here; the pipeline checks for it before the network runs. `sigma` (per axis, in
    the image's voxels; `working_grid.antialiasing`) smooths the image first.
    """
    mats = (
        None
        if sigma is None
        else tuple(gaussian_matrix(int(n), float(s)) for n, s in zip(image.shape[:3], sigma, strict=True))
    )
    return _resample_normalised(
        jnp.asarray(image.data, jnp.float32),
        np.asarray(net_to_vox, np.float32),
        shape=(shape,) * 3 if isinstance(shape, int) else tuple(int(n) for n in shape),
        clip_percentile=clip_percentile,
        mats=mats,
    )
