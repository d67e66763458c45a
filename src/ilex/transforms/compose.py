"""Composing matrices and displacement fields as VoxelMorph's `compose` does (docs/spec-deform.md §2.8, §3)."""

from __future__ import annotations

import jax.numpy as jnp
from jaxtyping import Float

from .._custom_types import AnyArray
from .._programs import program
from .._sequencing import after
from .grid import voxel_grid
from .interpolate import interpolate_clamped


def apply_matrix(matrix: Float[AnyArray, "r 4"], points: Float[AnyArray, "*s 3"]) -> Float[AnyArray, "*s 3"]:
    """`M[:3,:3] @ x + M[:3,3]` for every point, in float32 (the reference casts matrices).

    Element-wise sums in matrix-row order, never a matmul, so that GPUs' TF32 cannot round it.
    """
    m = jnp.asarray(matrix).astype(jnp.float32)
    rows = [
        ((m[r, 0] * points[..., 0] + m[r, 1] * points[..., 1]) + m[r, 2] * points[..., 2]) + m[r, 3] for r in range(3)
    ]
    return jnp.stack(rows, axis=-1)


def affine_displacement(matrix: Float[AnyArray, "r 4"], grid: Float[AnyArray, "*s 3"]) -> Float[AnyArray, "*s 3"]:
    """`M x - x` at every point `x` of `grid` (VoxelMorph's `affine_to_dense_shift`)."""
    return apply_matrix(matrix, grid) - grid


def matrix_field(matrix: Float[AnyArray, "r 4"], shape) -> Float[AnyArray, "x y z 3"]:
    """`M p - p` at every voxel `p` of a grid of `shape` (x, y, z): the dense displacement of a
    voxel-to-voxel matrix (`affine_displacement` on `voxel_grid(shape)`), float32, in the
    voxels `M` maps to. One compiled program per shape, reused across calls."""
    return _matrix_field(matrix, shape=tuple(int(n) for n in shape))


@program(static_argnames=("shape",))
def _matrix_field(matrix, shape):
    return affine_displacement(matrix, voxel_grid(shape))


@program
def matrix_after_field(matrix: Float[AnyArray, "r 4"], field: Float[AnyArray, "x y z 3"]) -> Float[AnyArray, "x y z 3"]:
    """`M (p + field(p)) - p` at every voxel `p` of `field`'s grid: the displacement of `field`
    followed by the matrix `M` (VoxelMorph's `compose` of a matrix after a dense warp), float32.
    `field` is in the voxels `M` maps from; the result in those `M` maps to."""
    grid = voxel_grid(field.shape[:3])
    return apply_matrix(matrix, grid + field) - grid


def upsample_half_field(half: Float[AnyArray, "hx hy hz 3"]) -> Float[AnyArray, "x y z 3"]:
    """Half-resolution displacement to the full grid, by composition (docs/spec-deform.md §2.8).

    `F(y) = -y/2 + interp_clamp(T, y/2)` with `T(x) = 2 (x + d(x)) - x`: 2·d(y/2) inside, and
    -0.5 + 2·d(last) on the last slice of each axis, where y/2 is clamped. Units: full voxels.
    """
    grid = voxel_grid(half.shape[:3])
    return to_full_resolution(2.0 * (grid + half) - grid, 2)


def compose_native(
    field: Float[AnyArray, "nx ny nz 3"],
    target_to_net: Float[AnyArray, "4 4"],
    net_to_source: Float[AnyArray, "4 4"],
    target_shape,
) -> Float[AnyArray, "x y z 3"]:
    """A network-space displacement as a displacement on the target image's own voxel grid.

    For target voxel p: `q = target_to_net p`, `q' = q + field(q)` (clamped outside the network
    field of view), and the result is `net_to_source q' - p`, in source voxels (`disp_crs`).

    Three compiled programs, one after the other: compiled as one, XLA evaluated the shift again
    in every corner of the trilinear gather and the gather again in every component of the
    matrix that follows (1.02 s against 0.39 s at 181 x 217 x 181, measured; the same numbers).
    """
    shift = matrix_field(jnp.asarray(target_to_net, jnp.float32), target_shape)
    shift = _through_field(jnp.asarray(field), shift)
    # VoxelMorph adds the right-hand warp to the mesh before the matrix product: M (x + u) - x.
    return matrix_after_field(jnp.asarray(net_to_source, jnp.float32), shift)


@program
def _through_field(field, shift):
    return shift + interpolate_clamped(field, voxel_grid(shift.shape[:3]) + shift)


def coarse_total_displacement(
    disp: Float[AnyArray, "cx cy cz 3"],
    pre: Float[AnyArray, "4 4"] | None,
    post: Float[AnyArray, "4 4"],
) -> Float[AnyArray, "cx cy cz 3"]:
    """`post (z + disp(z)) - y` at every coarse voxel y, with `z = pre y` (VoxelMorph's `compose`
    of matrix, dense warp, matrix: the warp is sampled with border clamping, matrices in float32).

    `pre` None is the identity (the warp is then read at grid points, exactly). The result is a
    displacement from coarse indices to whatever grid `post` ends in (full-resolution network
    indices, for `to_full_resolution`).
    """
    if pre is None:
        return matrix_after_field(jnp.asarray(post, jnp.float32), disp)
    # As compose_native, in its programs: fused, XLA repeated the gather per component.
    moved = _through_field(disp, matrix_field(jnp.asarray(pre, jnp.float32), disp.shape[:3]))
    return matrix_after_field(jnp.asarray(post, jnp.float32), moved)


def to_full_resolution(coarse: Float[AnyArray, "cx cy cz 3"], scale: int) -> Float[AnyArray, "x y z 3"]:
    """A coarse-grid displacement `T` (coarse index -> full index) on the grid `scale` times finer.

    `F(x) = x/s - x + interp_clamp(T, x/s)` (docs/spec-deform.md §2.8 for s = 2): composition with the
    downscaling, not resampling, so the border behaves as the reference's (clamped T).
    """
    if scale == 1:
        return coarse
    # The full-resolution grid is built from a zero that exists only once `coarse` does, so that
    # XLA computes it here, not up front where its 200 MB (at extent 256) would sit beside the
    # U-Net's peak.
    full = voxel_grid(tuple(scale * s for s in coarse.shape[:3])) + after(jnp.zeros((), jnp.float32), coarse)
    down = full / jnp.float32(scale) - full
    return down + interpolate_clamped(coarse, full + down)
