"""An affine registration recovers a known transform of a real image.

Trained weights are not available here, and random ones find no true transform. The stand-in keeps
everything of `-m affine` but the convolutional feature detector: its "features" are the AAL regions
of Colin27, whose barycentres are known exactly (computed in each image's own voxels and carried into
network space by the pipeline's own matrices), so SynthMorph's head (channel weights, symmetric
weighted least squares, rigid projection, centring) and the whole pipeline (network spaces, matrix
composition, world conversion, LTA direction) have to give back the transform that was applied.
"""

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pytest
from data import data_path

from ilex.image.io import Image, load_image
from ilex.models.synthmorph_affine.fit import centring, rigid_part, rotation_from_angles, symmetric_fit
from ilex.registration.methods.base import Method, NetworkTransform
from ilex.registration.network_space import network_space
from ilex.registration.pipeline import register

pytestmark = pytest.mark.realdata
REGIONS = 116


def _region_centres(labels: Image, vox_to_net: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each region's barycentre in network index coordinates, and its voxel count."""
    flat = np.rint(labels.data).astype(int).ravel()
    coords = np.stack(np.meshgrid(*[np.arange(n) for n in labels.shape], indexing="ij"), -1).reshape(-1, 3)
    mass = np.bincount(flat, minlength=REGIONS + 1)[1:].astype(float)
    centres = np.stack([np.bincount(flat, coords[:, d], REGIONS + 1)[1:] for d in range(3)], -1) / mass[:, None]
    return centres @ vox_to_net[:3, :3].T + vox_to_net[:3, 3], mass


@dataclass(frozen=True)
class KnownBarycentres(Method):
    """`-m affine`/`rigid` whose detector is replaced by exact region barycentres (module docstring)."""

    moving: Image
    fixed: Image
    extent: int
    rigid: bool = False
    yields_matrix: ClassVar[bool] = True

    @property
    def name(self):
        return "rigid" if self.rigid else "affine"

    def estimate(self, mov_net, fix_net, grid=None):
        space = network_space(self.moving, self.fixed, self.extent, centre_on_fixed=False)
        c_mov, m_mov = _region_centres(self.moving, space.mov_to_net)
        c_fix, m_fix = _region_centres(self.fixed, space.fix_to_net)
        cen, un_cen = centring(self.extent)
        weights = (m_mov / m_mov.sum()) * (m_fix / m_fix.sum())
        centred = np.asarray(symmetric_fit(c_mov + cen[:3, 3], c_fix + cen[:3, 3], weights), np.float64)
        return NetworkTransform(matrix=un_cen @ (rigid_part(centred) if self.rigid else centred) @ cen)


def _known(angles, scale, shift, centre):
    linear = rotation_from_angles(angles) @ np.diag(scale)
    t = np.eye(4)
    t[:3, :3] = linear
    t[:3, 3] = centre + np.asarray(shift) - linear @ centre
    return t


@pytest.mark.parametrize("rigid", [False, True])
def test_recovers_known_transform(rigid):
    aal = load_image(data_path("colin27_aal.nii.gz"))
    assert int(aal.data.max()) == REGIONS
    centre = aal.affine[:3, :3] @ (np.asarray(aal.shape) / 2) + aal.affine[:3, 3]
    scale = (1.0, 1.0, 1.0) if rigid else (1.06, 0.94, 1.03)
    truth = _known((8.0, -6.0, 5.0), scale, (7.0, -5.0, 4.0), centre)  # fixed world -> moving world
    # The same voxels under a moved header: moving world = truth(fixed world).
    moving = Image(aal.data, truth @ aal.affine, "aal_moved.nii.gz")
    result = register(moving, aal, method=KnownBarycentres(moving, aal, 192, rigid), extent=192)
    recovered = np.linalg.inv(result.affine)  # the LTA maps moving to fixed; the truth maps fixed to moving
    linear_error = np.abs(recovered[:3, :3] - truth[:3, :3]).max()
    # Displacement error over the brain's extent (±90 mm): what the matrices' difference moves a point by.
    corners = np.array([[x, y, z, 1.0] for x in (-90, 90) for y in (-90, 90) for z in (-90, 90)]) + np.r_[centre, 0]
    mm_error = np.abs((recovered - truth) @ corners.T).max()
    # The fit runs in float32 as the reference's does: measured 9.1e-8 and 2.0e-5 mm (affine).
    assert linear_error < 1e-6 and mm_error < 1e-4, (linear_error, mm_error)
