"""Named array types for annotations (checked at run time under pytest by jaxtyping + beartype,
`--jaxtyping-packages=ilex,beartype.beartype`; free in production).

Inputs may be JAX or numpy arrays (`AnyArray`): every function here converts with `jnp.asarray`.
Spatial axes are `x y z` (the image's voxel axes, 'ij' order); fields end in a vector axis of 3
whose components follow the same axes. Units are voxels unless a docstring says mm.
"""

from __future__ import annotations

import numpy as np
from jaxtyping import Array, Float

AnyArray = Array | np.ndarray

Volume = Float[AnyArray, "x y z"]  # one image on a voxel grid
Field = Float[AnyArray, "x y z 3"]  # displacement or velocity: one vector per voxel
Points = Float[AnyArray, "*points 3"]  # coordinates (voxel indices of some grid), any leading shape
Matrix = Float[AnyArray, "4 4"]  # homogeneous affine
Scalar = Float[AnyArray, ""]
