"""The training loss term by term against the reference's formulas, written out here in NumPy
(voxelmorph@ca28315 `voxelmorph/tf/losses.py` Grad and Dice, `layers.RescaleTransform`), and the
starting weights' step size under Adam (docs/train.md, "Against the reference")."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

from ilex.models.synthmorph_deform import SynthMorphDeform
from ilex.train import TrainSettings
from ilex.train.init import initialise
from ilex.train.objective import full_grid_displacement, pair_displacement, smoothness, soft_dice_loss
from ilex.train.step import optimiser_for, projection_scale


def _grad_l2(field: np.ndarray) -> float:
    """voxelmorph's Grad('l2').loss for one field: each axis's mean squared forward difference, averaged."""
    per_axis = [np.mean(np.square(np.diff(field, axis=a))) for a in range(3)]
    return float(sum(per_axis) / 3)


def test_smoothness_is_voxelmorphs_grad_l2():
    field = np.random.default_rng(0).normal(size=(6, 7, 8, 3)).astype(np.float32)
    assert np.isclose(float(smoothness(jnp.asarray(field))), _grad_l2(field), rtol=1e-5)


def test_soft_dice_is_voxelmorphs_dice():
    rng = np.random.default_rng(1)
    a = rng.uniform(size=(5, 6, 7, 4)).astype(np.float32)
    b = np.eye(4, dtype=np.float32)[rng.integers(0, 3, size=(5, 6, 7))]  # label 3 absent from b
    b[..., 3] = 0.0
    a[..., 3] = 0.0  # and from a: voxelmorph's divide_no_nan counts it as 0
    top = 2 * np.sum(a * b, axis=(0, 1, 2))
    bottom = np.sum(a + b, axis=(0, 1, 2))
    dice = np.where(bottom > 0, top / np.where(bottom > 0, bottom, 1), 0.0)
    assert np.isclose(float(soft_dice_loss(jnp.asarray(a), jnp.asarray(b))), 1.0 - dice.mean(), rtol=1e-5)


def test_full_grid_displacement_resizes_the_displacement():
    """F(y) = 2 d(y / 2), clamped: zero stays zero and a constant stays (twice) constant at every voxel,
    where the registration's composition leaves -0.5 on each axis's last slice."""
    n = 4
    assert float(jnp.max(jnp.abs(full_grid_displacement(jnp.zeros((n, n, n, 3)))))) == 0.0
    c = jnp.array([0.25, -0.5, 1.0], jnp.float32)
    full = np.asarray(full_grid_displacement(jnp.broadcast_to(c, (n, n, n, 3))))
    assert full.shape == (2 * n, 2 * n, 2 * n, 3)
    np.testing.assert_allclose(full, np.broadcast_to(2 * np.asarray(c), full.shape), atol=1e-6)
    # A ramp along x, d(x) = (x, 0, 0): F(y) = (y, 0, 0) inside, 2 (n - 1) on the last slice (clamped).
    ramp = jnp.zeros((n, n, n, 3)).at[..., 0].set(jnp.arange(n, dtype=jnp.float32)[:, None, None])
    full = np.asarray(full_grid_displacement(ramp))[:, 0, 0, 0]
    np.testing.assert_allclose(full, [0, 1, 2, 3, 4, 5, 6, 6], atol=1e-5)


def test_an_identity_model_costs_no_smoothness():
    """A model whose velocity is 0 gives a zero field and a zero smoothness term; with the old
    composition it cost 0.25 / (3 (E - 1)) (one -0.5 slice per axis), 0.0027 at E = 32."""
    model = initialise(
        SynthMorphDeform((4,) * 4, (4,) * 4, (4,) * 4, nb_hyp_units=8, key=jax.random.key(0)),
        jax.random.key(1),
        flow_std=0.0,
    )
    images = jax.random.uniform(jax.random.key(2), (2, 32, 32, 32, 1))
    disp, velocity = pair_displacement(model, jnp.float32(0.5), images[0], images[1], 5)
    assert float(jnp.max(jnp.abs(velocity))) == 0.0
    assert float(jnp.max(jnp.abs(disp))) == 0.0
    assert float(smoothness(disp)) == 0.0


def test_adams_first_step_moves_generated_kernels_by_twice_the_rate():
    """A generated kernel is `K = W h + b`, h >= 0. Adam's first update is `-rate` on every weight whose
    gradient is positive, so with the projections' step scaled by `1 / |h|_1` (projection_scale) every
    entry of K moves by exactly `rate (|h|_1 / |h|_1 + 1) = 2 rate`; unscaled, by `rate (|h|_1 + 1)`,
    40 rates for ilex's starting weights, where voxelmorph's Glorot/zero-bias hypernetwork has
    |h(½)|_1 of about 0.5 (written out below)."""
    model = initialise(
        SynthMorphDeform((4,) * 4, (4,) * 4, (4,) * 4, nb_hyp_units=32, key=jax.random.key(0)), jax.random.key(1)
    )
    params, static = eqx.partition(model, eqx.is_inexact_array)
    l1 = float(np.sum(np.abs(np.asarray(model.embed(0.5)))))
    assert l1 > 10  # ilex's embedding: the case the scale is for
    scale = projection_scale(model)
    assert np.isclose(scale, 1.0 / l1, rtol=1e-6)
    grads = jax.tree.map(jnp.ones_like, params)
    grads = eqx.tree_at(lambda m: m.hyper_layers, grads, replace_fn=lambda t: jax.tree.map(jnp.zeros_like, t))
    rate = 1e-3
    for factor, expected in ((scale, 2 * rate), (1.0, rate * (l1 + 1))):
        optimiser = optimiser_for(TrainSettings(learning_rate=rate), factor)
        updates, _ = optimiser.update(grads, optimiser.init(params), params)
        moved = eqx.combine(optax.apply_updates(params, updates), static)
        for before, after in zip(model.generate(0.5)[0], moved.generate(0.5)[0], strict=True):
            np.testing.assert_allclose(np.asarray(before - after), expected, rtol=1e-3)

    # voxelmorph's hypernetwork at its Keras defaults: Dense(32, relu) x 4, Glorot-uniform kernels, zero biases.
    rng = np.random.default_rng(0)
    norms = []
    for _ in range(200):
        h = np.array([0.5])
        for fan_in in (1, 32, 32, 32):
            limit = np.sqrt(6.0 / (fan_in + 32))
            h = np.maximum(h @ rng.uniform(-limit, limit, (fan_in, 32)), 0.0)
        norms.append(np.abs(h).sum())
    assert 0.2 < np.median(norms) < 1.0
