"""Initial affines for `-i`: FreeSurfer LTA and ITK/ANTs transforms, as moving-to-fixed voxel maps.

The deformable model assumes the images are already affinely aligned; `-i` supplies that
alignment. Conventions: an LTA (src = moving, dst = fixed) maps source to destination
coordinates; an ITK/ANTs transform maps fixed LPS points to moving LPS points (it pulls back).
"""

from __future__ import annotations

import os
import re

import numpy as np

from ..errors import FileProblem
from ..image.geometry import fs_affine

_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


def read_initial_affine(path: str | os.PathLike, moving_affine: np.ndarray, fixed_affine: np.ndarray) -> np.ndarray:
    """The 4x4 map from moving voxels to fixed voxels that the file `path` describes."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileProblem(path, "no such initial-affine file")
    try:
        if path.lower().endswith(".mat"):
            ras_mov_to_fix = np.linalg.inv(_itk_mat(path))
        else:
            with open(path, encoding="utf-8", errors="replace") as f:
                text = f.read()
            if "Transform:" in text and "Parameters:" in text:
                ras_mov_to_fix = np.linalg.inv(_itk_text(text))
            elif re.search(r"^\s*type\s*=", text, re.MULTILINE) and "nxforms" in text:
                ras_mov_to_fix = _lta(text)
            else:
                raise ValueError("neither a FreeSurfer LTA nor an ITK/ANTs transform")
    except (ValueError, IndexError, np.linalg.LinAlgError) as e:
        raise FileProblem(path, f"cannot read the initial affine: {e}") from None
    if not np.isfinite(ras_mov_to_fix).all() or abs(np.linalg.det(ras_mov_to_fix[:3, :3])) < 1e-6:
        raise FileProblem(path, "the initial affine is singular or not finite")
    return np.linalg.inv(fixed_affine) @ ras_mov_to_fix @ moving_affine


def _numbers(line: str) -> list[float]:
    return [float(x) for x in line.split("=", 1)[-1].split("#")[0].split()]


def _lta(text: str) -> np.ndarray:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("#")]
    kind = int(_numbers(next(ln for ln in lines if ln.startswith("type")))[0])
    start = next(i for i, ln in enumerate(lines) if re.fullmatch(r"1\s+4\s+4", ln))
    matrix = np.array([[float(x) for x in lines[start + 1 + r].split()[:4]] for r in range(4)])
    if kind == 1:  # LINEAR_RAS_TO_RAS
        return matrix
    if kind == 0:  # LINEAR_VOX_TO_VOX, in the voxel grids the file records
        geoms = []
        for which in ("src", "dst"):
            i = next(j for j, ln in enumerate(lines) if ln.startswith(f"{which} volume info"))
            fields = {}
            for ln in lines[i + 1 : i + 9]:
                key = ln.split("=")[0].strip()
                fields[key] = _numbers(ln) if key != "filename" else None
            rot = np.array([fields["xras"], fields["yras"], fields["zras"]]).T
            geoms.append(fs_affine(np.array(fields["voxelsize"]), rot, np.array(fields["cras"]), fields["volume"]))
        return geoms[1] @ matrix @ np.linalg.inv(geoms[0])
    raise ValueError(f"LTA type {kind} is not supported (0 = voxel to voxel, 1 = RAS to RAS)")


def _itk_matrix(params: list[float], centre: list[float]) -> np.ndarray:
    if len(params) != 12 or len(centre) != 3:
        raise ValueError(f"expected 12 parameters and a 3-D centre, found {len(params)} and {len(centre)}")
    a = np.array(params[:9]).reshape(3, 3)
    c, t = np.array(centre), np.array(params[9:])
    lps = np.eye(4)
    lps[:3, :3] = a
    lps[:3, 3] = t + c - a @ c
    return _LPS @ lps @ _LPS  # fixed RAS -> moving RAS


def _itk_text(text: str) -> np.ndarray:
    kinds = re.findall(r"^Transform:\s*(\S+)", text, re.MULTILINE)
    if len(kinds) != 1 or not re.match(r"(Affine|MatrixOffsetTransformBase)Transform?_double_3_3|AffineTransform_(double|float)_3_3", kinds[0]):
        raise ValueError(f"expected one 3-D affine transform, found {kinds}")
    params = _numbers(re.search(r"^Parameters:(.*)$", text, re.MULTILINE).group(1))
    fixed = re.search(r"^FixedParameters:(.*)$", text, re.MULTILINE)
    return _itk_matrix(params, _numbers(fixed.group(1)) if fixed else [0.0, 0.0, 0.0])


def _itk_mat(path: str) -> np.ndarray:
    try:
        from scipy.io import loadmat
    except ImportError:  # pragma: no cover - scipy is optional
        raise ValueError("reading binary ANTs .mat files needs scipy; or convert it to text with ConvertTransformFile") from None
    data = loadmat(path)
    key = next((k for k in data if k.startswith(("AffineTransform", "MatrixOffset"))), None)
    if key is None:
        raise ValueError("no affine transform in this .mat file")
    return _itk_matrix(list(np.ravel(data[key])), list(np.ravel(data.get("fixed", np.zeros(3)))))
