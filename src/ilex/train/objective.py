"""What a training step minimises: HyperMorph's (1 - λ)·data + λ·smoothness on one synthetic pair.

The registration inside the loss is the one `ilex register -m deform` runs (docs/spec-deform.md §2):
half-resolution inputs, two U-Net passes antisymmetrised, scaling and squaring at half resolution, the
field brought up to the full grid. So a trained bundle needs no other code to register, and λ means
at registration what it meant in training. The formulas are in docs/train.md.

One difference, at the border only: registration composes the half-grid field up as mri_synthmorph
does (`upsample_half_field`), which leaves −0.5 voxel on the last slice of each axis even for a zero
velocity; training resizes the displacement itself, as voxelmorph's `RescaleTransform` does in
`train_synthmorph.py`, so a zero velocity is a zero field and costs no smoothness. Inside, the two
fields are the same (voxelmorph's resize aligns corners instead; ilex keeps registration's y / 2).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from .. import losses
from .._custom_types import AnyArray
from ..models.synthmorph_deform.velocity import half_resolution
from ..transforms.grid import voxel_grid
from ..transforms.integrate import scaling_and_squaring
from ..transforms.interpolate import interpolate_clamped

__all__ = [
    "DATA_TERMS",
    "data_term",
    "full_grid_displacement",
    "pair_displacement",
    "pair_loss",
    "smoothness",
    "soft_dice_loss",
]

DATA_TERMS = ("mse", "dice")


def pair_displacement(
    model,
    hyper: Float[AnyArray, ""],
    source: Float[AnyArray, "x y z 1"],
    target: Float[AnyArray, "x y z 1"],
    steps: int,
    *,
    remat: bool = False,
) -> tuple[Float[Array, "x y z 3"], Float[Array, "hx hy hz 3"]]:
    """The full-grid displacement (voxels) that moves `source` onto `target`, and the half-grid velocity.

    `remat` recomputes each U-Net pass in the backward pass instead of keeping its activations
    (gradient checkpointing): about one pass's activations alive at a time, for one more forward.
    """
    src, trg = half_resolution(source), half_resolution(target)

    def one_pass(m, a, b):
        return m(hyper, a, b)

    if remat:
        one_pass = jax.checkpoint(one_pass)
    velocity = 0.5 * (one_pass(model, src, trg) - one_pass(model, trg, src))
    return full_grid_displacement(scaling_and_squaring(velocity, steps)), velocity


def full_grid_displacement(half: Float[AnyArray, "hx hy hz 3"]) -> Float[Array, "x y z 3"]:
    """A half-grid displacement (half-grid voxels) on the full grid (full voxels): `F(y) = 2 d(y / 2)`.

    `d` is read trilinearly with its border clamped, so the last full slice (y / 2 = n − ½) repeats
    `2 d(n − 1)`, where the registration's composition (`ilex.transforms.upsample_half_field`) gives
    `2 d(n − 1) − ½`. A zero `d` gives a zero field, as voxelmorph's `RescaleTransform(2)` does.
    """
    full = tuple(2 * n for n in half.shape[:3])
    return 2.0 * interpolate_clamped(half, 0.5 * voxel_grid(full))


def warp_one_hot(one_hot: Float[AnyArray, "x y z k"], displacement: Float[AnyArray, "x y z 3"]) -> Array:
    """`one_hot` moved by `displacement`, trilinear with the border clamped (as VoxelMorph's transformer)."""
    return interpolate_clamped(one_hot, voxel_grid(one_hot.shape[:3]) + displacement)


def smoothness(displacement: Float[AnyArray, "x y z 3"]) -> Float[Array, ""]:
    """VoxelMorph's `Grad('l2')`: the mean squared forward difference along each axis, averaged over axes.

    `ilex.losses.smoothness` sums the axes; VoxelMorph's `Grad.loss` divides by their number.
    """
    return losses.smoothness(displacement) / 3.0


def soft_dice_loss(moved: Float[AnyArray, "x y z k"], target: Float[AnyArray, "x y z k"]) -> Float[Array, ""]:
    """1 − VoxelMorph's soft Dice, `2 Σ a b / Σ (a + b)` per label, averaged over labels (the 2022 recipe)."""
    axes = (0, 1, 2)
    top = 2.0 * jnp.sum(moved * target, axis=axes)
    bottom = jnp.maximum(jnp.sum(moved + target, axis=axes), 1e-5)
    return 1.0 - jnp.mean(top / bottom)


def data_term(kind: str, moved: AnyArray, target: AnyArray) -> Float[Array, ""]:
    """The label data term: "mse" (mean squared error of one-hot maps, the 2024 recipe) or "dice"."""
    if kind == "mse":
        return jnp.mean(jnp.square(moved - target))  # over label channels too: losses.mse takes one volume
    if kind == "dice":
        return soft_dice_loss(moved, target)
    raise ValueError(f"data term must be one of {DATA_TERMS}, got {kind!r}")


def pair_loss(
    model,
    hyper: Float[AnyArray, ""],
    source: Float[AnyArray, "x y z 1"],
    target: Float[AnyArray, "x y z 1"],
    source_one_hot: Float[AnyArray, "x y z k"],
    target_one_hot: Float[AnyArray, "x y z k"],
    *,
    steps: int,
    data: str = "mse",
    remat: bool = False,
) -> tuple[Float[Array, ""], tuple[Float[Array, ""], Float[Array, ""]]]:
    """`(1 − λ)·data + λ·smoothness` for one pair, with (data, smoothness) beside it.

    The data term compares the source labels moved by the predicted warp with the target labels;
    the smoothness term is taken on the same full-grid displacement, as VoxelMorph regularises the
    integrated field it warps with.
    """
    displacement, _ = pair_displacement(model, hyper, source, target, steps, remat=remat)
    d = data_term(data, warp_one_hot(source_one_hot, displacement), target_one_hot)
    s = smoothness(displacement)
    return (1.0 - hyper) * d + hyper * s, (d, s)
