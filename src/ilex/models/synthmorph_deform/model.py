"""SynthMorph's deformable network: a hypernetwork that generates the U-Net's kernels from λ.

Layout and numerics follow docs/spec-deform.md §2.3–§2.5 (HyperVxmJoint with `skip_affine=True`): λ goes raw
through `nb_hyp_layers` Dense+ReLU layers to an embedding h; every convolution forms its kernel
as `reshape(h @ Wk + bk, (3, 3, 3, cin, cout))` and its bias as `h @ Wb + bb`.
Parameters are stored in Keras' own layout and order, so FreeSurfer's h5 maps onto the leaves
one to one.
"""

from __future__ import annotations

from collections.abc import Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
from jax import lax
from jaxtyping import Array, Float

from ..._custom_types import AnyArray
from .unet import SynthMorphUNet, conv_channels, prepare_pair, unet_forward

__all__ = ["HyperConv3d", "HyperDense", "SynthMorphDeform", "SynthMorphUNet"]


def _glorot(key: jax.Array, shape: tuple[int, int]) -> Array:
    limit = jnp.sqrt(6.0 / (shape[0] + shape[1]))
    return jax.random.uniform(key, shape, minval=-limit, maxval=limit)


class HyperDense(eqx.Module):
    """Keras `Dense(units, activation='relu')`: `relu(x @ kernel + bias)`, kernel (in, out)."""

    kernel: Float[AnyArray, "fin fout"]
    bias: Float[AnyArray, " fout"]

    def __init__(self, fin: int, fout: int, *, key: jax.Array):
        self.kernel = _glorot(key, (fin, fout))
        self.bias = jnp.zeros((fout,))

    def __call__(self, x: AnyArray) -> Array:
        return jax.nn.relu(jnp.dot(x, self.kernel, precision=lax.Precision.HIGHEST) + self.bias)


class HyperConv3d(eqx.Module):
    """neurite's `HyperConvFromDense` (3-D, 3x3x3): projects h to a conv kernel and bias."""

    hyperkernel_kernel: Float[AnyArray, "units k"]
    hyperkernel_bias: Float[AnyArray, " k"]
    hyperbias_kernel: Float[AnyArray, "units cout"]
    hyperbias_bias: Float[AnyArray, " cout"]
    in_channels: int = eqx.field(static=True)
    out_channels: int = eqx.field(static=True)

    def __init__(self, units: int, in_channels: int, out_channels: int, *, key: jax.Array):
        k1, k2 = jax.random.split(key)
        size = 27 * in_channels * out_channels
        # Scaled so that generated kernels have fan-in variance, whatever the width.
        self.hyperkernel_kernel = jax.random.normal(k1, (units, size)) / jnp.sqrt(units * 27.0 * in_channels)
        self.hyperkernel_bias = jnp.zeros((size,))
        self.hyperbias_kernel = jax.random.normal(k2, (units, out_channels)) * 0.01
        self.hyperbias_bias = jnp.zeros((out_channels,))
        self.in_channels, self.out_channels = in_channels, out_channels

    def generate(self, h: Float[AnyArray, " units"]) -> tuple[Array, Array]:
        """The (kernel (3,3,3,cin,cout), bias (cout,)) for embedding `h`."""
        hi = lax.Precision.HIGHEST
        flat = jnp.dot(h, self.hyperkernel_kernel, precision=hi) + self.hyperkernel_bias
        kernel = flat.reshape(3, 3, 3, self.in_channels, self.out_channels)
        bias = jnp.dot(h, self.hyperbias_kernel, precision=hi) + self.hyperbias_bias
        return kernel, bias


class SynthMorphDeform(eqx.Module):
    """The SynthMorph deformable hyper-U-Net (`synthmorph.deform.3`), in JAX.

    `model(hyper, source, target)` returns the raw velocity (flow-conv output) on the input grid,
    in voxels of that grid, components by array axis. `source` and `target` are `(x, y, z, c)`
    or batched `(batch, x, y, z, c)`, each side divisible by `2**len(enc_nf)`; `hyper` is λ, a
    scalar or one value per batch element. In `mri_synthmorph` the inputs are the half-resolution
    images, and a registration uses `symmetric_velocity` (two passes), not one raw pass.
    """

    hyper_layers: tuple[HyperDense, ...]
    convs: tuple[HyperConv3d, ...]
    enc_nf: tuple[int, ...] = eqx.field(static=True)
    dec_nf: tuple[int, ...] = eqx.field(static=True)
    add_nf: tuple[int, ...] = eqx.field(static=True)
    flow_nf: int = eqx.field(static=True)
    nb_hyp_params: int = eqx.field(static=True)
    src_feats: int = eqx.field(static=True)
    trg_feats: int = eqx.field(static=True)

    def __init__(
        self,
        enc_nf: Sequence[int] = (256,) * 4,
        dec_nf: Sequence[int] = (256,) * 4,
        add_nf: Sequence[int] = (256,) * 4,
        flow_nf: int = 3,
        nb_hyp_layers: int = 4,
        nb_hyp_params: int = 1,
        nb_hyp_units: int = 32,
        src_feats: int = 1,
        trg_feats: int = 1,
        *,
        key: jax.Array,
    ):
        if nb_hyp_layers < 1 or nb_hyp_units < 1 or nb_hyp_params < 1:
            raise ValueError(
                f"hypernetwork sizes must be positive: nb_hyp_layers={nb_hyp_layers}, "
                f"nb_hyp_units={nb_hyp_units}, nb_hyp_params={nb_hyp_params}"
            )
        self.enc_nf, self.dec_nf, self.add_nf = tuple(enc_nf), tuple(dec_nf), tuple(add_nf)
        self.flow_nf, self.nb_hyp_params = int(flow_nf), int(nb_hyp_params)
        self.src_feats, self.trg_feats = int(src_feats), int(trg_feats)
        pairs = conv_channels(enc_nf, dec_nf, add_nf, flow_nf, self.src_feats + self.trg_feats)
        keys = jax.random.split(key, nb_hyp_layers + len(pairs))
        widths = [nb_hyp_params] + [nb_hyp_units] * nb_hyp_layers
        self.hyper_layers = tuple(HyperDense(widths[i], widths[i + 1], key=keys[i]) for i in range(nb_hyp_layers))
        self.convs = tuple(
            HyperConv3d(nb_hyp_units, cin, cout, key=k)
            for k, (cin, cout) in zip(keys[nb_hyp_layers:], pairs, strict=True)
        )

    @property
    def constructor_kwargs(self) -> dict:
        return {
            "enc_nf": list(self.enc_nf),
            "dec_nf": list(self.dec_nf),
            "add_nf": list(self.add_nf),
            "flow_nf": self.flow_nf,
            "nb_hyp_layers": len(self.hyper_layers),
            "nb_hyp_params": self.nb_hyp_params,
            "nb_hyp_units": int(self.hyper_layers[-1].kernel.shape[1]),
            "src_feats": self.src_feats,
            "trg_feats": self.trg_feats,
        }

    def embed(self, hyper: Float[AnyArray, ""] | float) -> Float[AnyArray, " units"]:
        """The hypernetwork embedding h of λ (used raw, no normalisation)."""
        h = jnp.broadcast_to(jnp.asarray(hyper, jnp.float32), (self.nb_hyp_params,))
        for layer in self.hyper_layers:
            h = layer(h)
        return h

    def generate(self, hyper: float | AnyArray) -> tuple[list[Array], list[Array]]:
        """The kernels and biases of all convolutions for one λ."""
        h = self.embed(hyper)
        kernels, biases = zip(*(conv.generate(h) for conv in self.convs), strict=False)
        return list(kernels), list(biases)

    def at_hyper(self, hyper: float) -> SynthMorphUNet:
        """A plain U-Net with this λ's kernels, generated once (identical outputs, 1/33 the size)."""
        kernels, biases = eqx.filter_jit(type(self).generate)(self, jnp.float32(hyper))
        kw = self.constructor_kwargs
        for name in ("nb_hyp_layers", "nb_hyp_params", "nb_hyp_units"):
            kw.pop(name)
        return SynthMorphUNet(**kw, hyper=float(hyper), key=jax.random.key(0), kernels=kernels, biases=biases)

    def __call__(self, hyper: float | AnyArray, source: AnyArray, target: AnyArray) -> Array:
        x = prepare_pair(source, target, self.src_feats, self.trg_feats)
        n_levels = len(self.enc_nf)

        def one(lam: AnyArray, pair: AnyArray) -> Array:
            kernels, biases = self.generate(lam)
            return unet_forward(list(zip(kernels, biases, strict=True)), n_levels, pair[None])[0]

        if x.ndim == 4:
            return one(jnp.asarray(hyper, jnp.float32), x)
        lam = jnp.broadcast_to(jnp.asarray(hyper, jnp.float32).reshape(-1), (x.shape[0],))
        return jax.vmap(one)(lam, x)
