"""Smooth random noise: Gaussian draws on coarse grids, upsampled and summed (neurite's `draw_perlin`)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, PRNGKeyArray

from .._custom_types import AnyArray


def resize_linear(volume: Float[AnyArray, "a b c ch"], shape: Sequence[int]) -> Float[Array, "x y z ch"]:
    """`volume` resampled onto `shape` by trilinear interpolation with corners aligned.

    Output voxel i of an axis of n voxels reads input position i (g - 1) / (n - 1) of that axis of g
    voxels (neurite's `resize`: `linspace(0, g - 1, n)`), so both end voxels map onto each other; an
    axis of one voxel is repeated. The same numbers as `interpolate_clamped` at those positions.
    """
    # One axis at a time: trilinear on a regular grid is separable, and the dense coordinate grid that
    # `interpolate_clamped` needs here is a constant XLA folds at compile time (15 s for a 32³ shapes map).
    out = jnp.asarray(volume)
    for axis, (g, n) in enumerate(zip(volume.shape[:3], shape, strict=True)):
        if g == n:
            continue
        pos = np.linspace(0.0, g - 1.0, n)
        lo = np.clip(np.floor(pos), 0, g - 1).astype(np.int32)
        hi = np.minimum(lo + 1, g - 1)
        w = jnp.asarray((pos - lo).astype(np.float32).reshape([n if a == axis else 1 for a in range(out.ndim)]))
        out = jnp.take(out, lo, axis=axis) * (1.0 - w) + jnp.take(out, hi, axis=axis) * w
    return out


def perlin_noise(
    key: PRNGKeyArray,
    shape: Sequence[int],
    channels: int,
    scales: Sequence[float | Sequence[float]],
    std: tuple[float, float],
) -> Float[Array, "x y z ch"]:
    """Multi-scale smooth noise on a grid of `shape`, `channels` values per voxel.

    For each scale s: one SD ~ U(std) for all channels, Gaussian noise of that SD on a grid of
    ceil(n / s) voxels per axis, trilinearly upsampled (`resize_linear`) to `shape`; the scales are
    summed. A scale may be one factor or one per axis. As neurite@95b2b56 `draw_perlin`.
    """
    shape = tuple(int(n) for n in shape)
    out = jnp.zeros((*shape, channels), jnp.float32)
    for key_s, scale in zip(jax.random.split(key, len(scales)), scales, strict=True):
        per_axis = tuple(scale) if isinstance(scale, Sequence) else (scale,) * 3
        coarse = tuple(math.ceil(n / s) for n, s in zip(shape, per_axis, strict=True))
        k_std, k_noise = jax.random.split(key_s)
        sd = jax.random.uniform(k_std, (), jnp.float32, std[0], std[1])
        noise = sd * normal(k_noise, (*coarse, channels))
        out = out + (noise if coarse == shape else resize_linear(noise, shape))
    return out


def normal(key: PRNGKeyArray, shape: Sequence[int]) -> Float[Array, ...]:
    """Standard normal float32 draws of `shape`, drawn flat and reshaped.

    The same distribution as `jax.random.normal(key, shape)`, other numbers: with JAX's partitionable
    threefry, a draw of a 3-D or 4-D shape took 1-2 s to compile on CPU against 0.1 s flat (measured),
    and a pair draws a dozen of them.
    """
    return jax.random.normal(key, (math.prod(shape),), jnp.float32).reshape(tuple(shape))
