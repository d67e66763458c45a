"""Training label maps from disk: a folder or a CSV of NIfTI/MGZ files, checked, merged and relabelled."""

from __future__ import annotations

import csv
import os

import numpy as np

from ..errors import FileProblem, ImageFileError
from ..image.io import IMAGE_SUFFIXES, load_image

MAX_LABELS = 1000  # more distinct values than this is an intensity image (FreeSurfer's LUT stops at 14175,
# but aseg-style maps hold about 50 labels and a T1 thousands of values)
_AFFINE_TOL = 1e-3  # mm: two grids whose vox2ras differ by less are the same grid


def load_label_maps(
    source: str | os.PathLike,
    *,
    table: str | os.PathLike | None = None,
    resample: bool = False,
    extent: int | None = None,
) -> tuple[np.ndarray, list[int]]:
    """Label maps for `synth_pair`, as int32 (n, x, y, z) with values 0..K-1, and the K label values.

    `source` is a folder (every .nii, .nii.gz, .mgz, .mgh in it, sorted by name) or a CSV file with a
    column `path` (relative paths are taken from the CSV's folder). `table`, a CSV with columns
    `label,new_label`, renames labels first: several labels with one `new_label` merge, an empty
    `new_label` or -1 sends the label to the background 0; labels not in the table are kept. The values
    left are sorted, 0 first (always, present or not), and voxel values replaced by their index;
    `labels[i]` is the value that index i stands for.

    Every map must lie on the first map's grid (same shape, vox2ras within 1e-3 mm); with `resample`
    the others are resampled onto it (nearest neighbour, 0 outside). With `extent` E the maps are
    centre-cropped or zero-padded to E³ (an odd difference puts the extra voxel at the end).

    Raises `FileProblem`/`ImageFileError` (`ilex.errors`), one line naming the file, for: an empty
    folder or CSV, a CSV without `path`, an unreadable or missing file, a map with more than 1000
    distinct values (an intensity image), non-integer or negative values, a map on another grid
    (without `resample`), and a bad table.
    """
    paths = _list_files(os.fspath(source))
    mapping = None if table is None else _read_table(os.fspath(table))
    first_affine = None
    maps = []
    for path in paths:
        image = load_image(path, what="label map", check_values=False)
        data = _integer_labels(image.data, path)
        if first_affine is None:
            first_affine, grid = image.affine, image.shape
        elif image.shape != grid or not np.allclose(image.affine, first_affine, atol=_AFFINE_TOL, rtol=0):
            if not resample:
                raise ImageFileError(
                    path,
                    f"not on the grid of {paths[0]} (shape {image.shape} vs {grid}, vox2ras "
                    f"{'equal' if np.allclose(image.affine, first_affine, atol=_AFFINE_TOL, rtol=0) else 'differs'}); "
                    "resample the maps onto one grid, or pass resample=True",
                )
            data = _nearest_onto(data, image.affine, first_affine, grid)
        if mapping is not None:
            data = _apply_table(data, mapping)
        maps.append(data)
    values = np.union1d(np.unique(np.concatenate([np.unique(m) for m in maps])), [0])
    maps = np.stack([np.searchsorted(values, m).astype(np.int32) for m in maps])
    if extent is not None:
        if extent < 1:
            raise ValueError(f"extent={extent}: must be a positive number of voxels")
        maps = _crop_or_pad(maps, extent)
    return maps, [int(v) for v in values]


def _list_files(source: str) -> list[str]:
    if os.path.isdir(source):
        names = sorted(n for n in os.listdir(source) if n.lower().endswith(IMAGE_SUFFIXES))
        if not names:
            raise FileProblem(source, f"no label maps in this folder (no file ending {', '.join(IMAGE_SUFFIXES)})")
        return [os.path.join(source, n) for n in names]
    if not os.path.exists(source):
        raise FileProblem(source, "no such folder or CSV file")
    columns, rows = _read_csv(source)
    if "path" not in columns:
        raise FileProblem(source, "no column 'path'; expected a CSV with a column 'path', one label map per row")
    base = os.path.dirname(os.path.abspath(source))
    paths = [(r["path"] or "").strip() for r in rows]
    if not any(paths):
        raise FileProblem(source, "no label maps listed (no row with a 'path'); expected one label map per row")
    return [p if os.path.isabs(p) else os.path.join(base, p) for p in paths if p]


def _read_csv(path: str) -> tuple[list[str], list[dict]]:
    """(column names, rows) of the CSV file `path`."""
    try:
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            return list(reader.fieldnames or []), list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise FileProblem(path, f"cannot read this CSV ({e.__class__.__name__}: {e})") from None


def _read_table(path: str) -> dict[int, int]:
    if not os.path.isfile(path):
        raise FileProblem(path, "no such label table (a CSV with columns label,new_label)")
    columns, rows = _read_csv(path)
    if not rows or not {"label", "new_label"} <= set(columns):
        raise FileProblem(path, "expected a CSV with columns label,new_label and at least one row")
    mapping = {}
    for line, row in enumerate(rows, start=2):
        try:
            old = int(row["label"])
            new = -1 if not (row["new_label"] or "").strip() else int(row["new_label"])
        except (TypeError, ValueError):
            raise FileProblem(path, f"line {line}: label and new_label must be integers, got {row}") from None
        if old < 0 or new < -1:
            raise FileProblem(path, f"line {line}: labels must be ≥ 0 (new_label -1 or empty: background)")
        mapping[old] = max(new, 0)
    return mapping


def _integer_labels(data: np.ndarray, path: str) -> np.ndarray:
    values = np.unique(data)
    if values.size > MAX_LABELS:
        raise ImageFileError(
            path, f"{values.size} distinct values: an intensity image, not a label map (at most {MAX_LABELS})"
        )
    if not np.all(np.isfinite(values)) or np.any(values != np.round(values)):
        bad = values[~np.isfinite(values) | (values != np.round(values))][0]
        raise ImageFileError(path, f"non-integer value {bad:g}: a label map holds integer labels")
    if values[0] < 0:
        raise ImageFileError(path, f"negative label {values[0]:g}: labels must be ≥ 0 (0 the background)")
    return data.astype(np.int64)


def _apply_table(data: np.ndarray, mapping: dict[int, int]) -> np.ndarray:
    values, inverse = np.unique(data, return_inverse=True)
    renamed = np.array([mapping.get(int(v), int(v)) for v in values], np.int64)
    return renamed[inverse].reshape(data.shape)


def _nearest_onto(data: np.ndarray, affine: np.ndarray, target_affine: np.ndarray, grid) -> np.ndarray:
    """`data` (on `affine`) at the voxel centres of the grid `grid` with vox2ras `target_affine`."""
    to_source = np.linalg.inv(affine) @ target_affine
    out = np.zeros(grid, np.int64)
    jk = np.stack(np.meshgrid(np.arange(grid[1]), np.arange(grid[2]), indexing="ij"), -1).reshape(-1, 2)
    for i in range(grid[0]):  # slab by slab: a whole grid of float64 coordinates would be 8 bytes x 3 per voxel
        points = np.column_stack([np.full(len(jk), i), jk, np.ones(len(jk))]) @ to_source.T
        idx = np.floor(points[:, :3] + 0.5).astype(np.int64)
        inside = np.all((idx >= 0) & (idx < np.array(data.shape)), axis=1)
        values = np.zeros(len(jk), np.int64)
        values[inside] = data[idx[inside, 0], idx[inside, 1], idx[inside, 2]]
        out[i] = values.reshape(grid[1], grid[2])
    return out


def _crop_or_pad(maps: np.ndarray, extent: int) -> np.ndarray:
    out = np.zeros((maps.shape[0], extent, extent, extent), np.int32)
    src, dst = [], []
    for n in maps.shape[1:]:
        if n >= extent:
            start = (n - extent) // 2
            src.append(slice(start, start + extent))
            dst.append(slice(0, extent))
        else:
            start = (extent - n) // 2
            src.append(slice(0, n))
            dst.append(slice(start, start + n))
    out[(slice(None), *dst)] = maps[(slice(None), *src)]
    return out
