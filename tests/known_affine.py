"""Colin27 seen through a known world affine, and how far a found affine is from it in mm: the case
the affine stage's tests (tests/test_optimize.py, tests/test_optimize_turn.py) register."""

import numpy as np
from data import data_path
from scipy.ndimage import map_coordinates

from ilex.image.io import Image, load_image


def colin_through(linear: np.ndarray, shift) -> tuple[Image, Image, np.ndarray]:
    """Colin27 (1 mm, whole head), the fixed image it gives through `linear` about the grid's centre and
    then `shift` (mm), and `known`, the map fixed world -> moving world."""
    colin = load_image(data_path("colin27_t1.nii.gz"))
    known = np.eye(4)
    known[:3, :3] = linear
    centre = colin.affine[:3, :3] @ (np.array(colin.shape) / 2) + colin.affine[:3, 3]
    known[:3, 3] = centre - known[:3, :3] @ centre + np.asarray(shift, np.float64)
    vox = np.linalg.inv(colin.affine) @ known @ colin.affine
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in colin.shape], indexing="ij"), -1).astype(np.float64)
    points = grid @ vox[:3, :3].T + vox[:3, 3]
    fixed = Image(map_coordinates(colin.data, np.moveaxis(points, -1, 0), order=1), colin.affine, "fixed")
    return colin, fixed, known


def affine_error_mm(found: np.ndarray, known: np.ndarray, head: Image, every: int = 1) -> np.ndarray:
    """Distances (mm) between where `known` and the inverse of `found` (a registration's `affine`, moving
    RAS -> fixed RAS) send every `every`-th voxel of `head`'s head (above a tenth of its maximum)."""
    voxels = np.argwhere(head.data > 0.1 * head.data.max())[::every].astype(np.float64)
    world = voxels @ head.affine[:3, :3].T + head.affine[:3, 3]
    inverse = np.linalg.inv(found)
    truth = world @ known[:3, :3].T + known[:3, 3]
    return np.linalg.norm(world @ inverse[:3, :3].T + inverse[:3, 3] - truth, axis=-1)
