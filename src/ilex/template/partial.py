"""A round's sums in exact fixed point, and each image's share of them.

A round's template is the mean of the images' contributions: the log of each image's affine, the
non-linear residual of its warp (RAS mm on the template grid) and its moved image (normalised
intensity). Summed in floating point, the bits of the mean would depend on the order in which the
images were added, hence on the number of workers, the order in which pairs finish and whether a
round was resumed. Each term is rounded once to a signed 64-bit integer at a fixed scale instead,
and integers add exactly and in any order, so the sums (and so the template) are the same bits
whichever way they were grouped:

| quantity            | scale (units of the integer)  | resolution    |
|---------------------|-------------------------------|---------------|
| moved image         | 2^-24 of a normalised unit    | 6.0e-8        |
| warp residual       | 2^-24 mm                      | 6.0e-8 mm     |
| log of an affine    | 2^-32 (mm for translations)   | 2.3e-10       |

The normalised unit is the image's 99th percentile (`shape.normalised`), so the image resolution
is half a float32 step at 1. Overflow: the sum of N terms stays inside int64 when every term is
below 2^62 / N units; `fixed` refuses (naming the file) a term beyond that bound for the round's
N, e.g. with N = 1,000 images a normalised intensity or a residual above 2.7e8 (mm), or a
log-affine entry above 1.07e6, none of which a registration of a head gives.

A `Partial` is a sum over some images; partials add (`+`) into the round's sum wherever they
are: on this machine, or on the Dask workers that made them (`round_sum.py`). Each image's own
share is computed by `warp_share` (rounds 1..K) or `aligned_share` (round 0), from the files on
disk, the same function wherever it runs, so a resumed round reads the same bits as a whole one.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field

import numpy as np

from ..errors import IlexError
from .shape import AffineFit, MeanTransform, correlation, head_mask, matrix_log, normalised, residual

IMAGE_SCALE = 2.0**24
MM_SCALE = 2.0**24
LOG_SCALE = 2.0**32
_INT64_ROOM = 2.0**62


def fixed(values, scale: float, terms: int, what: str) -> np.ndarray:
    """`values` * `scale`, rounded to the nearest integer (halves to even), as int64. Raises
    `IlexError` naming `what` when a value is not finite or so large that `terms` such values
    could overflow int64 once summed."""
    values = np.asarray(values)
    # Exact in either type (the scale is a power of 2), and rint's integers are the same: float32 voxels
    # stay float32, half the memory to fill (an intermediate that a 1 mm warp makes 170 MB of in float64).
    kind = np.float32 if values.dtype == np.float32 else np.float64
    with np.errstate(over="ignore"):  # overflow is refused below, by name
        scaled = np.multiply(values, kind(scale), dtype=kind)
    np.rint(scaled, out=scaled)
    if scaled.size:
        low, high = float(scaled.min()), float(scaled.max())  # NaN propagates into both
        if not (np.isfinite(low) and np.isfinite(high)):
            if kind is np.float32 and np.isfinite(values).all():  # finite, but beyond float32 once scaled
                low, high = float(values.min()) * scale, float(values.max()) * scale
            else:
                raise IlexError(f"{what}: holds values that are not finite; it cannot be averaged")
        bound = _INT64_ROOM / max(int(terms), 1)
        largest = max(-low, high)
        if largest >= bound:
            raise IlexError(
                f"{what}: a value of {largest / scale:.4g} is too large to sum over {terms} images in "
                f"fixed point (bound {bound / scale:.4g})"
            )
    return scaled.astype(np.int64)


@dataclass
class Partial:
    """Sums over some images of a round, in fixed point (see the module docstring): `count`
    images, `log_sum` of their affines' logs (4x4), `residual` of their warps' non-linear
    residuals (X, Y, Z, 3; None when only matrices were added), `total` of their moved images
    (X, Y, Z; None before the first), and each image's `similarities` to the template by its
    index (a float per image: the mean is taken over the indices in order, so it too is the
    same whatever the grouping). Adding two partials is exact and commutative."""

    count: int = 0
    log_sum: np.ndarray = field(default_factory=lambda: np.zeros((4, 4), np.int64))
    residual: np.ndarray | None = None
    total: np.ndarray | None = None
    similarities: dict[int, float] = field(default_factory=dict)

    def __add__(self, other: Partial) -> Partial:
        overlap = self.similarities.keys() & other.similarities.keys()
        if overlap:
            raise ValueError(f"images {sorted(overlap)} are in both partial sums")
        return Partial(
            self.count + other.count,
            self.log_sum + other.log_sum,
            _add(self.residual, other.residual),
            _add(self.total, other.total),
            {**self.similarities, **other.similarities},
        )

    @property
    def nbytes(self) -> int:
        return sum(0 if a is None else a.nbytes for a in (self.log_sum, self.residual, self.total))

    def mean_transform(self, affine: np.ndarray, mask: np.ndarray) -> MeanTransform:
        """The `MeanTransform` these sums stand for (its sums back in floating point, exactly)."""
        mean = MeanTransform(affine, mask, fit=False)
        mean.count = self.count
        mean.log_sum = self.log_sum.astype(np.float64) / LOG_SCALE
        mean.residual_sum = None if self.residual is None else self.residual.astype(np.float64) / MM_SCALE
        return mean

    def mean_image(self) -> np.ndarray:
        """The mean of the moved images, float32."""
        return (self.total.astype(np.float64) / IMAGE_SCALE / self.count).astype(np.float32)

    def mean_similarity(self) -> float | None:
        values = [self.similarities[k] for k in sorted(self.similarities)]
        return float(np.mean(values)) if values else None

    def add_into(self, other: Partial) -> Partial:
        """Add `other` into this sum in place (no new arrays: a running sum's), taking `other`'s
        arrays where this sum has none yet; returns self. Exact as `+`."""
        overlap = self.similarities.keys() & other.similarities.keys()
        if overlap:
            raise ValueError(f"images {sorted(overlap)} are in both partial sums")
        for name in ("residual", "total"):  # checked before anything changes: a refused share leaves the sum whole
            mine, theirs = getattr(self, name), getattr(other, name)
            if mine is not None and theirs is not None and mine.shape != theirs.shape:
                raise ValueError(f"{name}: shapes {mine.shape} and {theirs.shape} differ")
        self.count += other.count
        self.log_sum = self.log_sum + other.log_sum
        for name in ("residual", "total"):
            mine, theirs = getattr(self, name), getattr(other, name)
            if mine is None:
                setattr(self, name, theirs)
            elif theirs is not None:
                np.add(mine, theirs, out=mine)
        self.similarities.update(other.similarities)
        return self


def _add(a: np.ndarray | None, b: np.ndarray | None) -> np.ndarray | None:
    if a is None:
        return b
    if b is None:
        return a
    return a + b


def add_partials(*parts: Partial) -> Partial:
    """The sum of `parts` (a Dask task of the reduction tree)."""
    total = Partial()
    for part in parts:
        total = total + part
    return total


class _Template:
    """A round's template as the shares need it: its voxels, head mask and affine fit."""

    def __init__(self, path: str):
        from ..image.io import load_image

        image = load_image(path, what="template")
        self.affine = np.asarray(image.affine, np.float64)
        self.shape = image.shape
        self.data = image.data
        self.normalised = normalised(image.data)
        self.mask = head_mask(image.data)
        self.fit = AffineFit(self.affine, self.mask)


# One template per round and process (a Dask worker's, or this one's), read once: the key holds the
# file's size and time, so a later round's template at another path (or a rewritten file) is read again.
_templates: dict[tuple, _Template] = {}
_templates_lock = threading.Lock()


def round_template(path: str) -> _Template:
    st = os.stat(path)
    key = (os.path.abspath(path), st.st_size, st.st_mtime_ns)
    with _templates_lock:
        if key not in _templates:
            _templates.clear()  # one round at a time: the previous round's is done with
            _templates[key] = _Template(path)
        return _templates[key]


def warp_share(
    index: int, warp: str, moved: str, template: str, terms: int, qc: str | None = None, exclude_flagged: bool = False
) -> Partial:
    """Image `index`'s share of a round 1..K: the log of its warp's affine, the warp's residual
    and its moved image (files `warp` and `moved`, on the grid of the round's `template`), and
    its similarity to the template; `terms` is the round's number of images (the overflow
    bound). With `exclude_flagged`, an image whose registration the rules flag (its `qc`
    directory's qc.json) adds nothing."""
    from ..image.io import load_image
    from ..image.warp_io import load_warp

    if exclude_flagged and flagged_rules(qc):
        return Partial()
    t = round_template(template)
    displacement = load_warp(warp).displacement
    matrix = t.fit(displacement)
    image = normalised(load_image(moved, what="moved image", check_values=False).data)
    return Partial(
        1,
        fixed(matrix_log(matrix), LOG_SCALE, terms, warp),
        fixed(residual(displacement, t.affine, matrix), MM_SCALE, terms, warp),
        fixed(image, IMAGE_SCALE, terms, moved),
        {index: correlation(image, t.normalised, t.mask)},
    )


def aligned_share(
    index: int, image_path: str, to_mid: np.ndarray, to_first: np.ndarray | None, reference: str, terms: int
) -> Partial:
    """Image `index`'s share of round 0: the image resampled on the `reference` (the first
    image's) grid through the world map `to_mid` (the reference's world -> the image's, through
    the unbiased mid-space), and, with `to_first` (the map without the mid-space), its similarity
    to the reference once aligned. The affines' logs are summed on the client (matrices only)."""
    from ..image.io import load_image

    t = round_template(reference)
    image = load_image(image_path, what="image")
    moved = normalised(_resample_world(image, to_mid, t.affine, t.shape))
    similarities = {}
    if to_first is not None:
        on_first = normalised(_resample_world(image, to_first, t.affine, t.shape))
        similarities[index] = correlation(on_first, t.normalised, t.mask)
    return Partial(1, np.zeros((4, 4), np.int64), None, fixed(moved, IMAGE_SCALE, terms, image_path), similarities)


def _resample_world(image, world_matrix: np.ndarray, target_affine: np.ndarray, target_shape) -> np.ndarray:
    """`image` on a target grid through a world map: target voxel p takes the value at `M A_t p`."""
    import jax.numpy as jnp

    from ..registration.pipeline import resample
    from ..transforms import matrix_field

    vox = np.linalg.inv(image.affine) @ world_matrix @ target_affine
    disp = matrix_field(np.asarray(vox, np.float32), target_shape)
    return np.asarray(resample(jnp.asarray(image.data, jnp.float32), disp, "linear", jnp.float32(0.0)))


def flagged_rules(qc: str | None) -> list[str]:
    """The names of the rules a registration fails, read from the qc.json in its `qc` directory
    (none without one)."""
    import json

    from ..qc.verdict import failed_rules

    try:
        with open(os.path.join(qc, "qc.json"), encoding="utf-8") as f:
            record = json.load(f)
    except (TypeError, OSError, ValueError):
        return []
    return [r.name for r in failed_rules(record)] if isinstance(record, dict) else []
