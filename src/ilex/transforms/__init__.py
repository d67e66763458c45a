"""Spatial transforms on voxel grids: the grid itself, interpolation, integration, composition, Jacobians."""

from .compose import affine_displacement as affine_displacement
from .compose import compose_native as compose_native
from .compose import upsample_half_field as upsample_half_field
from .grid import voxel_grid as voxel_grid
from .integrate import scaling_and_squaring as scaling_and_squaring
from .interpolate import interpolate_clamped as interpolate_clamped
from .interpolate import sample_image as sample_image
