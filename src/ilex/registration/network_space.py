"""Images into SynthMorph's network space: 1 mm LIA cube, trilinear with zero fill, normalised."""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from ..image.geometry import network_affine, world_centre
from ..image.io import Image
from ..transforms.compose import affine_displacement
from ..transforms.grid import voxel_grid
from ..transforms.interpolate import interpolate_clamped


@dataclass(frozen=True)
class NetworkSpace:
    """The network grid and the voxel-to-voxel matrices between it and both images (float64)."""

    extent: int
    affine: np.ndarray
    net_to_mov: np.ndarray
    net_to_fix: np.ndarray
    mov_to_net: np.ndarray
    fix_to_net: np.ndarray


def network_space(
    moving: Image,
    fixed: Image,
    extent: int,
    init_vox: np.ndarray | None = None,
    *,
    centre_on_fixed: bool = True,
    mid_space: bool = False,
) -> NetworkSpace:
    """Both images' network spaces (docs/mri_synthmorph.md, *Network space*).

    With `centre_on_fixed` (`-m deform`, which assumes prior affine alignment) both cubes are
    centred on the fixed image; otherwise each on its own image (`affine`, `rigid`, `joint`).

    `init_vox`, an initial affine mapping moving voxels to fixed voxels, is folded into the
    moving side so that the moving image enters the network already aligned. With `mid_space`
    (`-M`) it is split instead: its principal matrix square root S (taken between the two
    network grids) moves the fixed side forward and the moving side back, so that both images
    meet half way, as mri_synthmorph's `-M` does. Raises `ValueError` when S is not real.
    """
    affine = network_affine(extent, world_centre(fixed.affine, fixed.shape))
    mov_affine = affine if centre_on_fixed else network_affine(extent, world_centre(moving.affine, moving.shape))
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
    return NetworkSpace(extent, affine, net_to_mov, net_to_fix, np.linalg.inv(net_to_mov), fix_to_net)


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


@jax.jit(static_argnames=("extent", "clip_percentile"))
def _resample_normalised(data, matrix, extent: int, clip_percentile: float | None):
    grid = voxel_grid((extent,) * 3)
    out = interpolate_clamped(data, grid + affine_displacement(matrix, grid), fill=0.0)
    if clip_percentile is not None:
        out = jnp.minimum(out, jnp.percentile(out, clip_percentile))
    out = out - out.min()
    return out / out.max()


def to_network(image: Image, net_to_vox: np.ndarray, extent: int, clip_percentile: float | None = None) -> jax.Array:
    """`image` resampled onto the network grid, min-max normalised to [0, 1] (docs/spec-deform.md §5.2).

    `clip_percentile` (e.g. 99) first clips at that percentile: the model card's variant, not
    what any FreeSurfer release does. An image with no signal in the network field of view
    gives 0/0 here; the pipeline checks for it before the network runs.
    """
    return _resample_normalised(
        jnp.asarray(image.data, jnp.float32), np.asarray(net_to_vox, np.float32), extent, clip_percentile
    )
