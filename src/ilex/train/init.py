"""New weights for a hypernetwork trained from scratch, scaled so that its U-Net starts out trainable.

`SynthMorphDeform`'s own random weights only need the right shapes (they are replaced by loaded
ones); generated from them, the kernels are ~50 times too small and a 13-layer U-Net's output is
~0 for every input. Here the dense layers are He-initialised with a positive bias (so λ = 0 still
gives a non-zero embedding h), and every projection is scaled by the embedding's norm at λ = 0.5
so that the generated kernels have He variance 2 / (27 c_in); the flow layer's kernels start with
VoxelMorph's N(0, 1e-5) spread, so the first warps are near the identity.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp

from ..models.synthmorph_deform import SynthMorphDeform

__all__ = ["FLOW_STD", "HYPER_BIAS", "initialise"]

HYPER_BIAS = 0.5
FLOW_STD = 1e-5  # voxelmorph's flow layer: RandomNormal(mean=0, stddev=1e-5)


def initialise(model: SynthMorphDeform, key: jax.Array, *, flow_std: float = FLOW_STD) -> SynthMorphDeform:
    """`model` with training-ready weights of the same shapes, drawn from `key`."""
    keys = iter(jax.random.split(key, len(model.hyper_layers) + len(model.convs)))
    layers = []
    for layer in model.hyper_layers:
        fin, fout = layer.kernel.shape
        kernel = jax.random.normal(next(keys), (fin, fout)) * jnp.sqrt(2.0 / fin)
        layers.append(
            eqx.tree_at(lambda d: (d.kernel, d.bias), layer, (kernel, jnp.full((fout,), HYPER_BIAS, jnp.float32)))
        )
    model = eqx.tree_at(lambda m: m.hyper_layers, model, tuple(layers))
    h = model.embed(0.5)
    norm2 = jnp.maximum(jnp.sum(h * h), 1e-12)
    convs = []
    for i, conv in enumerate(model.convs):
        units, size = conv.hyperkernel_kernel.shape
        std = flow_std if i == len(model.convs) - 1 else jnp.sqrt(2.0 / (27.0 * conv.in_channels))
        kernel = jax.random.normal(next(keys), (units, size)) * std / jnp.sqrt(norm2)
        zeros = (
            jnp.zeros_like(conv.hyperkernel_bias),
            jnp.zeros_like(conv.hyperbias_kernel),
            jnp.zeros_like(conv.hyperbias_bias),
        )
        convs.append(
            eqx.tree_at(
                lambda c: (c.hyperkernel_kernel, c.hyperkernel_bias, c.hyperbias_kernel, c.hyperbias_bias),
                conv,
                (kernel, *zeros),
            )
        )
    return eqx.tree_at(lambda m: m.convs, model, tuple(convs))
