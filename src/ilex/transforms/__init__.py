"""Spatial transforms on voxel grids, in JAX: the functional layer of ilex.

Fields are (x, y, z, 3) arrays of displacements in voxels, components by array axis, in the
pull-back convention (output voxel p reads the input at p + d(p)); images are (x, y, z). Every
function here is jittable, vmappable over a leading batch axis with `jax.vmap`, and
differentiable, as `tests/test_functional_api.py` checks.

- `integrate_velocity` (= `scaling_and_squaring`): a stationary velocity to a diffeomorphic
  displacement, by scaling and squaring
- `warp_image`: an image moved by a displacement
- `compose_fields`: two displacements as one
- `jacobian_determinant`, `folding_fraction`: local volume change and where a warp folds
- `voxel_grid`, `interpolate_clamped`, `sample_image`: the grid and the two samplers under them
- `matrix_field`, `matrix_after_field`: a voxel matrix as a displacement, alone or after a field
"""

from .compose import affine_displacement as affine_displacement
from .compose import compose_native as compose_native
from .compose import matrix_after_field as matrix_after_field
from .compose import matrix_field as matrix_field
from .compose import upsample_half_field as upsample_half_field
from .grid import voxel_grid as voxel_grid
from .integrate import scaling_and_squaring as scaling_and_squaring
from .interpolate import interpolate_clamped as interpolate_clamped
from .interpolate import sample_image as sample_image
from .jacobian import folding_fraction as folding_fraction
from .jacobian import jacobian_determinant as jacobian_determinant
from .warp import compose_fields as compose_fields
from .warp import warp_image as warp_image

integrate_velocity = scaling_and_squaring  # the name the functional layer documents
