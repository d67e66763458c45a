"""Applying a saved transform to any image (what `ilex apply`, `mri_synthmorph apply` and `ilex.apply` do)."""

from __future__ import annotations

import os
from dataclasses import dataclass

import jax.numpy as jnp
import nibabel as nib
import numpy as np

from .._programs import program
from ..errors import FileProblem, ImageFileError, OptionError
from ..image.geometry import fs_affine, shearless_components
from ..image.io import Image, from_nibabel, load_image
from ..image.itk_h5 import composite_displacement, is_itk_h5, load_composite
from ..image.matrix_io import lta_geometry, matrix_format
from ..image.warp_io import Warp, load_warp
from ..transforms.compose import apply_matrix
from ..transforms.grid import voxel_grid
from ..transforms.interpolate import sample_image
from .affine_init import read_initial_affine

DTYPES = ("uint8", "uint16", "int16", "int32", "float32")


@program(static_argnames=("method",))
def _warp_image(data, disp, target_affine, world_to_image, method: str, fill):
    world = apply_matrix(target_affine, voxel_grid(disp.shape[:3])) + disp
    return sample_image(data, apply_matrix(world_to_image, world), method, fill)


def apply_warp(
    warp: Warp, image: Image, method: str = "linear", fill: float = 0.0, dtype: str = "float32"
) -> np.ndarray:
    """`image` resampled onto the warp's target grid: voxel p takes the value at world `A p + d(p)`.

    `method` is "linear" or "nearest" (label maps); integer `dtype`s round to nearest, clipped
    to the type's range.
    """
    if dtype not in DTYPES:
        raise ValueError(f"output type must be one of {', '.join(DTYPES)}, got {dtype!r}")
    out = _warp_image(
        jnp.asarray(image.data, jnp.float32),
        jnp.asarray(warp.displacement, jnp.float32),
        warp.affine.astype(np.float32),
        np.linalg.inv(image.affine).astype(np.float32),
        method,
        jnp.float32(fill),
    )
    out = np.asarray(out)
    if dtype != "float32":
        info = np.iinfo(dtype)
        out = np.clip(np.rint(out), info.min, info.max)
    return out.astype(dtype)


def apply_affine(
    ras_moving_to_fixed: np.ndarray,
    image: Image,
    target_affine: np.ndarray,
    target_shape,
    method: str = "linear",
    fill: float = 0.0,
    dtype: str = "float32",
) -> np.ndarray:
    """`image` resampled onto a target grid through a world matrix (moving RAS -> fixed RAS, as an LTA
    stores it): target voxel p takes the value at world `inv(M) A p`."""
    grid = voxel_grid(tuple(int(n) for n in target_shape))
    world = apply_matrix(np.asarray(target_affine, np.float32), grid)
    disp = apply_matrix(np.linalg.inv(ras_moving_to_fixed).astype(np.float32), world) - world
    return apply_warp(Warp(np.asarray(disp), np.asarray(target_affine)), image, method, fill, dtype)


@dataclass(frozen=True)
class SavedTransform:
    """A transform file read for applying: a warp, or a RAS matrix with the grid it resamples onto."""

    path: str
    warp: Warp | None = None
    matrix: np.ndarray | None = None  # moving RAS -> fixed RAS, as an LTA stores it
    target_affine: np.ndarray | None = None
    target_shape: tuple[int, int, int] | None = None


def load_transform(path: str | os.PathLike, reference=None, header_only: bool = False) -> SavedTransform:
    """Read a transform file: a warp (`.nii.gz`/`.nii`/`.mgz`, see `image.warp_io.load_warp`), a
    FreeSurfer LTA (`.lta`; its dst geometry is the target grid) or an ITK/ANTs text transform
    (`.txt`/`.tfm`) or an ITK HDF5 composite (`.h5`, ilex's or antsRegistration's; see `_load_h5`).
    `reference` (a path or image) names the target grid of a matrix instead; a warp fixes its own.
    `header_only` keeps the voxels and only changes the vox2ras (matrices only).
    Raises `FileProblem`/`ImageFileError` naming the file, `ValueError` for an impossible request.
    """
    path = os.fspath(path)
    if is_itk_h5(path):
        return _load_h5(path, reference, header_only)
    if matrix_format(path) is None:
        if header_only:
            raise OptionError(
                f"{path} is a warp; header-only output needs a matrix (.lta or .txt)", argument="header_only"
            )
        if reference is not None:
            raise OptionError(f"a warp already fixes its target grid ({path}); drop it", argument="reference")
        if not os.path.isfile(path):
            raise FileProblem(path, "no such transform file")
        return SavedTransform(path, warp=load_warp(path))
    if not os.path.isfile(path):
        raise FileProblem(path, "no such transform file")
    eye = np.eye(4)
    ras = read_initial_affine(path, eye, eye)  # identity grids: the file's own RAS matrix
    if header_only:
        return SavedTransform(path, matrix=ras)
    if reference is not None:
        target = _as_image(reference, "reference image")
        return SavedTransform(path, matrix=ras, target_affine=target.affine, target_shape=tuple(target.shape))
    geometry = lta_geometry(path, "dst") if matrix_format(path) == "lta" else None
    if geometry is None:
        raise OptionError(f"{path} records no target grid; name the image to resample onto", argument="reference")
    return SavedTransform(path, matrix=ras, target_affine=geometry[0], target_shape=tuple(geometry[1]))


def _load_h5(path: str, reference, header_only: bool) -> SavedTransform:
    """An ITK HDF5 composite. Affines only: a matrix, as an ITK text transform. With a displacement
    field: evaluated into a warp on the grid to resample onto, which is `reference` when given, else
    the reference grid ilex recorded in the file, else the grid of the field ITK applies first (the
    fixed grid of antsRegistration's forward composite). An inverse composite from antsRegistration
    applies its affine first and records no grid: it needs `reference` (the moving image)."""
    composite = load_composite(path)
    target = _as_image(reference, "reference image") if reference is not None else None
    grid = (target.affine, tuple(target.shape)) if target is not None else composite.reference
    if composite.is_linear:
        ras = composite.ras_matrix()
        if header_only:
            return SavedTransform(path, matrix=ras)
        if grid is None:
            raise OptionError(f"{path} records no target grid; name the image to resample onto", argument="reference")
        return SavedTransform(path, matrix=ras, target_affine=grid[0], target_shape=tuple(grid[1]))
    if header_only:
        raise OptionError(
            f"{path} holds a displacement field; header-only output needs a matrix", argument="header_only"
        )
    grid = grid or composite.first_field_grid()
    if grid is None:
        raise OptionError(
            f"{path} applies an affine before its displacement field and records no target grid; "
            "name the image to resample onto",
            argument="reference",
        )
    source = composite.source or (None, None)
    warp = Warp(composite_displacement(composite, grid), np.asarray(grid[0], np.float64), *source)
    return SavedTransform(path, warp=warp)


# How far an image's grid may lie from the one a warp records: the MGZ stores its geometry as
# float32 voxel sizes, rotation and centre, which round a vox2ras by about 1e-5 mm.
_GRID_ATOL_MATRIX, _GRID_ATOL_MM = 1e-3, 1e-2


def _grid_text(affine: np.ndarray, shape) -> str:
    rows = "; ".join(" ".join(f"{v:.4g}" for v in np.round(row, 3) + 0.0) for row in np.asarray(affine)[:3])
    return f"{'x'.join(str(int(n)) for n in shape[:3])} vox2ras [{rows}]"


def _same_grid(affine: np.ndarray, shape, recorded_affine: np.ndarray, recorded_shape) -> bool:
    if tuple(int(n) for n in shape[:3]) != tuple(int(n) for n in recorded_shape[:3]):
        return False
    recorded = np.asarray(recorded_affine, np.float64)

    def close(a):
        return np.allclose(a[:3, :3], recorded[:3, :3], rtol=0, atol=_GRID_ATOL_MATRIX) and np.allclose(
            a[:3, 3], recorded[:3, 3], rtol=0, atol=_GRID_ATOL_MM
        )

    # An MGZ records the shearless part of a sheared grid (FreeSurfer's header has no shear).
    return close(np.asarray(affine, np.float64)) or close(fs_affine(*shearless_components(affine, shape), shape))


def check_grid(transform: SavedTransform, image: Image, name: str | None = None, override: str = "force=True") -> None:
    """Refuse `image` when `transform` is a warp that records the grid its input lies on (the image
    it was made from: the moving image for `-t`, the fixed for `-T`) and `image` lies on another:
    same shape and voxel-to-RAS within 1e-3 (matrix) and 1e-2 mm (translation). Warps that record
    none (FreeSurfer's plain 3-frame volumes, ITK fields from other tools) and matrices pass.
    Raises `ImageFileError` naming both files and grids; `override` names the way past it.
    """
    warp = transform.warp
    if warp is None or warp.source_affine is None or warp.source_shape is None:
        return
    if _same_grid(image.affine, image.shape, warp.source_affine, warp.source_shape):
        return
    name = name or image.path or "the image"
    raise ImageFileError(
        name,
        f"on grid {_grid_text(image.affine, image.shape)}, but warp {transform.path} applies to images on "
        f"{_grid_text(warp.source_affine, warp.source_shape)} (the image it was made from: the moving image "
        f"for a forward warp, the fixed for an inverse); {override} applies it anyway",
    )


def apply_saved(
    transform: SavedTransform,
    image: Image,
    method: str = "linear",
    fill: float = 0.0,
    dtype: str = "float32",
    header_only: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """(voxels, vox2ras) of `image` moved by `transform`: resampled onto its target grid or, with
    `header_only`, the same voxels under a new vox2ras."""
    if transform.warp is not None:
        return apply_warp(transform.warp, image, method, fill, dtype), transform.warp.affine
    if header_only:
        return image.data, transform.matrix @ image.affine
    data = apply_affine(transform.matrix, image, transform.target_affine, transform.target_shape, method, fill, dtype)
    return data, transform.target_affine


def apply(
    transform: str | os.PathLike,
    image,
    *,
    method: str = "linear",
    fill: float = 0.0,
    dtype: str = "float32",
    reference=None,
    header_only: bool = False,
    force: bool = False,
) -> nib.Nifti1Image:
    """`image` (a path, a nibabel image or an ilex `Image`) moved through the transform file `transform`
    (what `ilex register -t/-T` or `mri_synthmorph` wrote; see `load_transform`), as a nibabel image on
    the target grid: `nib.save(ilex.apply("warp.nii.gz", "aseg.mgz", method="nearest", dtype="int32"), ...)`.

    `method` "linear" or "nearest" (label maps); `dtype` one of `DTYPES` (integers round to nearest,
    clipped to the type's range); `fill` outside the image. A warp that records the grid of the
    image it was made from refuses an image on another grid (`check_grid`); `force=True` applies it.
    """
    if method not in ("linear", "nearest"):
        raise ValueError(f"method must be 'linear' or 'nearest', got {method!r}")
    saved = load_transform(transform, reference, header_only)
    image = _as_image(image, "image")
    if not force:
        check_grid(saved, image)
    data, affine = apply_saved(saved, image, method, fill, dtype, header_only)
    return nib.Nifti1Image(np.asarray(data), affine)


def _as_image(image, what: str) -> Image:
    if isinstance(image, Image):
        return image
    if isinstance(image, (str, os.PathLike)):
        return load_image(image, what=what, check_values=False)
    return from_nibabel(image, what=what, check_values=False)
