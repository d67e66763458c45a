"""Ordering ties between computations never change values: a NaN cannot travel through them."""

import jax
import jax.numpy as jnp
import numpy as np

from ilex._sequencing import after
from ilex.models.conv.gemm_conv import patch_conv3d
from ilex.models.synthmorph_deform.velocity import symmetric_velocity
from ilex.transforms.compose import upsample_half_field


def test_after_passes_the_value_through_untouched():
    value = jnp.arange(4.0)
    assert np.array_equal(jax.jit(after)(value, jnp.full((3,), jnp.nan)), value)


def test_nan_in_the_first_pass_does_not_poison_the_second():
    # A stand-in U-Net: the output is a function of (source, target) voxel by voxel, so a NaN
    # in the first pass's element (0, 0, 0, 0) may only reach that one voxel of the velocity.
    calls = []

    def unet(source, target, algorithm):
        calls.append(algorithm)
        out = jnp.concatenate([source, target, source - target], axis=-1)
        return out.at[0, 0, 0, 0].set(jnp.nan) if len(calls) == 1 else out

    moving = jnp.ones((4, 4, 4, 1))
    fixed = jnp.zeros((4, 4, 4, 1))
    v = np.asarray(jax.jit(lambda m, f: symmetric_velocity(unet, m, f))(moving, fixed))
    assert np.isnan(v[0, 0, 0, 0])
    assert np.isfinite(np.delete(v.reshape(-1, 3), 0, axis=0)).all()


def test_nan_in_the_half_field_stays_local_when_upsampled():
    half = np.zeros((4, 4, 4, 3), np.float32)
    half[0, 0, 0, 0] = np.nan
    full = np.asarray(jax.jit(upsample_half_field)(jnp.asarray(half)))
    bad = ~np.isfinite(full).all(axis=-1)
    # Only full-resolution voxels that interpolate from half voxel (0, 0, 0) are affected.
    assert bad[0, 0, 0] and bad[:2, :2, :2].sum() == bad.sum()


def test_nan_in_a_convolution_input_stays_in_its_neighbourhood():
    x = np.zeros((1, 8, 4, 4, 2), np.float32)
    x[0, 0, 0, 0, 0] = np.nan
    kernel = jnp.ones((3, 3, 3, 2, 8)) / 54.0
    y = np.asarray(jax.jit(patch_conv3d)(jnp.asarray(x), kernel, jnp.zeros(8)))
    assert np.isnan(y[0, :2, :2, :2]).all() and np.isfinite(y[0, 2:]).all()
