"""The figures that say whether a registration worked: similarity before and after, the Jacobian
inside the head, and the affine's rotation, scale and shift.

All of it is computed on the fixed grid, inside the head mask (the fixed image above
`slices.HEAD_LEVEL` of its 99th percentile), on a strided subsample of about a million voxels so
that a 256^3 pair costs a fraction of a second.
"""

from __future__ import annotations

import numpy as np

from .slices import HEAD_LEVEL, subsample_step

BINS = 32  # joint histogram bins for mutual information


def normalised_mutual_information(a: np.ndarray, b: np.ndarray, bins: int = BINS) -> float:
    """Studholme's NMI, (H(A) + H(B)) / H(A, B): 1 for independent images, 2 for images that are
    functions of each other; any contrasts. Each image is binned between its 0.5th and 99.5th
    percentiles."""

    def binned(x):
        lo, hi = np.percentile(x, [0.5, 99.5])
        return np.clip(((x - lo) / max(hi - lo, 1e-12) * bins).astype(np.int64), 0, bins - 1)

    joint = np.bincount(binned(a) * bins + binned(b), minlength=bins * bins).reshape(bins, bins) / a.size

    def entropy(p):
        p = p[p > 0]
        return float(-(p * np.log(p)).sum())

    h_ab = entropy(joint)
    return (entropy(joint.sum(1)) + entropy(joint.sum(0))) / h_ab if h_ab > 0 else 1.0


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two samples (0 when one is constant)."""
    a = a - a.mean()
    b = b - b.mean()
    denominator = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / denominator) if denominator > 0 else 0.0


class HeadSample:
    """The fixed grid's strided subsample (`step`, about a million voxels) and the fixed head on it
    (`head`: above `slices.HEAD_LEVEL` of its own 99th percentile), computed once for all of a
    pair's figures: `inside`, the head's indices on the subsample; `points`, the same voxels'
    indices on the full grid; `values`, the fixed image there."""

    def __init__(self, fixed: np.ndarray):
        self.step = step = subsample_step(fixed.shape)
        sample = subsample(fixed, step)
        self.head = sample > head_level(sample)
        self.inside = np.nonzero(self.head)
        self.points = tuple(i * step for i in self.inside)
        self.values = np.asarray(sample[self.inside], np.float32)

    def of(self, volume: np.ndarray) -> np.ndarray:
        """A volume on the fixed grid, on the subsample."""
        return np.asarray(volume[:: self.step, :: self.step, :: self.step], np.float32)


def header_aligned_sample(moving, fixed_affine: np.ndarray, sample: HeadSample) -> np.ndarray:
    """The moving image (an `Image`) on the fixed grid's subsample, placed by the two headers alone
    (the world identity: what the pair looked like before registration), linear, 0 outside."""
    from scipy.ndimage import affine_transform

    fixed_to_moving = np.linalg.inv(moving.affine) @ fixed_affine
    # Subsample index o is fixed voxel step * o: the moving voxel (M step) o + t.
    placed = affine_transform(
        np.asarray(moving.data, np.float32),
        fixed_to_moving[:3, :3] * sample.step,
        fixed_to_moving[:3, 3],
        output_shape=sample.head.shape,
        order=1,
        mode="constant",
        cval=0.0,
    )
    return np.nan_to_num(placed)  # NaN (none in a loaded Image) only next to one, and as 0 there


def similarity(fixed_values: np.ndarray, moving_values: np.ndarray) -> dict[str, float]:
    return {
        "nmi": normalised_mutual_information(fixed_values, moving_values),
        "correlation": correlation(fixed_values, moving_values),
    }


def jacobian_statistics(
    jacobian: np.ndarray,
    fixed: np.ndarray,
    affine: np.ndarray,
    extremes: int = 3,
    separation_mm: float = 20.0,
    sample: HeadSample | None = None,
) -> dict:
    """det J inside the head: folding, log-Jacobian spread and percentiles, and the `extremes`
    largest expansions and compressions (at least `separation_mm` apart), each with its RAS
    position (`sample`: the fixed image's `HeadSample`, when the caller has it). Whole-grid
    statistics are `QualityReport.statistics`."""
    points = (sample or HeadSample(fixed)).points
    det = jacobian[points].astype(np.float64)
    if det.size == 0:
        return {}
    positive = det[det > 0]
    log_det = np.log(positive) if positive.size else np.zeros(1)
    xyz = np.stack(points, 1).astype(np.float64)
    ras = (affine[:3, :3] @ xyz.T).T + affine[:3, 3]

    def spread_out(order):
        chosen = []
        for k in order[:20000]:
            if all(np.linalg.norm(ras[k] - ras[j]) >= separation_mm for j in chosen):
                chosen.append(k)
                if len(chosen) == extremes:
                    break
        return [
            {
                "jacobian": float(det[k]),
                "ras_mm": [round(float(c), 1) for c in ras[k]],
                "voxel": [int(c) for c in xyz[k]],
            }
            for k in chosen
        ]

    order = np.argsort(det)
    return {
        "head_folding_fraction": float(np.mean(det <= 0)),
        "head_log_jacobian_std": float(log_det.std()),
        "head_log_jacobian_p01": float(np.percentile(log_det, 1)),
        "head_log_jacobian_p99": float(np.percentile(log_det, 99)),
        "head_jacobian_min": float(det.min()),
        "head_jacobian_max": float(det.max()),
        "largest_expansions": spread_out(order[::-1]),
        "largest_compressions": spread_out(order),
    }


def affine_parts(matrix: np.ndarray, centre: np.ndarray | None = None) -> dict:
    """Rotation, scales and shift of a 4x4 world matrix (moving RAS -> fixed RAS).

    The linear part is split by its singular values `L = U S V'`: `scales` are S (1 = no
    scaling), the rotation is `U V'` (its angle in degrees about its own axis), `reflection`
    says whether det L < 0. `translation_mm` is the matrix's own column; `centre_shift_mm` how
    far the matrix moves `centre` (RAS, mm; the head's centre, where the translation means most).
    """
    linear, translation = matrix[:3, :3], matrix[:3, 3]
    u, s, vt = np.linalg.svd(linear)
    rotation = u @ vt
    reflection = bool(np.linalg.det(rotation) < 0)
    if reflection:
        u[:, -1] *= -1
        rotation = u @ vt
    angle = float(np.degrees(np.arccos(np.clip((np.trace(rotation) - 1) / 2, -1, 1))))
    out = {
        "rotation_deg": angle,
        "scales": [float(x) for x in s],
        "translation_mm": [float(x) for x in translation],
        "reflection": reflection,
    }
    if centre is not None:
        out["centre_shift_mm"] = float(np.linalg.norm(linear @ centre + translation - centre))
    return out


def world_affine(result) -> np.ndarray:
    """The affine part of a `Registration` as a moving RAS -> fixed RAS matrix: the matrix of an
    affine/rigid result, else the matrices around the velocity (joint's mid-space roots, an
    optimised affine), with any initial affine (-i) included; the header alignment alone gives
    the identity. It is `Registration.affine`, which every method now has."""
    return result.affine


def subsample(volume: np.ndarray, step: int) -> np.ndarray:
    """Every `step`-th voxel of a volume along each axis, float32, NaN (none in a loaded Image) as 0."""
    return np.nan_to_num(np.asarray(volume[::step, ::step, ::step], np.float32))


def head_level(sample: np.ndarray):
    """The intensity above which a voxel of `sample` is head: `HEAD_LEVEL` x its own 99th percentile
    (each image its own level, so that contrasts and intensity scales do not matter)."""
    return HEAD_LEVEL * np.percentile(sample, 99)


def head_mask(volume: np.ndarray, step: int) -> np.ndarray:
    """The head of a volume on a strided subsample (`subsample`, above its `head_level`)."""
    sample = subsample(volume, step)
    return sample > head_level(sample)


def containment(a: np.ndarray, b: np.ndarray) -> float:
    """|A ∩ B| / min(|A|, |B|): the share of the smaller mask that lies inside the other (1 when
    one holds the other, 0 when they are apart or one is empty). Unlike Dice it is 1 for a brain
    inside a head, as a skull-stripped template and a whole-head scan are after registration."""
    smaller = min(int(a.sum()), int(b.sum()))
    return int((a & b).sum()) / smaller if smaller else 0.0


def head_overlap(result, moved: np.ndarray, sample: HeadSample | None = None, before=None) -> dict:
    """How the two heads overlap, on the fixed grid's strided subsample: the share of the smaller
    head inside the other (`containment`) for the fixed image and the moved one
    (`head_overlap_after`), and for the fixed image and the moving image placed by the headers
    alone (`head_overlap_before`: 0 when the headers put the heads apart, where the similarity
    before is that of independent images); `head_size_mm`, the diameter of a sphere of the fixed
    head's volume (mm), the scale that the affine's shift is judged against. `sample` and `before`
    (`header_aligned_sample`) when the caller has them."""
    sample = sample or HeadSample(np.asarray(result.fixed.data, np.float32))
    step = sample.step
    out = {"head_overlap_after": containment(sample.head, head_mask(np.asarray(moved, np.float32), step))}
    # The moving image placed by the headers, on the same subsample (its head by its own level).
    if before is None:
        before = header_aligned_sample(result.moving, result.fixed.affine, sample)
    out["head_overlap_before"] = containment(sample.head, before > head_level(subsample(result.moving.data, step)))
    voxel_mm3 = abs(np.linalg.det(result.fixed.affine[:3, :3])) * step**3
    out["head_size_mm"] = float((6 * sample.head.sum() * voxel_mm3 / np.pi) ** (1 / 3))
    return out


def pair_metrics(result, jacobian: np.ndarray, moved: np.ndarray) -> dict:
    """Everything the pair report shows about `result` (a `Registration`) beyond the whole-grid
    Jacobian statistics: similarity before/after, the Jacobian in the head, the affine's parts, and
    whether a turned or mirrored moving image would fit better (`orientation.orientation_check`)."""
    fixed = np.asarray(result.fixed.data, np.float32)
    sample = HeadSample(fixed)
    points = sample.points
    before = header_aligned_sample(result.moving, result.fixed.affine, sample)
    out: dict = {}
    if points[0].size >= 2:
        after = similarity(sample.values, sample.of(moved)[sample.inside])
        before_similarity = similarity(sample.values, before[sample.inside])
        out.update({f"similarity_{k}_before": v for k, v in before_similarity.items()})
        out.update({f"similarity_{k}_after": v for k, v in after.items()})
    out.update(head_overlap(result, moved, sample, before))
    out.update(jacobian_statistics(jacobian, fixed, result.fixed.affine, sample=sample))
    centre = (
        result.fixed.affine[:3, :3] @ np.mean(np.stack(points, 1), 0) + result.fixed.affine[:3, 3]
        if points[0].size
        else None
    )
    out["affine"] = affine_parts(world_affine(result), centre)
    from .orientation import orientation_check

    out.update(orientation_check(result.fixed, result.moving, world_affine(result)))
    return out
