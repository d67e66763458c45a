"""SynthMorph's networks as registration methods: `deform` now; `affine`, `rigid`, `joint` beside it."""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp

from ...models.synthmorph_deform.velocity import half_resolution, symmetric_velocity
from .base import NetworkTransform


def default_algorithm() -> str:
    """Winograd F(4,3) on CPU (8x fewer multiplications on the wide layers; the network's output
    within 1.3e-5 of the direct float32 evaluation, measured by bench/register_speed.py --what
    accuracy); on GPUs the vendor's convolutions are already fast, so XLA's direct convolution."""
    return "winograd4" if jax.default_backend() == "cpu" else "direct"


@jax.jit(static_argnames=("algorithm",))
def _deform_velocity(unet, mov_net, fix_net, algorithm: str):
    return symmetric_velocity(unet, half_resolution(mov_net[..., None]), half_resolution(fix_net[..., None]),
                              algorithm=algorithm)


@dataclass(frozen=True)
class SynthMorphDeformMethod:
    """`mri_synthmorph -m deform`: both images centred on the fixed one, the U-Net's symmetric
    velocity at half resolution (SPEC §2). `unet` is the U-Net generated for one λ."""

    unet: object
    algorithm: str | None = None
    name: str = "deform"
    centre_on_fixed: bool = True

    def describe(self, extent: int, steps: int) -> str:
        return f"2 passes at {extent // 2}^3, {steps} squaring steps"

    def estimate(self, mov_net: jax.Array, fix_net: jax.Array) -> NetworkTransform:
        v = _deform_velocity(self.unet, jnp.asarray(mov_net), jnp.asarray(fix_net), self.algorithm or default_algorithm())
        return NetworkTransform(velocity=v, scale=2)
