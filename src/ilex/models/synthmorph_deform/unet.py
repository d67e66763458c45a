"""The SynthMorph U-Net with fixed kernels, and the topology both model classes share.

`SynthMorphUNet` is what the hypernetwork produces for one value of λ: 13 plain 3x3x3
convolutions. Generating the kernels once and keeping this module is what `at_hyper` and the
fixed-λ bundle do, so that a registration never pays for the 877 M hypernetwork parameters.
"""

from __future__ import annotations

from collections.abc import Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from ..._custom_types import AnyArray
from ..conv import check_algorithm, conv_layer, max_pool

_LEAKY_SLOPE = 0.2  # Keras LeakyReLU(0.2) = max(0.2 x, x)


def conv_channels(
    enc_nf: Sequence[int],
    dec_nf: Sequence[int],
    add_nf: Sequence[int],
    flow_nf: int,
    in_channels: int,
) -> list[tuple[int, int]]:
    """(cin, cout) of every convolution, in execution (and Keras weight) order.

    Decoder level i (i >= 1) sees `[upsampled previous, encoder skip]`, the first add-conv sees
    `[upsampled last decoder, first encoder output]` (docs/spec-deform.md §2.5).
    """
    enc_nf, dec_nf, add_nf = list(enc_nf), list(dec_nf), list(add_nf)
    if not enc_nf or len(dec_nf) != len(enc_nf):
        raise ValueError(f"dec_nf must have one width per encoder level: enc_nf={enc_nf}, dec_nf={dec_nf}")
    if any(int(w) < 1 for w in enc_nf + dec_nf + add_nf) or flow_nf < 1:
        raise ValueError(f"widths must be positive: {enc_nf}, {dec_nf}, {add_nf}, {flow_nf}")
    pairs = []
    cin = in_channels
    for w in enc_nf:
        pairs.append((cin, w))
        cin = w
    skips = enc_nf[::-1]
    for i, w in enumerate(dec_nf):
        pairs.append((cin, w))
        cin = w + skips[i]
    for w in add_nf:
        pairs.append((cin, w))
        cin = w
    pairs.append((cin, flow_nf))
    return pairs


def _leaky_relu(x: AnyArray) -> Array:
    return jnp.maximum(_LEAKY_SLOPE * x, x)


def unet_forward(
    kernels: Sequence[tuple[Array, Array]],
    n_levels: int,
    x: Float[AnyArray, "n x y z c"],
    algorithm: str = "direct",
) -> Float[AnyArray, "n x y z f"]:
    """Run the U-Net of docs/spec-deform.md §2.5 on a batch `x`, given the (kernel, bias) of every conv.

    `algorithm` "direct" is XLA's convolution; "winograd" and "winograd4" compute the wide
    layers by Winograd F(2,3) and F(4,3) in slabs (models/conv/winograd.py) without materialising
    the decoder's upsampled concatenations, and the first and last layers as wide matrix products
    (models/conv/gemm_conv.py): the same results up to float32 rounding (the output within ~1e-5 of the
    direct evaluation, F(4,3) about twice F(2,3)), with far less arithmetic and memory on CPU.
    """
    check_algorithm(algorithm)
    size = x.shape[1:4]
    if any(s % (2**n_levels) for s in size):
        raise ValueError(f"U-Net input size {size} must be divisible by 2**{n_levels} = {2**n_levels}")
    if len(kernels) < 2 * n_levels + 1:
        raise ValueError(
            f"a U-Net of {n_levels} levels needs at least {2 * n_levels + 1} (kernel, bias) pairs, got {len(kernels)}"
        )
    layers = iter(kernels)
    skips = []
    parts = [(x, False)]
    for _ in range(n_levels):
        x = conv_layer(parts, *next(layers), algorithm, _leaky_relu)
        skips.append(x)
        parts = [(max_pool(x), False)]
    for _ in range(n_levels):
        x = conv_layer(parts, *next(layers), algorithm, _leaky_relu)
        parts = [(x, True), (skips.pop(), False)]  # [upsample(x), skip], concatenated lazily
    remaining = list(layers)
    for kernel, bias in remaining[:-1]:
        parts = [(conv_layer(parts, kernel, bias, algorithm, _leaky_relu), False)]
    return conv_layer(parts, *remaining[-1], algorithm)


def prepare_pair(source: AnyArray, target: AnyArray, src_feats: int, trg_feats: int) -> Array:
    """The network input: `source` and `target` (x, y, z, c) or (batch, x, y, z, c), float32,
    joined along the channel axis. Raises `ValueError` when their grids or channel counts
    (`src_feats`, `trg_feats`) do not fit the network."""
    source, target = jnp.asarray(source, jnp.float32), jnp.asarray(target, jnp.float32)
    if source.ndim != target.ndim or source.shape[:-1] != target.shape[:-1]:
        raise ValueError(f"source and target must share a grid: {source.shape} vs {target.shape}")
    if source.ndim not in (4, 5):
        raise ValueError(f"expected (x, y, z, c) or (batch, x, y, z, c) arrays, got shape {source.shape}")
    if source.shape[-1] != src_feats or target.shape[-1] != trg_feats:
        raise ValueError(
            f"expected {src_feats} source and {trg_feats} target channels, "
            f"got {source.shape[-1]} and {target.shape[-1]}"
        )
    return jnp.concatenate([source, target], axis=-1)


class Conv3d(eqx.Module):
    """One generated 3x3x3 convolution: kernel (3, 3, 3, cin, cout) in DHWIO order, bias (cout,)."""

    kernel: Float[AnyArray, "3 3 3 cin cout"]
    bias: Float[AnyArray, " cout"]


class SynthMorphUNet(eqx.Module):
    """The SynthMorph U-Net for one fixed λ: plain convolutions, no hypernetwork.

    Calling it with a (source, target) pair returns the raw velocity, the flow convolution's
    output, on the input grid in voxels of that grid (components by array axis).
    Arrays are channels last, `(x, y, z, c)` or batched `(batch, x, y, z, c)`.
    """

    convs: tuple[Conv3d, ...]
    enc_nf: tuple[int, ...] = eqx.field(static=True)
    dec_nf: tuple[int, ...] = eqx.field(static=True)
    add_nf: tuple[int, ...] = eqx.field(static=True)
    flow_nf: int = eqx.field(static=True)
    src_feats: int = eqx.field(static=True)
    trg_feats: int = eqx.field(static=True)
    hyper: float = eqx.field(static=True)

    def __init__(
        self,
        enc_nf: Sequence[int],
        dec_nf: Sequence[int],
        add_nf: Sequence[int],
        flow_nf: int = 3,
        src_feats: int = 1,
        trg_feats: int = 1,
        hyper: float = 0.5,
        *,
        key: jax.Array,
        kernels: Sequence[Array] | None = None,
        biases: Sequence[Array] | None = None,
    ):
        self.enc_nf, self.dec_nf, self.add_nf = tuple(enc_nf), tuple(dec_nf), tuple(add_nf)
        self.flow_nf, self.src_feats, self.trg_feats = int(flow_nf), int(src_feats), int(trg_feats)
        self.hyper = float(hyper)
        pairs = conv_channels(enc_nf, dec_nf, add_nf, flow_nf, self.src_feats + self.trg_feats)
        if (kernels is None) != (biases is None):
            raise ValueError("kernels and biases must be given together (or neither, for random weights)")
        if kernels is None:
            keys = jax.random.split(key, len(pairs))
            kernels = [
                jax.random.normal(k, (3, 3, 3, cin, cout)) / jnp.sqrt(27.0 * cin)
                for k, (cin, cout) in zip(keys, pairs, strict=True)
            ]
            biases = [jnp.zeros((cout,)) for _, cout in pairs]
        if len(kernels) != len(pairs) or len(biases) != len(pairs):
            raise ValueError(
                f"this U-Net has {len(pairs)} convolutions, got {len(kernels)} kernels and {len(biases)} biases"
            )
        self.convs = tuple(
            Conv3d(jnp.asarray(k, jnp.float32), jnp.asarray(b, jnp.float32))
            for k, b in zip(kernels, biases, strict=True)
        )

    def __check_init__(self):
        # Also reached by eqx.tree_at and eval_shape templates, not only by __init__.
        pairs = conv_channels(self.enc_nf, self.dec_nf, self.add_nf, self.flow_nf, self.src_feats + self.trg_feats)
        if len(self.convs) != len(pairs):
            raise ValueError(f"this U-Net has {len(pairs)} convolutions, got {len(self.convs)}")
        for i, (conv, (cin, cout)) in enumerate(zip(self.convs, pairs, strict=True)):
            if tuple(conv.kernel.shape) != (3, 3, 3, cin, cout) or tuple(conv.bias.shape) != (cout,):
                raise ValueError(
                    f"convolution {i}: expected kernel (3, 3, 3, {cin}, {cout}) and bias ({cout},), "
                    f"got {tuple(conv.kernel.shape)} and {tuple(conv.bias.shape)}"
                )

    @property
    def constructor_kwargs(self) -> dict:
        return {
            "enc_nf": list(self.enc_nf),
            "dec_nf": list(self.dec_nf),
            "add_nf": list(self.add_nf),
            "flow_nf": self.flow_nf,
            "src_feats": self.src_feats,
            "trg_feats": self.trg_feats,
            "hyper": self.hyper,
        }

    def __call__(self, source: AnyArray, target: AnyArray, *, algorithm: str = "direct") -> Array:
        """Raw velocity for (source, target); `algorithm` as in `unet_forward`."""
        x = prepare_pair(source, target, self.src_feats, self.trg_feats)
        single = x.ndim == 4
        out = unet_forward(
            [(c.kernel, c.bias) for c in self.convs], len(self.enc_nf), x[None] if single else x, algorithm
        )
        return out[0] if single else out

    def at_hyper(self, hyper: float) -> SynthMorphUNet:
        """This network, if it was generated for `hyper`; it cannot be re-generated for another λ."""
        if abs(float(hyper) - self.hyper) > 1e-6:
            raise ValueError(
                f"these weights were generated for λ={self.hyper:g} and cannot give λ={float(hyper):g}; "
                "use the full hypernetwork bundle or convert again with that λ"
            )
        return self
