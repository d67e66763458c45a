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
from .geometry import shearless_components

MATRIX_SUFFIXES = (".lta", ".txt", ".tfm")
_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


def matrix_format(path: str | os.PathLike) -> str | None:
    """"lta" or "itk" by the file name, or None for anything else (a dense warp)."""
    name = os.fspath(path).lower()
    if name.endswith(".lta"):
        return "lta"
    if name.endswith((".txt", ".tfm")):
        return "itk"
    return None


def _volume_info(affine: np.ndarray, shape, filename: str) -> str:
    voxsize, rotation, centre = shearless_components(affine, shape)
    rows = [
        "valid = 1  # volume info valid",
        f"filename = {filename or 'none'}",
        "volume = {} {} {}".format(*(int(n) for n in shape[:3])),
        "voxelsize = {:.15e} {:.15e} {:.15e}".format(*tuple(voxsize)),
        "xras   = {:.15e} {:.15e} {:.15e}".format(*tuple(rotation[:, 0])),
        "yras   = {:.15e} {:.15e} {:.15e}".format(*tuple(rotation[:, 1])),
        "zras   = {:.15e} {:.15e} {:.15e}".format(*tuple(rotation[:, 2])),
        "cras   = {:.15e} {:.15e} {:.15e}".format(*tuple(centre)),
    ]
    return "\n".join(rows) + "\n"


def lta_text(ras_matrix: np.ndarray, src_affine: np.ndarray, src_shape, dst_affine: np.ndarray, dst_shape,
             src_name: str = "", dst_name: str = "") -> str:
    """An LTA (`LINEAR_RAS_TO_RAS`) holding `ras_matrix`, which maps src RAS points to dst RAS points."""
    m = np.asarray(ras_matrix, np.float64)
    lines = [
        "# transform file written by ilex",
        "type      = 1 # LINEAR_RAS_TO_RAS",
        "nxforms   = 1",
        "mean      = 0.0000 0.0000 0.0000",
        "sigma     = 1.0000",
        "1 4 4",
        *("{:.15e} {:.15e} {:.15e} {:.15e}".format(*tuple(row)) for row in m),
    ]
    return ("\n".join(lines) + "\nsrc volume info\n" + _volume_info(src_affine, src_shape, src_name)
            + "dst volume info\n" + _volume_info(dst_affine, dst_shape, dst_name))


def itk_text(ras_matrix: np.ndarray) -> str:
    """An ITK `AffineTransform_double_3_3` text file for a moving -> fixed RAS matrix.

    ITK maps fixed LPS points to moving LPS points: `inv(ras_matrix)` conjugated by the RAS/LPS flip.
    """
    itk = _LPS @ np.linalg.inv(np.asarray(ras_matrix, np.float64)) @ _LPS
    params = [*itk[:3, :3].ravel(), *itk[:3, 3]]
    return ("#Insight Transform File V1.0\n#Transform 0\nTransform: AffineTransform_double_3_3\n"
            "Parameters: " + " ".join(f"{p:.17g}" for p in params) + "\nFixedParameters: 0 0 0\n")


def save_matrix(path: str | os.PathLike, ras_matrix: np.ndarray, moving, fixed, fmt: str | None = None) -> None:
    """Write a moving -> fixed RAS matrix as LTA or ITK text (by `fmt`, else by the file name), atomically.

    `moving`, `fixed`: the `Image`s whose geometries an LTA records as src and dst.
    """
    fmt = fmt or matrix_format(path) or "lta"
    if fmt == "lta":
        text = lta_text(ras_matrix, moving.affine, moving.shape, fixed.affine, fixed.shape,
                        os.path.basename(moving.path or ""), os.path.basename(fixed.path or ""))
    elif fmt == "itk":
        text = itk_text(ras_matrix)
    else:
        raise ValueError(f"unknown matrix format {fmt!r}; expected 'lta' or 'itk'")
    with atomic_file(path, suffix=".lta" if fmt == "lta" else ".txt") as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.write(text)


def lta_geometry(path: str | os.PathLike, which: str = "dst") -> tuple[np.ndarray, tuple[int, int, int]] | None:
    """The voxel-to-RAS matrix and shape an LTA records for its `which` ("src" or "dst") image,
    or None when the block is missing or marked invalid. Raises `FileProblem` when it is damaged."""
    from ..errors import FileProblem
    from .geometry import fs_affine

    path = os.fspath(path)
    with open(path, encoding="utf-8", errors="replace") as f:
        lines = [ln.strip() for ln in f]
    try:
        start = lines.index(f"{which} volume info")
    except ValueError:
        return None
    fields = {}
    for line in lines[start + 1 : start + 9]:
        key, _, value = line.partition("=")
        fields[key.strip()] = value.split("#")[0].split()
    if fields.get("valid", ["0"])[0] != "1":
        return None
    try:
        shape = tuple(int(v) for v in fields["volume"])
        voxsize, centre = (np.array(fields[k], float) for k in ("voxelsize", "cras"))
        rotation = np.array([fields[k] for k in ("xras", "yras", "zras")], float).T
        if len(shape) != 3 or voxsize.shape != (3,) or centre.shape != (3,) or rotation.shape != (3, 3):
            raise ValueError("wrong number of values")
    except (KeyError, ValueError) as e:
        raise FileProblem(path, f"the {which} volume info is damaged ({e})") from None
    return fs_affine(voxsize, rotation, centre, shape), shape
