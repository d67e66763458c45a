"""FreeSurfer's linear transform array (LTA) text format: parsing and writing.

An LTA holds one 4x4 matrix, its type, and the geometry ("volume info") of the source and
destination volumes it was made for:

    type      = 1 # LINEAR_RAS_TO_RAS
    nxforms   = 1
    mean      = 0.0000 0.0000 0.0000
    sigma     = 1.0000
    1 4 4
    <four rows of four numbers>
    src volume info
    valid = 1  # volume info valid
    filename = moving.nii.gz
    volume = 256 256 256
    voxelsize = 1.0 1.0 1.0
    xras   = -1.0 0.0 0.0
    yras   = 0.0 0.0 -1.0
    zras   = 0.0 1.0 0.0
    cras   = 0.0 0.0 0.0
    dst volume info
    <the same fields>

The parser is strict, so that damage gives an error rather than another transform: every line
must be a known field, a matrix row, a block heading or a comment; numbers must be finite and
come in the expected counts; a field may not appear twice in one block. `ValueError` carries
what is wrong; callers add the path.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .geometry import fs_affine, shearless_components

VOX_TO_VOX = 0  # LINEAR_VOX_TO_VOX
RAS_TO_RAS = 1  # LINEAR_RAS_TO_RAS
_TYPE_NAMES = {VOX_TO_VOX: "LINEAR_VOX_TO_VOX", RAS_TO_RAS: "LINEAR_RAS_TO_RAS"}
# FreeSurfer's tolerance when it compares an LTA's volume info with an image's geometry.
GEOMETRY_TOLERANCE = 1e-3

_HEADER_FIELDS = {"type": 1, "nxforms": 1, "mean": 3, "sigma": 1}
_GEOMETRY_FIELDS = {"valid": 1, "volume": 3, "voxelsize": 3, "xras": 3, "yras": 3, "zras": 3, "cras": 3}
_TRAILER = ("subject", "fscale")  # written after the blocks by FreeSurfer; not used


@dataclass(frozen=True)
class VolumeGeometry:
    """An LTA's volume info: shape, voxel size (mm), unit direction columns, centre (RAS mm)."""

    shape: tuple[int, int, int]
    voxel_size: tuple[float, float, float]
    rotation: tuple[tuple[float, float, float], ...]  # rows; columns are xras, yras, zras
    centre: tuple[float, float, float]
    filename: str = ""

    @classmethod
    def from_affine(cls, affine: np.ndarray, shape, filename: str = "") -> VolumeGeometry:
        """The volume info of an image with vox2ras `affine` and `shape` (a writer's side)."""
        size, rotation, centre = shearless_components(np.asarray(affine, float), shape)
        return cls(
            tuple(int(s) for s in shape[:3]),
            tuple(float(v) for v in size),
            tuple(tuple(float(v) for v in row) for row in rotation),
            tuple(float(v) for v in centre),
            filename,
        )

    def affine(self) -> np.ndarray:
        """The vox2ras matrix this geometry describes."""
        return fs_affine(np.array(self.voxel_size), np.array(self.rotation), np.array(self.centre), self.shape)

    def differences(self, affine: np.ndarray, shape=None, tol: float = GEOMETRY_TOLERANCE) -> list[str]:
        """What differs (beyond `tol`) between this geometry and an image's `affine` (and `shape`)."""
        out = []
        if shape is not None and tuple(int(s) for s in shape[:3]) != self.shape:
            out.append(f"shape {self.shape} vs {tuple(int(s) for s in shape[:3])}")
        theirs = VolumeGeometry.from_affine(affine, self.shape if shape is None else shape)
        for name in ("voxel_size", "rotation", "centre"):
            a, b = np.array(getattr(self, name)), np.array(getattr(theirs, name))
            if not np.allclose(a, b, rtol=0, atol=tol):
                out.append(f"{name} {np.round(a, 4).tolist()} vs {np.round(b, 4).tolist()}")
        return out


@dataclass(frozen=True)
class LinearTransform:
    """One LTA: `matrix` of `kind` (VOX_TO_VOX or RAS_TO_RAS) from `src` to `dst` geometry."""

    kind: int
    matrix: np.ndarray
    src: VolumeGeometry | None = None
    dst: VolumeGeometry | None = None

    def ras_to_ras(self) -> np.ndarray:
        """The source-RAS to destination-RAS matrix (vox2vox needs both volume infos)."""
        if self.kind == RAS_TO_RAS:
            return self.matrix
        if self.src is None or self.dst is None:
            raise ValueError("a voxel-to-voxel LTA needs valid src and dst volume info")
        return self.dst.affine() @ self.matrix @ np.linalg.inv(self.src.affine())


def _numbers(text: str, count: int, what: str) -> list[float]:
    words = text.split()
    if len(words) != count:
        raise ValueError(f"{what}: expected {count} number{'s' * (count != 1)}, found {len(words)} ({text.strip()!r})")
    try:
        values = [float(w) for w in words]
    except ValueError:
        raise ValueError(f"{what}: not a number in {text.strip()!r}") from None
    if not all(math.isfinite(v) for v in values):
        raise ValueError(f"{what}: not finite ({text.strip()!r})")
    return values


def _geometry(fields: dict[str, str], which: str) -> VolumeGeometry | None:
    if "valid" not in fields:
        raise ValueError(f"{which} volume info has no 'valid' line")
    valid = _numbers(fields["valid"], 1, f"{which} valid")[0]
    if valid not in (0.0, 1.0):
        raise ValueError(f"{which} valid must be 0 or 1, found {fields['valid'].strip()!r}")
    if valid == 0.0:
        return None
    missing = [k for k in _GEOMETRY_FIELDS if k not in fields]
    if missing:
        raise ValueError(f"{which} volume info lacks {', '.join(missing)}")
    values = {k: _numbers(fields[k], n, f"{which} {k}") for k, n in _GEOMETRY_FIELDS.items()}
    shape = values["volume"]
    if any(s < 1 or s != int(s) for s in shape):
        raise ValueError(f"{which} volume must be three positive integers, found {fields['volume'].strip()!r}")
    if any(v <= 0 for v in values["voxelsize"]):
        raise ValueError(f"{which} voxelsize must be positive, found {fields['voxelsize'].strip()!r}")
    rotation = np.array([values["xras"], values["yras"], values["zras"]]).T
    if abs(np.linalg.det(rotation)) < 1e-6:
        raise ValueError(f"{which} xras, yras, zras are not independent directions")
    return VolumeGeometry(
        tuple(int(s) for s in shape),
        tuple(values["voxelsize"]),
        tuple(tuple(float(v) for v in row) for row in rotation),
        tuple(values["cras"]),
        fields.get("filename", "").strip(),
    )


def parse_lta(text: str) -> LinearTransform:
    """The transform in LTA `text`; `ValueError` naming the first problem found."""
    lines = [ln.split("#", 1)[0].strip() for ln in text.splitlines()]
    lines = [ln for ln in lines if ln]
    header: dict[str, str] = {}
    blocks: dict[str, dict[str, str]] = {}
    block: dict[str, str] | None = None
    matrix = None
    i = 0
    while i < len(lines):
        line = lines[i]
        words = line.split()
        if words in (["src", "volume", "info"], ["dst", "volume", "info"]):
            if words[0] in blocks:
                raise ValueError(f"two '{line}' blocks")
            block = blocks[words[0]] = {}
        elif words == ["1", "4", "4"] and block is None:
            if matrix is not None:
                raise ValueError("two matrices; only single-transform LTAs are supported")
            if len(lines) - i - 1 < 4:
                raise ValueError("the matrix after '1 4 4' is cut short")
            matrix = np.array([_numbers(lines[i + 1 + r], 4, f"matrix row {r + 1}") for r in range(4)])
            i += 4
        elif "=" in line:
            key, value = (part.strip() for part in line.split("=", 1))
            target = header if block is None else block
            if key in target:
                raise ValueError(f"'{key}' appears twice{'' if block is None else ' in one volume info block'}")
            target[key] = value
        elif words[0] in _TRAILER and len(words) <= 2:
            block = {}  # the trailer ends the volume info blocks
        else:
            raise ValueError(f"unexpected line {line[:60]!r}")
        i += 1
    for key, count in _HEADER_FIELDS.items():
        if key in header:
            _numbers(header[key], count, key)
        elif key in ("type", "nxforms"):
            raise ValueError(f"no '{key} =' line")
    kind = _numbers(header["type"], 1, "type")[0]
    if kind not in _TYPE_NAMES:
        raise ValueError(f"LTA type {header['type']!r} is not supported (0 = voxel to voxel, 1 = RAS to RAS)")
    if _numbers(header["nxforms"], 1, "nxforms")[0] != 1:
        raise ValueError(f"nxforms is {header['nxforms']!r}; only single-transform LTAs are supported")
    if matrix is None:
        raise ValueError("no '1 4 4' matrix")
    if not np.array_equal(matrix[3], [0.0, 0.0, 0.0, 1.0]):
        raise ValueError(f"the matrix's last row must be 0 0 0 1, found {matrix[3].tolist()}")
    src = _geometry(blocks["src"], "src") if "src" in blocks else None
    dst = _geometry(blocks["dst"], "dst") if "dst" in blocks else None
    return LinearTransform(int(kind), matrix, src, dst)


def _geometry_lines(which: str, geometry: VolumeGeometry | None) -> list[str]:
    if geometry is None:
        return [f"{which} volume info", "valid = 0  # volume info invalid"]
    rot = np.array(geometry.rotation)

    def row(values) -> str:
        return " ".join(f"{float(v):.15e}" for v in values)

    return [
        f"{which} volume info",
        "valid = 1  # volume info valid",
        f"filename = {geometry.filename}",
        "volume = " + " ".join(str(s) for s in geometry.shape),
        "voxelsize = " + row(geometry.voxel_size),
        "xras   = " + row(rot[:, 0]),
        "yras   = " + row(rot[:, 1]),
        "zras   = " + row(rot[:, 2]),
        "cras   = " + row(geometry.centre),
    ]


def format_lta(transform: LinearTransform) -> str:
    """LTA text for `transform`, in FreeSurfer's layout (numbers written to full precision)."""
    lines = [
        "# transform file written by ilex",
        f"type      = {transform.kind} # {_TYPE_NAMES[transform.kind]}",
        "nxforms   = 1",
        "mean      = 0.0000 0.0000 0.0000",
        "sigma     = 1.0000",
        "1 4 4",
    ]
    lines += [" ".join(f"{float(v):.15e}" for v in row) for row in np.asarray(transform.matrix, float)]
    lines += _geometry_lines("src", transform.src) + _geometry_lines("dst", transform.dst)
    return "\n".join(lines) + "\n"
