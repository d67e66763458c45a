"""The network against the TensorFlow reference outputs (random weights, reduced widths)."""

import jax.numpy as jnp
import numpy as np
import pytest
from conftest import fixture_path

import ilex
from ilex.models.synthmorph_deform.velocity import half_resolution

FIXTURES = ["net_e32_uniform", "net_e64_mixed"]
# Summation order (XLA vs oneDNN) alone gives float32 rounding. Measured (jax 0.10.2, CPU):
# raw passes 3.2e-7 of their maximum, velocities 6.9e-5 voxels (e32) and 1.5e-5 (e64) with
# magnitudes up to 2 voxels; the bounds are about 6x and 4x that.
RAW_RTOL = 2e-6
SVF_ATOL = 3e-4  # voxels


@pytest.fixture(scope="module", params=FIXTURES)
def case(request):
    ref = np.load(fixture_path(f"{request.param}.npz"))
    return ilex.load(fixture_path(f"{request.param}.h5")), ref


def _rel(a, b):
    return float(np.abs(np.asarray(a) - b).max() / np.abs(b).max())


def test_raw_passes(case):
    model, ref = case
    lam = float(ref["hyper"][0])
    assert _rel(model(lam, ref["half_mov"][0], ref["half_fix"][0]), ref["unet_raw_1"][0]) <= RAW_RTOL
    assert _rel(model(lam, ref["half_fix"][0], ref["half_mov"][0]), ref["unet_raw_2"][0]) <= RAW_RTOL


@pytest.mark.slow
def test_batch_with_per_element_lambda(case):
    model, ref = case
    lam = float(ref["hyper"][0])
    src = np.concatenate([ref["half_mov"], ref["half_fix"], ref["half_mov"]])
    trg = np.concatenate([ref["half_fix"], ref["half_mov"], ref["half_fix"]])
    out = model(jnp.array([lam, lam, 0.9]), src, trg)
    assert _rel(out[0], ref["unet_raw_1"][0]) <= RAW_RTOL
    assert _rel(out[1], ref["unet_raw_2"][0]) <= RAW_RTOL
    # A different λ must give different kernels, so a different output.
    assert _rel(out[2], ref["unet_raw_1"][0]) > 1e-3
    np.testing.assert_allclose(
        out[2], model(0.9, ref["half_mov"][0], ref["half_fix"][0]), rtol=0, atol=1e-4 * np.abs(out[2]).max()
    )


def test_fixed_lambda_unet_is_identical(case):
    model, ref = case
    lam = float(ref["hyper"][0])
    unet = model.at_hyper(lam)
    assert isinstance(unet, ilex.SynthMorphUNet)
    np.testing.assert_array_equal(
        unet(ref["half_mov"][0], ref["half_fix"][0]), model(lam, ref["half_mov"][0], ref["half_fix"][0])
    )
    with pytest.raises(ValueError, match="generated for"):
        unet.at_hyper(lam + 0.1)


def test_symmetric_velocity(case):
    model, ref = case
    v = ilex.symmetric_velocity(model.at_hyper(float(ref["hyper"][0])), ref["half_mov"][0], ref["half_fix"][0])
    assert float(np.abs(np.asarray(v) - ref["svf_1"][0]).max()) <= SVF_ATOL


def test_half_resolution_is_even_subsample():
    ref = np.load(fixture_path("net_e32_uniform.npz"))
    np.testing.assert_array_equal(half_resolution(ref["mov"]), ref["half_mov"])


def test_bad_shapes_are_refused(getkey):
    model = ilex.SynthMorphDeform([4] * 2, [4] * 2, [4], key=getkey())
    with pytest.raises(ValueError, match="divisible"):
        model(0.5, np.zeros((6, 8, 8, 1)), np.zeros((6, 8, 8, 1)))
    with pytest.raises(ValueError, match="channels"):
        model(0.5, np.zeros((8, 8, 8, 2)), np.zeros((8, 8, 8, 1)))
    with pytest.raises(ValueError, match="one width per encoder level"):
        ilex.SynthMorphDeform([4] * 2, [4] * 3, [4], key=getkey())
