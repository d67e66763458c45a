"""Jacobian determinant of a warp: local volume change, and where the warp folds (det ≤ 0)."""

from __future__ import annotations

import numpy as np


def _det3(m: np.ndarray) -> np.ndarray:
    # Cofactor expansion: one fused pass, far faster than np.linalg.det's batched LU on 10^7 matrices.
    return (
        m[..., 0, 0] * (m[..., 1, 1] * m[..., 2, 2] - m[..., 1, 2] * m[..., 2, 1])
        - m[..., 0, 1] * (m[..., 1, 0] * m[..., 2, 2] - m[..., 1, 2] * m[..., 2, 0])
        + m[..., 0, 2] * (m[..., 1, 0] * m[..., 2, 1] - m[..., 1, 1] * m[..., 2, 0])
    )


def jacobian_determinant(displacement: np.ndarray, affine: np.ndarray, slab: int = 16) -> np.ndarray:
    """det(I + ∂u/∂x) of the map x -> x + u(x), on the grid of `displacement`.

    `displacement` (x, y, z, 3) holds RAS displacements in mm on a grid with vox2ras `affine`
    (a warp as ilex writes it). Derivatives are central differences in voxels, one-sided on the
    grid's faces, converted to mm through the affine, so the result does not depend on voxel
    size or orientation. 1 keeps volume, > 1 expands, ≤ 0 folds. Returns float32 (x, y, z).
    Works slab by slab along x so that memory stays near the size of the input.
    """
    disp = np.asarray(displacement, np.float32)
    if disp.ndim != 4 or disp.shape[3] != 3 or min(disp.shape[:3]) < 2:
        raise ValueError(f"expected a displacement field of shape (x, y, z, 3) with x, y, z ≥ 2, got {disp.shape}")
    vox_per_mm = np.linalg.inv(np.asarray(affine, np.float64)[:3, :3]).astype(np.float32)
    n = disp.shape[0]
    out = np.empty(disp.shape[:3], np.float32)
    for start in range(0, n, slab):
        stop = min(start + slab, n)
        lo, hi = max(start - 1, 0), min(stop + 1, n)  # one neighbour each side keeps slab seams central
        grads = np.gradient(disp[lo:hi], axis=(0, 1, 2))  # d u_i / d p_j, one array per j
        jac = np.stack(grads, axis=-1) @ vox_per_mm  # d u_i / d x_k
        jac += np.eye(3, dtype=np.float32)
        out[start:stop] = _det3(jac[start - lo : stop - lo])
    return out


def folding_fraction(det: np.ndarray) -> float:
    """Fraction of voxels where the Jacobian determinant is ≤ 0, i.e. where the warp folds."""
    return float(np.count_nonzero(np.asarray(det) <= 0) / np.asarray(det).size)
