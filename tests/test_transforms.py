"""Integration, upsampling and interpolation against oracles that need no downloads.

The fixture net_e32_uniform.npz holds TensorFlow's (VoxelMorph's) own fields at extent 32:
the symmetric velocity `svf_1` at half resolution (16^3) and the full-resolution forward and
backward warps `fw`, `bw` (32^3) it integrated (7 steps) and upsampled.
"""

import jax.numpy as jnp
import numpy as np
import pytest
from conftest import fixture_path
from scipy.ndimage import map_coordinates

from ilex.transforms import interpolate_clamped, scaling_and_squaring, upsample_half_field

# Measured: ilex's fw and bw from TensorFlow's svf_1 are within 1.9e-6 voxels of TensorFlow's
# (field magnitudes up to 3.4 voxels); the bound is about 5x that.
FIELD_ATOL = 1e-5  # voxels
# Measured: trilinear float32 against scipy's float64 map_coordinates, 2.6e-7 on unit-variance
# values; the bound is about 4x that.
INTERP_ATOL = 1e-6


@pytest.fixture(scope="module")
def ref():
    return np.load(fixture_path("net_e32_uniform.npz"))


@pytest.mark.parametrize(("name", "sign"), [("fw", 1.0), ("bw", -1.0)])
def test_integrated_and_upsampled_fields_match_tensorflow(ref, name, sign):
    velocity = jnp.asarray(sign * ref["svf_1"][0])
    ours = np.asarray(upsample_half_field(scaling_and_squaring(velocity, 7)))
    assert ours.shape == ref[name][0].shape == (32, 32, 32, 3)
    assert np.abs(ref[name][0]).max() > 1.0  # a field worth comparing
    assert np.abs(ours - ref[name][0]).max() <= FIELD_ATOL


def test_scaling_and_squaring_of_a_constant_field_is_that_field():
    # A translation is its own exponential: u(x + u) = u everywhere (clamping keeps it constant).
    v = jnp.broadcast_to(jnp.array([0.7, -1.2, 0.3], jnp.float32), (8, 8, 8, 3))
    np.testing.assert_allclose(np.asarray(scaling_and_squaring(v, 6)), np.asarray(v), atol=1e-6)


def test_upsampling_a_constant_field_doubles_it_inside():
    d = np.array([0.25, -0.5, 1.0], np.float32)
    full = np.asarray(upsample_half_field(jnp.broadcast_to(jnp.asarray(d), (6, 6, 6, 3))))
    np.testing.assert_allclose(full[:-1, :-1, :-1], np.broadcast_to(2 * d, (11, 11, 11, 3)), atol=1e-6)
    # On the last slice of each axis y/2 is clamped to the half grid's end: -0.5 + 2 d there.
    np.testing.assert_allclose(full[-1, 0, 0, 0], -0.5 + 2 * d[0], atol=1e-6)


@pytest.mark.parametrize("channels", [None, 3])
def test_interpolate_clamped_matches_scipy_nearest_mode(channels):
    # scipy's mode="nearest" replicates the border, which is clamping the coordinate into [0, N-1].
    rng = np.random.default_rng(0)
    shape = (9, 7, 8) if channels is None else (9, 7, 8, channels)
    volume = rng.normal(size=shape).astype(np.float32)
    coords = rng.uniform(-3, 11, (5000, 3)).astype(np.float32)  # a fifth or so outside the grid
    ours = np.asarray(interpolate_clamped(jnp.asarray(volume), jnp.asarray(coords)))
    stack = volume[..., None] if channels is None else volume
    oracle = np.stack(
        [
            map_coordinates(stack[..., c].astype(np.float64), coords.T.astype(np.float64), order=1, mode="nearest")
            for c in range(stack.shape[-1])
        ],
        -1,
    )
    oracle = oracle[..., 0] if channels is None else oracle
    assert np.abs(ours - oracle).max() <= INTERP_ATOL


def test_compose_native_is_the_matrix_chain_for_a_constant_field():
    # Analytic: with a constant network field u, target voxel p goes to B (A p + u) - p, where A
    # maps target voxels into the network grid and B network voxels into the source image.
    from ilex.transforms import compose_native

    a = np.array([[0.5, 0.0, 0.0, 2.0], [0.0, 0.0, 0.5, 1.0], [0.0, -0.5, 0.0, 9.0], [0, 0, 0, 1]])
    b = np.array([[1.2, 0.1, 0.0, -3.0], [0.0, 0.9, 0.0, 4.0], [0.0, 0.0, 1.1, 0.5], [0, 0, 0, 1]])
    u = np.array([0.3, -0.4, 0.25], np.float32)
    field = jnp.broadcast_to(jnp.asarray(u), (12, 12, 12, 3))
    ours = np.asarray(compose_native(field, a, b, (10, 10, 10)))
    p = np.stack(np.meshgrid(*[np.arange(10.0)] * 3, indexing="ij"), -1)
    expected = (p @ a[:3, :3].T + a[:3, 3] + u) @ b[:3, :3].T + b[:3, 3] - p
    np.testing.assert_allclose(ours, expected, atol=1e-5)


@pytest.mark.parametrize("name", ["net_e32_uniform", "net_e64_mixed"])
def test_one_path_gives_deforms_upsampling_bit_for_bit(name):
    """The pipeline has no deform special case: its general path (post = scale 2, no pre) gives
    the reference's half-to-full composition exactly, for both directions of a real velocity."""
    from conftest import fixture_path

    from ilex.registration.methods.base import NetworkTransform
    from ilex.registration.pipeline import network_fields
    from ilex.transforms.compose import upsample_half_field
    from ilex.transforms.integrate import scaling_and_squaring

    velocity = jnp.asarray(np.load(fixture_path(f"{name}.npz"))["svf_1"][0])
    fw, bw = network_fields(NetworkTransform(velocity=velocity, scale=2), 5)
    assert jnp.array_equal(fw, upsample_half_field(scaling_and_squaring(velocity, 5)))
    assert jnp.array_equal(bw, upsample_half_field(scaling_and_squaring(-velocity, 5)))


def test_composing_on_the_network_grid_is_compose_native_without_interpolation():
    # The pipeline's shortcut where the target grid is the network grid (the optimiser's, on an
    # isotropic fixed image) must give what the general composition gives there.
    from ilex.registration.pipeline import _on_network_grid
    from ilex.transforms import compose_native, matrix_after_field

    rng = np.random.default_rng(3)
    field = rng.normal(0, 2, (7, 8, 9, 3)).astype(np.float32)
    to_source = np.eye(4, dtype=np.float32)
    to_source[:3] += rng.normal(0, 0.1, (3, 4)).astype(np.float32)
    expected = np.asarray(compose_native(field, np.eye(4, dtype=np.float32), to_source, (7, 8, 9)))
    np.testing.assert_allclose(np.asarray(matrix_after_field(to_source, field)), expected, atol=1e-5)
    assert _on_network_grid(np.eye(4), (7, 8, 9), (7, 8, 9))
    shifted = np.eye(4)
    shifted[0, 3] = 0.5
    assert not _on_network_grid(shifted, (7, 8, 9), (7, 8, 9))
    assert not _on_network_grid(np.eye(4), (7, 8, 9), (7, 8, 10))
