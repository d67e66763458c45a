"""Evaluating a 3x3x3 'same' convolution slab by slab along the first spatial axis.

The wide layers at extent 256 hold 2 GB per activation; their intermediate forms (Winograd
tiles, patches, per-offset products) are several times larger. Computing the output a few planes
at a time keeps those intermediates to one slab, and writing each slab into the output in place
keeps the output the only full-size buffer a layer allocates. A layer followed by 2x2x2
max-pooling (the affine detector's encoder) pools each slab as it is computed, so that its
full-resolution output never exists at all.
"""

from __future__ import annotations

from collections.abc import Callable

import jax.numpy as jnp
from jax import lax
from jaxtyping import Array

from ..._custom_types import AnyArray
from ..._sequencing import after


def max_pool(x: AnyArray) -> Array:
    """2x2x2 max-pooling with stride 2 of an (n, x, y, z, c) array whose spatial sizes are even."""
    n, a, b, c, ch = x.shape
    return x.reshape(n, a // 2, 2, b // 2, 2, c // 2, 2, ch).max(axis=(2, 4, 6))


def bias_activate_pool(y: AnyArray, bias: AnyArray, activation: Callable[[Array], Array] | None, pool: bool) -> Array:
    """`activation(y + bias)`, then 2x2x2 max-pooling if `pool`, for one slab of a layer's output.

    The pooling runs first: adding a constant and a non-decreasing activation (LeakyReLU, ReLU)
    commute with the maximum exactly, even in float32 (rounding is monotonic too), and the
    elementwise work is then 8x smaller.
    """
    if pool:
        y = max_pool(y)
    y = y + bias[None, None, None, None, :]
    return y if activation is None else activation(y)


def padded_rows(part: AnyArray, upsample: bool, start: AnyArray, count: int) -> Array:
    """Planes [start, start + count) along x of `part` as a 'same' 3x3x3 convolution sees it: at
    full resolution (repeated x2 if `upsample`) with one zero plane and one zero border on every
    side.

    Only these planes are gathered and padded, never the whole tensor: at extent 256 a padded
    copy of one activation would cost 2 GB.
    """
    full = part.shape[1] * (2 if upsample else 1)
    rows = start + jnp.arange(count) - 1  # unpadded full-resolution plane index
    source = jnp.clip(rows // 2 if upsample else rows, 0, part.shape[1] - 1)
    block = jnp.take(part, source, axis=1)
    block = jnp.where(((rows >= 0) & (rows < full))[None, :, None, None, None], block, 0.0)
    if upsample:
        block = jnp.repeat(jnp.repeat(block, 2, axis=2), 2, axis=3)
    return jnp.pad(block, ((0, 0), (0, 0), (1, 1), (1, 1), (0, 0)))


def fill_slabs(
    one_slab: Callable[[Array, Array | None], Array],
    like: AnyArray,
    shape: tuple[int, ...],
    planes: int,
    reuse: AnyArray | None = None,
) -> Array:
    """The array of `shape` (n, x, y, z, c) whose planes [i * planes, (i + 1) * planes) along x
    are `one_slab(i, block)`, built one slab after the other.

    Without `reuse`, the output is a new buffer, and `block` is `None`. Its initial value is a
    zero that exists only once `like`, the layer's input, does (`_sequencing.after`), rather than
    a plain constant: with a constant, XLA shares one zero buffer between all layers and
    allocates every layer's output up front, so all of them would be alive at once; ordered
    after the input, each output exists only from its layer on.

    With `reuse`, an input of the output's shape that dies with this layer, the output is
    written over it, so that the layer needs no second full-size buffer. `block` is then that
    input's `padded_rows` for slab i as they were before any writing: the one plane of slab i - 1
    that slab i's 3x3x3 window reaches back to is kept aside before slab i - 1 is overwritten.
    The result is the same either way; where `reuse` is still needed elsewhere, XLA copies it.
    Raises `ValueError` if `planes` does not divide the x size (trailing planes would stay unwritten).
    """
    if planes < 1 or shape[1] % planes:
        raise ValueError(
            f"planes={planes} must be a positive divisor of the output's x size {shape[1]} (shape {tuple(shape)}); "
            "otherwise the last planes would be left unwritten"
        )
    count = shape[1] // planes

    def put(out: AnyArray, slab: AnyArray, i: AnyArray) -> Array:
        return lax.dynamic_update_slice_in_dim(out, slab, i * planes, axis=1)

    if reuse is None:
        init = jnp.broadcast_to(after(jnp.zeros((), like.dtype), like), shape)
        return lax.fori_loop(0, count, lambda i, out: put(out, one_slab(i, None), i), init)
    if reuse.shape != tuple(shape):
        raise ValueError(f"cannot write a {tuple(shape)} output over an array of shape {reuse.shape}")

    def step(i: AnyArray, carry: tuple[Array, Array]) -> tuple[Array, Array]:
        out, kept = carry
        block = padded_rows(out, False, i * planes, planes + 2)
        block = lax.dynamic_update_slice_in_dim(block, kept, 0, axis=1)
        return put(out, one_slab(i, block), i), block[:, planes : planes + 1]

    kept = jnp.zeros((shape[0], 1, shape[2] + 2, shape[3] + 2, shape[4]), reuse.dtype)  # plane -1: padding
    return lax.fori_loop(0, count, step, (reuse, kept))[0]
