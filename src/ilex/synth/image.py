"""An image from a label map: SynthMorph's intensity model and corruptions (neurite `labels_to_image`)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int, PRNGKeyArray

from .._custom_types import AnyArray
from .noise import normal, perlin_noise
from .settings import SynthSettings


def labels_to_image(
    key: PRNGKeyArray, labels: Int[AnyArray, "x y z"], n_labels: int, settings: SynthSettings
) -> Float[Array, "x y z 1"]:
    """A random image of the label map `labels` (values 0..n_labels-1, 0 the background), float32.

    In the order of neurite@95b2b56 `labels_to_image` (docs/train.md, Synthesis):

    1. per label j: mean μ_j ~ U(`mean_range`), SD σ_j ~ U(`std_range`) (label 0: the `background_`
       ranges); every voxel I(x) ~ N(μ_s(x), σ_s(x)²);
    2. with probability `zero_background`, I = 0 on label 0;
    3. blur: a separable Gaussian, SD ~ U(0, `blur_std`) per axis, zero padding, 2·round(3·blur_std)+1 taps;
    4. bias: I·exp(B), B smooth noise at 1/`bias_res` of SD ~ U(0, `bias_std`); then optional extra
       noise N(0, σ_n²), σ_n ~ U(0, `noise_std`) (not in the reference; off by default);
    5. clip to [0, 255]; min-max normalise to [0, 1] (`normalize`); I^exp(γ), γ ~ N(0, `gamma_std`²).

    A step whose number is 0 is skipped. Jittable (`n_labels`, `settings` static), vmappable over `key`.
    """
    labels = jnp.asarray(labels)
    shape = labels.shape
    keys = jax.random.split(key, 9)
    s = settings

    def per_label(k, fg, bg):
        lo = jnp.full((n_labels,), fg[0], jnp.float32).at[0].set(bg[0])
        hi = jnp.full((n_labels,), fg[1], jnp.float32).at[0].set(bg[1])
        return jax.random.uniform(k, (n_labels,), jnp.float32, lo, hi)

    mean = per_label(keys[0], s.mean_range, s.background_mean_range)
    std = per_label(keys[1], s.std_range, s.background_std_range)
    image = normal(keys[2], shape) * std[labels] + mean[labels]

    if s.zero_background > 0:
        clear = jax.random.uniform(keys[3], ()) < s.zero_background
        image = jnp.where(clear & (labels == 0), 0.0, image)

    if s.blur_std > 0:
        image = _random_blur(keys[4], image, s.blur_std)

    if s.bias_std > 0:
        bias = perlin_noise(keys[5], shape, 1, s.bias_res, (0.0, s.bias_std))[..., 0]
        image = image * jnp.exp(bias)

    if s.noise_std > 0:
        sd = jax.random.uniform(keys[6], (), jnp.float32, 0.0, s.noise_std)
        image = image + sd * normal(keys[7], shape)

    image = jnp.clip(image, 0.0, 255.0)
    if s.normalize:
        lo, hi = image.min(), image.max()
        # div_no_nan, as neurite's minmax_norm: a constant image becomes 0.
        image = jnp.where(hi > lo, (image - lo) / jnp.where(hi > lo, hi - lo, 1.0), 0.0)
    if s.gamma_std > 0:
        gamma = s.gamma_std * jax.random.normal(keys[8], (), jnp.float32)
        image = image ** jnp.exp(gamma)
    return image[..., None]


def _random_blur(key, image, max_std: float):
    """Separable Gaussian blur, each axis its own SD ~ U(0, max_std), zero padding (TF 'SAME')."""
    half = round(3 * max_std)  # neurite gaussian_kernel's window, from the largest SD
    offsets = jnp.arange(-half, half + 1, dtype=jnp.float32)
    # neurite clamps SDs to float32's eps so that a drawn 0 still gives a kernel (a delta).
    eps = float(jnp.finfo(jnp.float32).eps)
    sds = jax.random.uniform(key, (3,), jnp.float32, eps, max(max_std, eps))
    for axis in range(3):
        weights = jnp.exp(-0.5 * offsets**2 / sds[axis] ** 2)
        weights = weights / weights.sum()
        padded = jnp.pad(image, [(half, half) if a == axis else (0, 0) for a in range(3)])
        n = image.shape[axis]
        image = sum(weights[t] * jax.lax.slice_in_dim(padded, t, t + n, axis=axis) for t in range(2 * half + 1))
    return image
