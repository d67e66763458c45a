"""From feature maps to a matrix: barycentres, weighted least squares, rigid projection.

These are SynthMorph's affine head (voxelmorph `VxmAffineFeatureDetector`, neurite
`barycenter`; docs/spec-affine.md), written for one image pair (no batch axis), in the dtype of
their inputs: float32 reproduces the reference's own rounding.

Matrices are 4x4 and act on column vectors of centred coordinates; the fitted matrix maps
*fixed* coordinates to *moving* ones (the pull-back, the direction a resampler needs).
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from jaxtyping import Float

from ..._custom_types import AnyArray


def barycenter(features: Float[AnyArray, "x y z c"], extent: float | Float[AnyArray, ""]) -> Float[AnyArray, "c 3"]:
    """The centre of mass of each feature channel, in centred coordinates scaled to `extent`.

    For a map of shape (n0, n1, n2), voxel i sits at `(i - (n - 1) / 2) / n` along each axis
    (the grid normalised to unit length, centred), and channel c's barycentre is
    `sum_x f_c(x) g(x) / sum_x f_c(x)`, times `extent` (the side of the input the features
    were computed from). A channel that is zero everywhere gives 0, not 0/0.
    """
    shape = features.shape[:3]
    axes = [(jnp.arange(n, dtype=features.dtype) - (n - 1) / 2) / n for n in shape]
    grid = jnp.stack(jnp.meshgrid(*axes, indexing="ij"), axis=-1)  # (x, y, z, 3)
    mass = features.sum(axis=(0, 1, 2))  # (c,)
    moment = jnp.einsum("xyzc,xyzd->cd", features, grid)  # (c, 3)
    safe = jnp.where(mass == 0, 1, mass)
    centre = jnp.where(mass[:, None] == 0, 0, moment / safe[:, None])
    return centre * jnp.asarray(extent, features.dtype)


def channel_weights(
    features_1: Float[AnyArray, "x y z c"], features_2: Float[AnyArray, "x y z c"]
) -> Float[AnyArray, " c"]:
    """`p1 * p2`, each `p` a channel's total feature mass over the sum of all channels' masses."""
    p1 = features_1.sum(axis=(0, 1, 2))
    p2 = features_2.sum(axis=(0, 1, 2))
    return (p1 / p1.sum()) * (p2 / p2.sum())


def fit_affine(
    source: Float[AnyArray, "n 3"], target: Float[AnyArray, "n 3"], weights: Float[AnyArray, " n"] | None = None
) -> Float[AnyArray, "4 4"]:
    """The affine `M` minimising `sum_i w_i |M [target_i; 1] - source_i|^2` (weighted least squares).

    With `X = [target, 1]` (n x 4) and `W = diag(w)`: `M[:3] = ((X^T W X)^-1 X^T W source)^T`.
    Given barycentres of the moving image as `source` and of the fixed image as `target`, `M`
    maps fixed coordinates to moving ones. Returns 4x4 with last row (0, 0, 0, 1).
    """
    x = jnp.concatenate([target, jnp.ones_like(target[:, :1])], axis=1)
    xt = x.T if weights is None else x.T * weights[None, :]
    beta = jnp.linalg.inv(xt @ x) @ xt @ source  # (4, 3)
    return _square(beta.T)


def _square(m: Float[AnyArray, "3 4"]) -> Float[AnyArray, "4 4"]:
    return jnp.concatenate([m, jnp.asarray([[0, 0, 0, 1]], m.dtype)], axis=0)


def invert_affine(m: Float[AnyArray, "4 4"]) -> Float[AnyArray, "4 4"]:
    return jnp.linalg.inv(m)


def symmetric_fit(centres_moving, centres_fixed, weights=None) -> Float[AnyArray, "4 4"]:
    """`½ (fit(moving <- fixed) + fit(fixed <- moving)^-1)`: the least-squares fit is not symmetric
    in its two point sets, so both directions are averaged (fixed -> moving coordinates)."""
    forward = fit_affine(centres_moving, centres_fixed, weights)
    backward = fit_affine(centres_fixed, centres_moving, weights)
    return 0.5 * (invert_affine(backward) + forward)


# Rigid: the affine's translation and rotation, with scale and shear dropped. The rotation comes
# from the matrix's decomposition M = R S E (S diagonal scale, E unit upper-triangular shear,
# through the Cholesky factor of M^T M) and is rebuilt from its intrinsic x-y-z Euler angles,
# as voxelmorph's `affine_matrix_to_params` / `params_to_affine_matrix` do.


def rotation_from_angles(angles_deg) -> np.ndarray:
    """`R = Rx @ Ry @ Rz` (right-handed, intrinsic), angles in degrees."""
    a, b, c = (np.deg2rad(float(t)) for t in angles_deg)
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    ry = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    rz = np.array([[np.cos(c), -np.sin(c), 0], [np.sin(c), np.cos(c), 0], [0, 0, 1]])
    return rx @ ry @ rz


def angles_from_rotation(r: np.ndarray) -> np.ndarray:
    """Inverse of `rotation_from_angles` (degrees); at gimbal lock (|b| = 90°) the first angle is 0."""
    clip = lambda t: np.clip(t, -1.0, 1.0)
    b = np.arcsin(clip(r[0, 2]))
    if abs(abs(b) - 0.5 * np.pi) < 1e-6:
        a, c = 0.0, np.arctan2(clip(r[1, 0]), clip(r[1, 1]))
    else:
        cb = np.cos(b)
        a = np.arctan2(clip(-r[1, 2] / cb), clip(r[2, 2] / cb))
        c = np.arctan2(clip(-r[0, 1] / cb), clip(r[0, 0] / cb))
    return np.rad2deg([a, b, c])


def rigid_part(m) -> np.ndarray:
    """The rigid transform (rotation and translation) of affine `m` (4x4): scale and shear removed."""
    m = np.asarray(m, np.float64)
    linear = m[:3, :3]
    upper = np.linalg.cholesky(linear.T @ linear).T  # M^T M = U^T U, U upper triangular
    scale = np.diag(upper).copy()
    scale[0] *= np.sign(np.linalg.det(linear))  # a reflection goes into the first scale
    shear = upper / scale[:, None]
    np.fill_diagonal(shear, 1.0)  # the shear matrix has a unit diagonal by construction
    rotation = linear @ np.linalg.inv(np.diag(scale) @ shear)
    out = np.eye(4)
    out[:3, :3] = rotation_from_angles(angles_from_rotation(rotation))
    out[:3, 3] = m[:3, 3]
    return out


def centring(extent: float) -> tuple[np.ndarray, np.ndarray]:
    """(cen, un_cen): index coordinates to coordinates centred on the grid's middle `(n - 1) / 2`, and back."""
    cen, un_cen = np.eye(4), np.eye(4)
    cen[:3, 3] = -0.5 * (extent - 1)
    un_cen[:3, 3] = 0.5 * (extent - 1)
    return cen, un_cen
