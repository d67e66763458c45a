"""Initial affines for `-i`: FreeSurfer LTA and ITK/ANTs transforms, as moving-to-fixed voxel maps.

The deformable model assumes the images are already affinely aligned; `-i` supplies that
alignment. Conventions: an LTA (src = moving, dst = fixed) maps source to destination
coordinates; an ITK/ANTs transform (text, .mat, or an HDF5 composite of affines, read by
`image.itk_h5`) maps fixed LPS points to moving LPS points (it pulls back).
Every problem with the file is a `FileProblem` naming it (one line from the CLI, exit 1).
"""

from __future__ import annotations

import os
import re
import struct

import numpy as np

from ..errors import FileProblem
from ..image.itk_h5 import is_itk_h5, load_composite
from ..image.lta import GEOMETRY_TOLERANCE, VOX_TO_VOX, parse_lta

_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])
# The 3-D affine kinds ITK and ANTs write; parameters are the 3x3 matrix, row major, then the translation.
_ITK_AFFINE = re.compile(r"(AffineTransform|MatrixOffsetTransformBase)_(double|float)_3_3")


def read_initial_affine(
    path: str | os.PathLike,
    moving_affine: np.ndarray,
    fixed_affine: np.ndarray,
    *,
    moving_shape=None,
    fixed_shape=None,
) -> np.ndarray:
    """The 4x4 map from moving voxels to fixed voxels that the file `path` describes.

    `path` is a FreeSurfer LTA (RAS to RAS, or voxel to voxel with the volume info of the
    images it was made for), an ITK/ANTs text transform (.txt/.tfm), an ANTs binary .mat or an
    ITK HDF5 composite (.h5) of affines only (what `antsRegistration --write-composite-transform`
    writes for a linear registration, and `ilex register -m affine -t x.h5`); an .h5 holding a
    displacement field is refused (`-i` takes a matrix). A voxel-to-voxel LTA is refused unless
    its src/dst volume info matches the moving/fixed vox2ras (and shapes, when given) within
    FreeSurfer's tolerance, 1e-3. Raises `FileProblem`.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileProblem(path, "no such initial-affine file")
    if is_itk_h5(path):
        ras_mov_to_fix = _itk_h5(path)
    else:
        try:
            if path.lower().endswith(".mat"):
                ras_mov_to_fix = np.linalg.inv(_itk_mat(path))
            else:
                with open(path, encoding="utf-8", errors="replace") as f:
                    text = f.read()
                if re.search(r"^\s*Transform:", text, re.MULTILINE):
                    ras_mov_to_fix = np.linalg.inv(_itk_text(text))
                elif re.search(r"^\s*type\s*=", text, re.MULTILINE):
                    ras_mov_to_fix = _lta(text, moving_affine, fixed_affine, moving_shape, fixed_shape)
                else:
                    raise ValueError("neither a FreeSurfer LTA nor an ITK/ANTs transform")
        except (ValueError, np.linalg.LinAlgError, OSError) as e:
            raise FileProblem(path, f"cannot read the initial affine: {e}") from None
    if not np.isfinite(ras_mov_to_fix).all() or abs(np.linalg.det(ras_mov_to_fix[:3, :3])) < 1e-6:
        raise FileProblem(path, "the initial affine is singular or not finite")
    return np.linalg.inv(fixed_affine) @ ras_mov_to_fix @ moving_affine


def _itk_h5(path: str) -> np.ndarray:
    """The moving RAS -> fixed RAS matrix of an ITK HDF5 composite of affines (its members multiplied)."""
    composite = load_composite(path)  # FileProblems that name the file
    if not composite.is_linear:
        raise FileProblem(
            path,
            "holds a displacement field; an initial affine (-i) must be a matrix: "
            "an affine-only .h5, .lta, .txt/.tfm or .mat",
        )
    try:
        return composite.ras_matrix()
    except np.linalg.LinAlgError:
        raise FileProblem(path, "the initial affine is singular or not finite") from None


def _lta(text: str, moving_affine, fixed_affine, moving_shape, fixed_shape) -> np.ndarray:
    lta = parse_lta(text)
    if lta.kind == VOX_TO_VOX:
        # Voxel indices mean nothing without their grids: FreeSurfer refuses an LTA whose stored
        # geometry is not that of the images it is applied to, and so does ilex.
        for which, geometry, affine, shape, image in (
            ("src", lta.src, moving_affine, moving_shape, "moving"),
            ("dst", lta.dst, fixed_affine, fixed_shape, "fixed"),
        ):
            if geometry is None:
                raise ValueError(f"a voxel-to-voxel LTA needs valid {which} volume info (the {image} image's geometry)")
            differs = geometry.differences(affine, shape)
            if differs:
                raise ValueError(
                    f"voxel-to-voxel LTA made for another {image} image: its {which} volume info differs "
                    f"beyond {GEOMETRY_TOLERANCE:g} ({'; '.join(differs)})"
                )
    return lta.ras_to_ras()


def _numbers(text: str, what: str) -> list[float]:
    try:
        values = [float(w) for w in text.split()]
    except ValueError:
        raise ValueError(f"{what}: not a number in {text.strip()[:60]!r}") from None
    if not np.isfinite(values).all():
        raise ValueError(f"{what}: not finite")
    return values


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
    fields: dict[str, list[str]] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition(":")
        if not sep or key not in ("Transform", "Parameters", "FixedParameters"):
            raise ValueError(f"unexpected line {line[:60]!r} in an ITK transform")
        fields.setdefault(key, []).append(value.strip())
    kinds = fields.get("Transform", [])
    if len(kinds) != 1 or not _ITK_AFFINE.fullmatch(kinds[0]):
        raise ValueError(f"expected one 3-D affine transform (AffineTransform_double_3_3 or similar), found {kinds}")
    for key in ("Parameters", "FixedParameters"):
        if len(fields.get(key, [])) != 1:
            raise ValueError(f"expected one '{key}:' line, found {len(fields.get(key, []))}")
    return _itk_matrix(
        _numbers(fields["Parameters"][0], "Parameters"), _numbers(fields["FixedParameters"][0], "FixedParameters")
    )


def _itk_mat(path: str) -> np.ndarray:
    data = _read_matlab_v4(path)
    keys = [k for k in data if _ITK_AFFINE.fullmatch(k)]
    if len(keys) != 1:
        raise ValueError(f"expected one 3-D affine transform in this .mat file, found {keys}")
    if "fixed" not in data:
        raise ValueError("no 'fixed' (centre of rotation) entry in this .mat file")
    params, fixed = data[keys[0]], data["fixed"]
    if not (np.isfinite(params).all() and np.isfinite(fixed).all()):
        raise ValueError("the transform's parameters are not finite")
    return _itk_matrix(list(params), list(fixed))


# MATLAB level-4 element types (the P digit of the MOPT code).
_V4_TYPES = {0: "f8", 1: "f4", 2: "i4", 3: "i2", 4: "u2", 5: "u1"}
_V4_MAX_ELEMENTS = 1 << 16  # a transform holds a few numbers; anything larger is damage


def _read_matlab_v4(path: str) -> dict[str, np.ndarray]:
    """The real matrices of a MATLAB level-4 file (what ITK and ANTs write), flattened.

    Read here rather than with scipy.io.loadmat, whose compiled level-5 reader crashes the
    interpreter on some damaged files; this reader checks every size against the file first.
    """
    with open(path, "rb") as f:
        raw = f.read()
    if raw[:6] == b"MATLAB":
        raise ValueError("a MATLAB level-5 file; ITK and ANTs write level 4 (convert it with ConvertTransformFile)")
    out: dict[str, np.ndarray] = {}
    pos = 0
    while pos < len(raw):
        if len(raw) - pos < 20:
            raise ValueError(f"truncated .mat file (a variable header at byte {pos} is cut short)")
        for order in ("<", ">"):
            mopt, rows, cols, imag, namlen = struct.unpack(order + "5i", raw[pos : pos + 20])
            if 0 <= mopt < 2000 and mopt // 1000 == (order == ">") and mopt % 1000 // 10 in _V4_TYPES:
                break
        else:
            raise ValueError(f"not a MATLAB level-4 .mat file (bad variable header at byte {pos})")
        if mopt % 10 != 0 or mopt % 1000 // 100 != 0 or imag not in (0, 1):
            raise ValueError(f"variable at byte {pos} is not a real numeric matrix")
        if not (0 < namlen <= 256 and 0 <= rows and 0 <= cols and rows * cols <= _V4_MAX_ELEMENTS):
            raise ValueError(f"implausible sizes in the variable header at byte {pos}")
        dtype = np.dtype(_V4_TYPES[mopt % 1000 // 10]).newbyteorder(order)
        size = rows * cols * dtype.itemsize * (2 if imag else 1)
        start = pos + 20 + namlen
        if start + size > len(raw):
            raise ValueError(f"truncated .mat file (variable at byte {pos} is cut short)")
        name = raw[pos + 20 : start].rstrip(b"\0")
        if not name or not name.isascii() or b"\0" in name:
            raise ValueError(f"bad variable name at byte {pos}")
        if imag:
            raise ValueError(f"variable {name.decode()!r} is complex")
        if name.decode() in out:
            raise ValueError(f"variable {name.decode()!r} appears twice")
        out[name.decode()] = np.frombuffer(raw, dtype, rows * cols, start).astype(np.float64)
        pos = start + size
    return out
