"""Winograd F(2,3) convolution against XLA's direct convolution (the oracle), and the U-Net both ways."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import fixture_path
from jax import lax

import ilex
from ilex.models.synthmorph_deform.winograd import winograd_conv3d

# One F(2,3) layer in float32 differs from the direct sum by a few ulps of its largest terms:
# 1e-5 of the output's maximum leaves a 10x margin over what we measure (~5e-7).
TOL = 1e-5


def _direct(x, kernel, bias):
    dn = ("NDHWC", "DHWIO", "NDHWC")
    return lax.conv_general_dilated(x, kernel, (1, 1, 1), "SAME", dimension_numbers=dn, precision=lax.Precision.HIGHEST) + bias[None, None, None, None, :]


def _up(x):
    for axis in (1, 2, 3):
        x = jnp.repeat(x, 2, axis=axis)
    return x


@pytest.mark.parametrize("slab", [1, 2])
def test_matches_direct_on_an_anisotropic_grid(getkey, slab):
    x = jax.random.normal(getkey(), (2, 8, 12, 6, 5))
    kernel, bias = jax.random.normal(getkey(), (3, 3, 3, 5, 7)), jax.random.normal(getkey(), (7,))
    ref = _direct(x, kernel, bias)
    out = winograd_conv3d([(x, False)], kernel, bias, slab=slab)
    assert jnp.abs(out - ref).max() <= TOL * jnp.abs(ref).max()


def test_upsampled_and_skip_parts_equal_the_concatenation(getkey):
    low, skip = jax.random.normal(getkey(), (1, 4, 6, 5, 8)), jax.random.normal(getkey(), (1, 8, 12, 10, 6))
    kernel, bias = jax.random.normal(getkey(), (3, 3, 3, 14, 4)), jax.random.normal(getkey(), (4,))
    ref = _direct(jnp.concatenate([_up(low), skip], axis=-1), kernel, bias)
    out = winograd_conv3d([(low, True), (skip, False)], kernel, bias)
    assert jnp.abs(out - ref).max() <= TOL * jnp.abs(ref).max()


def test_refuses_odd_sizes(getkey):
    with pytest.raises(ValueError, match="even"):
        winograd_conv3d([(jnp.zeros((1, 6, 5, 4, 2)), False)], jnp.zeros((3, 3, 3, 2, 2)), jnp.zeros(2), slab=1)


def test_unet_winograd_reproduces_the_reference():
    ref = np.load(fixture_path("net_e64_mixed.npz"))
    unet = ilex.load(fixture_path("net_e64_mixed.h5")).at_hyper(float(ref["hyper"][0]))
    for k, (a, b) in enumerate([("half_mov", "half_fix"), ("half_fix", "half_mov")], 1):
        out = np.asarray(unet(ref[a][0], ref[b][0], algorithm="winograd"))
        expected = ref[f"unet_raw_{k}"][0]
        assert np.abs(out - expected).max() <= TOL * np.abs(expected).max()


def test_four_by_four_tiles_match_direct_within_their_looser_bound(getkey):
    # F(4,3)'s transforms carry constants up to 8 and down to 1/24, which amplify float32
    # rounding about tenfold over F(2,3) (measured 1.1e-5 here); hence its opt-in status and 1e-4.
    low, skip = jax.random.normal(getkey(), (1, 4, 6, 8, 8)), jax.random.normal(getkey(), (1, 8, 12, 16, 6))
    kernel, bias = jax.random.normal(getkey(), (3, 3, 3, 14, 4)), jax.random.normal(getkey(), (4,))
    ref = _direct(jnp.concatenate([_up(low), skip], axis=-1), kernel, bias)
    out = winograd_conv3d([(low, True), (skip, False)], kernel, bias, slab=1, m=4)
    assert jnp.abs(out - ref).max() <= 1e-4 * jnp.abs(ref).max()
    with pytest.raises(ValueError, match="multiples of 4"):
        winograd_conv3d([(jnp.zeros((1, 6, 8, 8, 2)), False)], jnp.zeros((3, 3, 3, 2, 2)), jnp.zeros(2), slab=1, m=4)
