"""3x3x3 'same' convolution by Winograd's minimal filtering F(m x m x m, 3x3x3), in slabs.

Each m x m x m block of outputs is computed from an (m+2)^3 input tile with (m+2)^3 products
per channel pair instead of 27 m^3: 64 instead of 216 for F(2,3) (3.4x fewer multiplications),
216 instead of 1728 for F(4,3) (8x fewer). They run as (m+2)^3 independent (pixels x cin) @
(cin x cout) matrix products, the operation CPUs run fastest. Rounding grows with m: one
256-channel layer is off by ~5e-7 of its maximum with F(2,3) and ~8e-6 with F(4,3) (with the
interpolation points below), against the 1e-4 of a plain float32 evaluation allowed.

The input may be given as several parts along channels, some of them at half resolution to be
upsampled by repetition (the U-Net's `[upsample(x), skip]` inputs): each part is transformed on
its own and the transformed tiles multiplied together, so neither the concatenation nor the
upsampled tensor is ever materialised. The work runs in slabs along the first spatial axis, so
the larger transformed tiles exist for one slab at a time, and the output is written over a
part that dies with the layer where there is one (slabs.py).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax.numpy as jnp
import numpy as np
from jax import lax
from jaxtyping import Array, Float

from ..._custom_types import AnyArray
from .slabs import bias_activate_pool, fill_slabs, padded_rows

# 1-D F(m,3) for cross-correlation: y = A^T [(G g) * (B^T d)], d an (m+2)-tap window, g the 3 taps,
# built by the Toom-Cook construction at interpolation points 0, ±1 and infinity (Lavin & Gray 2016),
# and for m = 4 also 1/2 and -2: with these, float32 rounding is about 4x smaller than with the
# usual ±2 (measured on 256-channel layers: 7.6e-6 against 3.2e-5 of the output's maximum), as
# Barabasz et al. (2020) found for reciprocal point pairs.
_MATRICES = {
    2: (
        np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], np.float32),  # B^T
        np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]], np.float32),  # G
        np.array([[1, 1, 1, 0], [0, 1, -1, -1]], np.float32),  # A^T
    ),
    4: (
        np.array(
            [
                [1, -3 / 2, -2, 3 / 2, 1, 0],
                [0, -1, 1 / 2, 5 / 2, 1, 0],
                [0, 1, -5 / 2, 1 / 2, 1, 0],
                [0, -2, -1, 2, 1, 0],
                [0, 1 / 2, -1, -1 / 2, 1, 0],
                [0, 1, -3 / 2, -2, 3 / 2, 1],
            ],
            np.float32,
        ),
        np.array(
            [
                [1, 0, 0],
                [1 / 3, 1 / 3, 1 / 3],
                [-1 / 3, 1 / 3, -1 / 3],
                [-16 / 15, -8 / 15, -4 / 15],
                [1 / 15, -2 / 15, 4 / 15],
                [0, 0, 1],
            ],
            np.float32,
        ),
        np.array(
            [[1, 1, 1, 1, 1, 0], [0, 1, -1, 1 / 2, -2, 0], [0, 1, 1, 1 / 4, 4, 0], [0, 1, -1, 1 / 8, -8, 1]], np.float32
        ),
    ),
}


def _combine(rows: np.ndarray, terms: list[Array], axis: int) -> Array:
    # Each output is a short signed sum of the terms (the matrices are sparse, with small entries).
    out = []
    for row in rows:
        acc = None
        for coef, term in zip(row, terms, strict=True):
            if coef:
                piece = term if coef == 1 else -term if coef == -1 else float(coef) * term
                acc = piece if acc is None else acc + piece
        out.append(acc)
    return jnp.stack(out, axis=axis)


def transform_kernel(kernel: Float[AnyArray, "3 3 3 cin cout"], m: int = 2) -> Float[AnyArray, "t cin cout"]:
    """G g G^T along each axis, (m+2)^3 tile positions ordered (z, y, x) as in `_transform_input`."""
    g = _MATRICES[m][1]
    u = jnp.einsum("ai,bj,ck,ijkxy->cbaxy", g, g, g, kernel, precision=lax.Precision.HIGHEST)
    return u.reshape((m + 2) ** 3, *kernel.shape[3:])


def _input_along(x: AnyArray, axis: int, tiles: int, m: int) -> Array:
    # B^T d for every overlapping (m+2)-window with stride m; results stacked on a new axis 0.
    d = [lax.slice_in_dim(x, j, j + m * (tiles - 1) + 1, stride=m, axis=axis) for j in range(m + 2)]
    return _combine(_MATRICES[m][0], d, axis=0)


def _transform_input(padded: AnyArray, tiles: tuple[int, int, int], m: int) -> Array:
    """(n, m s + 2, m ty + 2, m tz + 2, c) padded slab -> ((m+2)^3, n*s*ty*tz, c) transformed tiles."""
    c = padded.shape[-1]
    v = _input_along(padded, 1, tiles[0], m)  # (tx, n, s, Y+2, Z+2, c)
    v = _input_along(v, 3, tiles[1], m)  # (ty, tx, n, s, ty, Z+2, c)
    v = _input_along(v, 5, tiles[2], m)  # (tz, ty, tx, n, s, ty, tz, c)
    return v.reshape((m + 2) ** 3, -1, c)


def _output_along(x: AnyArray, axis: int, m: int) -> Array:
    terms = [lax.index_in_dim(x, i, axis, keepdims=False) for i in range(m + 2)]
    return _combine(_MATRICES[m][2], terms, axis=axis)


def winograd_conv3d(
    parts: Sequence[tuple[Array, bool]],
    kernel: Float[AnyArray, "3 3 3 cin cout"],
    bias: Float[AnyArray, " cout"],
    slab: int = 2,
    activation: Callable[[Array], Array] | None = None,
    m: int = 2,
    pool: bool = False,
) -> Float[AnyArray, "n ox oy oz cout"]:  # halved by `pool`
    """'same' 3x3x3 cross-correlation of the channel concatenation of `parts`, plus `bias`.

    `parts` are `(array, upsample)`: an array (n, x, y, z, c) on the output grid, or with
    `upsample` one at half resolution whose x2 nearest-neighbour repetition is meant. Spatial
    sizes must be multiples of `m` (output tile side, 2 or 4) and the first one of `m * slab`. Equals
    `activation(conv_general_dilated(concatenate(...), kernel, 'SAME') + bias)` up to float32
    rounding. Bias and activation are applied per slab, so that the only full-size buffer a
    layer writes is its output. With `pool`, the result is 2x2x2 max-pooled slab by slab (so
    the full-resolution output never exists; `activation` must then be non-decreasing, as
    LeakyReLU is). Raises `ValueError` (at trace time) for parts on different grids,
    sizes that the tiles do not divide, or kernel and bias shapes that do not fit the parts.
    """
    if not parts:
        raise ValueError("parts must hold at least one (array, upsample) pair")
    first, up = parts[0]
    n = first.shape[0]
    shape = tuple(s * 2 for s in first.shape[1:4]) if up else tuple(first.shape[1:4])
    # Every part must cover the same output grid: a part of another size would be silently
    # cropped or read past its end by the slab gathers.
    grids = [(a.shape[0], *(s * (2 if u else 1) for s in a.shape[1:4])) for a, u in parts]
    if any(a.ndim != 5 for a, _ in parts) or len(set(grids)) != 1:
        sizes = [f"{tuple(a.shape)}{' upsampled' if u else ''}" for a, u in parts]
        raise ValueError(f"parts must be (n, x, y, z, c) arrays on one output grid (after upsampling), got {sizes}")
    if kernel.shape[:3] != (3, 3, 3) or kernel.ndim != 5 or bias.shape != (kernel.shape[-1],):
        raise ValueError(
            f"expected a (3, 3, 3, cin, cout) kernel and a (cout,) bias, got {kernel.shape} and {bias.shape}"
        )
    if m not in _MATRICES:
        raise ValueError(f"Winograd tiles of side {m} are not provided; use one of {sorted(_MATRICES)}")
    if any(s % m for s in shape) or shape[0] % (m * slab):
        raise ValueError(f"Winograd F({m},3) needs even sizes that are multiples of {m}, x of {m * slab}, got {shape}")
    tiles = (slab, shape[1] // m, shape[2] // m)
    channels = sum(array.shape[-1] for array, _ in parts)
    if channels != kernel.shape[3]:
        raise ValueError(f"the parts have {channels} channels, the kernel expects {kernel.shape[3]}")
    cout = kernel.shape[-1]
    u = transform_kernel(kernel, m)

    # The output is written over the last full-resolution part of its shape: in the U-Net every
    # input dies with its layer, so each layer then needs one full-size buffer, not two.
    reusable = [k for k, (a, up) in enumerate(parts) if not up and a.shape == (n, *shape, cout) and not pool]
    reuse = reusable[-1] if reusable else None

    def one_slab(i: AnyArray, reused_block: AnyArray | None) -> Array:
        transformed = []
        for k, (array, upsample) in enumerate(parts):
            block = reused_block if k == reuse else padded_rows(array, upsample, i * m * slab, m * slab + 2)
            transformed.append(_transform_input(block, tiles, m))
        # One product over all parts' channels: a longer inner dimension runs faster than
        # several products added up (measured 5 % on the decoder's 512-channel layers).
        v = transformed[0] if len(transformed) == 1 else jnp.concatenate(transformed, axis=-1)
        products = jnp.einsum("tpc,tcd->tpd", v, u, precision=lax.Precision.HIGHEST)
        products = products.reshape(m + 2, m + 2, m + 2, n, *tiles, cout)
        y = _output_along(_output_along(_output_along(products, 0, m), 1, m), 2, m)  # (mz, my, mx, n, s, ty, tz, cout)
        y = y.transpose(3, 4, 2, 5, 1, 6, 0, 7).reshape(n, m * slab, shape[1], shape[2], cout)
        return bias_activate_pool(y, bias, activation, pool)

    if pool:  # m * slab input planes make m * slab / 2 output planes (m is even)
        return fill_slabs(one_slab, first, (n, *(s // 2 for s in shape), cout), m * slab // 2)
    return fill_slabs(one_slab, first, (n, *shape, cout), m * slab, None if reuse is None else parts[reuse][0])
