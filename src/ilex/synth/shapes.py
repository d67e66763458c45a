"""Label maps made from noise: SynthMorph's "shapes", for training without any acquired data."""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from jaxtyping import Array, Int, PRNGKeyArray

from ..transforms.grid import voxel_grid
from ..transforms.interpolate import interpolate_clamped
from .noise import perlin_noise
from .settings import SynthSettings


def shapes_labels(key: PRNGKeyArray, shape: Sequence[int], settings: SynthSettings) -> Int[Array, "x y z"]:
    """A random label map of `shape` with labels 0..J-1, J = `settings.n_shape_labels`.

    As the SynthMorph demo: one smooth noise image p_j per label (`perlin_noise` at
    `shape_noise_scales`, one SD per scale ~ U(`shape_noise_std`)), all moved by one random smooth
    displacement u (`perlin_noise` with 3 channels at `shape_warp_scales`, SD ~ U(`shape_warp_std`)),
    trilinear with clamped borders, then `s(x) = argmax_j p_j(x + u(x))`. The demo's lengths are voxels
    of a 256-voxel field of view: along an axis of n voxels, scales and displacement SDs are multiplied
    by n / `shape_extent`, so a map of any size holds as many blobs. At the defaults and n ≥ 32 every
    label is present in almost every map (tests/test_synth.py). Jittable, vmappable over `key`.
    """
    shape = tuple(int(n) for n in shape)
    zoom = tuple(n / settings.shape_extent for n in shape)

    def per_axis(scales):
        return tuple(tuple(max(s * z, 1.0) for z in zoom) for s in scales)

    k_noise, k_warp = jax.random.split(key)
    noise = perlin_noise(
        k_noise, shape, settings.n_shape_labels, per_axis(settings.shape_noise_scales), settings.shape_noise_std
    )
    # One warp for every label: the demo's warp has a label axis shorter than its coarsest scale, so
    # draw_perlin draws it once and repeats it across labels.
    warp = perlin_noise(k_warp, shape, 3, per_axis(settings.shape_warp_scales), settings.shape_warp_std)
    warp = warp * jnp.asarray(zoom, jnp.float32).reshape(1, 1, 1, 3)
    moved = interpolate_clamped(noise, voxel_grid(shape) + warp)
    return jnp.argmax(moved, axis=-1).astype(jnp.int32)
