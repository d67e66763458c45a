"""Winograd F(2,3) convolution against XLA's direct convolution (the oracle), and the U-Net both ways."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import fixture_path
from jax import lax

import ilex
from ilex.models.conv.winograd import winograd_conv3d

# One F(2,3) layer in float32 differs from the direct sum by a few ulps of its largest terms:
# 1e-5 of the output's maximum leaves a 10x margin over what we measure (~5e-7).
TOL = 1e-5


def _direct(x, kernel, bias):
    dn = ("NDHWC", "DHWIO", "NDHWC")
    return (
        lax.conv_general_dilated(x, kernel, (1, 1, 1), "SAME", dimension_numbers=dn, precision=lax.Precision.HIGHEST)
        + bias[None, None, None, None, :]
    )


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


@pytest.mark.slow
@pytest.mark.parametrize("algorithm", ["winograd", "winograd4"])
def test_unet_winograd_reproduces_the_reference(algorithm):
    # Both measure ~1.6e-7 on this narrow (16-channel) network; wide layers round more (see the
    # module docstring of winograd.py and bench/register_speed.py --what accuracy).
    ref = np.load(fixture_path("net_e64_mixed.npz"))
    unet = ilex.load(fixture_path("net_e64_mixed.h5")).at_hyper(float(ref["hyper"][0]))
    for k, (a, b) in enumerate([("half_mov", "half_fix"), ("half_fix", "half_mov")], 1):
        out = np.asarray(unet(ref[a][0], ref[b][0], algorithm=algorithm))
        expected = ref[f"unet_raw_{k}"][0]
        assert np.abs(out - expected).max() <= TOL * np.abs(expected).max()


def test_four_by_four_tiles_match_direct_within_their_looser_bound(getkey):
    # F(4,3)'s transforms carry constants up to 8 and down to 1/15, which amplify float32
    # rounding over F(2,3) (measured 4e-6 to 7e-6 here over five seeds); 1e-4 is the bound issue 4 sets against a plain
    # float32 evaluation.
    low, skip = jax.random.normal(getkey(), (1, 4, 6, 8, 8)), jax.random.normal(getkey(), (1, 8, 12, 16, 6))
    kernel, bias = jax.random.normal(getkey(), (3, 3, 3, 14, 4)), jax.random.normal(getkey(), (4,))
    ref = _direct(jnp.concatenate([_up(low), skip], axis=-1), kernel, bias)
    out = winograd_conv3d([(low, True), (skip, False)], kernel, bias, slab=1, m=4)
    assert jnp.abs(out - ref).max() <= 1e-4 * jnp.abs(ref).max()
    with pytest.raises(ValueError, match="multiples of 4"):
        winograd_conv3d([(jnp.zeros((1, 6, 8, 8, 2)), False)], jnp.zeros((3, 3, 3, 2, 2)), jnp.zeros(2), slab=1, m=4)


@pytest.mark.slow
@pytest.mark.parametrize("m", [2, 4])
def test_writing_over_the_input_gives_the_same_result(getkey, m):
    # cin == cout: the output is written over the (dying) input slab by slab, one plane of the
    # previous slab kept aside; several slabs so that every hand-over is exercised.
    x = jax.random.normal(getkey(), (1, 16, 8, 12, 8))
    kernel, bias = jax.random.normal(getkey(), (3, 3, 3, 8, 8)), jax.random.normal(getkey(), (8,))
    ref = _direct(x, kernel, bias)
    out = jax.jit(lambda x: winograd_conv3d([(x * 1.0, False)], kernel, bias, slab=1, m=m))(x)
    bound = TOL if m == 2 else 1e-4
    assert jnp.abs(out - ref).max() <= bound * jnp.abs(ref).max()
    # ... and with an upsampled part beside the one written over (the decoder's layers).
    low = jax.random.normal(getkey(), (1, 8, 4, 6, 4))
    kernel2 = jax.random.normal(getkey(), (3, 3, 3, 12, 8))
    ref2 = _direct(jnp.concatenate([_up(low), x], axis=-1), kernel2, bias)
    out2 = jax.jit(lambda low, x: winograd_conv3d([(low, True), (x * 1.0, False)], kernel2, bias, slab=1, m=m))(low, x)
    assert jnp.abs(out2 - ref2).max() <= bound * jnp.abs(ref2).max()


@pytest.mark.parametrize("cin,cout,x", [(2, 16, 8), (2, 16, 6), (16, 3, 20), (16, 3, 7)])
def test_narrow_layers_as_one_product_match_direct(getkey, cin, cout, x):
    from ilex.models.conv.gemm_conv import patch_conv3d, shift_conv3d

    inp = jax.random.normal(getkey(), (1, x, 10, 6, cin))
    kernel, bias = jax.random.normal(getkey(), (3, 3, 3, cin, cout)), jax.random.normal(getkey(), (cout,))
    ref = _direct(inp, kernel, bias)
    conv = patch_conv3d if cin < cout else shift_conv3d
    out = conv(inp, kernel, bias, activation=lambda y: jnp.maximum(0.2 * y, y))
    assert jnp.abs(out - jnp.maximum(0.2 * ref, ref)).max() <= TOL * jnp.abs(ref).max()


def test_parts_on_different_grids_are_refused(getkey, without_annotation_checks):
    # A skip of the wrong size was silently cropped; it must be named instead.
    kernel, bias = jax.random.normal(getkey(), (3, 3, 3, 16, 8)), jnp.zeros(8)
    low = jax.random.normal(getkey(), (1, 4, 4, 4, 8))
    wrong_skip = jax.random.normal(getkey(), (1, 8, 8, 12, 8))
    with pytest.raises(ValueError, match="one output grid"):
        winograd_conv3d([(low, True), (wrong_skip, False)], kernel, bias)
    with pytest.raises(ValueError, match="bias"):
        winograd_conv3d([(low, True), (wrong_skip[..., :8, :], False)], kernel, jnp.zeros(7))


def test_slabs_must_tile_the_axis():
    from ilex.models.conv.slabs import fill_slabs

    x = jnp.ones((1, 10, 2, 2, 1))
    with pytest.raises(ValueError, match="planes=4 must be a positive divisor of the output's x size 10"):
        fill_slabs(lambda i, _: jnp.ones((1, 4, 2, 2, 1)), x, x.shape, 4)


@pytest.mark.slow
def test_unet_refuses_kernels_of_the_wrong_count_or_shape(getkey):
    widths = {"enc_nf": [4, 4], "dec_nf": [4, 4], "add_nf": [4], "flow_nf": 3}
    unet = ilex.SynthMorphUNet(**widths, key=getkey())
    kernels = [c.kernel for c in unet.convs]
    biases = [c.bias for c in unet.convs]
    with pytest.raises(ValueError, match="has 6 convolutions, got 5 kernels"):
        ilex.SynthMorphUNet(**widths, key=getkey(), kernels=kernels[:-1], biases=biases[:-1])
    with pytest.raises(ValueError, match=r"convolution 1: expected kernel \(3, 3, 3, 4, 4\)"):
        ilex.SynthMorphUNet(**widths, key=getkey(), kernels=[kernels[0], kernels[0], *kernels[2:]], biases=biases)
    with pytest.raises(ValueError, match="together"):
        ilex.SynthMorphUNet(**widths, key=getkey(), kernels=kernels)
