"""Where a training step's pairs come from: SynthMorph's noise shapes or the user's label maps, drawn on device.

Every sample is a function of one PRNG key, and a step's keys are `fold_in(run key, step)`: the
same run draws the same pairs whatever stops and resumes it, on any number of devices.
"""

from __future__ import annotations

import dataclasses

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int

from .._custom_types import AnyArray
from ..synth import SynthSettings, load_label_maps, one_hot, shapes_pair, synth_pair
from .settings import TrainSettings

__all__ = ["Sample", "TrainingData", "draw_lambda"]


class Sample(eqx.Module):
    """One training pair: images (x, y, z, 1), one-hot labels (x, y, z, k), and its λ."""

    hyper: Float[Array, ""]
    source: Float[Array, "x y z 1"]
    target: Float[Array, "x y z 1"]
    source_labels: Float[Array, "x y z k"]
    target_labels: Float[Array, "x y z k"]


def draw_lambda(key: jax.Array, low: float, high: float, ends: float) -> Float[Array, ""]:
    """λ ~ U(low, high), except that a share `ends` of draws is exactly `low` or `high` (half each).

    The ends are where a hypernetwork is asked most (no regularisation, the smoothest warp) and
    where a uniform draw rarely lands; docs/train.md says why this share.
    """
    k_where, k_end, k_uniform = jax.random.split(key, 3)
    uniform = jax.random.uniform(k_uniform, (), minval=low, maxval=high)
    end = jnp.where(jax.random.bernoulli(k_end), jnp.float32(high), jnp.float32(low))
    return jnp.where(jax.random.uniform(k_where, ()) < ends, end, uniform)


class TrainingData(eqx.Module):
    """The pairs of a run: `sample(key)` gives one `Sample`."""

    maps: Int[AnyArray, "n x y z"] | None
    n_labels: int = eqx.field(static=True)
    extent: int = eqx.field(static=True)
    synth: SynthSettings = eqx.field(static=True)
    lambda_range: tuple[float, float, float] = eqx.field(static=True)
    label_values: tuple[int, ...] = eqx.field(static=True)

    @classmethod
    def from_settings(cls, settings: TrainSettings, synth: SynthSettings | None = None) -> TrainingData:
        """Shapes, or the label maps `settings.labels` names (loaded and checked before any step).

        `synth` defaults to the reference's recipe for the data: `SynthSettings()` (the brains recipe,
        in voxels of the user's maps) for label maps; for noise shapes `SynthSettings.shapes()` with
        its velocity SD (3 voxels at the reference's 256^3) scaled by extent / 256, as the shapes'
        own sizes are: at 3 voxels a 32^3 pair would share almost no label (Dice 0.12 against 0.62
        scaled, docs/train.md).
        """
        if synth is None:
            shapes = SynthSettings.shapes()
            scaled = dataclasses.replace(shapes, warp_std=shapes.warp_std * settings.extent / shapes.shape_extent)
            synth = scaled if settings.labels is None else SynthSettings()
        lam = (settings.lambda_min, settings.lambda_max, settings.lambda_ends)
        if settings.labels is None:
            n = synth.n_shape_labels
            return cls(None, n, settings.extent, synth, lam, tuple(range(n)))
        maps, values = load_label_maps(
            settings.labels, table=settings.label_table, resample=settings.resample, extent=settings.extent
        )
        # The smallest integer type that holds the labels: the maps stay on the device all run.
        dtype = np.uint8 if len(values) <= 256 else np.int16 if len(values) < 2**15 else np.int32
        return cls(jnp.asarray(np.asarray(maps).astype(dtype)), len(values), settings.extent, synth, lam, tuple(values))

    @property
    def kind(self) -> str:
        return "shapes" if self.maps is None else "label maps"

    def sample(self, key: jax.Array) -> Sample:
        k_lambda, k_map, k_pair = jax.random.split(key, 3)
        hyper = draw_lambda(k_lambda, *self.lambda_range)
        if self.maps is None:
            src, trg, src_lab, trg_lab = shapes_pair(k_pair, (self.extent,) * 3, self.synth)
        else:
            index = jax.random.randint(k_map, (), 0, self.maps.shape[0])
            labels = jnp.asarray(self.maps)[index].astype(jnp.int32)
            src, trg, src_lab, trg_lab = synth_pair(k_pair, labels, self.n_labels, self.synth)
        return Sample(
            hyper,
            src,
            trg,
            one_hot(src_lab, self.n_labels),
            one_hot(trg_lab, self.n_labels),
        )
