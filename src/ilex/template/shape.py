"""The template's shape update: per-image affines, their log-Euclidean mean, the mean warp, and the
map that moves the average of the moved images by the inverse of the mean transform.

Every per-image transform is the pull-back map that `register` writes as a forward warp when the
template is the fixed image: `phi_i(x) = x + u_i(x)` takes a template world point (RAS mm) to the
image's world. Each is split as `phi_i = A_i o W_i`: `A_i` the least-squares affine of `phi_i`
over the template's head, `W_i(x) = x + w_i(x)` the rest, in template space. The mean transform is

    M = expm(mean_i logm A_i) o (id + mean_i w_i)

(the log-Euclidean mean of the affines, Arsigny et al. 2006; the mean of the non-linear parts,
a first-order stand-in for the mean of their stationary velocities, exact as the warps shrink).
If the template T is biased, M is not the identity; the shape update resamples the average
through `M^-a` (step `a`, 1 = the whole inverse), with `W^-a = exp(-a w)` by scaling and
squaring so that the update stays diffeomorphic.
"""

from __future__ import annotations

import threading

import jax
import jax.numpy as jnp
import numpy as np
from scipy.linalg import expm, logm

from ..transforms.compose import apply_matrix
from ..transforms.grid import voxel_grid
from ..transforms.integrate import scaling_and_squaring
from ..transforms.interpolate import interpolate_clamped, sample_image

INTEGRATION_STEPS = 7


def _f32(matrix) -> np.ndarray:
    return np.asarray(matrix, np.float32)


@jax.jit(static_argnames=("shape",))
def _world(affine, shape):
    return apply_matrix(affine, voxel_grid(shape))


def world_points(affine: np.ndarray, shape) -> np.ndarray:
    """World coordinates (RAS mm) of every voxel of a grid, (X, Y, Z, 3) float32."""
    return np.asarray(_world(_f32(affine), tuple(int(n) for n in shape)))


def head_mask(data: np.ndarray, fraction: float = 0.1) -> np.ndarray:
    """Voxels brighter than `fraction` of the 99th percentile: the head, for fits and statistics."""
    data = np.asarray(data)
    top = np.percentile(data, 99)
    return data > fraction * top if top > 0 else np.ones(data.shape, bool)


def normalised(data: np.ndarray) -> np.ndarray:
    """`data` / its 99th percentile over positive voxels (so images of any scale and contrast average
    with equal weight), float32."""
    data = np.asarray(data, np.float32)
    positive = data[data > 0]
    top = float(np.percentile(positive, 99)) if positive.size else 0.0
    return data / top if top > 0 else data


class AffineFit:
    """The 4x4 world matrix A minimising sum |A x - (x + u(x))|^2 over the voxels of `mask` (every
    `stride`-th along each axis), for many warps `u` on one grid (vox2ras `affine`): the voxels and
    the least-squares solve are set up once, so a fit is one gather and a 4 x N product (0.2 -> 0.015 s
    per 1 mm warp, measured). Exact for an affine warp."""

    def __init__(self, affine: np.ndarray, mask: np.ndarray, stride: int = 2):
        sub = (slice(None, None, stride),) * 3
        index = np.argwhere(mask[sub]) * stride
        if len(index) < 4:
            index = np.argwhere(np.ones(mask.shape, bool)[sub]) * stride
        self.index = tuple(index.T)
        x = index @ np.asarray(affine, np.float64)[:3, :3].T + np.asarray(affine, np.float64)[:3, 3]
        self.points = x
        # A^T = pinv([x 1]) (x + u): the pseudo-inverse of the design, once.
        self.solve = np.linalg.pinv(np.concatenate([x, np.ones((len(x), 1))], axis=1))

    def __call__(self, displacement: np.ndarray) -> np.ndarray:
        """A for the warp `displacement` ((X, Y, Z, 3) RAS mm on the grid)."""
        y = self.points + np.asarray(displacement)[self.index]
        matrix = np.eye(4)
        matrix[:3, :] = (self.solve @ y).T
        return matrix


def fit_affine(displacement: np.ndarray, affine: np.ndarray, mask: np.ndarray, stride: int = 2) -> np.ndarray:
    """`AffineFit(affine, mask, stride)(displacement)`: the least-squares affine of one warp."""
    return AffineFit(affine, mask, stride)(displacement)


def matrix_log(matrix: np.ndarray) -> np.ndarray:
    """Principal real logarithm of a 4x4 affine (near the identity, as registrations give)."""
    return np.real(logm(np.asarray(matrix, np.float64)))


def matrix_power(log: np.ndarray, alpha: float) -> np.ndarray:
    """`expm(alpha * log)`: the matrix whose logarithm is `log`, to the power `alpha`."""
    return expm(alpha * np.asarray(log, np.float64))


@jax.jit
def _residual(disp, affine, inverse_matrix):
    world = apply_matrix(affine, voxel_grid(disp.shape[:3]))
    return apply_matrix(inverse_matrix, world + disp) - world


def residual(displacement: np.ndarray, affine: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """`w(x) = A^-1 (x + u(x)) - x` (RAS mm): what is left of the warp once its affine is taken out."""
    return np.asarray(_residual(jnp.asarray(displacement, jnp.float32), _f32(affine), _f32(np.linalg.inv(matrix))))


class MeanTransform:
    """Accumulates per-image warps (one at a time, so memory stays that of one warp) into the mean
    transform's two parts: the mean log-affine and the mean non-linear residual, on the template grid."""

    def __init__(self, affine: np.ndarray, mask: np.ndarray, fit: bool = True):
        self.affine = np.asarray(affine, np.float64)
        self.mask = mask
        self.fit = AffineFit(self.affine, mask) if fit else None  # None: sums set from outside (`Partial`)
        self.count = 0
        self.log_sum = np.zeros((4, 4))
        self.residual_sum = None

    def add(self, displacement: np.ndarray) -> np.ndarray:
        """Add one image's forward warp (RAS mm on the template grid); returns its affine A_i."""
        matrix = self.fit(displacement)
        self.log_sum += matrix_log(matrix)
        w = residual(displacement, self.affine, matrix)
        self.residual_sum = w.astype(np.float64) if self.residual_sum is None else self.residual_sum + w
        self.count += 1
        return matrix

    def add_matrix(self, matrix: np.ndarray) -> None:
        """Add an image whose transform is the affine `matrix` alone (no residual)."""
        self.log_sum += matrix_log(matrix)
        self.count += 1

    @property
    def mean_log(self) -> np.ndarray:
        return self.log_sum / self.count

    @property
    def mean_residual(self) -> np.ndarray | None:
        return None if self.residual_sum is None else (self.residual_sum / self.count).astype(np.float32)


def _vox(field_mm: np.ndarray, affine: np.ndarray) -> jax.Array:
    # A world (mm) vector field as index displacements of the grid with vox2ras `affine`.
    return jnp.asarray(field_mm, jnp.float32) @ jnp.asarray(np.linalg.inv(np.asarray(affine)[:3, :3]).T, jnp.float32)


@jax.jit(static_argnames=("steps",))
def _update_points(residual_vox, affine, inverse_affine, inverse_matrix, alpha, steps):
    shape = residual_vox.shape[:3]
    z = apply_matrix(inverse_matrix, apply_matrix(affine, voxel_grid(shape)))
    z_vox = apply_matrix(inverse_affine, z)
    back = scaling_and_squaring(-alpha * residual_vox, steps)
    return z_vox + interpolate_clamped(back, z_vox)


@jax.jit
def _displacement_size(residual_mm, affine, matrix):
    world = apply_matrix(affine, voxel_grid(residual_mm.shape[:3]))
    return jnp.linalg.norm(apply_matrix(matrix, world + residual_mm) - world, axis=-1)


def displacement_size(residual_mm, affine: np.ndarray, matrix: np.ndarray) -> jax.Array:
    """|M (x + w(x)) - x| (mm) at every voxel x of a grid (vox2ras `affine`): the size of the
    transform `M o (id + w)`, a world matrix `M` after a residual `w` (RAS mm on the grid)."""
    return _displacement_size(jnp.asarray(residual_mm, jnp.float32), _f32(affine), _f32(matrix))


class ShapeUpdate:
    """The map `M^-alpha` of the mean transform, on the template grid, and what it does to images and warps.

    `points` are, for each template voxel q, the template voxel coordinates `M^-alpha(q)` at which
    the new template samples the average. `alpha` is the step (ANTs' gradient step; 1 is the whole
    inverse of the mean transform)."""

    def __init__(self, mean: MeanTransform, shape, alpha: float = 1.0):
        self.affine = mean.affine
        self.shape = tuple(int(n) for n in shape)
        self.alpha = float(alpha)
        self.mean_log = mean.mean_log
        w = mean.mean_residual
        self.residual = np.zeros((*self.shape, 3), np.float32) if w is None else w
        self._residual_vox = _vox(self.residual, self.affine)
        self._ahead = None
        self._ahead_lock = threading.Lock()  # images' inverses may be made on several threads
        self.points = _update_points(
            self._residual_vox,
            _f32(self.affine),
            _f32(np.linalg.inv(self.affine)),
            _f32(matrix_power(self.mean_log, -self.alpha)),
            jnp.float32(self.alpha),
            INTEGRATION_STEPS,
        )

    def mean_displacement(self, mask: np.ndarray) -> tuple[float, float]:
        """Mean and max |M(x) - x| (mm) over `mask`: the size of the mean transform, 0 for an unbiased template."""
        size = np.asarray(displacement_size(jnp.asarray(self.residual), self.affine, matrix_power(self.mean_log, 1.0)))
        inside = size[mask] if mask.any() else size.ravel()
        return float(inside.mean()), float(inside.max())

    def image(self, data: np.ndarray) -> np.ndarray:
        """An image on the template grid, moved by the update: `T'(q) = T(M^-alpha(q))` (linear, 0 outside)."""
        return np.asarray(_sample(jnp.asarray(data, jnp.float32), self.points))

    def forward(self, displacement: np.ndarray) -> np.ndarray:
        """A forward warp `phi` (template -> image, RAS mm on the template grid) made to start from the
        updated template: `phi o M^-alpha`."""
        return np.asarray(_compose_forward(jnp.asarray(displacement, jnp.float32), self.points, _f32(self.affine)))

    def inverse(self, displacement: np.ndarray, image_affine: np.ndarray) -> np.ndarray:
        """An inverse warp `phi^-1` (image -> template, RAS mm on the image grid) made to end in the updated
        template: `M^alpha o phi^-1`."""
        with self._ahead_lock:  # the same for every image: integrated once (0.8 s at 1 mm, measured)
            if self._ahead is None:
                self._ahead = _integrate(self._residual_vox, jnp.float32(self.alpha), INTEGRATION_STEPS)
        points = _inverse_points(
            jnp.asarray(displacement, jnp.float32), _f32(image_affine), _f32(np.linalg.inv(self.affine))
        )
        points = _ahead_of(points, self._ahead)
        # M^alpha's matrix after the template's vox2ras, as one matrix.
        to_world = matrix_power(self.mean_log, self.alpha) @ self.affine
        return np.asarray(_inverse_world(points, _f32(image_affine), _f32(to_world)))


@jax.jit
def _sample(data, points):
    return sample_image(data, points, "linear", jnp.float32(0.0))


@jax.jit
def _compose_forward(disp, points, affine):
    grid = voxel_grid(disp.shape[:3])
    return apply_matrix(affine, points) + interpolate_clamped(disp, points) - apply_matrix(affine, grid)


@jax.jit(static_argnames=("steps",))
def _integrate(residual_vox, alpha, steps):
    # exp(alpha w): the residual's part of M^alpha, template voxels.
    return scaling_and_squaring(alpha * residual_vox, steps)


# Three programs, not one: fused together, XLA evaluated each producer again in every consumer
# (the trilinear gather once per output component, the voxel coordinates once per corner):
# 0.74 s against 0.22 s at 1 mm (measured).
@jax.jit
def _inverse_points(disp, image_affine, inverse_affine):
    # Template voxel coordinates of phi^-1 at each image voxel.
    return apply_matrix(inverse_affine, apply_matrix(image_affine, voxel_grid(disp.shape[:3])) + disp)


@jax.jit
def _ahead_of(points, ahead):
    # The points moved on by exp(alpha w).
    return points + interpolate_clamped(ahead, points)


@jax.jit
def _inverse_world(points, image_affine, to_world):
    return apply_matrix(to_world, points) - apply_matrix(image_affine, voxel_grid(points.shape[:3]))


def sharpen(data: np.ndarray) -> np.ndarray:
    """Laplacian sharpening, as ANTs' `ImageMath Sharpen` does to a template: `T - lap(T)`, put back
    into T's intensity range."""
    from scipy.ndimage import laplace

    data = np.asarray(data, np.float32)
    out = data - laplace(data)
    lo, hi = float(data.min()), float(data.max())
    out = np.clip(out, lo, hi)
    return out.astype(np.float32)


def correlation(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> float:
    """Pearson correlation of two images over `mask` (nan when either is flat there)."""
    x, y = np.asarray(a, np.float64)[mask], np.asarray(b, np.float64)[mask]
    x, y = x - x.mean(), y - y.mean()
    denominator = np.sqrt((x * x).sum() * (y * y).sum())
    return float((x * y).sum() / denominator) if denominator > 0 else float("nan")


def relative_change(new: np.ndarray, old: np.ndarray, mask: np.ndarray) -> float:
    """|new - old| / |old| (root of sums of squares) over `mask`."""
    old_ = np.asarray(old, np.float64)[mask]
    norm = np.sqrt((old_ * old_).sum())
    diff = np.asarray(new, np.float64)[mask] - old_
    return float(np.sqrt((diff * diff).sum()) / norm) if norm > 0 else float("nan")
