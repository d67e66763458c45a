"""A PNG for a quick look without a viewer: three orthogonal slices, fixed and moved as a checkerboard."""

from __future__ import annotations

import io

import nibabel as nib
import numpy as np


def _to_ras(data: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`data` with axes reordered and flipped to point R, A, S; and the voxel sizes along them."""
    ornt = nib.io_orientation(affine)
    ras = nib.orientations.apply_orientation(data, ornt)
    zooms = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))[ornt[:, 0].astype(int)]
    return ras, zooms


def _windowed(data: np.ndarray) -> np.ndarray:
    lo, hi = np.percentile(data, [0.5, 99.5])
    return np.clip((data - lo) / max(hi - lo, 1e-12), 0, 1)


def _views(ras: np.ndarray) -> list[np.ndarray]:
    """Central sagittal, coronal and axial slices, superior/anterior up, subject's right on the right."""
    cx, cy, cz = (s // 2 for s in ras.shape)
    sagittal = ras[cx, :, :].T[::-1]  # rows: superior -> inferior, columns: posterior -> anterior
    coronal = ras[:, cy, :].T[::-1]  # columns: left -> right
    axial = ras[:, :, cz].T[::-1]  # rows: anterior -> posterior
    return [sagittal, coronal, axial]


def checkerboard_png(fixed: np.ndarray, moved: np.ndarray, affine: np.ndarray, tile_mm: float = 16.0) -> bytes:
    """PNG bytes: sagittal, coronal and axial slices through the centre of the fixed grid, tiles
    alternating between the fixed image and the moved image (both on the fixed grid, vox2ras
    `affine`). Slices are resampled to square 1 mm pixels so anisotropic voxels look right.
    """
    from PIL import Image as PILImage

    if fixed.shape != moved.shape:
        raise ValueError(f"fixed {fixed.shape} and moved {moved.shape} must share the fixed grid")
    fixed_ras, zooms = _to_ras(_windowed(np.asarray(fixed, np.float32)), affine)
    moved_ras, _ = _to_ras(_windowed(np.asarray(moved, np.float32)), affine)
    # In-plane voxel sizes (rows, columns) of each view, matching `_views`.
    plane_mm = [(zooms[2], zooms[1]), (zooms[2], zooms[0]), (zooms[1], zooms[0])]
    panels = []
    for f, m, (row_mm, col_mm) in zip(_views(fixed_ras), _views(moved_ras), plane_mm, strict=False):
        size = (max(1, round(f.shape[1] * col_mm)), max(1, round(f.shape[0] * row_mm)))
        f = np.asarray(PILImage.fromarray(f.astype(np.float32)).resize(size, PILImage.BILINEAR))
        m = np.asarray(PILImage.fromarray(m.astype(np.float32)).resize(size, PILImage.BILINEAR))
        rows, cols = np.indices(f.shape)
        board = ((rows // tile_mm).astype(int) + (cols // tile_mm).astype(int)) % 2 == 1
        panels.append(np.where(board, m, f))
    gap = 4
    height = max(p.shape[0] for p in panels)
    canvas = np.zeros((height, sum(p.shape[1] for p in panels) + gap * (len(panels) - 1)), np.float32)
    x = 0
    for p in panels:
        top = (height - p.shape[0]) // 2
        canvas[top : top + p.shape[0], x : x + p.shape[1]] = p
        x += p.shape[1] + gap
    buf = io.BytesIO()
    PILImage.fromarray(np.round(np.clip(canvas, 0, 1) * 255).astype(np.uint8)).save(buf, format="PNG")
    return buf.getvalue()
