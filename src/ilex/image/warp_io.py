"""Displacement-field files: FreeSurfer/mri_synthmorph NIfTI and MGZ, and ITK/ANTs NIfTI.

* `freesurfer` (default, what `mri_synthmorph` writes): RAS displacements in mm on the target
  grid. NIfTI: 5-D (X, Y, Z, 1, 3), intent 1006 (displacement vector). MGZ: FreeSurfer's warp
  layout (MGH header version carrying the warp intent, then the source/target geometries and
  the warp format as tags; surfa reads it, nibabel does not).
* `itk`: the displacement field ITK, ANTs, Slicer and nitransforms read: NIfTI 5-D, intent
  1007 (vector), displacements in LPS (x and y negated).

In all of them, target voxel p samples the source at world `A_target p + d(p)`.

Each records the source grid, the one the image it applies to must lie on (`ilex apply` checks it):
the MGZ in FreeSurfer's own source geometry tags; the NIfTI in a header extension (below).
"""

from __future__ import annotations

import gzip
import json
import os
import struct
import zlib
from dataclasses import dataclass

import nibabel as nib
import numpy as np

from .._atomic import atomic_file
from ..errors import ImageFileError
from .compressed import gzip_writer, save_nibabel
from .geometry import fs_affine, shearless_components

INTENT_DISPVECT = 1006
INTENT_VECTOR = 1007
FORMATS = ("freesurfer", "itk")
_LPS = np.array([-1.0, -1.0, 1.0], np.float32)
# A 3-frame volume without an intent (what mri_convert makes of a warp) holds RAS displacements in
# mm: FreeSurfer's transform format as mri_synthmorph documents it, and what its `apply` reads.
_NO_INTENT = 0

# FreeSurfer MGH constants (mri.h / surfa): warp intent, tags, warp formats.
_MGH_INTENT_WARP = 3
_TAG_GCAMORPH_GEOM, _TAG_GCAMORPH_META, _TAG_GCAMORPH_GEOM_SHEAR = 10, 13, 15
_TAG_PEDIR, _TAG_FIELDSTRENGTH, _LENGTHLESS = 41, 43, {1, 2, 10, 11, 12, 20}
_FORMAT_ABS_CRS, _FORMAT_DISP_CRS, _FORMAT_ABS_RAS, _FORMAT_DISP_RAS = 0, 1, 2, 3

# A NIfTI warp's source grid: a header extension of code 6 ("comment") holding one line of JSON,
# {"ilex_source_grid": {"shape": [X, Y, Z], "vox2ras": 4x4 rows}}. An extension, not a sidecar,
# because it travels with the file (copied, renamed, archived); "comment" because every reader
# knows the code and none acts on it (ITK, ANTs, nitransforms and FreeSurfer read the field as
# before; nibabel keeps the text). Any other extension or comment is left alone.
_NIFTI_COMMENT = 6
_GRID_KEY = "ilex_source_grid"


@dataclass(frozen=True)
class Warp:
    """A RAS displacement field (mm) on a target grid; source geometry when the file records it."""

    displacement: np.ndarray  # (x, y, z, 3) float32, RAS mm
    affine: np.ndarray  # target vox2ras
    source_affine: np.ndarray | None = None
    source_shape: tuple[int | np.integer, ...] | None = None  # nibabel's MGH shapes are numpy integers


def save_warp(path: str | os.PathLike, warp: Warp, fmt: str = "freesurfer") -> None:
    """Write `warp` to `path` (.nii.gz/.nii/.mgz) in format `fmt`, atomically."""
    path = os.fspath(path)
    lower = path.lower()
    if fmt not in FORMATS:
        raise ImageFileError(path, f"unknown warp format {fmt!r}; choose from {', '.join(FORMATS)}")
    disp = np.asarray(warp.displacement, np.float32)
    if lower.endswith((".mgz", ".mgh")):
        if fmt == "itk":
            raise ImageFileError(path, "the ITK warp format is NIfTI only; name the output .nii.gz")
        with atomic_file(path, suffix=".mgz") as tmp:
            _write_mgh_warp(tmp, warp, compress=lower.endswith(".mgz"))
        return
    if not lower.endswith((".nii.gz", ".nii")):
        raise ImageFileError(path, "unknown warp file type; use .nii.gz, .nii or .mgz")
    if fmt == "itk":
        disp = disp * _LPS
    img = nib.Nifti1Image(np.asfortranarray(disp[:, :, :, None, :]), warp.affine)
    img.header.set_intent(INTENT_VECTOR if fmt == "itk" else INTENT_DISPVECT)
    img.header.set_xyzt_units("mm", "sec")
    img.header.set_qform(warp.affine, code=1)
    img.header.set_sform(warp.affine, code=1)
    if warp.source_affine is not None and warp.source_shape is not None:
        grid = {"shape": [int(n) for n in warp.source_shape[:3]], "vox2ras": np.asarray(warp.source_affine).tolist()}
        record = json.dumps({_GRID_KEY: grid}, separators=(",", ":")).encode()
        img.header.extensions.append(nib.nifti1.Nifti1Extension(_NIFTI_COMMENT, record))
    with atomic_file(path, suffix=".nii.gz" if lower.endswith(".gz") else ".nii") as tmp:
        save_nibabel(img, tmp)


def load_warp(path: str | os.PathLike) -> Warp:
    """Read any warp `save_warp` writes (and mri_synthmorph's), as RAS displacements in mm.

    A plain 3-frame volume without a warp intent (.mgz, or the NIfTI that `mri_convert` makes of a
    warp) is read as RAS displacements in mm on its own grid, as `mri_synthmorph apply` reads it.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ImageFileError(path, "no such warp file")
    if path.lower().endswith((".mgz", ".mgh")):
        return _read_mgh_warp(path)
    try:
        img = nib.load(path)
        data = np.asarray(img.dataobj, dtype=np.float32)
        intent = int(img.header.get("intent_code", 0)) if hasattr(img.header, "get") else 0
        source = _nifti_source_grid(img)
    except (nib.filebasedimages.ImageFileError, OSError, EOFError, zlib.error, ValueError) as e:
        raise ImageFileError(path, f"not a readable warp file ({e.__class__.__name__})") from None
    if data.ndim == 5 and data.shape[3] == 1 and data.shape[4] == 3:
        data = data[:, :, :, 0, :]
    if data.ndim != 4 or data.shape[3] != 3:
        raise ImageFileError(path, f"not a displacement field: expected shape (X, Y, Z, 1, 3), found {img.shape}")
    if intent == INTENT_VECTOR:
        data = data * _LPS
    elif intent not in (INTENT_DISPVECT, _NO_INTENT):
        raise ImageFileError(
            path, f"NIfTI intent {intent} is neither a displacement (1006) nor an ITK vector field (1007)"
        )
    if not np.isfinite(data).all():
        raise ImageFileError(path, "the warp holds NaN or Inf values")
    return Warp(data, np.asarray(img.affine, np.float64), *source)


def _nifti_source_grid(img) -> tuple[np.ndarray | None, tuple[int, ...] | None]:
    """(vox2ras, shape) of the source grid a NIfTI warp records (see `_GRID_KEY`), or (None, None)."""
    for ext in getattr(img.header, "extensions", ()):
        if ext.get_code() != _NIFTI_COMMENT:
            continue
        try:
            grid = json.loads(bytes(ext.get_content()).rstrip(b"\0").decode())[_GRID_KEY]
            affine, shape = np.asarray(grid["vox2ras"], np.float64), tuple(int(n) for n in grid["shape"])
        except (ValueError, TypeError, KeyError, UnicodeDecodeError):
            continue  # someone else's comment
        if affine.shape == (4, 4) and len(shape) == 3 and np.isfinite(affine).all():
            return affine, shape
    return None, None


def _geom_bytes(affine: np.ndarray, shape, shear: bool) -> bytes:
    voxsize, rotation, centre = shearless_components(affine, shape)
    out = struct.pack(">i3i", 1, *[int(s) for s in shape[:3]])
    out += np.asarray(voxsize, ">f4").tobytes() + np.ravel(rotation, order="F").astype(">f4").tobytes()
    out += np.asarray(centre, ">f4").tobytes()
    if shear:
        out += np.zeros(3, ">f4").tobytes()
    return out + b"\0" * 512  # no file name recorded


def _write_mgh_warp(path: str, warp: Warp, compress: bool) -> None:
    if warp.source_affine is None or warp.source_shape is None:
        raise ImageFileError(path, "an MGZ warp records the source geometry, which this warp does not have")
    disp = np.asarray(warp.displacement, np.float32)
    shape = disp.shape[:3]
    voxsize, rotation, centre = shearless_components(warp.affine, shape)
    header = struct.pack(">7i", (_MGH_INTENT_WARP << 8) | 1, *shape, 3, 3, 1) + struct.pack(">h", 1)
    header += np.asarray(voxsize, ">f4").tobytes() + np.ravel(rotation, order="F").astype(">f4").tobytes()
    header += np.asarray(centre, ">f4").tobytes()
    header += b"\0" * (284 - len(header))
    tail = struct.pack(">5f", 0, 0, 0, 0, float(max(voxsize * np.array(shape))))
    tail += struct.pack(">iq", _TAG_PEDIR, 7) + b"UNKNOWN"
    tail += struct.pack(">iqf", _TAG_FIELDSTRENGTH, 4, 0.0)
    src = (warp.source_affine, warp.source_shape)
    tail += struct.pack(">i", _TAG_GCAMORPH_GEOM) + _geom_bytes(*src, False) + _geom_bytes(warp.affine, shape, False)
    tail += (
        struct.pack(">iq", _TAG_GCAMORPH_GEOM_SHEAR, 1200)
        + _geom_bytes(*src, True)
        + _geom_bytes(warp.affine, shape, True)
    )
    tail += struct.pack(">iqiif", _TAG_GCAMORPH_META, 12, _FORMAT_DISP_RAS, 1, 0.0)
    with gzip_writer(path) if compress else open(path, "wb") as f:
        f.write(header)
        f.write(np.transpose(disp, (3, 2, 1, 0)).astype(">f4").tobytes())  # Fortran order: x fastest, frame slowest
        f.write(tail)


def _read_plain_mgh(path: str) -> Warp:
    try:
        img = nib.load(path)
        data = np.asarray(img.dataobj, dtype=np.float32)
    except (nib.filebasedimages.ImageFileError, OSError, EOFError, zlib.error, ValueError) as e:
        raise ImageFileError(path, f"not a readable warp file ({e.__class__.__name__})") from None
    if data.ndim != 4 or data.shape[3] != 3:
        raise ImageFileError(path, f"not a displacement field: expected 3 frames, found shape {img.shape}")
    if not np.isfinite(data).all():
        raise ImageFileError(path, "the warp holds NaN or Inf values")
    return Warp(data, np.asarray(img.affine, np.float64))


def _read_geom(buf: bytes, pos: int, shear: bool) -> tuple[np.ndarray, tuple, int]:
    shape = struct.unpack(">3i", buf[pos + 4 : pos + 16])
    voxsize = np.frombuffer(buf[pos + 16 : pos + 28], ">f4").astype(float)
    rotation = np.frombuffer(buf[pos + 28 : pos + 64], ">f4").astype(float).reshape(3, 3, order="F")
    centre = np.frombuffer(buf[pos + 64 : pos + 76], ">f4").astype(float)
    return fs_affine(voxsize, rotation, centre, shape), shape, pos + 76 + (12 if shear else 0) + 512


def _read_mgh_warp(path: str) -> Warp:
    try:
        opener = gzip.open if path.lower().endswith(".mgz") else open
        with opener(path, "rb") as f:
            buf = f.read()
    except (OSError, EOFError, zlib.error) as e:
        raise ImageFileError(path, f"truncated or corrupt MGZ file ({e.__class__.__name__})") from None
    if len(buf) < 284:
        raise ImageFileError(path, "truncated MGZ file (shorter than its header)")
    version, w, h, d, frames, dtype, _ = struct.unpack(">7i", buf[:28])
    if version & 0xFF == 1 and (version >> 8) != _MGH_INTENT_WARP and frames == 3:
        return _read_plain_mgh(path)  # a plain 3-frame volume: RAS displacements, no source geometry
    if version & 0xFF != 1 or (version >> 8) != _MGH_INTENT_WARP or frames != 3 or dtype != 3:
        raise ImageFileError(path, "not an MGZ warp (expected FreeSurfer's warp intent, 3 float frames)")
    voxsize = np.frombuffer(buf[30:42], ">f4").astype(float)
    rotation = np.frombuffer(buf[42:78], ">f4").astype(float).reshape(3, 3, order="F")
    centre = np.frombuffer(buf[78:90], ">f4").astype(float)
    affine = fs_affine(voxsize, rotation, centre, (w, h, d))
    n = w * h * d * 3 * 4
    if len(buf) < 284 + n:
        raise ImageFileError(path, "truncated MGZ file (data shorter than the header says)")
    disp = np.frombuffer(buf[284 : 284 + n], ">f4").reshape(3, d, h, w).transpose(3, 2, 1, 0).astype(np.float32)
    pos, fmt, source = 284 + n + 20, _FORMAT_DISP_RAS, (None, None)
    while pos + 4 <= len(buf):
        (tag,) = struct.unpack(">i", buf[pos : pos + 4])
        pos += 4
        if tag == _TAG_GCAMORPH_GEOM:
            src_aff, src_shape, pos = _read_geom(buf, pos, False)
            _, _, pos = _read_geom(buf, pos, False)
            source = (src_aff, src_shape)
            continue
        if tag in _LENGTHLESS or pos + 8 > len(buf):
            break
        (length,) = struct.unpack(">q", buf[pos : pos + 8])
        pos += 8
        if tag == _TAG_GCAMORPH_META:
            (fmt,) = struct.unpack(">i", buf[pos : pos + 4])
        pos += length
    if fmt == _FORMAT_DISP_CRS or fmt == _FORMAT_ABS_CRS:
        if source[0] is None:
            raise ImageFileError(path, "a voxel-unit warp without its source geometry cannot be used")
        grid = np.stack(np.meshgrid(*[np.arange(s) for s in (w, h, d)], indexing="ij"), -1).astype(np.float32)
        vox = disp + grid if fmt == _FORMAT_DISP_CRS else disp
        disp = (vox @ source[0][:3, :3].T + source[0][:3, 3]) - (grid @ affine[:3, :3].T + affine[:3, 3])
    elif fmt == _FORMAT_ABS_RAS:
        grid = np.stack(np.meshgrid(*[np.arange(s) for s in (w, h, d)], indexing="ij"), -1).astype(np.float32)
        disp = disp - (grid @ affine[:3, :3].T + affine[:3, 3])
    return Warp(disp.astype(np.float32), affine, source[0], source[1])
