"""One optimisation step: draw a batch on device, average the pairs' losses, one Adam update.

The batch is split over every local device (`jax.sharding`: the batch axis sharded, the weights
replicated); XLA averages the gradients across devices because the loss is the batch mean.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from .data import TrainingData
from .objective import pair_loss
from .settings import TrainSettings

__all__ = ["StepOutput", "batch_loss", "device_mesh", "make_step", "optimiser_for", "projection_scale"]


class StepOutput(eqx.Module):
    """A step's figures, averaged over the batch."""

    loss: jax.Array
    data: jax.Array
    smoothness: jax.Array
    hyper: jax.Array


def device_mesh(batch_size: int, devices=None) -> Mesh:
    """A one-axis mesh ("batch") over the local devices that divide `batch_size` evenly."""
    devices = list(devices if devices is not None else jax.local_devices())
    n = len(devices)
    while batch_size % n:
        n -= 1
    return Mesh(np.array(devices[:n]), ("batch",))


def batch_loss(params, static, data: TrainingData, keys: jax.Array, settings: TrainSettings, mesh: Mesh | None = None):
    """The mean loss over the pairs drawn from `keys`, with the batch's figures."""
    model = eqx.combine(params, static)
    batch = jax.vmap(data.sample)(keys)
    if mesh is not None and mesh.size > 1:
        batch = jax.lax.with_sharding_constraint(batch, NamedSharding(mesh, PartitionSpec("batch")))

    def one(sample):
        return pair_loss(
            model,
            sample.hyper,
            sample.source,
            sample.target,
            sample.source_labels,
            sample.target_labels,
            steps=settings.int_steps,
            data=settings.data,
            remat=settings.use_remat,
        )

    losses, (d, s) = jax.vmap(one)(batch)
    return jnp.mean(losses), StepOutput(jnp.mean(losses), jnp.mean(d), jnp.mean(s), jnp.mean(batch.hyper))


def projection_scale(model) -> float:
    """`1 / max(1, |h(½)|₁)`: the factor on Adam's step for the hypernetwork's projection kernels.

    A generated kernel is `K = W h + b`. Adam moves every weight by about its rate, so through `W`
    it moves `K` by up to `rate · |h|₁`. voxelmorph's hypernetwork (Keras' Glorot kernels, zero
    biases) has `|h(λ)|₁ ≈ λ` (median 1.0 at λ = 1 over draws), so there Adam's rate is about the
    step the U-Net's kernels take; `ilex.train.init`'s embedding has `|h(½)|₁ = 39`, which made
    1e-4 act like 4e-3 on the U-Net and 1e-3 diverge within 10 steps. Scaling the projections'
    step by this factor gives back the reference's meaning of the rate (docs/train.md).
    """
    return 1.0 / max(1.0, float(jnp.sum(jnp.abs(model.embed(0.5)))))


def _projection_labels(params):
    """ "projections" for every convolution's `hyperkernel_kernel` and `hyperbias_kernel`, "weights" else."""
    labels = jax.tree.map(lambda _: "weights", params)
    return eqx.tree_at(
        lambda m: [c.hyperkernel_kernel for c in m.convs] + [c.hyperbias_kernel for c in m.convs],
        labels,
        replace_fn=lambda _: "projections",
    )


def optimiser_for(settings: TrainSettings, scale: float = 1.0) -> optax.GradientTransformation:
    """Adam at the run's learning rate (voxelmorph's scripts: Adam, 1e-4), its step on the
    hypernetwork's projection kernels times `scale` (`projection_scale` of the starting model)."""
    return _adam(settings.learning_rate, float(scale))


@functools.lru_cache(maxsize=8)
def _adam(learning_rate: float, scale: float) -> optax.GradientTransformation:
    if scale == 1.0:
        return optax.adam(learning_rate)
    return optax.multi_transform(
        {"weights": optax.adam(learning_rate), "projections": optax.adam(learning_rate * scale)}, _projection_labels
    )


def make_step(static, settings: TrainSettings, mesh: Mesh | None, scale: float = 1.0) -> Callable:
    """The compiled step of this model and recipe: runs that differ only in length share one.

    `scale`: `optimiser_for`'s factor on the projections' step."""
    recipe = dataclasses.replace(settings, steps=1, checkpoint_every=1, log_every=0, validate=None, resume=False)
    return _make_step(static, recipe, mesh, float(scale))


@functools.lru_cache(maxsize=8)
def _make_step(static, settings: TrainSettings, mesh: Mesh | None, scale: float) -> Callable:
    """`step(params, opt_state, data, run_key, index) -> (params, opt_state, StepOutput)`, compiled once.

    The pairs of step `index` come from `fold_in(run_key, index)`, so a resumed run draws what the
    uninterrupted one would have.
    """
    optimiser = optimiser_for(settings, scale)
    replicated = NamedSharding(mesh, PartitionSpec()) if mesh is not None else None

    def step(params, opt_state, data: TrainingData, run_key, index):
        keys = jax.random.split(jax.random.fold_in(run_key, index), settings.batch_size)
        grad_fn = jax.value_and_grad(batch_loss, has_aux=True)
        (_, out), grads = grad_fn(params, static, data, keys, settings, mesh)
        updates, opt_state = optimiser.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        if replicated is not None and mesh.size > 1:
            params = jax.lax.with_sharding_constraint(params, replicated)
        return params, opt_state, out

    # Donating the old weights and moments halves their memory on accelerators; CPU buffers are not donated.
    donate = (0, 1) if jax.default_backend() != "cpu" else ()
    return jax.jit(step, donate_argnums=donate)
