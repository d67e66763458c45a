"""Training pairs: one label map deformed twice, two independent images (voxelmorph's SynthMorph setup)."""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int, PRNGKeyArray

from .._custom_types import AnyArray
from .deform import random_displacement
from .image import labels_to_image
from .labels import warp_labels
from .settings import SynthSettings
from .shapes import shapes_labels

Pair = tuple[Float[Array, "x y z 1"], Float[Array, "x y z 1"], Int[Array, "x y z"], Int[Array, "x y z"]]


def random_flip(key: PRNGKeyArray, *volumes: Int[AnyArray, "x y z"]) -> tuple[Int[Array, "x y z"], ...]:
    """`volumes` all flipped along the same random axes: k ~ U{0, 1, 2, 3} axes, chosen without replacement,
    as voxelmorph@ca28315 `generators.synthmorph` (so each axis is flipped with probability 1/2)."""
    k_count, k_axes = jax.random.split(key)
    count = jax.random.randint(k_count, (), 0, 4)
    rank = jax.random.permutation(k_axes, 3)
    out = [jnp.asarray(v) for v in volumes]
    for axis in range(3):
        out = [jnp.where(rank[axis] < count, jnp.flip(v, axis), v) for v in out]
    return tuple(out)


def synth_pair(
    key: PRNGKeyArray,
    labels: Int[AnyArray, "x y z"],
    n_labels: int,
    settings: SynthSettings,
    *,
    target_labels: Int[AnyArray, "x y z"] | None = None,
) -> Pair:
    """(source image, target image, source labels, target labels) from the label map `labels`.

    Both maps are flipped alike (`random_flip`, if `settings.flip`); then each is moved by its own
    `random_displacement` (`warp_std`, `warp_res`, `int_steps`) with `warp_labels`, and each gets its own
    `labels_to_image`. With `target_labels` (another subject's map on the same grid, values 0..n_labels-1)
    the target starts from it instead: voxelmorph's `same_subj=False`. Images (x, y, z, 1) in [0, 1],
    labels int32 (x, y, z). Jittable (`n_labels`, `settings` static), vmappable over `key`.
    """
    k_flip, k_src, k_trg = jax.random.split(key, 3)
    source = jnp.asarray(labels)
    target = source if target_labels is None else jnp.asarray(target_labels)
    if settings.flip:
        source, target = random_flip(k_flip, source, target)
    out = []
    for k, lab in ((k_src, source), (k_trg, target)):
        k_warp, k_image = jax.random.split(k)
        disp = random_displacement(
            k_warp,
            lab.shape,
            settings.warp_std,
            settings.warp_res,
            settings.int_steps,
            modulate=settings.warp_modulate,
        )
        moved = warp_labels(lab, disp).astype(jnp.int32)
        out.append((labels_to_image(k_image, moved, n_labels, settings), moved))
    (src_image, src_labels), (trg_image, trg_labels) = out
    return src_image, trg_image, src_labels, trg_labels


def shapes_pair(key: PRNGKeyArray, shape: Sequence[int], settings: SynthSettings) -> Pair:
    """`synth_pair` of a fresh `shapes_labels` map of `shape`, `settings.n_shape_labels` labels.

    The reference trains shapes models with `SynthSettings.shapes()`'s deformations; pass those settings.
    """
    k_map, k_pair = jax.random.split(key)
    labels = shapes_labels(k_map, shape, settings)
    return synth_pair(k_pair, labels, settings.n_shape_labels, settings)
