"""Writing affine registrations: FreeSurfer LTA and ITK/ANTs text transforms.

Both store the world-space matrix that maps a moving-image point to the fixed-image point it
lands on (moving RAS -> fixed RAS). An LTA says so itself (`LINEAR_RAS_TO_RAS`, the moving
image's geometry as `src`, the fixed image's as `dst`), as `mri_synthmorph -m affine -t` writes
it. ITK transforms map *fixed* physical points to *moving* ones, in LPS: the inverse, flipped.
The readers are in `registration.affine_init` (`-i`), and `ilex apply` takes both.
"""

from __future__ import annotations

import os

import numpy as np

from .._atomic import atomic_file
from .lta import RAS_TO_RAS, LinearTransform, VolumeGeometry, format_lta, parse_lta

MATRIX_SUFFIXES = (".lta", ".txt", ".tfm")
_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


def matrix_format(path: str | os.PathLike) -> str | None:
    """ "lta" or "itk" by the file name, or None for anything else (a dense warp)."""
    name = os.fspath(path).lower()
    if name.endswith(".lta"):
        return "lta"
    if name.endswith((".txt", ".tfm")):
        return "itk"
    return None


def itk_text(ras_matrix: np.ndarray) -> str:
    """An ITK `AffineTransform_double_3_3` text file for a moving -> fixed RAS matrix.

    ITK maps fixed LPS points to moving LPS points: `inv(ras_matrix)` conjugated by the RAS/LPS flip.
    """
    itk = _LPS @ np.linalg.inv(np.asarray(ras_matrix, np.float64)) @ _LPS
    params = [*itk[:3, :3].ravel(), *itk[:3, 3]]
    return (
        "#Insight Transform File V1.0\n#Transform 0\nTransform: AffineTransform_double_3_3\n"
        "Parameters: " + " ".join(f"{p:.17g}" for p in params) + "\nFixedParameters: 0 0 0\n"
    )


def save_matrix(path: str | os.PathLike, ras_matrix: np.ndarray, moving, fixed, fmt: str | None = None) -> None:
    """Write a moving -> fixed RAS matrix as LTA or ITK text (by `fmt`, else by the file name), atomically.

    `moving`, `fixed`: the `Image`s whose geometries an LTA records as src and dst.
    """
    fmt = fmt or matrix_format(path) or "lta"
    if fmt == "lta":
        src = VolumeGeometry.from_affine(moving.affine, moving.shape, os.path.basename(moving.path or "") or "none")
        dst = VolumeGeometry.from_affine(fixed.affine, fixed.shape, os.path.basename(fixed.path or "") or "none")
        text = format_lta(LinearTransform(RAS_TO_RAS, np.asarray(ras_matrix, np.float64), src, dst))
    elif fmt == "itk":
        text = itk_text(ras_matrix)
    else:
        raise ValueError(f"unknown matrix format {fmt!r}; expected 'lta' or 'itk'")
    with atomic_file(path, suffix=".lta" if fmt == "lta" else ".txt") as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.write(text)


def lta_geometry(path: str | os.PathLike, which: str = "dst") -> tuple[np.ndarray, tuple[int, int, int]] | None:
    """The voxel-to-RAS matrix and shape an LTA records for its `which` ("src" or "dst") image,
    or None when that volume info is marked invalid. Raises `FileProblem` for a damaged file."""
    from ..errors import FileProblem

    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            geometry = getattr(parse_lta(f.read()), which)
    except ValueError as e:
        raise FileProblem(path, f"not a readable LTA ({e})") from None
    return None if geometry is None else (geometry.affine(), geometry.shape)
