"""Reading and writing single-frame 3-D images (NIfTI, MGZ) with clear errors."""

from __future__ import annotations

import os
import warnings
import zlib
from dataclasses import dataclass

import nibabel as nib
import numpy as np

from .._atomic import atomic_file
from ..errors import IlexWarning, ImageFileError
from .compressed import INFLATE_ERRORS, load_voxels, save_nibabel

IMAGE_SUFFIXES = (".nii.gz", ".nii", ".mgz", ".mgh")


@dataclass(frozen=True)
class Image:
    """A 3-D image: `data` (x, y, z) with its voxel-to-RAS `affine` (4x4, float64)."""

    data: np.ndarray
    affine: np.ndarray
    path: str | None = None

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.data.shape[:3])


def _suffix(path: str) -> str:
    lower = path.lower()
    for s in IMAGE_SUFFIXES:
        if lower.endswith(s):
            return s
    return ""


def load_image(path: str | os.PathLike, *, what: str = "image", check_values: bool = True) -> Image:
    """Read a single-frame 3-D NIfTI or MGZ image as float32 with its affine.

    Raises `ImageFileError` naming the file for: missing, unreadable, truncated, not an image,
    not 3-D (4-D with one frame is accepted), non-finite or singular affine, and (with
    `check_values`) Inf voxels, only NaN voxels or a constant image. NaN voxels (SPM's
    background) become the lowest finite value, with an `IlexWarning` saying how many.
    """
    path = os.fspath(path)
    img = _opened(path, what)
    try:
        data = load_voxels(img, path)
    except _READ_ERRORS as e:
        raise _unreadable(path, e) from None
    return Image(*_checked(data, img.affine, path, what, check_values), path)


def check_image_file(path: str | os.PathLike, *, what: str = "image") -> None:
    """The checks of `load_image` that need only the header: `path` exists, is a readable file
    and opens as a NIfTI or MGZ image. Raises `ImageFileError` with `load_image`'s text."""
    _opened(os.fspath(path), what)


_READ_ERRORS = (nib.filebasedimages.ImageFileError, OSError, ValueError, zlib.error, *INFLATE_ERRORS)


def _opened(path: str, what: str):
    """The nibabel image at `path`, its header read, its voxels not yet."""
    if not os.path.exists(path):
        raise ImageFileError(path, f"no such {what} file")
    if not os.access(path, os.R_OK) or os.path.isdir(path):
        raise ImageFileError(
            path, f"cannot read this {what} ({'a directory' if os.path.isdir(path) else 'permission denied'})"
        )
    try:
        return nib.load(path)
    except _READ_ERRORS as e:
        raise _unreadable(path, e) from None


def _unreadable(path: str, error: Exception) -> ImageFileError:
    kind = (
        "truncated or corrupt"
        if isinstance(error, (zlib.error, *INFLATE_ERRORS)) or "ompressed" in str(error)
        else "not a readable NIfTI or MGZ image"
    )
    return ImageFileError(
        path, f"{kind} ({error.__class__.__name__}: {str(error).splitlines()[0] if str(error) else ''})"
    )


def from_nibabel(img, *, what: str = "image", check_values: bool = True) -> Image:
    """An ilex `Image` from an in-memory nibabel image (NIfTI, MGH, anything with `dataobj` and `affine`).

    The same checks as `load_image`, and the same errors (`ImageFileError`, naming the image's
    file when it has one, else `what`).
    """
    path = img.get_filename() if hasattr(img, "get_filename") else None
    return Image(*_checked(np.asanyarray(img.dataobj), img.affine, path or what, what, check_values), path)


def _checked(data, affine, path: str, what: str, check_values: bool) -> tuple[np.ndarray, np.ndarray]:
    """(float32 data (x, y, z), float64 affine) after the checks `load_image` lists; `path` names
    the image in errors."""
    shape = data.shape
    if data.ndim == 4 and shape[3] == 1:
        data = data[..., 0]
    elif data.ndim == 5 and shape[3:] == (1, 1):
        data = data[..., 0, 0]
    if data.ndim != 3:
        detail = f"{shape[3]} frames; extract one (e.g. mri_convert --frame 0)" if data.ndim == 4 else f"shape {shape}"
        raise ImageFileError(path, f"expected a single-frame 3-D {what}, found {data.ndim}-D data with {detail}")
    if min(data.shape) < 2:
        raise ImageFileError(path, f"expected a 3-D {what}, found shape {shape} (a 2-D slice?)")
    affine = np.asarray(affine, dtype=np.float64)
    if not np.isfinite(affine).all():
        raise ImageFileError(path, "the header's voxel-to-world affine has NaN or Inf entries")
    if abs(np.linalg.det(affine[:3, :3])) < 1e-6:
        raise ImageFileError(path, "the header's voxel-to-world affine is singular (zero voxel size or collapsed axes)")
    data = np.asarray(data, dtype=np.float32)
    if check_values:
        infinite = int(np.isinf(data).sum())
        if infinite:
            raise ImageFileError(
                path, f"{infinite} voxel{'' if infinite == 1 else 's'} {'is' if infinite == 1 else 'are'} Inf"
            )
        data = _nan_as_background(data, path)
        if data.min() == data.max():
            raise ImageFileError(path, f"the image is constant ({data.flat[0]:g}); nothing to register")
    return data, affine


def save_image(path: str | os.PathLike, data: np.ndarray, affine: np.ndarray, *, intent: int | None = None) -> None:
    """Write `data` with `affine` as NIfTI (.nii/.nii.gz) or MGZ (.mgz/.mgh), atomically."""
    path = os.fspath(path)
    suffix = _suffix(path)
    if not suffix:
        raise ImageFileError(path, f"unknown output format; use one of {', '.join(IMAGE_SUFFIXES)}")
    if suffix in (".mgz", ".mgh"):
        img = nib.MGHImage(np.asfortranarray(data), affine)
    else:
        img = nib.Nifti1Image(np.asfortranarray(data), affine)
        img.header.set_xyzt_units("mm", "sec")
        img.header.set_qform(affine, code=1)
        img.header.set_sform(affine, code=1)
        if intent is not None:
            img.header.set_intent(intent)
    with atomic_file(path, suffix=suffix) as tmp:
        save_nibabel(img, tmp)


def _nan_as_background(data: np.ndarray, path: str) -> np.ndarray:
    """NaN voxels (SPM writes NaN outside the brain) become background, the lowest finite value, and
    a warning (`IlexWarning`: one line from the CLI) says how many; an image of NaN alone is refused."""
    nan = np.isnan(data)
    count = int(nan.sum())
    if not count:
        return data
    if count == data.size:
        raise ImageFileError(path, "every voxel is NaN; nothing to register")
    background = float(data[~nan].min())
    warnings.warn(
        f"{path}: {count} NaN voxel{'' if count == 1 else 's'} taken as background ({background:g}, the "
        "lowest value), as SPM writes them",
        IlexWarning,
        stacklevel=4,
    )
    return np.where(nan, np.float32(background), data)
