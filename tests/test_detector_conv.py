"""The affine detector through the shared slab convolutions (models/conv) against XLA's direct
convolution (the oracle): pooled layers one by one, and whole detectors of FreeSurfer's structure
(four pooled levels, added convolutions, the ReLU feature head) at small widths."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ilex.models.conv import direct_conv3d, max_pool
from ilex.models.conv.gemm_conv import patch_conv3d, shift_conv3d
from ilex.models.conv.winograd import winograd_conv3d
from ilex.models.synthmorph_affine import SynthMorphAffine, barycenter, channel_weights
from ilex.registration.methods import as_method
from ilex.registration.methods.synthmorph import default_detector_algorithm


def _leaky(y):
    return jax.nn.leaky_relu(y, 0.2)


def _smooth(key, shape):
    # Noise blurred by a 2x2x2 box three times: smooth like an MR image, unlike white noise.
    x = jax.random.uniform(key, shape)
    for _ in range(3):
        x = (x + jnp.roll(x, 1, 0) + jnp.roll(x, 1, 1) + jnp.roll(x, 1, 2)) / 4
    return x


# One pooled layer differs from conv + LeakyReLU + pool by float32 rounding only: measured at most
# 3.2e-7 (patch), 4.4e-7 (shift), 3.7e-7 (F(2,3)) and 2.5e-6 (F(4,3)) of the output's maximum on
# these sizes (three draws); the bounds are about 5x.
LAYER_TOL = {"patch": 2e-6, "shift": 2e-6, "winograd2": 2e-6, "winograd4": 1.5e-5}


@pytest.mark.parametrize(
    "name,cin,cout,shape",
    [
        ("patch", 1, 16, (8, 12, 6)),
        ("patch", 2, 16, (12, 4, 8)),  # 12 planes: slabs of 4 (even) tile x
        ("shift", 16, 3, (6, 10, 4)),
        ("winograd2", 12, 16, (8, 6, 10)),
        ("winograd4", 12, 16, (8, 12, 4)),
    ],
)
def test_pooled_layers_match_conv_activation_pool(getkey, name, cin, cout, shape):
    x = jax.random.normal(getkey(), (1, *shape, cin))
    kernel, bias = jax.random.normal(getkey(), (3, 3, 3, cin, cout)), jax.random.normal(getkey(), (cout,))
    ref = max_pool(_leaky(direct_conv3d(x, kernel, bias)))
    out = {
        "patch": lambda: patch_conv3d(x, kernel, bias, activation=_leaky, pool=True),
        "shift": lambda: shift_conv3d(x, kernel, bias, activation=_leaky, pool=True),
        "winograd2": lambda: winograd_conv3d([(x, False)], kernel, bias, slab=1, activation=_leaky, m=2, pool=True),
        "winograd4": lambda: winograd_conv3d([(x, False)], kernel, bias, slab=1, activation=_leaky, m=4, pool=True),
    }[name]()
    assert out.shape == (1, *(s // 2 for s in shape), cout)
    assert jnp.abs(out - ref).max() <= LAYER_TOL[name] * jnp.abs(ref).max()


@pytest.mark.parametrize("tile_floats", [1, 13000])
def test_pooled_patch_layer_in_tiles_matches_whole_slabs(getkey, monkeypatch, tile_floats):
    # A pooled layer runs tile by tile along y (gemm_conv._TILE_FLOATS); with tiny budgets the 12
    # rows split into 6 tiles of 2 (1 float) or 2 tiles of 6 (13000 floats): the same sums as one
    # tile per slab, bit for bit, since every output's products are the same.
    from ilex.models.conv import gemm_conv

    x = jax.random.normal(getkey(), (1, 8, 12, 6, 1))
    kernel, bias = jax.random.normal(getkey(), (3, 3, 3, 1, 16)), jax.random.normal(getkey(), (16,))
    whole = patch_conv3d(x, kernel, bias, activation=_leaky, pool=True)
    assert gemm_conv._tile_rows(12, 6 * 8 * 43) == 12
    monkeypatch.setattr(gemm_conv, "_TILE_FLOATS", tile_floats)
    assert gemm_conv._tile_rows(12, 6 * 8 * 43) == (2 if tile_floats == 1 else 6)
    tiled = patch_conv3d(x, kernel, bias, activation=_leaky, pool=True)
    assert jnp.array_equal(tiled, whole)


def test_pooling_refuses_odd_sizes(getkey):
    x = jax.random.normal(getkey(), (1, 6, 5, 4, 1))
    with pytest.raises(ValueError, match="even spatial sizes"):
        patch_conv3d(x, jnp.zeros((3, 3, 3, 1, 8)), jnp.zeros(8), pool=True)


def _detector(key, widths: int, rigid: bool = False) -> SynthMorphAffine:
    model = SynthMorphAffine(enc_nf=(widths,) * 4, add_nf=(widths,) * 4, num_feat=8, rigid=rigid, key=key)
    # Raise the head's bias as bench/register_speed.py does, so that no feature map is empty.
    return eqx.tree_at(lambda m: m.convs[-1].bias, model, model.convs[-1].bias + 0.1)


# Whole detectors (9 layers) against the direct path, measured: features within 1.4e-7 (F(2,3))
# and 3.2e-7 (F(4,3)) of their maximum, barycentres within 1.6e-6 and 1.9e-6 voxel (of a
# 64-voxel grid), channel weights within 1.2e-7 of their maximum (64^3 and 32x48x64 inputs);
# the bounds are 5-7x these.
FEATURE_TOL = {"winograd": 1e-6, "winograd4": 2e-6}
CENTRE_TOL_VOX = 1e-5
WEIGHT_TOL = 6e-7


@pytest.mark.slow
@pytest.mark.parametrize("algorithm", ["winograd", "winograd4"])
@pytest.mark.parametrize("shape", [(64, 64, 64), (32, 48, 64)])
def test_detector_matches_direct(getkey, algorithm, shape):
    model = _detector(getkey(), 16)
    mov, fix = (_smooth(getkey(), (*shape, 1)) for _ in range(2))
    features = eqx.filter_jit(lambda x, algorithm: model.features(x, algorithm))
    ref = [np.asarray(features(x, algorithm="direct")) for x in (mov, fix)]
    out = [np.asarray(features(x, algorithm=algorithm)) for x in (mov, fix)]
    for a, b in zip(out, ref, strict=True):
        assert a.shape == b.shape == (*(s // 16 for s in shape), 8)
        assert np.abs(a - b).max() <= FEATURE_TOL[algorithm] * np.abs(b).max()
    for a, b in zip(out, ref, strict=True):
        assert np.abs(np.asarray(barycenter(a, 64)) - np.asarray(barycenter(b, 64))).max() <= CENTRE_TOL_VOX
    wa, wb = np.asarray(channel_weights(*out)), np.asarray(channel_weights(*ref))
    assert np.abs(wa - wb).max() <= WEIGHT_TOL * np.abs(wb).max()


@pytest.mark.slow
def test_slab_paths_never_hold_a_full_resolution_activation(getkey):
    # The point of pooling slab by slab: the first level's 64^3 x 16 output (16.8 MB in float32)
    # never exists. XLA's temporary buffers for the whole detector, measured: 18.9 MB direct,
    # 5.6 MB with either Winograd (slabs, and the 32^3 x 16 pooled output of the first level).
    model = _detector(getkey(), 16)
    x = jnp.zeros((64, 64, 64, 1))
    full = 64**3 * 16 * 4

    def temp_bytes(algorithm):
        compiled = jax.jit(lambda x: model.features(x, algorithm)).lower(x).compile()
        return compiled.memory_analysis().temp_size_in_bytes

    assert temp_bytes("direct") > full
    assert temp_bytes("winograd") < full / 2 and temp_bytes("winograd4") < full / 2


def test_slab_paths_do_not_call_xlas_convolution(getkey):
    model = _detector(getkey(), 16)
    x = jnp.zeros((32, 32, 32, 1))
    for algorithm, expected in (("direct", True), ("winograd", False), ("winograd4", False)):
        jaxpr = str(jax.make_jaxpr(lambda x, a=algorithm: model.features(x, a))(x))
        assert ("conv_general_dilated" in jaxpr) is expected, algorithm


def test_unknown_algorithm_is_refused(getkey):
    model = _detector(getkey(), 8)
    x = jnp.zeros((16, 16, 16, 1))
    with pytest.raises(ValueError, match="algorithm must be one of"):
        model.features(x, "fft")
    with pytest.raises(ValueError, match="algorithm must be one of"):
        model.fit(x, x, 16, algorithm="fft")


def test_methods_hand_their_algorithm_to_the_detector(getkey, monkeypatch):
    detector, seen = _detector(getkey(), 8), []
    original = SynthMorphAffine.fit

    def spy(self, *args, algorithm="direct", **kwargs):
        seen.append(algorithm)
        return original(self, *args, algorithm=algorithm, **kwargs)

    monkeypatch.setattr(SynthMorphAffine, "fit", spy)
    x = _smooth(getkey(), (32, 32, 32))
    as_method(detector, "affine", algorithm="winograd").estimate(x, x)
    as_method(detector, "rigid").estimate(x, x)
    assert seen == ["winograd", default_detector_algorithm()]
    assert default_detector_algorithm() == ("winograd" if jax.default_backend() == "cpu" else "direct")
