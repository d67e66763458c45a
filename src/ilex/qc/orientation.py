"""Would the moving image fit better turned or mirrored? A check for swapped header axes and data
mirrored in place, which a registration cannot undo and whose similarity afterwards can look fine.

The moving image is placed on a coarse copy of the fixed grid (`COARSE_MM` voxels, block means)
through the registration's affine part only (no warp: a warp fits a wrong orientation as well as
it can, and would flatter it). That placement is compared, by normalised mutual information inside
the fixed head, with the same placement turned or mirrored about the moved head's centre by every
signed permutation of the fixed image's RAS axes: 48 candidates, less the identity and the pure
left-right mirror (brains are nearly symmetric left-right, so a left-right mirror cannot be told
from the truth by any such figure). A candidate that exchanges two axes is also stretched by
the ratio of the fixed head's extents along them (the affine part fitted the wrongly turned head to
the fixed head's shape), and the identity and the best few candidates may shift by one coarse voxel
along any axis, the best shift counting, so that a head mirrored about a centre that is not quite its
own still lines up. A correct registration scores higher as it is than any
turned copy; an image whose axes were swapped or mirrored in place (front-back, up-down) is
bettered by the turn that undoes it.
"""

from __future__ import annotations

import itertools

import numpy as np

from .slices import HEAD_LEVEL

COARSE_MM = 6.0  # the coarse grid's voxel size (mm): the gross shape, cheap, tolerant of a few mm off
REFINED = 3  # how many of the best unshifted candidates are tried shifted by one coarse voxel
BINS = 32  # joint histogram bins, as metrics.BINS

AXES = "RAS"


def _candidates() -> list[tuple[str, np.ndarray]]:
    out = []
    for perm in itertools.permutations(range(3)):
        for signs in itertools.product((1, -1), repeat=3):
            matrix = np.zeros((3, 3))
            for row, (column, sign) in enumerate(zip(perm, signs, strict=True)):
                matrix[row, column] = sign
            if perm == (0, 1, 2) and signs[1:] == (1, 1):
                continue  # the identity, and the left-right mirror that no figure can see
            # Name: which moved axis each fixed axis reads (see orientation_check).
            name = " ".join(
                f"{'-' if sign < 0 else ''}{AXES[column]}→{AXES[row]}"
                for row, (column, sign) in enumerate(zip(perm, signs, strict=True))
            )
            out.append((name, matrix))
    return out


CANDIDATES = _candidates()


def _block_mean(data: np.ndarray, affine: np.ndarray, coarse_mm: float) -> tuple[np.ndarray, np.ndarray]:
    """`data` averaged over blocks of about `coarse_mm` (whole voxels per axis), with the blocks' affine."""
    zooms = np.sqrt((affine[:3, :3] ** 2).sum(0))
    steps = [max(1, round(float(coarse_mm / z))) for z in zooms]
    data = np.asarray(data, np.float32)  # no copy for an Image's float32 voxels
    crop = [(n // s) * s for n, s in zip(data.shape[:3], steps, strict=True)]
    if min(crop) == 0:
        steps, crop = [1, 1, 1], list(data.shape[:3])
    d = data[: crop[0], : crop[1], : crop[2]]
    d = d.reshape(crop[0] // steps[0], steps[0], crop[1] // steps[1], steps[1], crop[2] // steps[2], steps[2])
    block = np.diag([*steps, 1.0])
    block[:3, 3] = (np.array(steps) - 1) / 2.0  # a block's centre, in the fine grid's voxels
    # NaN (none in a loaded Image) only where a block holds one, and as 0 there.
    return np.nan_to_num(d.mean((1, 3, 5))), affine @ block


def _binned(values: np.ndarray, bins: int = BINS) -> np.ndarray:
    lo, hi = np.percentile(values, [0.5, 99.5])
    return np.clip(((values - lo) / max(hi - lo, 1e-12) * bins).astype(np.int64), 0, bins - 1)


def _nmi(fixed_binned: np.ndarray, fixed_entropy: float, values: np.ndarray, bins: int = BINS) -> float:
    # metrics.normalised_mutual_information with the fixed image's bins and entropy computed once.
    joint = np.bincount(fixed_binned * bins + _binned(values, bins), minlength=bins * bins) / values.size
    h_ab = _entropy(joint)
    return (fixed_entropy + _entropy(joint.reshape(bins, bins).sum(0))) / h_ab if h_ab > 0 else 1.0


def _entropy(p: np.ndarray) -> float:
    p = p[p > 0]
    return float(-(p * np.log(p)).sum())


def orientation_check(fixed, moving, matrix: np.ndarray, coarse_mm: float = COARSE_MM) -> dict:
    """NMI of the pair as registered (affine part `matrix`, moving RAS -> fixed RAS) and of its best
    turned or mirrored copy, on a coarse grid inside the fixed head.

    `fixed`, `moving`: `Image`s. A candidate that exchanges two axes also rescales them by the ratio
    of the fixed head's extents along them (its SD along each RAS axis), since the affine part has
    fitted the wrongly turned head to the fixed head's extents. Every candidate is first scored
    unshifted; the identity and the `REFINED` best are then scored shifted by one coarse voxel
    along each axis (either way), keeping their best. Returns `orientation_nmi` (as registered),
    `orientation_best_nmi` and `orientation_best` (the best candidate: each term "X→Y" says that
    the fixed image's axis X reads the moved image along its axis Y, a minus that it reads it
    reversed; "R→R -A→A S→S" is a front-back mirror, "A→R R→A S→S" a left-right/front-back swap), and
    `orientation_margin`, the first minus the second (negative: a turned copy fits better).
    Empty when the fixed head has under 64 coarse voxels.
    """
    from scipy.ndimage import map_coordinates

    fix, fix_affine = _block_mean(fixed.data, fixed.affine, coarse_mm)
    mov, mov_affine = _block_mean(moving.data, moving.affine, coarse_mm)
    inside = np.nonzero(fix > HEAD_LEVEL * np.percentile(fix, 99))
    if inside[0].size < 64:
        return {}
    fixed_binned = _binned(fix[inside])
    fixed_entropy = _entropy(np.bincount(fixed_binned, minlength=BINS) / fixed_binned.size)
    voxels = np.stack([*inside, np.ones_like(inside[0])]).astype(np.float64)
    world = (fix_affine @ voxels)[:3]
    # Turn about the moved head's own centre (the moving image's head, placed by the affine part, on the whole
    # coarse grid): a head mirrored in place and then centred by the affine part is undone about that point.
    grid = np.indices(fix.shape).reshape(3, -1).astype(np.float64)
    grid_world = fix_affine[:3, :3] @ grid + fix_affine[:3, 3:]
    to_moving = np.linalg.inv(mov_affine) @ np.linalg.inv(matrix)
    placed = map_coordinates(mov, to_moving[:3, :3] @ grid_world + to_moving[:3, 3:], order=1, cval=0.0)
    moved_head = placed > HEAD_LEVEL * np.percentile(mov, 99)
    centre = (grid_world[:, moved_head] if moved_head.sum() >= 64 else world).mean(1, keepdims=True)
    # On a coarse voxel or half-way between two: a mirror then maps the grid's points onto its points, and a copy
    # read through an identity placement is not blurred by interpolation that the registered pair escapes.
    centre_voxel = np.linalg.solve(fix_affine[:3, :3], centre - fix_affine[:3, 3:])
    centre = fix_affine[:3, :3] @ (np.round(2 * centre_voxel) / 2) + fix_affine[:3, 3:]
    extent = world.std(1)
    coarse = np.sqrt((fix_affine[:3, :3] ** 2).sum(0)).min()
    shifts = coarse * np.concatenate([np.eye(3), -np.eye(3)])  # one coarse voxel along each axis

    def score(turn: np.ndarray, shift_mm=(0.0, 0.0, 0.0)) -> float:
        points = turn @ (world - centre) + centre + np.asarray(shift_mm)[:, None]
        coords = to_moving[:3, :3] @ points + to_moving[:3, 3:]
        values = map_coordinates(mov, coords, order=1, mode="constant", cval=0.0)
        return _nmi(fixed_binned, fixed_entropy, values)

    def refined(turn: np.ndarray, value: float) -> float:
        return max([value, *(score(turn, s) for s in shifts)])

    def scaled(turn: np.ndarray) -> np.ndarray:
        # Moved axis j read along fixed axis i (turn[j, i] = ±1) is stretched by e_j / e_i.
        return turn * extent[:, None] / extent[None, :]

    as_registered = refined(np.eye(3), score(np.eye(3)))
    first = sorted(((score(scaled(turn)), name, turn) for name, turn in CANDIDATES), key=lambda t: -t[0])
    best, best_name = max((refined(scaled(turn), value), name) for value, name, turn in first[:REFINED])
    return {
        "orientation_nmi": float(as_registered),
        "orientation_best_nmi": float(best),
        "orientation_best": best_name,
        "orientation_margin": float(as_registered - best),
    }
