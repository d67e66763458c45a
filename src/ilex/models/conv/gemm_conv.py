"""3x3x3 'same' convolutions with few channels on one side, as one wide matrix product per slab.

XLA's CPU convolution handles such layers badly: at extent 256 the U-Net's first layer (2 -> 256
channels) took 3 s and its last (256 -> 3, the velocity) 24 s per pass, about a quarter of the
whole network's time, although they are under 0.2 % of its arithmetic. Both are reshaped here
into the operation CPUs run fastest:

* few input channels (`patch_conv3d`): gather the 27 shifted copies of the input side by side
  (27 cin channels) and multiply by the kernel as a (27 cin, cout) matrix;
* few output channels (`shift_conv3d`): multiply the input by all 27 taps at once, a
  (cin, 27 cout) matrix, then add up the 27 cout-channel results, each shifted by its offset.

Bias and `activation` are applied per slab. Both compute the same sums as the direct
convolution, in another order (float32 rounding).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import jax.numpy as jnp
from jax import lax
from jaxtyping import Array, Float

from ..._custom_types import AnyArray
from .slabs import bias_activate_pool, fill_slabs, padded_rows

_OFFSETS = list(itertools.product(range(3), repeat=3))  # (a, b, c) in the kernel's DHW order


def _slab_planes(x: int, planes: int, even: bool = False) -> int:
    # The largest (even, for pooling) divisor of x up to `planes` (at least 2 when even), so that
    # slabs tile the axis exactly.
    step = 2 if even else 1
    return max(d for d in range(step, max(min(planes, x), step) + 1, step) if x % d == 0)


_TILE_FLOATS = 1 << 20  # a tile's widest intermediate: 4 MB, so that it stays in cache


def _tile_rows(sy: int, floats_per_row: int) -> int:
    # Rows along y per tile of a pooled layer: the largest even divisor of sy whose widest intermediate
    # fits `_TILE_FLOATS`. Written straight out of a slab-sized product, the first layer's 2 GB of
    # output went through memory twice (products, then bias, activation and pooling): 1.27 s at 128^3
    # x 256 channels, 0.49 s in 4 MB tiles, the same numbers.
    return _slab_planes(sy, max(_TILE_FLOATS // max(floats_per_row, 1), 1), even=True)


def _in_slabs(
    x: AnyArray,
    cout: int,
    planes: int,
    bias: AnyArray,
    activation: Callable[[Array], Array] | None,
    products: Callable[[Array, int], Array],
    widest: int,
    pool: bool = False,
) -> Array:
    # The scaffolding both convolutions share: slabs of `planes` planes along x, each computed tile
    # by tile along y by `products(padded block, planes)` from its padded input rows, then bias and
    # activation (and 2x2x2 max-pooling with `pool`, for which slabs and tiles need even sizes).
    # `widest` is the channel count of the widest array `products` makes per voxel.
    n, sx, sy, sz, _ = x.shape
    if pool and any(s % 2 for s in (sx, sy, sz)):
        raise ValueError(f"2x2x2 pooling needs even spatial sizes, got {(sx, sy, sz)}")
    planes = _slab_planes(sx, planes, even=pool)
    rows = _tile_rows(sy, (planes + 2) * (sz + 2) * widest) if pool else sy
    shrink = 2 if pool else 1

    def one_slab(i: AnyArray, _: None) -> Array:
        block = padded_rows(x, False, i * planes, planes + 2)
        if rows == sy:  # one tile (every unpooled layer): no inner loop, the program it was before tiles
            return bias_activate_pool(products(block, planes), bias, activation, pool)

        def one_tile(j: AnyArray, out: AnyArray) -> Array:
            tile = lax.dynamic_slice_in_dim(block, j * rows, rows + 2, axis=2)
            y = bias_activate_pool(products(tile, planes), bias, activation, pool)
            return lax.dynamic_update_slice_in_dim(out, y, j * (rows // shrink), axis=2)

        out = jnp.zeros((n, planes // shrink, sy // shrink, sz // shrink, cout), x.dtype)
        return lax.fori_loop(0, sy // rows, one_tile, out)

    return fill_slabs(one_slab, x, (n, sx // shrink, sy // shrink, sz // shrink, cout), planes // shrink)


def patch_conv3d(
    x: Float[AnyArray, "n x y z cin"],
    kernel: Float[AnyArray, "3 3 3 cin cout"],
    bias: Float[AnyArray, " cout"],
    planes: int = 4,
    activation: Callable[[Array], Array] | None = None,
    pool: bool = False,
) -> Float[AnyArray, "n ox oy oz cout"]:  # halved by `pool`
    """conv_general_dilated(x, kernel, 'SAME') + bias, for small cin (im2col in slabs); `activation`
    and `pool` as in `winograd_conv3d`."""
    cin, cout = x.shape[-1], kernel.shape[-1]
    weights = kernel.reshape(27 * cin, cout)

    def products(block: AnyArray, planes: int) -> Array:
        sy, sz = block.shape[2] - 2, block.shape[3] - 2
        patches = jnp.concatenate(
            [block[:, a : a + planes, b : b + sy, c : c + sz, :] for a, b, c in _OFFSETS], axis=-1
        )
        return jnp.einsum("nxyzk,kd->nxyzd", patches, weights, precision=lax.Precision.HIGHEST)

    return _in_slabs(x, cout, planes, bias, activation, products, 27 * cin + cout, pool)


def shift_conv3d(
    x: Float[AnyArray, "n x y z cin"],
    kernel: Float[AnyArray, "3 3 3 cin cout"],
    bias: Float[AnyArray, " cout"],
    planes: int = 16,
    activation: Callable[[Array], Array] | None = None,
    pool: bool = False,
) -> Float[AnyArray, "n ox oy oz cout"]:  # halved by `pool`
    """conv_general_dilated(x, kernel, 'SAME') + bias, for small cout (products, then shifts);
    `activation` and `pool` as in `winograd_conv3d`."""
    cin, cout = x.shape[-1], kernel.shape[-1]
    weights = kernel.transpose(3, 0, 1, 2, 4).reshape(cin, 27 * cout)

    def products(block: AnyArray, planes: int) -> Array:
        sy, sz = block.shape[2] - 2, block.shape[3] - 2
        taps = jnp.einsum("nxyzc,ck->nxyzk", block, weights, precision=lax.Precision.HIGHEST)
        taps = taps.reshape(*taps.shape[:4], 27, cout)
        return sum(taps[:, a : a + planes, b : b + sy, c : c + sz, t, :] for t, (a, b, c) in enumerate(_OFFSETS))

    return _in_slabs(x, cout, planes, bias, activation, products, cin + 27 * cout, pool)
