"""One 3x3x3 'same' convolution layer of either SynthMorph network, by the algorithm asked for.

`direct` is XLA's own convolution (the GPU default: the vendor's kernels are fast there). On CPU,
`winograd` and `winograd4` compute layers with many channels on both sides by Winograd F(2,3) or
F(4,3) in slabs (winograd.py), and layers with few channels on one side as one wide matrix
product per slab (gemm_conv.py). All give the same sums up to float32 rounding.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax.numpy as jnp
from jax import lax
from jaxtyping import Array, Float

from ..._custom_types import AnyArray
from .gemm_conv import patch_conv3d, shift_conv3d
from .slabs import max_pool
from .winograd import winograd_conv3d

CONV_ALGORITHMS = ("direct", "winograd", "winograd4")
_WIDE = 8  # channels from which a layer counts as wide


def check_algorithm(algorithm: str) -> None:
    """Raises `ValueError` unless `algorithm` is one of `CONV_ALGORITHMS`."""
    if algorithm not in CONV_ALGORITHMS:
        raise ValueError(f"algorithm must be one of {CONV_ALGORITHMS}, got {algorithm!r}")


def direct_conv3d(x: AnyArray, kernel: AnyArray, bias: AnyArray) -> Array:
    """XLA's cross-correlation of (n, x, y, z, cin) with a DHWIO kernel, 'same' zero padding, plus bias."""
    y = lax.conv_general_dilated(
        x,
        kernel,
        window_strides=(1, 1, 1),
        padding="SAME",
        dimension_numbers=("NDHWC", "DHWIO", "NDHWC"),
        precision=lax.Precision.HIGHEST,
    )
    return y + bias[None, None, None, None, :]


def upsample(x: AnyArray) -> Array:
    """x2 nearest-neighbour repetition along the three spatial axes of (n, x, y, z, c)."""
    for axis in (1, 2, 3):
        x = jnp.repeat(x, 2, axis=axis)
    return x


def _materialise(parts: Sequence[tuple[Array, bool]]) -> Array:
    arrays = [upsample(a) if up else a for a, up in parts]
    return arrays[0] if len(arrays) == 1 else jnp.concatenate(arrays, axis=-1)


def conv_layer(
    parts: Sequence[tuple[Array, bool]],
    kernel: Float[AnyArray, "3 3 3 cin cout"],
    bias: Float[AnyArray, " cout"],
    algorithm: str,
    activation: Callable[[Array], Array] | None = None,
    pool: bool = False,
) -> Array:
    """`activation(conv(concatenate(parts)) + bias)`, 2x2x2 max-pooled if `pool`.

    `parts` are (array, upsample) pairs as in `winograd_conv3d`; `algorithm` one of
    `CONV_ALGORITHMS`. With `pool`, `activation` must be non-decreasing (it is applied after the
    pooling on the slab paths) and the spatial sizes even. Winograd pays off where the matrix
    products are wide; layers with few channels on one side become one wide product instead, and
    sizes the tiles do not divide fall back to F(2,3), then to XLA's convolution.
    """
    check_algorithm(algorithm)
    first, up = parts[0]
    shape = [s * 2 if up else s for s in first.shape[1:4]]
    cin, cout = kernel.shape[3], kernel.shape[4]
    if algorithm != "direct":
        if min(cin, cout) >= _WIDE:
            if algorithm == "winograd4" and all(s % 4 == 0 for s in shape):
                return winograd_conv3d(parts, kernel, bias, slab=1, activation=activation, m=4, pool=pool)
            if all(s % 2 == 0 for s in shape):
                return winograd_conv3d(parts, kernel, bias, slab=1, activation=activation, m=2, pool=pool)
        elif cin < _WIDE:
            return patch_conv3d(_materialise(parts), kernel, bias, activation=activation, pool=pool)
        else:
            return shift_conv3d(_materialise(parts), kernel, bias, activation=activation, pool=pool)
    y = direct_conv3d(_materialise(parts), kernel, bias)
    y = y if activation is None else activation(y)
    return max_pool(y) if pool else y
