"""The stationary velocity field of a registration: two U-Net passes, antisymmetrised."""

from __future__ import annotations

from collections.abc import Callable

import jax.numpy as jnp
from jax import Array
from jaxtyping import Float

from ..._custom_types import AnyArray
from ..._sequencing import after
from .unet import SynthMorphUNet


def half_resolution(volume: Float[AnyArray, "*b x y z c"]) -> Float[AnyArray, "*b hx hy hz c"]:
    """The U-Net input: the even-index subsample `v[::2, ::2, ::2]` (no smoothing, docs/spec-deform.md §2.2)."""
    return volume[..., ::2, ::2, ::2, :]


def symmetric_velocity(
    unet: SynthMorphUNet | Callable[..., Array],
    moving: Float[AnyArray, "x y z 1"],
    fixed: Float[AnyArray, "x y z 1"],
    *,
    algorithm: str = "direct",
    batched: bool = False,
) -> Float[AnyArray, "x y z 3"]:
    """`0.5 * (U(moving, fixed) - U(fixed, moving))`.

    Inputs are network-space images at the U-Net's resolution (already halved); the velocity is
    in voxels of that grid. `exp(v)` is the forward warp, `exp(-v)` the backward one.
    The two passes run one after the other (half the activation memory of a batch), or with
    `batched` as one batch of two. `algorithm` is `unet_forward`'s.
    """
    if batched:
        pair = unet(jnp.stack([moving, fixed]), jnp.stack([fixed, moving]), algorithm=algorithm)
    else:
        first = unet(moving, fixed, algorithm=algorithm)
        # The second pass waits for the first, so that XLA cannot run the two independent passes
        # side by side; one pass's activations are alive at a time.
        second = unet(after(fixed, first), moving, algorithm=algorithm)
        pair = (first, second)
    return 0.5 * (pair[0] - pair[1])
