"""Jacobian determinant of a warp: local volume change, and where the warp folds (det ≤ 0)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


@jax.jit
def _determinant(disp: jax.Array, vox_per_mm: jax.Array) -> jax.Array:
    # d u_i / d p_j, one (x, y, z, 3) array per j: central differences inside, one-sided on the
    # faces (numpy.gradient's rule, which jnp.gradient follows).
    grads = jnp.gradient(disp, axis=(0, 1, 2))
    # d u_i / d x_k = sum_j (d u_i / d p_j)(d p_j / d x_k), as element-wise sums: no matmul, so no TF32 on GPUs.
    jac = [[((grads[0][..., i] * vox_per_mm[0, k] + grads[1][..., i] * vox_per_mm[1, k]) + grads[2][..., i] * vox_per_mm[2, k])
             + (1.0 if i == k else 0.0) for k in range(3)] for i in range(3)]
    # Cofactor expansion, fused by XLA into one pass over the grid with the differences above.
    return (jac[0][0] * (jac[1][1] * jac[2][2] - jac[1][2] * jac[2][1])
            - jac[0][1] * (jac[1][0] * jac[2][2] - jac[1][2] * jac[2][0])
            + jac[0][2] * (jac[1][0] * jac[2][1] - jac[1][1] * jac[2][0]))


def jacobian_determinant(displacement: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """det(I + ∂u/∂x) of the map x -> x + u(x), on the grid of `displacement`.

    `displacement` (x, y, z, 3) holds RAS displacements in mm on a grid with vox2ras `affine`
    (a warp as ilex writes it). Derivatives are central differences in voxels, one-sided on the
    grid's faces (numpy.gradient's rule), converted to mm through the affine, so the result does
    not depend on voxel size or orientation. 1 keeps volume, > 1 expands, ≤ 0 folds. Returns
    float32 (x, y, z). Compiled once per grid shape; all cores share the work.
    """
    disp = np.asarray(displacement, np.float32)
    if disp.ndim != 4 or disp.shape[3] != 3 or min(disp.shape[:3]) < 2:
        raise ValueError(f"expected a displacement field of shape (x, y, z, 3) with x, y, z ≥ 2, got {disp.shape}")
    vox_per_mm = np.linalg.inv(np.asarray(affine, np.float64)[:3, :3]).astype(np.float32)
    return np.asarray(_determinant(disp, vox_per_mm))


def folding_fraction(det: np.ndarray) -> float:
    """Fraction of voxels where the Jacobian determinant is ≤ 0, i.e. where the warp folds."""
    return float(np.count_nonzero(np.asarray(det) <= 0) / np.asarray(det).size)
