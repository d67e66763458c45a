"""The slices a report shows: three orthogonal rows cut inside the head, kept in a small file.

`cut_slices` reorients the fixed-grid volumes to RAS, finds the head's bounding box (the fixed
image above a robust threshold), cuts evenly spaced slices inside it along each axis, crops
them to the box and windows intensities at robust percentiles. `save_slices`/`load_slices` keep
them in DIR/report.npz, so that `ilex report` can draw the page again without the images.
"""

from __future__ import annotations

import io
import json
import os
import zipfile
from dataclasses import dataclass, field

import numpy as np

VIEWS = ("sagittal", "coronal", "axial")
CUTS = 6  # slices per row
HEAD_LEVEL = 0.1  # head mask: fixed image above this fraction of its 99th percentile (see `head_threshold`)


def to_ras(data: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`data` with axes reordered and flipped to point R, A, S; and the voxel sizes (mm) along them."""
    import nibabel as nib

    ornt = nib.io_orientation(affine)
    ras = nib.orientations.apply_orientation(data, ornt)
    zooms = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))[ornt[:, 0].astype(int)]
    return ras, zooms


def subsample_step(shape, points: float = 1e6) -> int:
    """A stride that leaves about `points` voxels of a volume of `shape` (1 for small volumes)."""
    return max(1, int(np.ceil((np.prod(shape) / points) ** (1 / 3))))


def head_threshold(fixed: np.ndarray) -> float:
    """Intensity above which a fixed voxel counts as head: `HEAD_LEVEL` x its 99th percentile
    (over a strided subsample; percentiles of 16 M voxels would cost a second)."""
    step = subsample_step(fixed.shape)
    sample = fixed[::step, ::step, ::step]
    return float(HEAD_LEVEL * np.percentile(sample, 99))


def robust_window(values: np.ndarray) -> tuple[float, float]:
    """(low, high) intensity window: the 0.5th and 99.5th percentiles of `values` (from 0 when
    they are equal, so that a flat bright region shows white, not black)."""
    if values.size == 0:
        return 0.0, 1.0
    lo, hi = (float(v) for v in np.percentile(values, [0.5, 99.5]))
    if hi - lo <= 1e-6 * max(abs(hi), 1.0):
        lo = min(lo, 0.0) if hi > 0 else hi - 1.0
    return lo, max(hi, lo + 1e-6)


def _to_uint8(data: np.ndarray, window: tuple[float, float]) -> np.ndarray:
    lo, hi = window
    return np.round(np.clip((data - lo) / (hi - lo), 0, 1) * 255).astype(np.uint8)


def _plane(volume: np.ndarray, view: str, index: int | np.integer) -> np.ndarray:
    """One slice, superior (or anterior, axial) up, posterior or the subject's left on the left."""
    if view == "sagittal":
        return volume[index, :, :].T[::-1]  # rows S -> I, columns P -> A
    if view == "coronal":
        return volume[:, index, :].T[::-1]  # rows S -> I, columns L -> R
    return volume[:, :, index].T[::-1]  # rows A -> P, columns L -> R


# For each view: the RAS axis it cuts along, and its in-plane (row, column) axes.
_AXES = {"sagittal": (0, (2, 1)), "coronal": (1, (2, 0)), "axial": (2, (1, 0))}


@dataclass
class ReportSlices:
    """Cut slices of one registration, on the fixed grid in RAS.

    `fixed`, `moved`: view -> (CUTS, rows, columns) uint8, windowed at robust percentiles.
    `jacobian`: view -> the same slices of det J (float16). `head`: view -> head mask (bool).
    `pixel_mm`: view -> (row, column) voxel size in mm. `positions_mm`: view -> each cut's RAS
    coordinate (mm) along its axis. `info`: JSON-able facts the page shows (times, memory, ...).
    `mask`: view -> where the similarity was measured (bool; the cost-function masks on the fixed
    grid), only when the registration had masks.
    """

    fixed: dict[str, np.ndarray]
    moved: dict[str, np.ndarray]
    jacobian: dict[str, np.ndarray]
    head: dict[str, np.ndarray]
    pixel_mm: dict[str, tuple[float, float]]
    positions_mm: dict[str, list[float]]
    info: dict = field(default_factory=dict)
    mask: dict[str, np.ndarray] = field(default_factory=dict)


def cut_slices(
    fixed: np.ndarray,
    moved: np.ndarray,
    jacobian: np.ndarray,
    affine: np.ndarray,
    cuts: int = CUTS,
    mask: np.ndarray | None = None,
) -> ReportSlices:
    """Cut `cuts` slices per view through the head's bounding box (10-90 % of its extent).

    `fixed`, `moved`, `jacobian` and the optional cost-function `mask` (bool): (x, y, z) volumes
    on the fixed grid, voxel-to-RAS `affine`.
    """
    fixed_ras, zooms = to_ras(np.asarray(fixed, np.float32), affine)
    moved_ras, _ = to_ras(np.asarray(moved, np.float32), affine)
    jac_ras, _ = to_ras(np.asarray(jacobian, np.float32), affine)
    head = fixed_ras > head_threshold(fixed_ras)
    if not head.any():
        head = np.ones_like(head)
    box = []
    for axis in range(3):
        profile = np.flatnonzero(head.any(axis=tuple(a for a in range(3) if a != axis)))
        box.append((int(profile[0]), int(profile[-1]) + 1))
    step = subsample_step(head.shape)
    inside = head[::step, ::step, ::step]
    fixed_window = robust_window(fixed_ras[::step, ::step, ::step][inside])
    moved_window = robust_window(moved_ras[::step, ::step, ::step][inside])
    ras_affine = _ras_affine(affine, fixed_ras.shape)
    out = ReportSlices({}, {}, {}, {}, {}, {})
    for view in VIEWS:
        axis, (row_axis, col_axis) = _AXES[view]
        lo, hi = box[axis]
        indices = np.unique(np.round(np.linspace(lo + 0.1 * (hi - lo), hi - 1 - 0.1 * (hi - lo), cuts)).astype(int))
        crop = _crop(view, box, fixed_ras.shape)
        out.fixed[view] = np.stack([_to_uint8(_plane(fixed_ras, view, i)[crop], fixed_window) for i in indices])
        out.moved[view] = np.stack([_to_uint8(_plane(moved_ras, view, i)[crop], moved_window) for i in indices])
        out.jacobian[view] = np.stack([_plane(jac_ras, view, i)[crop] for i in indices]).astype(np.float16)
        out.head[view] = np.stack([_plane(head, view, i)[crop] for i in indices])
        if mask is not None:
            mask_ras = to_ras(np.asarray(mask, bool), affine)[0]
            out.mask[view] = np.stack([_plane(mask_ras, view, i)[crop] for i in indices])
        out.pixel_mm[view] = (float(zooms[row_axis]), float(zooms[col_axis]))
        out.positions_mm[view] = [float((ras_affine @ np.r_[np.eye(3)[axis] * i, 1])[axis]) for i in indices]
    return out


def _ras_affine(affine: np.ndarray, shape) -> np.ndarray:
    import nibabel as nib

    ornt = nib.io_orientation(affine)
    return affine @ nib.orientations.inv_ornt_aff(ornt, shape)


def _crop(view: str, box, shape, margin: int = 3) -> tuple[slice, slice]:
    """Rows and columns of `_plane(view)` inside the bounding box, with a small margin."""
    _, (row_axis, col_axis) = _AXES[view]

    def span(axis, flipped):
        lo, hi = max(box[axis][0] - margin, 0), min(box[axis][1] + margin, shape[axis])
        return slice(shape[axis] - hi, shape[axis] - lo) if flipped else slice(lo, hi)

    # Rows are flipped (superior or anterior first); columns are not.
    return span(row_axis, True), span(col_axis, False)


def save_slices(path: str | os.PathLike, slices: ReportSlices) -> None:
    """Write `slices` to `path` (an .npz archive; members with a fixed date so that equal
    slices give equal bytes). Written atomically."""
    from .._atomic import atomic_file

    arrays = {}
    for name in ("fixed", "moved", "jacobian", "head", "mask"):
        for view, a in getattr(slices, name).items():
            arrays[f"{name}.{view}"] = a
    meta = {"pixel_mm": slices.pixel_mm, "positions_mm": slices.positions_mm, "info": slices.info}
    with atomic_file(path, suffix=".npz") as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as archive:
        for key, a in arrays.items():
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.ascontiguousarray(a), allow_pickle=False)
            archive.writestr(zipfile.ZipInfo(f"{key}.npy", (1980, 1, 1, 0, 0, 0)), buf.getvalue(), zipfile.ZIP_DEFLATED)
        archive.writestr(
            zipfile.ZipInfo("meta.json", (1980, 1, 1, 0, 0, 0)), json.dumps(meta, indent=1), zipfile.ZIP_DEFLATED
        )


def load_slices(path: str | os.PathLike, layers=("fixed", "moved", "jacobian", "head"), views=VIEWS) -> ReportSlices:
    """Read what `save_slices` wrote (only `layers` of `views`: a study's thumbnails need three
    arrays of each pair, not its 1 MB of Jacobian). Raises `FileProblem` for a missing or
    damaged file."""
    from ..errors import FileProblem

    path = os.fspath(path)
    try:
        with zipfile.ZipFile(path) as archive:
            meta = json.loads(archive.read("meta.json"))
            out = ReportSlices(
                {},
                {},
                {},
                {},
                {k: tuple(v) for k, v in meta["pixel_mm"].items()},
                meta["positions_mm"],
                meta.get("info", {}),
            )
            names = set(archive.namelist())
            # The mask's slices are there only when the registration had masks; they come with the head's.
            optional = ["mask"] if "head" in layers and f"mask.{views[0]}.npy" in names else []
            for name in (*layers, *optional):
                for view in views:
                    with archive.open(f"{name}.{view}.npy") as f:
                        getattr(out, name)[view] = np.lib.format.read_array(io.BytesIO(f.read()), allow_pickle=False)
    except FileNotFoundError:
        raise FileProblem(
            path,
            "does not exist; the QC directory was written by an ilex without reports, "
            "or is incomplete: run the registration again with --qc",
        ) from None
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as e:
        raise FileProblem(path, f"not a readable report data file ({e})") from None
    return out
